//! `hodei templates list` and `hodei templates match`, run as a process.

use std::process::Command;

/// Runs the built `hodei` with `args`; returns (exit code, stdout, stderr).
fn hodei(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hodei"))
        .args(args)
        .output()
        .expect("the hodei binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> String {
    format!("{}/tests/it/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `hodei args` and compares exit code, stdout and stderr exactly.
fn check(args: &[&str], code: i32, stdout: &str, stderr: &str) {
    let got = hodei(args);
    assert_eq!(
        got,
        (code, stdout.to_owned(), stderr.to_owned()),
        "hodei {}",
        args.join(" ")
    );
}

/// Runs `hodei args`, expects exit 2, nothing on stdout and `error: ...`
/// on stderr starting with `prefix`.
fn check_error(args: &[&str], prefix: &str) {
    let (code, stdout, stderr) = hodei(args);
    assert_eq!(
        (code, stdout.as_str()),
        (2, ""),
        "hodei {}: {stderr}",
        args.join(" ")
    );
    assert!(
        stderr.starts_with(prefix),
        "hodei {}: stderr {stderr:?} does not start with {prefix:?}",
        args.join(" ")
    );
}

#[test]
fn help_reads_well() {
    let (code, stdout, _) = hodei(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("Hodei runs Jenkins-style declarative pipelines on ephemeral workers")
    );
    assert!(
        stdout.contains(
            "templates  List worker templates, or find the ones a label expression selects"
        )
    );
    let (code, stdout, _) = hodei(&["templates", "match", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Usage: hodei templates match [OPTIONS] <EXPR>"));
    assert!(stdout.contains("--min-cpu <Q>"));
    assert!(stdout.contains("--prefer <ID>"));
    let (code, _, stderr) = hodei(&[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage: hodei <COMMAND>"));
}

#[test]
fn list_builtins() {
    check(
        &["templates", "list"],
        0,
        "\
ID           IMAGE                            CAPABILITIES                      CPU   MEMORY
java-maven   hodei/worker:java-maven-latest   git,java-17,linux,maven-3.8       1     2Gi
node-npm     hodei/worker:node-18-latest      git,linux,node-18,npm,yarn        500m  1Gi
docker-dind  hodei/worker:docker-dind-latest  docker,git,helm,kubernetes,linux  2     4Gi
python-pip   hodei/worker:python-3.11-latest  git,linux,pip,poetry,python-3.11  500m  1Gi
go-build     hodei/worker:go-1.21-latest      docker,git,go-1.21,linux          1     2Gi
",
        "",
    );
}

#[test]
fn list_file() {
    let file = fixture("templates.yaml");
    let expected = "\
ID              IMAGE                   CAPABILITIES          CPU    MEMORY
rust            hodei/worker:rust-1.89  git,linux,rust        2      4Gi
windows-dotnet  hodei/worker:dotnet-8   dotnet-8,git,windows  1500m  3Gi
";
    check(
        &["templates", "list", "--templates", &file],
        0,
        expected,
        "",
    );
    // The option is accepted before the subcommand too.
    check(
        &["templates", "--templates", &file, "list"],
        0,
        expected,
        "",
    );
}

#[test]
fn match_prints_ids_best_first() {
    check(
        &["templates", "match", "linux && java-17"],
        0,
        "java-maven\n",
        "",
    );
    check(
        &["templates", "match", "docker"],
        0,
        "go-build\ndocker-dind\n",
        "",
    );
    check(
        &["templates", "match", "docker", "--prefer", "docker-dind"],
        0,
        "docker-dind\ngo-build\n",
        "",
    );
    check(
        &["templates", "match", "git", "--min-cpu", "2"],
        0,
        "docker-dind\n",
        "",
    );
    check(
        &[
            "templates",
            "match",
            "linux",
            "--min-memory",
            "2Gi",
            "--min-cpu",
            "1000m",
        ],
        0,
        "go-build\njava-maven\ndocker-dind\n",
        "",
    );
    check(
        &["templates", "match", "(node-18 || python-3.11) && !docker"],
        0,
        "node-npm\npython-pip\n",
        "",
    );
    // docker-dind satisfies `docker -> helm` with the fewest labels besides
    // the two asked; go-build has docker without helm.
    check(
        &["templates", "match", "docker -> helm"],
        0,
        "docker-dind\njava-maven\nnode-npm\npython-pip\n",
        "",
    );
}

#[test]
fn match_with_file_uses_only_its_templates() {
    let file = fixture("templates.yaml");
    check(
        &["templates", "match", "git", "--templates", &file],
        0,
        "windows-dotnet\nrust\n",
        "",
    );
    check(
        &["templates", "match", "git && linux", "--templates", &file],
        0,
        "rust\n",
        "",
    );
    let (code, stdout, stderr) = hodei(&["templates", "match", "java-17", "--templates", &file]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "no template matches 'java-17'\n  rust: label expression is false: lacks java-17\n  windows-dotnet: label expression is false: lacks java-17\n"
    );
}

#[test]
fn no_match_lists_every_template_with_its_reason() {
    check(
        &["templates", "match", "linux && windows"],
        1,
        "",
        "\
no template matches 'linux && windows'
  java-maven: label expression is false: lacks windows
  node-npm: label expression is false: lacks windows
  docker-dind: label expression is false: lacks windows
  python-pip: label expression is false: lacks windows
  go-build: label expression is false: lacks windows
",
    );
    check(
        &[
            "templates",
            "match",
            "git",
            "--min-cpu",
            "1",
            "--min-memory",
            "3Gi",
        ],
        0,
        "docker-dind\n",
        "",
    );
    check(
        &["templates", "match", "java-17 || docker", "--min-cpu", "4", "--min-memory", "3Gi"],
        1,
        "",
        "\
no template matches 'java-17 || docker'
  java-maven: cpu 1 is below the required 4; memory 2Gi is below the required 3Gi
  node-npm: label expression is false: lacks docker, lacks java-17; cpu 500m is below the required 4; memory 1Gi is below the required 3Gi
  docker-dind: cpu 2 is below the required 4
  python-pip: label expression is false: lacks docker, lacks java-17; cpu 500m is below the required 4; memory 1Gi is below the required 3Gi
  go-build: cpu 1 is below the required 4; memory 2Gi is below the required 3Gi
",
    );
}

#[test]
fn explain_says_why() {
    check(
        &["templates", "match", "docker", "--explain"],
        0,
        "go-build\ndocker-dind\n",
        "\
go-build first: fewest capabilities beyond what was asked (3; next best docker-dind has 4)
  match   go-build: 3 extra capabilities, cpu 1, memory 2Gi
  match   docker-dind: 4 extra capabilities, cpu 2, memory 4Gi
  reject  java-maven: label expression is false: lacks docker
  reject  node-npm: label expression is false: lacks docker
  reject  python-pip: label expression is false: lacks docker
",
    );
}

#[test]
fn syntax_errors_name_the_column() {
    check(
        &["templates", "match", "foo bar"],
        2,
        "",
        "error: invalid label expression 'foo bar' at column 5: expected '&&', '||', '->', '<->' or the end of the expression, found label \"bar\"\n  foo bar\n      ^\n",
    );
    check_error(
        &["templates", "match", "foo (bar)"],
        "error: invalid label expression 'foo (bar)' at column 5: expected '&&', '||', '->', '<->' or the end of the expression, found '('",
    );
    check_error(
        &["templates", "match", "a <- b"],
        "error: invalid label expression 'a <- b' at column 3: expected '<->', found '<-'",
    );
    check_error(
        &["templates", "match", "--", "->"],
        "error: invalid label expression '->' at column 1: expected a label, '!' or '(', found '->'",
    );
    check_error(
        &["templates", "match", "a -> b -> c"],
        "error: invalid label expression 'a -> b -> c' at column 8: '->' cannot be chained",
    );
}

#[test]
fn bad_quantities_name_the_value() {
    check_error(
        &["templates", "match", "linux", "--min-cpu", "abc"],
        "error: invalid value 'abc' for '--min-cpu <Q>': invalid cpu quantity \"abc\"",
    );
    check_error(
        &["templates", "match", "linux", "--min-cpu", "-1"],
        "error: invalid value '-1' for '--min-cpu <Q>': invalid cpu quantity \"-1\": must not be negative",
    );
    check_error(
        &["templates", "match", "linux", "--min-memory", "1Zi"],
        "error: invalid value '1Zi' for '--min-memory <Q>': invalid memory quantity \"1Zi\": unknown suffix \"Zi\"",
    );
    check_error(
        &["templates", "match", "linux", "--min-memory", "Gi"],
        "error: invalid value 'Gi' for '--min-memory <Q>': invalid memory quantity \"Gi\"",
    );
}

#[test]
fn bad_files_name_the_template_and_field() {
    let bad = fixture("bad-quantity.yaml");
    check(
        &["templates", "list", "--templates", &bad],
        2,
        "",
        &format!(
            "error: {bad}: template \"broken\" (templates[1]): field `resources.cpu`: invalid cpu quantity \"1.5.5\": more than one decimal point\n"
        ),
    );
    let unknown = fixture("unknown-field.yaml");
    check_error(
        &["templates", "match", "linux", "--templates", &unknown],
        &format!(
            "error: {unknown}: template \"fine\" (templates[0]): field `max_concurent_jobs`: unknown field, expected one of"
        ),
    );
    let dup = fixture("duplicate.yaml");
    check_error(
        &["templates", "list", "--templates", &dup],
        &format!(
            "error: {dup}: template \"twice\" (templates[1]): field `id`: duplicate template id, already used by templates[0]"
        ),
    );
    let missing = fixture("missing.yaml");
    check_error(
        &["templates", "list", "--templates", &missing],
        &format!("error: {missing}: cannot read the file: No such file or directory"),
    );
}

#[test]
fn unknown_preferred_template_is_an_error() {
    check(
        &["templates", "match", "linux", "--prefer", "nope"],
        2,
        "",
        "error: --prefer nope: no such template, expected one of java-maven, node-npm, docker-dind, python-pip, go-build\n",
    );
}
