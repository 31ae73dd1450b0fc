//! `hodei lint` and `hodei plan`, run as a process on the examples and on
//! pipelines with errors.

use std::path::PathBuf;
use std::process::Command;

/// Runs the built `hodei` with `args` in the repository root; returns
/// (exit code, stdout, stderr).
fn hodei(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hodei"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the hodei binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A pipeline of `tests/it/pipelines`, relative to the repository root.
fn pipeline(name: &str) -> String {
    format!("crates/server/tests/it/pipelines/{name}")
}

/// Runs `hodei args` and compares exit code, stdout and stderr exactly.
fn check(args: &[&str], code: i32, stdout: &str, stderr: &str) {
    assert_eq!(
        hodei(args),
        (code, stdout.to_owned(), stderr.to_owned()),
        "hodei {}",
        args.join(" ")
    );
}

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))
        .expect("examples directory")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Jenkinsfile").exists())
        .map(|e| format!("examples/{}/Jenkinsfile", e.file_name().to_string_lossy()))
        .collect();
    names.sort();
    names
}

#[test]
fn lint_accepts_every_example() {
    let examples = examples();
    assert!(examples.len() >= 4, "{examples:?}");
    let args: Vec<&str> = std::iter::once("lint")
        .chain(examples.iter().map(String::as_str))
        .collect();
    let (code, stdout, stderr) = hodei(&args);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    for example in &examples {
        assert!(stdout.contains(&format!("{example}: ok\n")), "{stdout}");
    }
    assert!(
        stdout.contains(
            "examples/parallel/Jenkinsfile:7:9: warning: option `timestamps` has no effect in Hodei and is ignored\n"
        ),
        "{stdout}"
    );
}

#[test]
fn lint_prints_every_error_with_its_position() {
    let errors = pipeline("errors.groovy");
    let none = pipeline("agent-none.groovy");
    check(
        &["lint", &errors, "examples/hello/Jenkinsfile", &none],
        1,
        &format!(
            "\
{errors}:2:28: invalid label expression: expected a label, '!' or '(', found the end of the expression
{errors}:7:17: unsupported step `script`: `script {{ ... }}` needs Groovy, which Hodei does not run
{errors}:12:9: duplicate stage name `Build` (first at 4:9)
{errors}:13:21: unknown step `junit`: expected sh, echo, error, dir, withEnv, timeout, retry, sleep or writeFile
examples/hello/Jenkinsfile: ok
{none}:4:9: stage `Build` has no agent: with `agent none`, every stage with steps needs its own `agent`
"
        ),
        "",
    );
}

#[test]
fn lint_reports_bytes_that_are_not_utf8() {
    let dir = std::env::temp_dir().join(format!("hodei-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let file = dir.join("Jenkinsfile");
    std::fs::write(&file, b"pipeline {\n  agent any \xff\xfe\n}\n").expect("write");
    let name = file.display().to_string();
    check(
        &["lint", &name],
        1,
        &format!("{name}:2:13: the file is not valid UTF-8: unexpected byte 0xff\n"),
        "",
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn lint_of_a_missing_file_is_a_usage_error() {
    let (code, stdout, stderr) = hodei(&["lint", "no/such/Jenkinsfile"]);
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert!(
        stderr.starts_with("error: cannot read no/such/Jenkinsfile: "),
        "{stderr}"
    );
    let (code, _, stderr) = hodei(&["lint"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage: hodei lint <FILE>..."), "{stderr}");
}

#[test]
fn plan_of_the_seed_example() {
    check(
        &["plan", "examples/seed/Jenkinsfile"],
        0,
        "\
examples/seed/Jenkinsfile: 3 workers

worker 1: label 'linux && java-17 && maven-3.8'
  for:       the whole run (pipeline agent)
  stages:    Build
  template:  java-maven, image hodei/worker:java-maven-latest
  why:       the only template that matches

worker 2: template 'docker-dind'
  for:       stage 'Docker Build' (worker 1 waits meanwhile)
  stages:    Docker Build
  template:  docker-dind, image hodei/worker:docker-dind-latest
  why:       named by the agent

worker 3: template 'docker-dind'
  for:       stage 'Deploy' (worker 1 waits meanwhile)
  stages:    Deploy
  template:  docker-dind, image hodei/worker:docker-dind-latest
  why:       named by the agent

stages:
  Build         → worker 1
  Docker Build  → worker 2 (own agent)
  Deploy        → worker 3 (own agent)
  post (always) on worker 1
",
        "",
    );
}

#[test]
fn plan_of_parallel_branches() {
    let (code, stdout, stderr) = hodei(&["plan", "examples/parallel/Jenkinsfile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "examples/parallel/Jenkinsfile:7:9: warning: option `timestamps` has no effect in Hodei and is ignored\n"
    );
    for expected in [
        "examples/parallel/Jenkinsfile: 5 workers\n(agent none: no worker for the whole run; each stage brings its own)\n",
        "worker 3: label 'python-3.11 || python'\n  for:       parallel branch 'Lint (Python)', at the same time as the other branches\n  stages:    Lint (Python)\n  template:  python-pip, image hodei/worker:python-3.11-latest\n  why:       the only template that matches\n  workspace: lint\n",
        "worker 4: docker 'alpine:3.20'\n  for:       parallel branch 'Image', at the same time as the other branches\n  stages:    Image\n  image:     alpine:3.20\n  args:      --memory 512m (docker run arguments)\n  needs:     the docker backend (no template)\n",
        "stages:\n  Checks   parallel, 4 branches at the same time, fail fast:\n    Unit tests (Java)  → worker 1 (own agent)\n    Frontend           → worker 2 (own agent)\n    Lint (Python)      → worker 3 (own agent)\n    Image              → worker 4 (own agent)\n  Release  → worker 5 (own agent), only when branch 'release-*'\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
}

#[test]
fn plan_of_every_example_succeeds() {
    for example in examples() {
        let (code, stdout, stderr) = hodei(&["plan", &example]);
        assert_eq!(code, 0, "{example}: {stdout}{stderr}");
        assert!(stdout.starts_with(&format!("{example}: ")), "{stdout}");
    }
}

#[test]
fn plan_without_a_matching_template_lists_every_rejection() {
    let file = pipeline("no-match.groovy");
    let (code, stdout, stderr) = hodei(&["plan", &file]);
    assert_eq!((code, stderr.as_str()), (1, ""), "{stdout}");
    for expected in [
        "  template:  none matches; every template was rejected:\n               java-maven: label expression is false: lacks windows\n               node-npm: label expression is false: lacks windows\n               docker-dind: label expression is false: lacks windows\n               python-pip: label expression is false: lacks windows\n               go-build: label expression is false: lacks windows\n",
        "  template:  none: no template 'kubernetes-deploy'; known templates: java-maven, node-npm, docker-dind, python-pip, go-build\n",
        "worker 3: kubernetes pod\n  for:       stage 'Pod' (worker 1 waits meanwhile)\n  stages:    Pod\n  pod:       a pod from the inline yaml (6 lines)\n  needs:     the kubernetes backend (no template)\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
    // With a template file, only its templates are considered.
    let templates = "crates/server/tests/it/fixtures/templates.yaml";
    let (code, stdout, _) = hodei(&["plan", &file, "--templates", templates]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("  template:  windows-dotnet, image hodei/worker:dotnet-8\n  why:       the only template that matches\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no template 'kubernetes-deploy'; known templates: rust, windows-dotnet\n"),
        "{stdout}"
    );
}

#[test]
fn plan_of_an_invalid_pipeline_prints_its_errors() {
    let none = pipeline("agent-none.groovy");
    check(
        &["plan", &none],
        1,
        "",
        &format!(
            "{none}:4:9: stage `Build` has no agent: with `agent none`, every stage with steps needs its own `agent`\n"
        ),
    );
    let errors = pipeline("errors.groovy");
    let (code, stdout, stderr) = hodei(&["plan", &errors]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
}
