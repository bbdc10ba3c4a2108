//! The `switchyard` command: `serve` (the default; the gateway), `plugin check`, `plugin run` and
//! `plugin test` (try and test a plugin), `load` (the load generator), `bench` (benchmarks), `sign` (the
//! signature headers for a body), `openapi` (the API's description).
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | `main` | the command line, logging set-up, and the call into each crate |
//! | `plugin_cmd` | `plugin check` and `plugin run` |
//! | `plugin_new` | `plugin new` (a project from the templates in `templates/`) and `plugin build` |
//! | `plugin_test` | `plugin test`: cases from a file, pass/fail with the differences |

mod plugin_cmd;
mod plugin_new;
mod plugin_test;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Event gateway with hot-swappable WebAssembly routing"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default). Configuration comes from the environment.
    Serve,
    /// Validate or try a routing plugin.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Send signed events to a gateway and report throughput, latency and (with --wait) the drain.
    Load {
        #[command(flatten)]
        options: switchyard_tools::load::LoadOptions,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the API's OpenAPI 3.1 description (what `GET /openapi.json` serves).
    Openapi,
    /// Print the headers that sign a body as the gateway checks them (`Name: value` lines), to
    /// test a producer's signing: compare the values, or send with them
    /// (`switchyard sign event.json > h.txt; curl -H @h.txt --data-binary @event.json …`).
    Sign {
        /// The body, byte for byte as it will be sent: a file, or `-` for standard input.
        #[arg(default_value = "-")]
        body: PathBuf,
        /// The signing secret (the gateway's HMAC_SECRET; the first of a comma-separated list).
        #[arg(long, env = "HMAC_SECRET", hide_env_values = true)]
        secret: String,
        /// `webhook`: Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`);
        /// `hmac`: `x-hmac-signature`.
        #[arg(long, value_enum, default_value = "webhook")]
        scheme: switchyard_tools::sign::Scheme,
        /// The message id (default: a new `msg_` id). A gateway refuses an id seen before with
        /// another body.
        #[arg(long)]
        id: Option<String>,
        /// The timestamp, seconds since the Unix epoch (default: now). The gateway accepts
        /// SIGNATURE_TOLERANCE_SECS either side.
        #[arg(long)]
        timestamp: Option<u64>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check that FILE is a plugin the host would load; print its version id and interface.
    Check { file: PathBuf },
    /// Write a new plugin project: the router, the contract's WIT, a cases file, the build.
    New {
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: plugin_new::Lang,
        /// Where (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin project into DIR/<name>.wasm.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run the cases of a test file against a plugin and report each (exit 1 when one fails).
    /// The plugin runs in the gateway's sandbox with the gateway's limits (environment /
    /// SWITCHYARD_CONFIG: PLUGIN_TIMEOUT_MS, PLUGIN_MEMORY_MB, …).
    Test {
        /// A project directory (its built <name>.wasm and cases.toml), or a .wasm file.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The cases: a TOML or JSON file (see README, "Testing"); a project's cases.toml by
        /// default.
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Route one event with FILE and print the decision or the error.
    Run {
        file: PathBuf,
        /// The event, as a producer would POST it: {"eventId", "type", "payload"}.
        #[arg(long)]
        event: PathBuf,
        /// Live state the plugin may look up: KIND=FILE.json (any id) or KIND:ID=FILE.json.
        #[arg(long)]
        context: Vec<String>,
        /// Plugin configuration values: KEY=VALUE.
        #[arg(long)]
        config: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Per-call overhead and reload time of the plugin host.
    Plugin {
        #[arg(long, default_value = "plugins/dist/fixtures/noop.wasm")]
        noop: PathBuf,
        #[arg(long, default_value = "plugins/dist/default-router.wasm")]
        alternate: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        calls: u32,
        #[arg(long, default_value_t = 20)]
        reloads: u32,
    },
    /// Signature verification cost.
    Hmac {
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 200_000)]
        iterations: u32,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command.unwrap_or(Command::Serve))) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Serve => {
            let config = switchyard_gateway::Config::load()?;
            let otlp = switchyard_gateway::telemetry::Otlp::from_config(&config);
            let _logs =
                switchyard_gateway::logs::init(config.log_format.as_deref(), otlp.as_ref())?;
            let listener =
                tokio::net::TcpListener::bind((config.listen_host.as_str(), config.port)).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            switchyard_gateway::run(config, listener, shutdown).await?;
            Ok(true)
        }
        Command::Plugin(PluginCommand::Check { file }) => {
            let _logs = switchyard_gateway::logs::init(Some("pretty"), None)?;
            plugin_cmd::check(&file).await?;
            Ok(true)
        }
        Command::Plugin(PluginCommand::New { name, lang, dir }) => {
            let dir = plugin_new::new(&name, lang, dir.as_deref())?;
            println!(
                "wrote {}: build it with `switchyard plugin build {0}`, test it with `switchyard plugin test {0}`",
                dir.display()
            );
            Ok(true)
        }
        Command::Plugin(PluginCommand::Build { dir }) => {
            let component = plugin_new::build(&dir)?;
            println!("built {}", component.display());
            Ok(true)
        }
        Command::Plugin(PluginCommand::Test { path, cases, json }) => {
            let _logs = switchyard_gateway::logs::init_quiet()?;
            let (file, cases) = if path.is_dir() {
                let project = plugin_new::Project::open(&path)?;
                let component = project.component();
                if !component.exists() {
                    anyhow::bail!(
                        "{} is not built: switchyard plugin build {}",
                        component.display(),
                        path.display()
                    );
                }
                (component, cases.unwrap_or_else(|| project.cases()))
            } else {
                let cases =
                    anyhow::Context::context(cases, "give the cases file: --cases CASES.toml")?;
                (path, cases)
            };
            let config = switchyard_gateway::Config::load_for_tools()?;
            let limits = switchyard_runtime::Limits {
                max_concurrent_calls: 4,
                side_calls: 1,
                ..config.plugin_limits()
            };
            plugin_test::run(&file, &cases, limits, json).await
        }
        Command::Plugin(PluginCommand::Run {
            file,
            event,
            context,
            config,
        }) => {
            let _logs = switchyard_gateway::logs::init(Some("pretty"), None)?;
            plugin_cmd::run(&file, &event, &context, &config).await
        }
        Command::Load { options, json } => {
            let report = switchyard_tools::load::run(options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                switchyard_tools::load::print(&report);
            }
            let failures: u64 = report
                .statuses
                .iter()
                .filter(|(k, _)| k.as_str() != "202")
                .map(|(_, v)| v)
                .sum();
            Ok(failures == 0
                && report.drain.as_ref().is_none_or(|d| d.failed == 0)
                && report
                    .delivered
                    .as_ref()
                    .is_none_or(|d| d.bad_signatures == 0))
        }
        Command::Openapi => {
            print!("{}", switchyard_gateway::http::openapi::spec_json());
            Ok(true)
        }
        Command::Sign {
            body,
            secret,
            scheme,
            id,
            timestamp,
        } => {
            let bytes = if body.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&body)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", body.display()))?
            };
            let secret = secret.split(',').next().unwrap_or_default();
            let id = id.unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
            let timestamp = timestamp.unwrap_or_else(|| switchyard_model::clock::now_ms() / 1000);
            let key = switchyard_model::signing::key(secret).map_err(anyhow::Error::msg)?;
            let headers = switchyard_tools::sign::headers(&key, scheme, &bytes, &id, timestamp);
            for (name, value) in headers {
                println!("{name}: {value}");
            }
            Ok(true)
        }
        Command::Bench(BenchCommand::Hmac { size, iterations }) => {
            switchyard_tools::bench::hmac(size, iterations)?;
            Ok(true)
        }
        Command::Bench(BenchCommand::Plugin {
            noop,
            alternate,
            calls,
            reloads,
        }) => {
            switchyard_tools::bench::plugin(switchyard_tools::bench::PluginBench {
                noop,
                alternate,
                calls,
                reloads,
            })
            .await?;
            Ok(true)
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    token.cancel();
}
