//! What the client subcommands (`run`, `jobs`, `workers`) share: the
//! `--server` flag, connecting with a clear error, printing tables, times
//! and durations, and rendering a job's event stream as a readable log.
//!
//! Not a subcommand: it has no `Args` of its own and is declared next to the
//! subcommands by a plain `mod` line in `main.rs`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_proto::v1::admin_service_client::AdminServiceClient;
use hodei_proto::v1::job_event::Kind;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_proto::v1::{JobEvent, JobStatus, LogStream, StageEventKind, StageResult};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The server `--server` defaults to when `HODEI_SERVER` is not set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9090";

/// The `--server` flag of the subcommands that only talk to a server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArg {
    /// The Hodei server's gRPC address
    #[arg(
        long,
        global = true,
        env = "HODEI_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL"
    )]
    pub server: String,
    #[command(flatten)]
    pub token: TokenArg,
}

/// The `--token` flag: the bearer token of a server with `client_token`.
#[derive(Clone, clap::Args)]
pub struct TokenArg {
    /// The bearer token the server requires (its client_token)
    #[arg(long, global = true, env = "HODEI_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_some() { "TokenArg(****)" } else { "TokenArg(None)" })
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(****)")
    }
}

impl BearerToken {
    /// The header for `token`.
    ///
    /// # Errors
    /// When the token is not printable ASCII (the value is not repeated).
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(token) => format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| anyhow::anyhow!("--token (HODEI_TOKEN): expected printable ASCII")),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the bearer token with every call.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// A connection to one server, with its address kept for error messages.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    channel: Channel,
    token: BearerToken,
}

impl Client {
    /// Connects to `url` (`http://host:port`; `host:port` is taken as
    /// `http://host:port`), sending `token` as the bearer token.
    ///
    /// # Errors
    /// `cannot reach the Hodei server at URL: ...` when the address is bad
    /// or nothing answers there; a token that cannot be sent.
    pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<Client> {
        let token = BearerToken::new(token)?;
        let url = normalize_url(url);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("cannot reach the Hodei server at {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the Hodei server at {url}: {}", root(&e)))?;
        Ok(Client {
            url,
            channel,
            token,
        })
    }

    /// A `JobService` client on this connection.
    pub fn jobs(&self) -> JobServiceClient<AuthChannel> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// An `AdminService` client on this connection.
    pub fn admin(&self) -> AdminServiceClient<AuthChannel> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// Turns a failed call into an error naming the server when it could
    /// not be reached, else the server's own message.
    pub fn error(&self, what: &str, status: tonic::Status) -> anyhow::Error {
        match status.code() {
            tonic::Code::Unavailable => anyhow::anyhow!(
                "cannot reach the Hodei server at {}: {}",
                self.url,
                status.message()
            ),
            tonic::Code::Unauthenticated => anyhow::anyhow!(
                "{what}: the Hodei server at {} refused the call: {}",
                self.url,
                status.message()
            ),
            _ => anyhow::anyhow!("{what}: {}", status.message()),
        }
    }
}

/// Adds `http://` when the address has no scheme.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// The innermost cause of an error, which for connection failures is the
/// useful part (`Connection refused (os error 111)`).
fn root(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A job status as a word: `success`, `failure`, `running`.
pub fn status_word(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Unspecified => "unknown",
        JobStatus::Queued => "queued",
        JobStatus::Provisioning => "provisioning",
        JobStatus::Running => "running",
        JobStatus::Success => "success",
        JobStatus::Failure => "failure",
        JobStatus::Aborted => "aborted",
        JobStatus::TimedOut => "timed out",
    }
}

/// True for the statuses a job ends in.
pub fn is_final(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::Success | JobStatus::Failure | JobStatus::Aborted | JobStatus::TimedOut
    )
}

/// A stage result as a word.
pub fn stage_result_word(result: StageResult) -> &'static str {
    match result {
        StageResult::Unspecified => "-",
        StageResult::Success => "success",
        StageResult::Failure => "failure",
        StageResult::Aborted => "aborted",
        StageResult::Skipped => "skipped",
        StageResult::TimedOut => "timed out",
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A timestamp in milliseconds as RFC 3339 UTC to the second; `-` for 0.
pub fn format_time(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A duration for people: `850ms`, `4.2s`, `3m 05s`, `2h 01m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// How long a job ran (or has been running), from its timestamps; `-` when
/// it has not started.
pub fn job_duration(created_ms: u64, finished_ms: u64) -> String {
    if created_ms == 0 {
        return "-".to_owned();
    }
    let end = if finished_ms == 0 {
        now_ms()
    } else {
        finished_ms
    };
    format_duration(Duration::from_millis(end.saturating_sub(created_ms)))
}

/// Renders rows under a header as left-aligned columns separated by two
/// spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == columns {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut, and
/// keeps only its first line.
pub fn ellipsize(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() <= max && first.len() == text.trim_end().len() {
        return first.to_owned();
    }
    let mut cut: String = first.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Writes a job's events as a readable log: a `── stage NAME ──` header
/// whenever the output switches to another stage, step output as it is
/// (stdout to stdout, stderr to stderr), the server's own lines (`echo`,
/// errors, skip notices) without the Jenkins `[Pipeline]` markers, which the
/// headers replace. While the stage of the last header is still running,
/// lines of other stages (parallel branches, nested stages) are prefixed
/// with `[NAME] ` instead, so interleaved output stays readable.
#[derive(Debug)]
pub struct LogPrinter {
    current: Option<Vec<String>>,
    running: Vec<Vec<String>>,
    color: bool,
}

impl Default for LogPrinter {
    fn default() -> Self {
        LogPrinter::new()
    }
}

/// What the printer saw in one event that its caller may want to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nothing of note.
    Nothing,
    /// The job reached this status (with its message).
    Status(JobStatus, String),
    /// A worker changed state (`provisioning`, `connected`, `destroyed`,
    /// `failed`), with the worker's template.
    Worker {
        /// The state.
        state: String,
        /// The template (empty for a static worker).
        template: String,
        /// Details.
        message: String,
    },
}

impl LogPrinter {
    /// A printer that colours headers only when stdout is a terminal.
    pub fn new() -> Self {
        LogPrinter {
            current: None,
            running: Vec::new(),
            color: std::io::stdout().is_terminal(),
        }
    }

    /// Writes what `event` shows to stdout and stderr and reports what it
    /// was.
    pub fn print(&mut self, event: &JobEvent) -> Seen {
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        self.print_to(event, &mut stdout.lock(), &mut stderr.lock())
    }

    /// Writes what `event` shows to `out` (step stdout, the server's lines,
    /// headers) and `err` (step stderr) and reports what it was.
    pub fn print_to(&mut self, event: &JobEvent, out: &mut dyn Write, err: &mut dyn Write) -> Seen {
        match &event.kind {
            Some(Kind::Log(line)) => {
                if line.stream() == LogStream::System && is_marker(&line.text) {
                    return Seen::Nothing;
                }
                let prefix = self.place(out, &line.stage);
                if line.stream() == LogStream::Stderr {
                    let _ = out.flush();
                    let _ = writeln!(err, "{prefix}{}", line.text);
                } else {
                    let _ = writeln!(out, "{prefix}{}", line.text);
                }
                Seen::Nothing
            }
            Some(Kind::Stage(stage)) => {
                match stage.kind() {
                    StageEventKind::Started => {
                        self.place(out, &stage.path);
                        self.running.push(stage.path.clone());
                    }
                    StageEventKind::Finished => {
                        let result = stage.result();
                        if matches!(
                            result,
                            StageResult::Failure | StageResult::TimedOut | StageResult::Aborted
                        ) {
                            let prefix = self.place(out, &stage.path);
                            let reason = if stage.message.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", stage.message)
                            };
                            let _ = writeln!(
                                out,
                                "{prefix}stage {} {}{reason}",
                                stage.path.join(" › "),
                                stage_result_word(result)
                            );
                        }
                        if let Some(i) = self.running.iter().position(|p| *p == stage.path) {
                            self.running.remove(i);
                        }
                    }
                    StageEventKind::Unspecified => {}
                }
                Seen::Nothing
            }
            Some(Kind::Status(status)) => Seen::Status(status.status(), status.message.clone()),
            Some(Kind::Worker(worker)) => Seen::Worker {
                state: worker.state.clone(),
                template: worker.template_id.clone(),
                message: worker.message.clone(),
            },
            None => Seen::Nothing,
        }
    }

    /// Prepares for output of `stage`: prints a header when the output
    /// switches to it, or returns the `[NAME] ` prefix its lines need while
    /// the stage of the last header still runs.
    fn place(&mut self, out: &mut dyn Write, stage: &[String]) -> String {
        if self.current.as_deref() == Some(stage) {
            return String::new();
        }
        // Pipeline-level lines before the first stage need no header; after
        // a stage (the pipeline's `post`, its errors) they get one.
        if stage.is_empty() && self.current.is_none() {
            return String::new();
        }
        if !stage.is_empty()
            && let Some(current) = &self.current
            && self.running.contains(current)
        {
            return format!("[{}] ", stage.join(" › "));
        }
        let name = if stage.is_empty() {
            "pipeline".to_owned()
        } else {
            format!("stage {}", stage.join(" › "))
        };
        if self.color {
            let _ = writeln!(out, "\x1b[1;36m── {name} ──\x1b[0m");
        } else {
            let _ = writeln!(out, "── {name} ──");
        }
        self.current = Some(stage.to_vec());
        String::new()
    }
}

/// The runner's structural lines that the headers and the final status
/// replace: `[Pipeline] stage (Build)`, `[Pipeline] sh`, `Finished: SUCCESS`.
fn is_marker(text: &str) -> bool {
    text.starts_with("[Pipeline] ") || text.starts_with("Finished: ")
}

/// Splits a `KEY=VALUE` flag value; the key must be a variable name.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {text:?}"));
    };
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "expected a name of letters, digits and '_' before '=', got {key:?}"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme() {
        fn check(input: &str, expected: &str) {
            assert_eq!(normalize_url(input), expected);
        }
        check("127.0.0.1:9090", "http://127.0.0.1:9090");
        check("http://h:1/", "http://h:1");
        check(" https://h:1 ", "https://h:1");
    }

    #[test]
    fn durations_read_well() {
        fn check(ms: u64, expected: &str) {
            assert_eq!(format_duration(Duration::from_millis(ms)), expected);
        }
        check(0, "0ms");
        check(999, "999ms");
        check(4_250, "4.2s");
        check(185_000, "3m 05s");
        check(7_260_000, "2h 01m");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(format_time(0), "-");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "STATUS", "MESSAGE"],
            &[
                vec!["a".into(), "success".into(), "".into()],
                vec!["long-id".into(), "failure".into(), "exit 1".into()],
            ],
        );
        assert_eq!(
            text,
            "ID       STATUS   MESSAGE\na        success\nlong-id  failure  exit 1\n"
        );
    }

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(ellipsize("short", 10), "short");
        assert_eq!(ellipsize("abcdefghijkl", 5), "abcd…");
        assert_eq!(ellipsize("one\ntwo", 10), "one…");
    }

    #[test]
    fn pairs() {
        fn check(input: &str, expected: Result<(&str, &str), &str>) {
            let got = parse_pair(input);
            match expected {
                Ok((k, v)) => assert_eq!(got, Ok((k.to_owned(), v.to_owned()))),
                Err(text) => {
                    let err = got.unwrap_err();
                    assert!(err.contains(text), "{err}");
                }
            }
        }
        check("A=1", Ok(("A", "1")));
        check("_X=a=b", Ok(("_X", "a=b")));
        check("EMPTY=", Ok(("EMPTY", "")));
        check("novalue", Err("expected KEY=VALUE"));
        check("1A=x", Err("expected a name"));
        check("=x", Err("expected a name"));
        check("A-B=x", Err("expected a name"));
    }

    fn log(stage: &[&str], stream: LogStream, text: &str) -> JobEvent {
        JobEvent {
            kind: Some(Kind::Log(hodei_proto::v1::LogLine {
                stage: stage.iter().map(|s| (*s).to_owned()).collect(),
                step_id: String::new(),
                stream: stream as i32,
                text: text.to_owned(),
            })),
            ..JobEvent::default()
        }
    }

    fn stage(path: &[&str], kind: StageEventKind, result: StageResult, message: &str) -> JobEvent {
        JobEvent {
            kind: Some(Kind::Stage(hodei_proto::v1::StageEvent {
                path: path.iter().map(|s| (*s).to_owned()).collect(),
                kind: kind as i32,
                result: result as i32,
                message: message.to_owned(),
            })),
            ..JobEvent::default()
        }
    }

    /// Prints `events` without colour and compares stdout and stderr.
    fn check(events: &[JobEvent], stdout: &str, stderr: &str) {
        let mut printer = LogPrinter {
            current: None,
            running: Vec::new(),
            color: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for event in events {
            printer.print_to(event, &mut out, &mut err);
        }
        assert_eq!(String::from_utf8_lossy(&out), stdout);
        assert_eq!(String::from_utf8_lossy(&err), stderr);
    }

    #[test]
    fn logs_get_stage_headers() {
        use LogStream::{Stderr, Stdout, System};
        use StageEventKind::{Finished, Started};
        check(
            &[
                log(&[], System, "[Pipeline] Start of Pipeline"),
                stage(&["Build"], Started, StageResult::Unspecified, ""),
                log(&["Build"], System, "[Pipeline] sh"),
                log(&["Build"], Stdout, "compiling"),
                log(&["Build"], Stderr, "warning: unused"),
                stage(&["Build"], Finished, StageResult::Success, ""),
                stage(&["Test"], Started, StageResult::Unspecified, ""),
                stage(&["unit"], Started, StageResult::Unspecified, ""),
                stage(&["e2e"], Started, StageResult::Unspecified, ""),
                log(&["unit"], Stdout, "unit ok"),
                log(&["e2e"], Stderr, "e2e warning"),
                log(&["unit"], Stdout, "unit done"),
                stage(&["unit"], Finished, StageResult::Success, ""),
                stage(&["e2e"], Finished, StageResult::Failure, "exit code 2"),
                stage(&["Test"], Finished, StageResult::Failure, "exit code 2"),
                stage(&["Deploy"], Started, StageResult::Unspecified, ""),
                log(
                    &["Deploy"],
                    System,
                    "Stage \"Deploy\" skipped due to earlier failure(s)",
                ),
                stage(&["Deploy"], Finished, StageResult::Skipped, ""),
                log(&[], System, "the pipeline failed"),
                log(&[], System, "Finished: FAILURE"),
            ],
            "── stage Build ──\ncompiling\n── stage Test ──\n[unit] unit ok\n[unit] unit done\n[e2e] stage e2e failure: exit code 2\nstage Test failure: exit code 2\n── stage Deploy ──\nStage \"Deploy\" skipped due to earlier failure(s)\n── pipeline ──\nthe pipeline failed\n",
            "warning: unused\n[e2e] e2e warning\n",
        );
        // Lines before any stage need no header.
        check(
            &[log(&[], System, "ERROR: no agent")],
            "ERROR: no agent\n",
            "",
        );
    }

    #[test]
    fn markers_are_hidden() {
        assert!(is_marker("[Pipeline] stage (Build)"));
        assert!(is_marker("Finished: SUCCESS"));
        assert!(!is_marker("Hello from Hodei"));
    }
}
