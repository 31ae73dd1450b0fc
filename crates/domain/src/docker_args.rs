//! The `args` of a `docker` agent (`agent { docker { image 'x'; args '-e A=1
//! -v /cache:/cache' } }`), parsed into what a container backend applies.
//!
//! Only the options that keep a worker a worker are accepted: `-e/--env`,
//! `-v/--volume`, `-m/--memory`, `--cpus` and `-u/--user`, each as
//! `-e X=1`, `--env X=1` or `--env=X=1`. Anything else (`--privileged`,
//! `--network`, `--entrypoint`, ...) is refused with the column of the
//! offending word, at lint time. Words are split like a shell does: on
//! whitespace, with single and double quotes and backslash escapes.

use crate::quantity::{CpuQuantity, MemoryQuantity};

/// Why `args` cannot be applied. `column` is the 1-based character column
/// of the offending word inside the `args` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("docker args column {column}: {message}")]
pub struct DockerArgsError {
    /// 1-based character column in the args string.
    pub column: usize,
    /// What is wrong, and what was expected.
    pub message: String,
}

/// A host directory (or named volume) mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The host path or volume name (left of the first `:`).
    pub source: String,
    /// The absolute path inside the container.
    pub target: String,
    /// `:ro` was given.
    pub read_only: bool,
}

impl VolumeMount {
    /// The Docker bind string: `source:target` or `source:target:ro`.
    pub fn to_bind(&self) -> String {
        if self.read_only {
            format!("{}:{}:ro", self.source, self.target)
        } else {
            format!("{}:{}", self.source, self.target)
        }
    }
}

/// The parsed `args` of a `docker` agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerArgs {
    /// `-e NAME=value`, in order.
    pub env: Vec<(String, String)>,
    /// `-v source:target[:ro|:rw]`, in order.
    pub volumes: Vec<VolumeMount>,
    /// `--memory` (Docker units: `512m`, `2g`, `1073741824`), the last one given.
    pub memory: Option<MemoryQuantity>,
    /// `--cpus` (`1.5`, `0.5`), the last one given.
    pub cpus: Option<CpuQuantity>,
    /// `-u user[:group]`, the last one given.
    pub user: Option<String>,
}

const EXPECTED: &str = "expected -e, -v, --memory, --cpus or -u";

impl DockerArgs {
    /// Parses an `args` string.
    ///
    /// ```
    /// use hodei_domain::DockerArgs;
    /// let args = DockerArgs::parse("-e MODE=ci --memory 512m --cpus=1.5 -u 1000")?;
    /// assert_eq!(args.env, [("MODE".to_owned(), "ci".to_owned())]);
    /// assert_eq!(args.memory.map(|m| m.bytes()), Some(512 * 1024 * 1024));
    /// assert_eq!(args.cpus.map(|c| c.millis()), Some(1500));
    /// # Ok::<(), hodei_domain::DockerArgsError>(())
    /// ```
    ///
    /// # Errors
    /// [`DockerArgsError`] naming the column of an unsupported option, a
    /// missing or malformed value, or an unterminated quote.
    pub fn parse(args: &str) -> Result<DockerArgs, DockerArgsError> {
        let words = split_words(args)?;
        let mut parsed = DockerArgs::default();
        let mut i = 0;
        while i < words.len() {
            let word = &words[i];
            let (flag, inline) = match word.text.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (word.text.as_str(), None),
            };
            let option = match flag {
                "-e" | "--env" => Opt::Env,
                "-v" | "--volume" => Opt::Volume,
                "-m" | "--memory" => Opt::Memory,
                "--cpus" => Opt::Cpus,
                "-u" | "--user" => Opt::User,
                _ if !flag.starts_with('-') => {
                    return Err(error(
                        word.column,
                        format!("unexpected word `{}`: {EXPECTED}", word.text),
                    ));
                }
                _ => {
                    // `-eX=1`, `-v/a:/b`, `-m512m`, `-u1000`: short option with its value attached.
                    let attached = short_attached(flag);
                    match attached {
                        Some((opt, _)) => opt,
                        None => {
                            return Err(error(
                                word.column,
                                format!("unsupported docker argument `{flag}`: {EXPECTED}"),
                            ));
                        }
                    }
                }
            };
            let (value, column) = if let Some(value) = inline {
                (value, word.column)
            } else if let Some((_, value)) = short_attached(flag) {
                (value.to_owned(), word.column)
            } else {
                i += 1;
                match words.get(i) {
                    Some(next) => (next.text.clone(), next.column),
                    None => {
                        return Err(error(word.column, format!("`{flag}` needs a value")));
                    }
                }
            };
            parsed.apply(option, &value, column)?;
            i += 1;
        }
        Ok(parsed)
    }

    fn apply(&mut self, option: Opt, value: &str, column: usize) -> Result<(), DockerArgsError> {
        match option {
            Opt::Env => {
                let Some((name, v)) = value.split_once('=') else {
                    return Err(error(column, format!("-e `{value}`: expected NAME=value")));
                };
                if !is_env_name(name) {
                    return Err(error(
                        column,
                        format!(
                            "-e `{value}`: variable name `{name}` must be a letter or '_' followed by letters, digits or '_'"
                        ),
                    ));
                }
                self.env.push((name.to_owned(), v.to_owned()));
            }
            Opt::Volume => self.volumes.push(parse_volume(value, column)?),
            Opt::Memory => self.memory = Some(parse_memory(value, column)?),
            Opt::Cpus => self.cpus = Some(parse_cpus(value, column)?),
            Opt::User => {
                if value.is_empty() || value.chars().any(char::is_whitespace) {
                    return Err(error(
                        column,
                        format!("-u `{value}`: expected user[:group], a name or a numeric id"),
                    ));
                }
                self.user = Some(value.to_owned());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Opt {
    Env,
    Volume,
    Memory,
    Cpus,
    User,
}

/// `-eX=1` style: a known short flag with its value glued on.
fn short_attached(flag: &str) -> Option<(Opt, &str)> {
    if flag.starts_with("--") || flag.len() <= 2 {
        return None;
    }
    // `get` rather than `split_at`: the third byte may fall inside a
    // multi-byte character (`-é`).
    let (Some(name), Some(value)) = (flag.get(..2), flag.get(2..)) else {
        return None;
    };
    let opt = match name {
        "-e" => Opt::Env,
        "-v" => Opt::Volume,
        "-m" => Opt::Memory,
        "-u" => Opt::User,
        _ => return None,
    };
    Some((opt, value))
}

fn error(column: usize, message: String) -> DockerArgsError {
    DockerArgsError { column, message }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_volume(value: &str, column: usize) -> Result<VolumeMount, DockerArgsError> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => {
            return Err(error(
                column,
                format!("-v `{value}`: expected source:/container/path[:ro|:rw]"),
            ));
        }
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(error(
            column,
            format!(
                "-v `{value}`: expected source:/container/path[:ro|:rw] with an absolute container path"
            ),
        ));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(error(
                column,
                format!("-v `{value}`: unsupported mode `{other}`, expected ro or rw"),
            ));
        }
    };
    Ok(VolumeMount {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

/// Docker's memory syntax: a whole number with an optional binary unit
/// `b`, `k`, `m`, `g` (case-insensitive, optionally followed by `b`).
fn parse_memory(value: &str, column: usize) -> Result<MemoryQuantity, DockerArgsError> {
    let bad = || {
        error(
            column,
            format!(
                "--memory `{value}`: expected a whole number with an optional unit b, k, m or g (e.g. 512m)"
            ),
        )
    };
    let lower = value.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(bad()),
    };
    if unit.len() > 2 || (unit.len() == 2 && !unit.ends_with('b')) {
        return Err(bad());
    }
    let bytes = number.checked_mul(1u64 << shift).ok_or_else(bad)?;
    // Docker's own minimum; below it the engine refuses the container.
    if bytes < 6 * 1024 * 1024 {
        return Err(error(
            column,
            format!("--memory `{value}`: the minimum is 6m"),
        ));
    }
    Ok(MemoryQuantity::from_bytes(bytes))
}

/// Docker's cpus syntax: a positive decimal number of cpus (`1.5`).
fn parse_cpus(value: &str, column: usize) -> Result<CpuQuantity, DockerArgsError> {
    let bad = || {
        error(
            column,
            format!("--cpus `{value}`: expected a positive number of cpus such as 1.5"),
        )
    };
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let cpus = CpuQuantity::parse(value).map_err(|_| bad())?;
    if cpus == CpuQuantity::ZERO {
        return Err(bad());
    }
    Ok(cpus)
}

struct Word {
    text: String,
    column: usize,
}

/// Splits like a POSIX shell: whitespace separates words; single quotes keep
/// everything; double quotes keep everything but `\"` and `\\`; a backslash
/// outside quotes escapes the next character.
fn split_words(args: &str) -> Result<Vec<Word>, DockerArgsError> {
    let mut words = Vec::new();
    let mut chars = args.chars().enumerate().peekable();
    while let Some(&(index, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let column = index + 1;
        let mut text = String::new();
        while let Some(&(index, c)) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '\'' | '"' => {
                    let mut closed = false;
                    while let Some((_, inner)) = chars.next() {
                        if inner == c {
                            closed = true;
                            break;
                        }
                        if c == '"'
                            && inner == '\\'
                            && let Some(&(_, next)) = chars.peek()
                            && (next == '"' || next == '\\')
                        {
                            text.push(next);
                            chars.next();
                            continue;
                        }
                        text.push(inner);
                    }
                    if !closed {
                        return Err(error(index + 1, format!("unterminated {c} quote")));
                    }
                }
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        text.push(next);
                    }
                }
                c => text.push(c),
            }
        }
        words.push(Word { text, column });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        let got = DockerArgs::parse(input).map(|a| {
            let mut parts: Vec<String> = Vec::new();
            for (k, v) in &a.env {
                parts.push(format!("env {k}={v}"));
            }
            for v in &a.volumes {
                parts.push(format!("bind {}", v.to_bind()));
            }
            if let Some(m) = a.memory {
                parts.push(format!("memory {}", m.bytes()));
            }
            if let Some(c) = a.cpus {
                parts.push(format!("cpus {}m", c.millis()));
            }
            if let Some(u) = &a.user {
                parts.push(format!("user {u}"));
            }
            parts.join("; ")
        });
        let got = got.map_err(|e| e.to_string());
        assert_eq!(got.as_deref().map_err(String::as_str), expected, "{input}");
    }

    #[test]
    fn accepted_arguments() {
        check("", Ok(""));
        check(
            "-e A=1 --env B=two --env=C=x=y",
            Ok("env A=1; env B=two; env C=x=y"),
        );
        check("-eA=1", Ok("env A=1"));
        check("-e 'MSG=hello world'", Ok("env MSG=hello world"));
        check("-e \"Q=a \\\"b\\\"\"", Ok("env Q=a \"b\""));
        check("-e EMPTY=", Ok("env EMPTY="));
        check(
            "-v /cache:/root/.m2 --volume=data:/data:ro -v/a:/b:rw",
            Ok("bind /cache:/root/.m2; bind data:/data:ro; bind /a:/b"),
        );
        check("--memory 512m", Ok("memory 536870912"));
        check("-m 1g", Ok("memory 1073741824"));
        check("--memory=64MB", Ok("memory 67108864"));
        check("--memory 7340032", Ok("memory 7340032"));
        check("--cpus 1.5", Ok("cpus 1500m"));
        check("--cpus=0.25", Ok("cpus 250m"));
        check("-u 1000:1000", Ok("user 1000:1000"));
        check("--user=jenkins", Ok("user jenkins"));
        check("--memory 1g --memory 2g", Ok("memory 2147483648"));
    }

    #[test]
    fn a_multibyte_character_after_a_dash_is_refused_not_a_panic() {
        for input in ["-\u{433fc}e", "-é", "-eé=1"] {
            let _ = DockerArgs::parse(input);
        }
        check(
            "-é",
            Err(
                "docker args column 1: unsupported docker argument `-é`: expected -e, -v, --memory, --cpus or -u",
            ),
        );
    }

    #[test]
    fn refused_arguments_name_their_column() {
        check(
            "--privileged",
            Err(
                "docker args column 1: unsupported docker argument `--privileged`: expected -e, -v, --memory, --cpus or -u",
            ),
        );
        check(
            "-e A=1 --network=host",
            Err(
                "docker args column 8: unsupported docker argument `--network`: expected -e, -v, --memory, --cpus or -u",
            ),
        );
        check(
            "-p 80:80",
            Err(
                "docker args column 1: unsupported docker argument `-p`: expected -e, -v, --memory, --cpus or -u",
            ),
        );
        check(
            "bash",
            Err(
                "docker args column 1: unexpected word `bash`: expected -e, -v, --memory, --cpus or -u",
            ),
        );
        check("-e", Err("docker args column 1: `-e` needs a value"));
        check(
            "-e NOVALUE",
            Err("docker args column 4: -e `NOVALUE`: expected NAME=value"),
        );
        check(
            "-e 1X=2",
            Err(
                "docker args column 4: -e `1X=2`: variable name `1X` must be a letter or '_' followed by letters, digits or '_'",
            ),
        );
        check(
            "-v /only",
            Err("docker args column 4: -v `/only`: expected source:/container/path[:ro|:rw]"),
        );
        check(
            "-v a:rel",
            Err(
                "docker args column 4: -v `a:rel`: expected source:/container/path[:ro|:rw] with an absolute container path",
            ),
        );
        check(
            "-v a:/b:z",
            Err("docker args column 4: -v `a:/b:z`: unsupported mode `z`, expected ro or rw"),
        );
        check(
            "--memory lots",
            Err(
                "docker args column 10: --memory `lots`: expected a whole number with an optional unit b, k, m or g (e.g. 512m)",
            ),
        );
        check(
            "--memory 1.5g",
            Err(
                "docker args column 10: --memory `1.5g`: expected a whole number with an optional unit b, k, m or g (e.g. 512m)",
            ),
        );
        check(
            "--memory 1m",
            Err("docker args column 10: --memory `1m`: the minimum is 6m"),
        );
        check(
            "--memory 99999999999999g",
            Err(
                "docker args column 10: --memory `99999999999999g`: expected a whole number with an optional unit b, k, m or g (e.g. 512m)",
            ),
        );
        check(
            "--cpus 500m",
            Err(
                "docker args column 8: --cpus `500m`: expected a positive number of cpus such as 1.5",
            ),
        );
        check(
            "--cpus 0",
            Err("docker args column 8: --cpus `0`: expected a positive number of cpus such as 1.5"),
        );
        check("-e 'A=1", Err("docker args column 4: unterminated ' quote"));
        check(
            "-u ''",
            Err("docker args column 4: -u ``: expected user[:group], a name or a numeric id"),
        );
    }
}
