//! The `users-service` binary: parse the command line, set up logging, run the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use users_service::config::{Cli, Command, LogFormat, Tenancy};
use users_service::core::clock::{Clock, SystemClock};
use users_service::core::transfer;
use users_service::error::chain;
use users_service::log_line::{Lines, Style};
use users_service::log_sink::LogSink;
#[cfg(unix)]
use users_service::server::hangup_signal;
use users_service::server::{open_existing_store, open_store, shutdown_signal, Server};

/// The service allocates and frees many small buffers on every request, across its
/// runtime threads; mimalloc does that with less work and no lock contention between
/// threads (docs/performance/page-cache-allocator-cors.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `info`, without PostgreSQL's chatter about `CREATE ... IF NOT EXISTS` during migrations.
const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // Bad configuration: one line, naming the flag and what is wrong with it (and
            // the arguments missing, which clap lists on the lines below its first).
            let text = err.to_string();
            let mut lines = text.lines();
            let mut line = lines.next().unwrap_or("invalid arguments").to_string();
            for more in lines.take_while(|l| l.starts_with("  ")) {
                line.push(' ');
                line.push_str(more.trim());
            }
            eprintln!("users-service: {line}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Lines are batched unless standard error is a terminal (see `log_sink`).
    let sink = LogSink::stderr();
    let style = match cli.log_format {
        LogFormat::Text => Style::Text {
            ansi: std::io::stderr().is_terminal(),
        },
        // One object per line: `timestamp`, `level`, `target`, `message` and the event's
        // fields at the top level, and the request's (`request_id`, `method`, `path`)
        // under `span`.
        LogFormat::Json => Style::Json,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(Lines::new(sink.clone(), style))
        .init();
    // What was logged before a panic is written before its message.
    let previous = std::panic::take_hook();
    let at_panic = sink.clone();
    std::panic::set_hook(Box::new(move |info| {
        at_panic.try_flush();
        previous(info);
    }));
    let outcome = run(cli);
    sink.flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, causes joined with ": ", and no backtrace.
            eprintln!("users-service: error: {}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            None => {
                let mut shutdown =
                    Box::pin(shutdown_signal().context("cannot listen for signals")?);
                // With tenants, SIGHUP reloads them.
                #[cfg(unix)]
                let hangups = (cli.serve.tenancy.tenancy == Tenancy::Namespace)
                    .then(hangup_signal)
                    .transpose()
                    .context("cannot listen for signals")?;
                // A stop asked for while the start waits for the database is a clean one.
                let server = tokio::select! {
                    server = Server::build(&cli.serve) => server?,
                    () = &mut shutdown => return Ok(()),
                };
                #[cfg(unix)]
                if let Some(hangups) = hangups {
                    server.reload_on(hangups);
                }
                server.run(shutdown).await?;
            }
            Some(Command::Migrate { database, each }) => {
                users_service::admin::migrate(&database, &each).await?;
            }
            Some(Command::Export { database, sealing }) => {
                let keys = sealing.keys().map_err(anyhow::Error::msg)?;
                let store = open_existing_store(&database).await?;
                // Refused before anything is written: every secret must open.
                users_service::core::sealing::count_stored(&store, &keys)
                    .await?
                    .keys_missing()
                    .map_err(anyhow::Error::msg)?;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let summary = transfer::export(&store, SystemClock.now(), &keys, &mut out).await?;
                store.close().await;
                tracing::info!(
                    users = summary.users,
                    sessions = summary.sessions,
                    deleted_users = summary.deleted_users,
                    second_factors = summary.second_factors,
                    passkeys = summary.passkeys,
                    service_keys = summary.service_keys,
                    "export done"
                );
            }
            Some(Command::Reseal {
                database,
                each,
                sealing,
            }) => {
                users_service::admin::reseal(&database, &each, &sealing).await?;
            }
            Some(Command::Audit {
                user_id,
                kind,
                since,
                until,
                before,
                limit,
                json,
                database,
            }) => {
                let args = users_service::admin::AuditArgs {
                    user_id,
                    kind,
                    since,
                    until,
                    before,
                    limit,
                    json,
                };
                let mut out = std::io::stdout().lock();
                users_service::admin::audit(&database, args, &mut out).await?;
            }
            Some(Command::User { action }) => {
                let mut input = std::io::stdin().lock();
                let mut out = std::io::stdout().lock();
                users_service::admin::run(action, &mut input, &mut out).await?;
            }
            Some(Command::Import {
                database,
                skip_existing,
                from,
                limits,
                firebase,
                sealing,
            }) => {
                let project = firebase.project().map_err(anyhow::Error::msg)?;
                let options = transfer::ImportOptions {
                    skip_existing,
                    limits: limits.limits(),
                    sealing: sealing.keys().map_err(anyhow::Error::msg)?,
                };
                let store = open_store(&database).await?;
                let input = tokio::io::BufReader::new(tokio::io::stdin());
                let result = transfer::import_from(
                    &store,
                    SystemClock.now(),
                    from,
                    input,
                    project.as_ref(),
                    options,
                )
                .await;
                store.close().await;
                let summary = result?;
                tracing::info!(
                    users = summary.users,
                    sessions = summary.sessions,
                    deleted_users = summary.deleted_users,
                    second_factors = summary.second_factors,
                    passkeys = summary.passkeys,
                    service_keys = summary.service_keys,
                    skipped = summary.skipped,
                    "import done"
                );
            }
        }
        Ok(())
    })
}
