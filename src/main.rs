//! The `switchyard` command: parse, load config, init telemetry, run until signal.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// glibc malloc took about a fifth of the dispatcher's CPU in the bench profile (arena
/// locks, consolidation); mimalloc's thread-local free lists avoid most of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use switchyard::config::{Config, ConfigErrors, EXIT_CONFIG};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kafka-native dispatcher for self-service actions and automations"
)]
struct Cli {
    /// Configuration file (TOML). Default: ./switchyard.toml when it exists.
    #[arg(long, short, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume trigger events and dispatch them until SIGTERM or Ctrl-C.
    Run,
    /// Show the whole flow with no setup: in-process Kafka, a sample receiver, four runs.
    Demo {
        /// Keep running with the run board at http://127.0.0.1:8080/ (or another free
        /// port), publishing a sample run every few seconds until Ctrl-C.
        #[arg(long)]
        board: bool,
    },
    /// Check a configuration file and list every problem (exit 78 when invalid).
    Validate,
    /// Dead-letter queue tools.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Serve the demo's sample webhook receiver (POST /deploy, /fail, /async) until
    /// Ctrl-C; docker compose runs it next to switchyard.
    Receiver {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
    /// Measure end-to-end throughput and latency against the pipe limit (see BENCHMARKS.md).
    Bench(cli::bench::Options),
    /// The bench's pipe limit (run by `bench`, not by hand).
    #[command(hide = true)]
    BenchPipe {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        triggers: String,
        #[arg(long)]
        status: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        fetch_wait_ms: u64,
    },
    /// Port compatibility tools.
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
    /// Automations: check definitions, dry-run one, or run the engine alone.
    Automations {
        #[command(subcommand)]
        command: AutomationsCommand,
    },
    /// Read runs from the status topic.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Publish a trigger event and print its run id.
    Trigger {
        /// File holding the event JSON; `-` or absent reads standard input.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Publish even if switchyard would reject the event (to exercise the DLQ).
        #[arg(long)]
        no_validate: bool,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Print run updates, one line each: time, run, status, label, summary, links.
    Tail {
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Keep printing new updates as they arrive (until Ctrl-C).
        #[arg(long, short)]
        follow: bool,
    },
    /// Print one run's current state (exit 1 when the status topic has no such run).
    Get {
        /// The run id.
        id: String,
        /// Print the state as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AutomationsCommand {
    /// Check every definition in DIR (`*.json`) and list each problem with its file and
    /// field (exit 78 when any).
    Validate {
        /// The directory of definitions.
        dir: PathBuf,
    },
    /// Dry run: whether an automation fires on an event (Port's automation event object)
    /// and the trigger event it would emit (exit 0 when it fires, 1 when not).
    Test {
        /// The automation's identifier.
        #[arg(long)]
        automation: String,
        /// File holding the event JSON (`{action, resourceType, context, diff, trigger}`).
        #[arg(long)]
        event: PathBuf,
        /// The directory of definitions (default: automations.dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the automations engine alone (its own consumer group) until SIGTERM or Ctrl-C.
    Run,
}

#[derive(Subcommand)]
enum PortCommand {
    /// Check the signature of a Port runs message; prints `valid` or `invalid: <reason>`
    /// (exit 0 or 1).
    Verify {
        /// The Port client secret (the HMAC key).
        #[arg(long, env = "PORT_CLIENT_SECRET", hide_env_values = true)]
        secret: String,
        /// File holding the message JSON; `-` or absent reads standard input.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Also refuse timestamps older than this (e.g. `24h`); default: any age.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Re-publish dead-lettered events to the triggers topic.
    Replay {
        /// Only these run ids (repeatable).
        #[arg(long = "run")]
        runs: Vec<String>,
        /// Only these error classes, e.g. http_status (repeatable).
        #[arg(long = "class")]
        classes: Vec<String>,
        /// Only records that failed at or after this time (RFC 3339, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only records that failed at or before this time (RFC 3339, UTC).
        #[arg(long)]
        until: Option<String>,
        /// List what would be replayed without publishing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    // A template worker (see switchyard::sandbox) is this executable with one variable
    // set: it serves renders on its pipes and never parses a command line.
    if let Some(limits) = std::env::var_os(switchyard::template::sandbox::WORKER_ENV) {
        return switchyard::template::worker_main(&limits.to_string_lossy());
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime only fails when the OS is out of resources");
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    if let Command::Demo { board } = cli.command {
        let cfg = Config::default();
        let mut log = cfg.log.clone();
        log.format = switchyard::config::LogFormat::Text;
        // The demo prints run updates itself; only errors go to the log.
        log.level = "error".into();
        switchyard::app::init_logging(&log);
        return report(cli::demo::run(std::io::stdout().is_terminal(), board).await);
    }
    match cli.command {
        Command::Bench(opts) => {
            return report(cli::bench::run(opts).await.map(|_| ()));
        }
        Command::BenchPipe {
            brokers,
            group,
            triggers,
            status,
            url,
            concurrency,
            fetch_wait_ms,
        } => {
            return report(
                cli::bench::pipe(
                    &brokers,
                    &group,
                    &triggers,
                    &status,
                    &url,
                    concurrency,
                    fetch_wait_ms,
                )
                .await,
            )
        }
        _ => {}
    }
    if let Command::Port {
        command:
            PortCommand::Verify {
                secret,
                file,
                max_age,
            },
    } = &cli.command
    {
        let raw = match read_input(file.as_deref()) {
            Ok(b) => b,
            Err(e) => return report(Err(e)),
        };
        return match switchyard::port::signature::verify_bytes(&raw, secret, *max_age) {
            Ok(_) => {
                println!("valid");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("invalid: {why}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Automations {
        command: AutomationsCommand::Validate { dir },
    } = &cli.command
    {
        return cli::automations::validate(dir);
    }
    if let Command::Receiver { listen } = &cli.command {
        return match cli::demo::start_receiver(listen).await {
            Ok(addr) => {
                println!("sample receiver on http://{addr} (POST /deploy, /fail, /async)");
                use tokio::signal::unix::{signal, SignalKind};
                let mut term =
                    signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
                tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                ExitCode::SUCCESS
            }
            Err(e) => report(Err(e)),
        };
    }
    let cfg = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match cli.command {
        Command::Validate => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Run => {
            switchyard::app::init_logging(&cfg.log);
            let shutdown = CancellationToken::new();
            tokio::spawn(watch_signals(shutdown.clone()));
            report(switchyard::app::run(cfg, shutdown).await)
        }
        Command::Trigger { file, no_validate } => {
            let bytes = match read_input(file.as_deref()) {
                Ok(b) => b,
                Err(e) => return report(Err(e)),
            };
            match cli::trigger::publish(&cfg, &bytes, !no_validate).await {
                Ok(run_id) => {
                    println!("{run_id}");
                    ExitCode::SUCCESS
                }
                Err(e) => report(Err(e)),
            }
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    runs,
                    classes,
                    since,
                    until,
                    dry_run,
                },
        } => {
            let selection = switchyard::dlq::replay::Selection {
                run_ids: runs.into_iter().collect(),
                classes: classes.into_iter().collect(),
                since,
                until,
            };
            report(dlq_replay(&cfg, &selection, dry_run).await)
        }
        Command::Automations { command } => match command {
            AutomationsCommand::Test {
                automation,
                event,
                dir,
            } => match cli::automations::test(&cfg, dir.as_deref(), &automation, &event).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => report(Err(e)),
            },
            AutomationsCommand::Run => {
                switchyard::app::init_logging(&cfg.log);
                let shutdown = CancellationToken::new();
                tokio::spawn(watch_signals(shutdown.clone()));
                report(switchyard::app::run_automations(cfg, shutdown).await)
            }
            AutomationsCommand::Validate { .. } => unreachable!("handled above"),
        },
        Command::Runs { command } => {
            let color = std::io::stdout().is_terminal();
            match command {
                RunsCommand::Tail { run, follow } => {
                    report(cli::runs::tail(&cfg, run.as_deref(), follow, color).await)
                }
                RunsCommand::Get { id, json } => match cli::runs::get(&cfg, &id).await {
                    Ok(Some(run)) if json => {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&run).expect("serialisable")
                        );
                        ExitCode::SUCCESS
                    }
                    Ok(Some(run)) => {
                        println!("{}", cli::runs::describe(&run, color));
                        ExitCode::SUCCESS
                    }
                    Ok(None) => report(Err(anyhow::anyhow!(
                        "run {id} not found on {}",
                        cfg.kafka.status_topic
                    ))),
                    Err(e) => report(Err(e)),
                },
            }
        }
        Command::Demo { .. }
        | Command::Port { .. }
        | Command::Receiver { .. }
        | Command::Bench(_)
        | Command::BenchPipe { .. } => unreachable!("handled above"),
    }
}

async fn dlq_replay(
    cfg: &Config,
    selection: &switchyard::dlq::replay::Selection,
    dry_run: bool,
) -> anyhow::Result<()> {
    let own = cfg.own_topics_kafka().map_err(anyhow::Error::msg)?;
    if cfg.agent_mode() && !dry_run {
        anyhow::bail!(
            "dlq replay publishes to the topic a record came from, which in Port mode is on \
             Port's cluster, read-only to switchyard; list the records with --dry-run and \
             run those actions again in Port"
        );
    }
    let letters = switchyard::dlq::replay::select(&own, selection).await?;
    let mut topics = std::collections::BTreeSet::new();
    for l in &letters {
        println!("{}", l.describe(&cfg.kafka.dlq_topic));
        topics.insert(l.destination(cfg));
    }
    if topics.is_empty() {
        topics.insert(cfg.kafka.triggers_topic.clone());
    }
    let to = topics.into_iter().collect::<Vec<_>>().join(", ");
    if dry_run {
        println!(
            "{} records would be replayed to {to} (dry run)",
            letters.len()
        );
    } else {
        let n = switchyard::dlq::replay::replay(cfg, &letters).await?;
        println!("replayed {n} records to {to}");
    }
    Ok(())
}

fn load_config(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let default = Path::new("switchyard.toml");
    let path = path.or_else(|| default.exists().then_some(default));
    Config::load(path, std::env::vars())
}

fn read_input(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    match file {
        Some(p) if p != Path::new("-") => {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// First SIGTERM/Ctrl-C: graceful stop. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("stop requested; draining (send the signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second stop signal; exiting without draining");
    std::process::exit(130);
}
