//! The worker's settings: command-line flags with the seed's environment
//! variables as defaults (`SERVER_HOST`, `SERVER_PORT`, `WORKER_ID`,
//! `WORKER_NAME`, `WORKER_CAPABILITIES`, `EPHEMERAL_MODE`) plus
//! `HODEI_WORKER_TOKEN`, `HODEI_WORKSPACE_ROOT` and `HODEI_SERVER_LOST_GRACE`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string (registration token) whose `Debug` and `Display` print
/// `****`, so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Token(String);

impl Token {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Everything [`crate::run`] needs. Build it with [`WorkerArgs::into_config`]
/// or by hand (tests, embedding).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Host name or address of the Hodei server's gRPC port.
    pub server_host: String,
    /// The server's gRPC port.
    pub server_port: u16,
    /// A Unix socket on which the server serves workers (the local backend
    /// gives its workers one): when set, the worker connects there instead
    /// of to `server_host:server_port`, which skips the TCP stack.
    pub server_socket: Option<PathBuf>,
    /// The worker's id (given by the orchestrator to an ephemeral worker).
    pub worker_id: String,
    /// The worker's display name, given to steps as `WORKER_NAME`.
    pub worker_name: String,
    /// Labels the worker advertises.
    pub capabilities: Vec<String>,
    /// The registration token sent in `Hello`.
    pub token: Token,
    /// True when the worker exists for one segment and exits after it.
    pub ephemeral: bool,
    /// Directory under which per-job workspaces are created.
    pub workspace_root: PathBuf,
    /// How long the server may be unreachable (or silent) before the worker
    /// kills its steps and exits.
    pub server_lost_grace: Duration,
    /// How often the worker sends a heartbeat unless the server asks for
    /// another interval in `Welcome`.
    pub heartbeat_interval: Duration,
    /// How long a cancelled step gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

impl WorkerConfig {
    /// A configuration with the defaults of every optional setting.
    pub fn new(
        server_host: impl Into<String>,
        server_port: u16,
        worker_id: impl Into<String>,
    ) -> Self {
        let worker_id = worker_id.into();
        Self {
            server_host: server_host.into(),
            server_port,
            server_socket: None,
            worker_name: worker_id.clone(),
            worker_id,
            capabilities: Vec::new(),
            token: Token::default(),
            ephemeral: false,
            workspace_root: std::env::temp_dir().join("hodei-workspaces"),
            server_lost_grace: DEFAULT_SERVER_LOST_GRACE,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }

    /// The server's URI (`http://host:port`; TLS is not supported).
    pub fn endpoint(&self) -> String {
        if self.server_host.contains(':') && !self.server_host.starts_with('[') {
            format!("http://[{}]:{}", self.server_host, self.server_port)
        } else {
            format!("http://{}:{}", self.server_host, self.server_port)
        }
    }
}

/// Default for [`WorkerConfig::server_lost_grace`].
pub const DEFAULT_SERVER_LOST_GRACE: Duration = Duration::from_secs(60);
/// Default for [`WorkerConfig::heartbeat_interval`].
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default for [`WorkerConfig::kill_grace`].
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// A setting with a bad value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("{name}: required (flag or environment variable)")]
    Missing {
        /// The flag and variable name.
        name: &'static str,
    },
    /// A setting could not be understood.
    #[error("{name}: {message}")]
    Invalid {
        /// The flag and variable name.
        name: &'static str,
        /// What was expected.
        message: String,
    },
}

/// The worker's command-line flags; each falls back to an environment
/// variable. `hodei worker` flattens the same struct into its subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Host of the Hodei server's gRPC port.
    #[arg(long, env = "SERVER_HOST", default_value = "127.0.0.1")]
    pub server_host: String,
    /// The server's gRPC port.
    #[arg(long, env = "SERVER_PORT", default_value = "9090")]
    pub server_port: String,
    /// A Unix socket of the server's to connect to instead of host and port
    /// (the local backend sets it).
    #[arg(long, env = "HODEI_SERVER_SOCKET")]
    pub server_socket: Option<PathBuf>,
    /// The worker's id (default: the host name and process id).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// The worker's display name (default: the id).
    #[arg(long, env = "WORKER_NAME")]
    pub worker_name: Option<String>,
    /// Comma-separated labels, e.g. `linux,git,java-17`.
    #[arg(long, env = "WORKER_CAPABILITIES", default_value = "")]
    pub capabilities: String,
    /// Exit after one segment (`true`/`false`).
    #[arg(long, env = "EPHEMERAL_MODE", default_value = "false")]
    pub ephemeral: String,
    /// Registration token (one-time token or static workers' shared secret).
    #[arg(long, env = "HODEI_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory for per-job workspaces (default: `$TMPDIR/hodei-workspaces`).
    #[arg(long, env = "HODEI_WORKSPACE_ROOT")]
    pub workspace_root: Option<PathBuf>,
    /// How long the server may be unreachable before the worker kills its
    /// steps and exits: `90`, `90s`, `1500ms`, `2m`.
    #[arg(long, env = "HODEI_SERVER_LOST_GRACE", default_value = "60s")]
    pub server_lost_grace: String,
}

impl WorkerArgs {
    /// Checks every value and builds the configuration; errors name the flag
    /// or variable.
    pub fn into_config(self) -> Result<WorkerConfig, ConfigError> {
        let server_host = self.server_host.trim().to_owned();
        if server_host.is_empty() {
            return Err(ConfigError::Missing {
                name: "--server-host/SERVER_HOST",
            });
        }
        let server_port =
            parse_port(&self.server_port).map_err(|message| ConfigError::Invalid {
                name: "--server-port/SERVER_PORT",
                message,
            })?;
        let worker_id = match self.worker_id.map(|id| id.trim().to_owned()) {
            Some(id) if !id.is_empty() => id,
            _ => default_worker_id(),
        };
        validate_id(&worker_id).map_err(|message| ConfigError::Invalid {
            name: "--worker-id/WORKER_ID",
            message,
        })?;
        let mut config = WorkerConfig::new(server_host, server_port, worker_id);
        config.server_socket = self
            .server_socket
            .filter(|path| !path.as_os_str().is_empty());
        if let Some(name) = self.worker_name.map(|n| n.trim().to_owned())
            && !name.is_empty()
        {
            config.worker_name = name;
        }
        config.capabilities = parse_capabilities(&self.capabilities);
        config.ephemeral = parse_bool(&self.ephemeral).map_err(|message| ConfigError::Invalid {
            name: "--ephemeral/EPHEMERAL_MODE",
            message,
        })?;
        config.token = Token::new(self.token.unwrap_or_default());
        if let Some(root) = self.workspace_root {
            config.workspace_root = root;
        }
        config.server_lost_grace =
            parse_duration(&self.server_lost_grace).map_err(|message| ConfigError::Invalid {
                name: "--server-lost-grace/HODEI_SERVER_LOST_GRACE",
                message,
            })?;
        Ok(config)
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.len() > 253 {
        return Err(format!("expected at most 253 characters, got {}", id.len()));
    }
    match id.chars().find(|c| c.is_control() || c.is_whitespace()) {
        Some(c) => Err(format!(
            "expected no spaces or control characters, found {c:?}"
        )),
        None => Ok(()),
    }
}

/// Parses a TCP port (1-65535).
pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "expected a port number from 1 to 65535, got {text:?}"
        )),
        Ok(port) => Ok(port),
    }
}

/// Splits a comma-separated label list, dropping blanks and duplicates.
pub(crate) fn parse_capabilities(text: &str) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for label in text.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_owned());
        }
    }
    labels
}

/// Parses `true`/`false` (also `1`/`0`, `yes`/`no`, any case).
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("expected true or false, got {text:?}")),
    }
}

/// Parses a duration: a whole number with an optional unit `ms`, `s`, `m`
/// or `h` (no unit: seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let expected = || format!("expected a duration such as 90, 90s, 1500ms or 2m, got {text:?}");
    let value: u64 = digits.parse().map_err(|_| expected())?;
    let millis = match unit {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(expected()),
    };
    millis.map(Duration::from_millis).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkerArgs,
    }

    fn config(flags: &[&str]) -> Result<WorkerConfig, ConfigError> {
        let mut argv = vec!["hodei-worker"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv).map_err(|e| ConfigError::Invalid {
            name: "argv",
            message: e.to_string(),
        })?;
        cli.args.into_config()
    }

    #[test]
    fn flags_build_a_config() {
        let c = config(&[
            "--server-host",
            "hodei.svc",
            "--server-port",
            "7000",
            "--worker-id",
            "w-1",
            "--worker-name",
            "builder",
            "--capabilities",
            "linux, git,,java-17,git",
            "--ephemeral",
            "TRUE",
            "--token",
            "s3cret",
            "--workspace-root",
            "/ws",
            "--server-lost-grace",
            "1500ms",
            "--server-socket",
            "/data/workers.sock",
        ])
        .unwrap();
        assert_eq!(c.endpoint(), "http://hodei.svc:7000");
        assert_eq!(
            c.server_socket.as_deref(),
            Some(std::path::Path::new("/data/workers.sock"))
        );
        let tcp = config(&["--worker-id", "w-2"]).unwrap();
        assert_eq!(tcp.server_socket, None, "no socket: TCP");
        assert_eq!(c.worker_id, "w-1");
        assert_eq!(c.worker_name, "builder");
        assert_eq!(c.capabilities, ["linux", "git", "java-17"]);
        assert!(c.ephemeral);
        assert_eq!(c.token.expose(), "s3cret");
        assert_eq!(c.workspace_root, PathBuf::from("/ws"));
        assert_eq!(c.server_lost_grace, Duration::from_millis(1500));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn bad_values_name_their_setting() {
        fn check(flags: &[&str], expected: &str) {
            let err = config(flags).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{flags:?}: got {err:?}");
        }
        check(
            &["--server-port", "0"],
            "--server-port/SERVER_PORT: expected a port number",
        );
        check(
            &["--server-port", "70000"],
            "--server-port/SERVER_PORT: expected a port number",
        );
        check(
            &["--ephemeral", "maybe"],
            "--ephemeral/EPHEMERAL_MODE: expected true or false",
        );
        check(
            &["--server-lost-grace", "5x"],
            "--server-lost-grace/HODEI_SERVER_LOST_GRACE: expected a duration",
        );
        check(
            &["--worker-id", "a b"],
            "--worker-id/WORKER_ID: expected no spaces",
        );
        check(
            &["--server-host", " "],
            "--server-host/SERVER_HOST: required",
        );
    }

    #[test]
    fn durations() {
        fn check(text: &str, expected: Option<u64>) {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_millis() as u64),
                expected,
                "{text}"
            );
        }
        check("90", Some(90_000));
        check("90s", Some(90_000));
        check("250ms", Some(250));
        check("2m", Some(120_000));
        check("1h", Some(3_600_000));
        check("", None);
        check("s", None);
        check("-1s", None);
        check("1.5s", None);
        check("99999999999999999999h", None);
    }

    #[test]
    fn token_is_masked() {
        let t = Token::new("abc");
        assert_eq!(format!("{t} {t:?}"), "**** ****");
    }

    #[test]
    fn ipv6_endpoint() {
        assert_eq!(
            WorkerConfig::new("::1", 9, "w").endpoint(),
            "http://[::1]:9"
        );
    }
}
