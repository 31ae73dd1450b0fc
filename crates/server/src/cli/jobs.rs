//! `hodei jobs`: list, show, follow and cancel the jobs of a running server.

use std::process::ExitCode;
use std::time::Duration;

use hodei_proto::v1::{CancelJobRequest, GetJobRequest, JobStatus, ListJobsRequest, WatchRequest};
use tokio_stream::StreamExt;

use super::client::{
    Client, LogPrinter, Seen, ServerArg, ellipsize, format_time, is_final, job_duration,
    stage_result_word, status_word, table,
};

/// Inspect and cancel the jobs of a Hodei server
///
/// Talks to the server named by --server (default: $HODEI_SERVER, else
/// http://127.0.0.1:9090). `cancel` waits until the job has stopped (its
/// `post` blocks run, its workers are destroyed). Exits with 2 when the
/// server cannot be reached or the job is unknown.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hodei jobs list\n  hodei jobs show 3f2a…\n  hodei jobs logs 3f2a… --follow\n  hodei jobs cancel 3f2a…"
)]
pub struct Args {
    #[command(flatten)]
    server: ServerArg,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JobsCommand {
    /// List jobs, newest first
    List {
        /// Only jobs in this status (repeatable): queued, provisioning,
        /// running, success, failure, aborted, timed-out
        #[arg(long, value_parser = parse_status)]
        status: Vec<JobStatus>,
        /// At most this many jobs
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one job with its stages
    Show {
        /// The job's id
        id: String,
    },
    /// Print a job's log
    Logs {
        /// The job's id
        id: String,
        /// Keep printing until the job ends
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a job: its running steps are killed and its workers destroyed
    Cancel {
        /// The job's id
        id: String,
        /// Why (recorded in the job's message)
        #[arg(long, default_value = "cancelled with hodei jobs cancel")]
        reason: String,
    },
}

fn parse_status(text: &str) -> Result<JobStatus, String> {
    match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "queued" => Ok(JobStatus::Queued),
        "provisioning" => Ok(JobStatus::Provisioning),
        "running" => Ok(JobStatus::Running),
        "success" => Ok(JobStatus::Success),
        "failure" => Ok(JobStatus::Failure),
        "aborted" => Ok(JobStatus::Aborted),
        "timed-out" | "timedout" => Ok(JobStatus::TimedOut),
        _ => Err(
            "expected one of queued, provisioning, running, success, failure, aborted, timed-out"
                .to_owned(),
        ),
    }
}

/// Runs `hodei jobs`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&args.server.server, args.server.token.token.as_deref()).await?;
    match args.command {
        JobsCommand::List { status, limit } => list(&client, status, limit).await,
        JobsCommand::Show { id } => show(&client, &id).await,
        JobsCommand::Logs { id, follow } => logs(&client, &id, follow).await,
        JobsCommand::Cancel { id, reason } => cancel(&client, &id, reason).await,
    }
}

async fn list(client: &Client, statuses: Vec<JobStatus>, limit: u32) -> anyhow::Result<ExitCode> {
    let response = client
        .jobs()
        .list(ListJobsRequest {
            statuses: statuses.into_iter().map(|s| s as i32).collect(),
            limit,
        })
        .await
        .map_err(|s| client.error("listing jobs", s))?
        .into_inner();
    if response.jobs.is_empty() {
        println!("no jobs");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = response
        .jobs
        .iter()
        .map(|job| {
            vec![
                job.id.clone(),
                job.name.clone(),
                job.build_number.to_string(),
                status_word(job.status()).to_owned(),
                format_time(job.created_at_ms),
                job_duration(job.created_at_ms, job.finished_at_ms),
                ellipsize(&job.message, 60),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID", "NAME", "BUILD", "STATUS", "CREATED", "DURATION", "MESSAGE"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let job = client
        .jobs()
        .get(GetJobRequest {
            job_id: id.to_owned(),
        })
        .await
        .map_err(|s| client.error(&format!("job {id}"), s))?
        .into_inner();
    println!("id:        {}", job.id);
    println!("name:      {} #{}", job.name, job.build_number);
    println!("status:    {}", status_word(job.status()));
    if !job.message.is_empty() {
        println!("message:   {}", job.message);
    }
    println!("created:   {}", format_time(job.created_at_ms));
    println!("started:   {}", format_time(job.started_at_ms));
    println!("finished:  {}", format_time(job.finished_at_ms));
    println!(
        "duration:  {}",
        job_duration(job.created_at_ms, job.finished_at_ms)
    );
    let mut parameters: Vec<_> = job.parameters.iter().collect();
    parameters.sort();
    for (key, value) in parameters {
        println!("param:     {key}={value}");
    }
    if !job.stages.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = job
            .stages
            .iter()
            .map(|stage| {
                vec![
                    stage.path.join(" › "),
                    stage_result_word(stage.result()).to_owned(),
                    if stage.started_at_ms == 0 {
                        "-".to_owned()
                    } else {
                        job_duration(stage.started_at_ms, stage.finished_at_ms)
                    },
                ]
            })
            .collect();
        print!("{}", table(&["STAGE", "RESULT", "DURATION"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// Without `--follow`, how long the replay may be silent before the log is
/// taken as complete (events recorded before the request arrive at once).
const REPLAY_IDLE: Duration = Duration::from_millis(500);

async fn logs(client: &Client, id: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let asked_at = super::client::now_ms();
    let mut stream = client
        .jobs()
        .watch(WatchRequest {
            job_id: id.to_owned(),
            from_sequence: 0,
        })
        .await
        .map_err(|s| client.error(&format!("job {id}"), s))?
        .into_inner();
    let mut printer = LogPrinter::new();
    let mut last = None;
    loop {
        let next = if follow {
            stream.next().await
        } else {
            match tokio::time::timeout(REPLAY_IDLE, stream.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(event) = next else { break };
        let event = event.map_err(|s| client.error(&format!("job {id}"), s))?;
        // Without --follow, the log ends with what was recorded when asked.
        if !follow && event.timestamp_ms > asked_at {
            break;
        }
        if let Seen::Status(status, message) = printer.print(&event)
            && is_final(status)
        {
            last = Some((status, message));
        }
    }
    if let Some((status, message)) = last {
        if message.is_empty() {
            eprintln!("job {id}: {}", status_word(status));
        } else {
            eprintln!("job {id}: {}: {message}", status_word(status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(client: &Client, id: &str, reason: String) -> anyhow::Result<ExitCode> {
    let response = client
        .jobs()
        .cancel(CancelJobRequest {
            job_id: id.to_owned(),
            reason,
        })
        .await
        .map_err(|s| client.error(&format!("job {id}"), s))?
        .into_inner();
    let status = response.status();
    if is_final(status) {
        if status == JobStatus::Aborted {
            println!("job {id}: aborted");
        } else {
            println!("job {id}: already ended: {}", status_word(status));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The job is stopping (its `post` blocks may still run): wait for it.
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    loop {
        let job = client
            .jobs()
            .get(GetJobRequest {
                job_id: id.to_owned(),
            })
            .await
            .map_err(|s| client.error(&format!("job {id}"), s))?
            .into_inner();
        if is_final(job.status()) {
            println!("job {id}: {}", status_word(job.status()));
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "job {id}: cancel requested; still {} after {}s",
                status_word(job.status()),
                CANCEL_WAIT.as_secs()
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long `cancel` waits for the job to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse() {
        fn check(input: &str, expected: Option<JobStatus>) {
            assert_eq!(parse_status(input).ok(), expected, "{input}");
        }
        check("running", Some(JobStatus::Running));
        check("Timed-Out", Some(JobStatus::TimedOut));
        check("timed_out", Some(JobStatus::TimedOut));
        check("done", None);
    }
}
