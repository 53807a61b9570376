//! The `tenantwatch` binary: parses the command line, loads the
//! configuration, installs signal handlers and runs the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tenantwatch::Config;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration or command line (`EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "tenantwatch",
    version,
    about = "Per-tenant observability and rate-limit advice for multi-tenant PostgreSQL",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate a configuration file: print a summary and exit 0, or print
    /// every error and exit 64.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Ask a running daemon's /readyz: exit 0 when ready, 1 otherwise (for
    /// container images without curl).
    Healthcheck {
        /// Address of the daemon's HTTP listener (plain HTTP).
        #[arg(long, default_value = "127.0.0.1:9645")]
        addr: std::net::SocketAddr,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Start a throwaway PostgreSQL with tenant schemas and a workload in
    /// which one tenant misbehaves, and run tenantwatch on it.
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Stop by itself after this long (e.g. "90s", "5m"); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Address of the HTTP listener.
    #[arg(long, default_value = "127.0.0.1:9645")]
    listen: std::net::SocketAddr,
    /// Number of tenant schemas to create.
    #[arg(long, default_value_t = 40)]
    tenants: usize,
}

#[derive(Args)]
struct RunArgs {
    /// The TOML configuration file; without it every key has its default.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Before any thread starts: arenas made before the cap stay.
    let arenas = tenantwatch::heap::limit_arenas();
    let mmap_threshold = tenantwatch::heap::fix_mmap_threshold();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Healthcheck { addr, timeout }) => healthcheck(addr, timeout),
        Some(Command::Run(args)) => run(args, arenas, mmap_threshold),
        Some(Command::Demo(args)) => demo(args),
        None => run(cli.run, arenas, mmap_threshold),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            use std::io::Write as _;
            // The verdict is the exit status; a reader that left early
            // (`check-config … | head -1`) is not an error, and `print!`
            // would panic on its broken pipe.
            let report = format!("{}: ok\n{}", file.display(), config.summary());
            let _ = std::io::stdout().lock().write_all(report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}: {err}", file.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `GET /readyz` on a fresh connection; ready is exactly a 200.
fn healthcheck(addr: std::net::SocketAddr, timeout: std::time::Duration) -> ExitCode {
    use std::io::{Read, Write};
    let ready = (|| -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: tenantwatch\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    })();
    match ready {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tenantwatch healthcheck: {addr} is not ready");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("tenantwatch healthcheck: {addr}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `arenas`, `mmap_threshold`: the allocator's arena cap and mmap
/// threshold set at start, if any.
fn run(args: RunArgs, arenas: Option<usize>, mmap_threshold: Option<usize>) -> ExitCode {
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::defaults()),
    };
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tenantwatch: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tenantwatch::telemetry::init(config.settings.log.format);
    match arenas {
        Some(limit) => tracing::debug!(limit, "Memory allocator arenas capped"),
        None => tracing::debug!("Memory allocator arenas left as the environment sets them"),
    }
    match mmap_threshold {
        Some(bytes) => tracing::debug!(bytes, "Memory allocator mmap threshold fixed"),
        None => tracing::debug!("Memory allocator mmap threshold left as the environment sets it"),
    }
    let path = args.config.clone();
    with_runtime_and_signals(|shutdown| async move {
        tenantwatch::daemon::run_with_reload(config, path, shutdown.cancelled_owned())
            .await
            .map_err(|err| err.to_string())
    })
}

/// Runs `main` on a multi-threaded runtime with the signal handlers
/// installed; an error is printed and exits 1.
fn with_runtime_and_signals<F, Fut>(main: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tenantwatch: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // Installed here, before the daemon binds anything: a SIGTERM sent
        // once it listens must start a graceful shutdown, never meet the
        // default action because a spawned task had not run yet.
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => {
                tokio::spawn(watch_signals(shutdown.clone(), term, int));
            }
            _ => {
                tracing::error!("Failed to install signal handlers; stop tenantwatch with SIGKILL")
            }
        }
        match main(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tenantwatch: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo(args: DemoArgs) -> ExitCode {
    tenantwatch::telemetry::init(tenantwatch::telemetry::LogFormat::Plain);
    let options = tenantwatch::demo::DemoOptions {
        tenants: args.tenants,
        listen: args.listen,
        duration: args.duration,
        ..Default::default()
    };
    with_runtime_and_signals(|shutdown| async move {
        tenantwatch::demo::run(options, shutdown)
            .await
            .map_err(|err| err.to_string())
    })
}

/// The first SIGTERM or SIGINT starts a graceful shutdown; a second one exits
/// at once.
async fn watch_signals(
    shutdown: CancellationToken,
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "Received signal"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "Received signal"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("Second signal: exiting at once");
    std::process::exit(130);
}
