//! What the host offers to the `local` template: its OS, its architecture
//! and the tools on `PATH` with their versions (`git`, `java-17`,
//! `node-20`, `python-3.11`, `maven-3.9`, `docker`, `go-1.21`, ...).
//!
//! Every version probe runs at once, each with a short timeout, so start-up
//! waits for the slowest probe, not for their sum.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hodei_domain::{CpuQuantity, MemoryQuantity, ResourceRequirements, TemplateId, WorkerTemplate};

use super::LocalError;

/// The id of the template the local backend offers.
pub const LOCAL_TEMPLATE_ID: &str = "local";

/// Default time a version probe may take.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a tool's version becomes labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionLabel {
    /// Only the bare name (`docker`, `make`).
    None,
    /// `name-MAJOR` (`java-17`, `node-20`).
    Major,
    /// `name-MAJOR.MINOR` (`python-3.11`, `go-1.21`, `maven-3.9`).
    MajorMinor,
}

/// One tool to look for.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The executable to find on `PATH`.
    program: &'static str,
    /// Arguments that print its version (empty: presence is enough).
    args: &'static [&'static str],
    /// The label it gives (`maven` for `mvn`).
    label: &'static str,
    /// Extra bare labels when found (`python` and `python3` for `python3`).
    aliases: &'static [&'static str],
    /// Which versioned label it gives.
    version: VersionLabel,
}

const PROBES: &[Probe] = &[
    Probe {
        program: "sh",
        args: &[],
        label: "sh",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "bash",
        args: &[],
        label: "bash",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "git",
        args: &["--version"],
        label: "git",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "java",
        args: &["-version"],
        label: "java",
        aliases: &[],
        version: VersionLabel::Major,
    },
    Probe {
        program: "node",
        args: &["--version"],
        label: "node",
        aliases: &[],
        version: VersionLabel::Major,
    },
    Probe {
        program: "npm",
        args: &[],
        label: "npm",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "yarn",
        args: &[],
        label: "yarn",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "python3",
        args: &["--version"],
        label: "python",
        aliases: &["python3"],
        version: VersionLabel::MajorMinor,
    },
    Probe {
        program: "pip3",
        args: &[],
        label: "pip",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "poetry",
        args: &[],
        label: "poetry",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "mvn",
        args: &["--version"],
        label: "maven",
        aliases: &[],
        version: VersionLabel::MajorMinor,
    },
    Probe {
        program: "gradle",
        args: &[],
        label: "gradle",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "go",
        args: &["version"],
        label: "go",
        aliases: &[],
        version: VersionLabel::MajorMinor,
    },
    Probe {
        program: "docker",
        args: &["--version"],
        label: "docker",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "kubectl",
        args: &[],
        label: "kubectl",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "helm",
        args: &[],
        label: "helm",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "make",
        args: &[],
        label: "make",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "gcc",
        args: &["--version"],
        label: "gcc",
        aliases: &[],
        version: VersionLabel::Major,
    },
    Probe {
        program: "cargo",
        args: &[],
        label: "cargo",
        aliases: &[],
        version: VersionLabel::None,
    },
    Probe {
        program: "rustc",
        args: &["--version"],
        label: "rust",
        aliases: &[],
        version: VersionLabel::MajorMinor,
    },
    Probe {
        program: "curl",
        args: &[],
        label: "curl",
        aliases: &[],
        version: VersionLabel::None,
    },
];

/// A tool found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedTool {
    /// Its label (`maven` for `mvn`).
    pub name: String,
    /// Where it was found.
    pub path: PathBuf,
    /// The version its probe printed (`17.0.9`), when it has a probe and
    /// the probe answered in time.
    pub version: Option<String>,
    /// The labels it gives (`java`, `java-17`).
    pub labels: Vec<String>,
}

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapabilities {
    /// `linux`, `macos`, ...
    pub os: String,
    /// Architecture labels (`x86_64` and `amd64`, or `aarch64` and `arm64`).
    pub arch: Vec<String>,
    /// Tools found on `PATH`, in probe order.
    pub tools: Vec<DetectedTool>,
    /// Logical CPUs.
    pub cpus: u64,
    /// Total memory in bytes (0 when unknown).
    pub memory_bytes: u64,
}

impl HostCapabilities {
    /// Every label: os, arch, and each tool's labels.
    pub fn labels(&self) -> BTreeSet<String> {
        let mut labels = BTreeSet::new();
        labels.insert(self.os.clone());
        labels.extend(self.arch.iter().cloned());
        for tool in &self.tools {
            labels.extend(tool.labels.iter().cloned());
        }
        labels
    }

    /// The `local` worker template: the host's labels as capabilities and
    /// its CPUs and memory as resources. Its image is `local` (the local
    /// backend ignores images).
    ///
    /// # Errors
    /// [`LocalError::Template`] if a detected label is not a valid
    /// capability (tools found here always give valid ones).
    pub fn local_template(&self) -> Result<WorkerTemplate, LocalError> {
        let resources = ResourceRequirements::new(
            CpuQuantity::from_cores(self.cpus.max(1)).unwrap_or(CpuQuantity::from_millis(1000)),
            MemoryQuantity::from_bytes(self.memory_bytes),
        );
        let template =
            WorkerTemplate::new(TemplateId::new(LOCAL_TEMPLATE_ID)?, "local", resources)?
                .with_name("Local process worker")
                .with_description("Runs the worker as a process on the server's host")
                .with_capabilities(self.labels())?;
        Ok(template)
    }
}

/// Architecture labels for `std::env::consts::ARCH`.
fn arch_labels(arch: &str) -> Vec<String> {
    let alias = match arch {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "x86" => Some("i386"),
        _ => None,
    };
    std::iter::once(arch)
        .chain(alias)
        .map(str::to_owned)
        .collect()
}

/// Finds `program` in the directories of `path` (a `PATH` value).
pub fn find_on_path(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Removes ANSI escape sequences (`mvn` colours its banner).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The first version number (`\d+(\.\d+)*`) in a probe's output: on the
/// first line that says "version" if any, else on the first non-empty line.
pub fn parse_version(output: &str) -> Option<String> {
    let output = strip_ansi(output);
    let line = output
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("version"))
        .or_else(|| output.lines().find(|l| !l.trim().is_empty()))?;
    let bytes = line.as_bytes();
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let mut end = start;
    while end < bytes.len() {
        let digit = bytes[end].is_ascii_digit();
        let dot_then_digit =
            bytes[end] == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
        if digit || dot_then_digit {
            end += 1;
        } else {
            break;
        }
    }
    Some(line[start..end].to_owned())
}

/// The versioned label for `name` at `version`: `java-17` (Java's `1.8`
/// counts as 8), `python-3.11`.
fn versioned_label(name: &str, version: &str, kind: VersionLabel) -> Option<String> {
    let mut parts = version.split('.');
    let mut major = parts.next()?.to_owned();
    let mut minor = parts.next().map(str::to_owned);
    if name == "java" && major == "1" {
        major = minor.take()?;
    }
    match kind {
        VersionLabel::None => None,
        VersionLabel::Major => Some(format!("{name}-{major}")),
        VersionLabel::MajorMinor => Some(match minor {
            Some(minor) => format!("{name}-{major}.{minor}"),
            None => format!("{name}-{major}"),
        }),
    }
}

/// What one probe found.
#[derive(Debug)]
struct Probed {
    /// `None` when the tool is absent or its probe fails.
    tool: Option<DetectedTool>,
    /// The version probe did not answer in time (worth asking again).
    timed_out: bool,
}

/// Runs one probe.
async fn probe(spec: Probe, path_var: String, timeout: Duration) -> Probed {
    let mut timed_out = false;
    let tool = probe_tool(spec, &path_var, timeout, &mut timed_out).await;
    Probed { tool, timed_out }
}

async fn probe_tool(
    spec: Probe,
    path_var: &str,
    timeout: Duration,
    timed_out: &mut bool,
) -> Option<DetectedTool> {
    let path = find_on_path(spec.program, path_var)?;
    let mut labels = vec![spec.label.to_owned()];
    labels.extend(spec.aliases.iter().map(|a| (*a).to_owned()));
    if spec.args.is_empty() {
        return Some(DetectedTool {
            name: spec.label.to_owned(),
            path,
            version: None,
            labels,
        });
    }
    let run = tokio::process::Command::new(&path)
        .args(spec.args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let version = match tokio::time::timeout(timeout, run).await {
        // A tool that does not answer in time is there, version unknown.
        Err(_) => {
            *timed_out = true;
            None
        }
        // A tool that cannot run or fails its version probe is a broken stub.
        Ok(Err(_)) => return None,
        Ok(Ok(output)) if !output.status.success() => return None,
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            parse_version(&text)
        }
    };
    if let Some(label) = version
        .as_deref()
        .and_then(|v| versioned_label(spec.label, v, spec.version))
    {
        labels.push(label);
    }
    if spec.label == "python"
        && let Some(major) = version.as_deref().and_then(|v| v.split('.').next())
    {
        labels.push(format!("python-{major}"));
    }
    Some(DetectedTool {
        name: spec.label.to_owned(),
        path,
        version,
        labels,
    })
}

/// Detects the host's capabilities, probing every tool at once with
/// `timeout` each, on the `PATH` of this process.
pub async fn detect_host_capabilities(timeout: Duration) -> HostCapabilities {
    let path_var = std::env::var("PATH").unwrap_or_default();
    detect_with_path(&path_var, timeout).await
}

/// Like [`detect_host_capabilities`] with an explicit `PATH` value.
pub async fn detect_with_path(path_var: &str, timeout: Duration) -> HostCapabilities {
    host_with_tools(probe_all(path_var, timeout).await.0)
}

/// Every probe at once; the tools found, and whether a probe timed out.
async fn probe_all(path_var: &str, timeout: Duration) -> (Vec<DetectedTool>, bool) {
    let handles: Vec<_> = PROBES
        .iter()
        .map(|spec| tokio::spawn(probe(*spec, path_var.to_owned(), timeout)))
        .collect();
    let mut tools = Vec::new();
    let mut timed_out = false;
    for handle in handles {
        if let Ok(probed) = handle.await {
            timed_out |= probed.timed_out;
            tools.extend(probed.tool);
        }
    }
    (tools, timed_out)
}

fn host_with_tools(tools: Vec<DetectedTool>) -> HostCapabilities {
    HostCapabilities {
        os: std::env::consts::OS.to_owned(),
        arch: arch_labels(std::env::consts::ARCH),
        tools,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        memory_bytes: total_memory(Path::new("/proc/meminfo")),
    }
}

/// Like [`detect_host_capabilities`], but the tools found are kept in
/// `cache_file` and reused while nothing they depend on changed: the
/// `PATH` value and, for every probed program, where it is found (after
/// symbolic links), its size and modification time. Installing, removing
/// or upgrading a tool, or another `PATH`, probes again. A run in which a
/// probe timed out is not kept. CPUs and memory are always read afresh.
/// A cache that cannot be read or written only costs the probes.
pub async fn detect_host_capabilities_cached(
    timeout: Duration,
    cache_file: &Path,
) -> HostCapabilities {
    let path_var = std::env::var("PATH").unwrap_or_default();
    detect_with_path_cached(&path_var, timeout, cache_file).await
}

/// Like [`detect_host_capabilities_cached`] with an explicit `PATH` value.
pub async fn detect_with_path_cached(
    path_var: &str,
    timeout: Duration,
    cache_file: &Path,
) -> HostCapabilities {
    let key = cache_key(path_var);
    if let Some(tools) = read_cache(cache_file, &key) {
        return host_with_tools(tools);
    }
    let (tools, timed_out) = probe_all(path_var, timeout).await;
    if !timed_out && let Err(e) = write_cache(cache_file, &key, &tools) {
        tracing::debug!(file = %cache_file.display(), error = %e, "cannot keep the host capabilities");
    }
    host_with_tools(tools)
}

/// What the probes' results depend on, as text: the cache key.
fn cache_key(path_var: &str) -> String {
    use std::fmt::Write;
    use std::os::unix::fs::MetadataExt;
    let mut key = format!("v1\nPATH={path_var}\n");
    for spec in PROBES {
        let Some(path) = find_on_path(spec.program, path_var) else {
            let _ = writeln!(key, "{} absent", spec.program);
            continue;
        };
        let target = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        match std::fs::metadata(&target) {
            Ok(m) => {
                let _ = writeln!(
                    key,
                    "{} {} {} {} {}.{}",
                    spec.program,
                    target.display(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec()
                );
            }
            Err(_) => {
                let _ = writeln!(key, "{} {} unreadable", spec.program, target.display());
            }
        }
    }
    key
}

/// The cache file's contents.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedTools {
    key: String,
    tools: Vec<CachedTool>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedTool {
    name: String,
    path: PathBuf,
    version: Option<String>,
    labels: Vec<String>,
}

fn read_cache(file: &Path, key: &str) -> Option<Vec<DetectedTool>> {
    let text = std::fs::read(file).ok()?;
    let cached: CachedTools = serde_json::from_slice(&text).ok()?;
    (cached.key == key).then(|| {
        cached
            .tools
            .into_iter()
            .map(|t| DetectedTool {
                name: t.name,
                path: t.path,
                version: t.version,
                labels: t.labels,
            })
            .collect()
    })
}

/// Writes the cache through a temporary file renamed into place, so a
/// concurrent reader sees the old file or the new one, never half of one.
fn write_cache(file: &Path, key: &str, tools: &[DetectedTool]) -> std::io::Result<()> {
    let cached = CachedTools {
        key: key.to_owned(),
        tools: tools
            .iter()
            .map(|t| CachedTool {
                name: t.name.clone(),
                path: t.path.clone(),
                version: t.version.clone(),
                labels: t.labels.clone(),
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&cached).map_err(std::io::Error::other)?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, file)
}

/// `MemTotal` of a meminfo file, in bytes (0 when unreadable).
fn total_memory(meminfo: &Path) -> u64 {
    std::fs::read_to_string(meminfo)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix("MemTotal:")?;
                let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                kib.checked_mul(1024)
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_probe_output() {
        fn check(output: &str, expected: Option<&str>) {
            assert_eq!(parse_version(output).as_deref(), expected, "{output:?}");
        }
        check("git version 2.39.5", Some("2.39.5"));
        check(
            "Picked up JAVA_TOOL_OPTIONS: -Xmx512m\nopenjdk version \"17.0.9\" 2023-10-17\nOpenJDK Runtime",
            Some("17.0.9"),
        );
        check("java version \"1.8.0_392\"", Some("1.8.0"));
        check("v20.11.0", Some("20.11.0"));
        check("Python 3.11.2", Some("3.11.2"));
        check(
            "\u{1b}[1mApache Maven 3.9.6 (bc0240f3c744dd6b6ec2920b3cd08dcc295161ae)\u{1b}[0m",
            Some("3.9.6"),
        );
        check("go version go1.21.5 linux/amd64", Some("1.21.5"));
        check("gcc (Debian 12.2.0-14) 12.2.0\nCopyright", Some("12.2.0"));
        check("rustc 1.95.0 (59807616e 2026-03-21)", Some("1.95.0"));
        check("Docker version 24.0.7, build afdd53b", Some("24.0.7"));
        check("no digits here", None);
        check("", None);
    }

    #[test]
    fn versioned_labels() {
        fn check(name: &str, version: &str, kind: VersionLabel, expected: Option<&str>) {
            assert_eq!(versioned_label(name, version, kind).as_deref(), expected);
        }
        check("java", "17.0.9", VersionLabel::Major, Some("java-17"));
        check("java", "1.8.0", VersionLabel::Major, Some("java-8"));
        check("java", "21", VersionLabel::Major, Some("java-21"));
        check("node", "20.11.0", VersionLabel::Major, Some("node-20"));
        check(
            "python",
            "3.11.2",
            VersionLabel::MajorMinor,
            Some("python-3.11"),
        );
        check("go", "1.21.5", VersionLabel::MajorMinor, Some("go-1.21"));
        check(
            "maven",
            "3.9.6",
            VersionLabel::MajorMinor,
            Some("maven-3.9"),
        );
        check("maven", "4", VersionLabel::MajorMinor, Some("maven-4"));
        check("docker", "24.0.7", VersionLabel::None, None);
    }

    #[test]
    fn arch_aliases() {
        assert_eq!(arch_labels("x86_64"), ["x86_64", "amd64"]);
        assert_eq!(arch_labels("aarch64"), ["aarch64", "arm64"]);
        assert_eq!(arch_labels("riscv64"), ["riscv64"]);
    }

    /// Fake tools on a private `PATH`: versions become labels, a failing
    /// probe means absent, a hanging probe means present without version.
    #[tokio::test]
    async fn detects_tools_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let tools = [
            ("java", "echo 'openjdk version \"17.0.2\" 2022-01-18' >&2"),
            ("python3", "echo 'Python 3.11.4'"),
            ("node", "echo v20.1.0"),
            ("mvn", "printf '\\033[1mApache Maven 3.9.6\\033[m\\n'"),
            ("go", "exit 1"),
            ("docker", "exec sleep 30"),
            ("make", "exit 0"),
            ("git", "echo 'git version 2.39.5'"),
        ];
        let mut scripts = String::new();
        for (name, body) in tools {
            let path = dir.path().join(name);
            scripts.push_str(&format!(
                "printf '%s\\n' '#!/bin/sh' '{}' > {}; chmod +x {}\n",
                body.replace('\'', "'\\''"),
                path.display(),
                path.display()
            ));
        }
        // The files are written by a child shell so that no descriptor
        // open for writing in this process can make exec fail.
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&scripts)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(dir.path().join("gradle"), "not executable").unwrap();

        let path_var = format!("{}:/nonexistent", dir.path().display());
        let host = detect_with_path(&path_var, Duration::from_millis(1500)).await;
        let labels: Vec<String> = host.labels().into_iter().collect();
        for expected in [
            "java",
            "java-17",
            "python",
            "python3",
            "python-3.11",
            "python-3",
            "node",
            "node-20",
            "maven",
            "maven-3.9",
            "docker",
            "make",
            "git",
            "linux",
        ] {
            assert!(
                labels.iter().any(|l| l == expected),
                "missing {expected} in {labels:?}"
            );
        }
        for absent in ["go", "gradle", "docker-24", "gcc", "sh"] {
            assert!(
                !labels.iter().any(|l| l.starts_with(absent)),
                "unexpected {absent} in {labels:?}"
            );
        }
        let java = host.tools.iter().find(|t| t.name == "java").unwrap();
        assert_eq!(java.version.as_deref(), Some("17.0.2"));
        assert_eq!(java.path, dir.path().join("java"));
        let docker = host.tools.iter().find(|t| t.name == "docker").unwrap();
        assert_eq!(docker.version, None);

        let template = host.local_template().unwrap();
        assert_eq!(template.id().as_str(), "local");
        assert!(template.has_capability("java-17"));
        assert_eq!(template.resources().cpu().millis(), host.cpus * 1000);
    }

    /// Writes an executable `#!/bin/sh` script from a child shell (so no
    /// descriptor open for writing in this process can make exec fail).
    fn write_script(path: &Path, body: &str) {
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "printf '%s\\n' '#!/bin/sh' '{}' > {}; chmod +x {}",
                body.replace('\'', "'\\''"),
                path.display(),
                path.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The cache answers while the tools and `PATH` are unchanged, and is
    /// not trusted once a tool changes, another `PATH` is given or a probe
    /// timed out.
    #[tokio::test]
    async fn cached_detection_probes_again_only_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let runs = dir.path().join("runs");
        let java = bin.join("java");
        let probe_of = |version: &str| {
            format!(
                "echo run >> {}; echo 'openjdk version \"{version}\"' >&2",
                runs.display()
            )
        };
        write_script(&java, &probe_of("17.0.2"));
        let runs_so_far = || {
            std::fs::read_to_string(&runs)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        let cache = dir.path().join("cache").join("host.json");
        let path_var = bin.display().to_string();
        let timeout = Duration::from_secs(10);
        let java_labels = |host: &HostCapabilities| -> Vec<String> {
            host.labels()
                .into_iter()
                .filter(|l| l.starts_with("java"))
                .collect()
        };

        let first = detect_with_path_cached(&path_var, timeout, &cache).await;
        assert_eq!(java_labels(&first), ["java", "java-17"]);
        assert_eq!(runs_so_far(), 1);
        assert!(cache.is_file());

        let second = detect_with_path_cached(&path_var, timeout, &cache).await;
        assert_eq!(second.tools, first.tools);
        assert_eq!(runs_so_far(), 1, "the cached answer is used");

        // An upgrade rewrites the tool: probed again.
        write_script(&java, &probe_of("21.0.10"));
        let upgraded = detect_with_path_cached(&path_var, timeout, &cache).await;
        assert_eq!(java_labels(&upgraded), ["java", "java-21"]);
        assert_eq!(runs_so_far(), 2);
        let again = detect_with_path_cached(&path_var, timeout, &cache).await;
        assert_eq!(java_labels(&again), ["java", "java-21"]);
        assert_eq!(runs_so_far(), 2);

        // Another PATH: probed again.
        let other_path = format!("{path_var}:/nonexistent");
        detect_with_path_cached(&other_path, timeout, &cache).await;
        assert_eq!(runs_so_far(), 3);

        // A probe that times out is not kept.
        write_script(&java, "exec sleep 30");
        let slow = detect_with_path_cached(&path_var, Duration::from_millis(200), &cache).await;
        assert_eq!(java_labels(&slow), ["java"]);
        write_script(&java, &probe_of("21.0.10"));
        let after = detect_with_path_cached(&path_var, timeout, &cache).await;
        assert_eq!(java_labels(&after), ["java", "java-21"]);
        assert_eq!(runs_so_far(), 4);

        // An unreadable cache is only a miss.
        std::fs::write(&cache, "not json").unwrap();
        detect_with_path_cached(&path_var, timeout, &cache).await;
        assert_eq!(runs_so_far(), 5);
    }

    #[tokio::test]
    async fn detects_this_host() {
        let host = detect_host_capabilities(DEFAULT_PROBE_TIMEOUT).await;
        let labels = host.labels();
        assert!(labels.contains("sh"), "{labels:?}");
        assert!(labels.contains(std::env::consts::OS));
        assert!(labels.contains(std::env::consts::ARCH));
        assert!(host.cpus >= 1);
    }

    #[test]
    fn meminfo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meminfo");
        std::fs::write(&file, "MemFree: 5 kB\nMemTotal:       24000000 kB\n").unwrap();
        assert_eq!(total_memory(&file), 24_000_000 * 1024);
        assert_eq!(total_memory(&dir.path().join("missing")), 0);
    }
}
