//! `llmproxyd`: parse arguments, load the configuration, serve until SIGTERM/SIGINT, drain.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmproxy::cli::{self, Command};
use llmproxy::config::{self, ProcessEnv};
use llmproxy::server::{sd_notify, Server};
use llmproxy::{error, info, warn};
use std::process::ExitCode;

fn main() -> ExitCode {
    // An argument that is not UTF-8 is passed on as it reads (lossily): it can only be a file
    // name, whose error then says what was read, or an unknown flag.
    let args = match cli::parse(std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned())) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("llmproxyd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llmproxyd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.debug {
        llmproxy::log::set_level(llmproxy::log::Level::Debug);
    }
    // On one core (a pinned instance, a small VM) a single-threaded scheduler does the same work
    // without cross-thread wake-ups; otherwise one worker per core.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before anything slow: a SIGHUP's default action ends the process, and a `systemctl reload`
    // right after a start must not stop the service (systemd would not restart it).
    let mut signals = {
        let _in_runtime = runtime.enter();
        Signals::new()
    };
    // Before any upstream client is built (and in `-t`, which builds them all).
    match llmproxy::upstream::trust::trust_bundle_from_environment() {
        Ok(None) => {}
        Ok(Some((added, 0))) => info!("trusting {added} certificate(s) from SSL_CERT_FILE besides the public roots"),
        Ok(Some((added, skipped))) => warn!(
            "trusting {added} certificate(s) from SSL_CERT_FILE besides the public roots; \
             {skipped} could not serve as roots and were left out"
        ),
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let config = match config::load(&args.config, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.test_only {
        // Compile everything the server would (routes, TLS-free client setup) without binding.
        if let Err(e) = llmproxy::runtime::Runtime::build(config.clone()) {
            error!("{}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
        // The certificates too: a pre-start check that passes must mean the start can.
        let tls =
            config.http_server.forwards.iter().filter_map(|f| f.tls.as_ref()).chain(&config.http_server.admin.tls);
        if let Err(e) = tls.map(llmproxy::server::tls::acceptor).collect::<Result<Vec<_>, _>>() {
            error!("{}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
        println!(
            "{}: configuration ok: {} forward(s), {} upstream(s), {} group(s), {} route(s)",
            args.config.display(),
            config.http_server.forwards.len(),
            config.upstreams.len(),
            config.upstream_groups.len(),
            config.http_server.forwards.iter().map(|f| f.routing.len()).sum::<usize>()
        );
        return ExitCode::SUCCESS;
    }
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        info!("llmproxyd {} ready ({})", env!("CARGO_PKG_VERSION"), args.config.display());
        sd_notify::notify("READY=1");
        llmproxy::server::listener::warn_if_restarts_can_lose_connections();
        let signal = loop {
            match signals.next().await {
                Signal::Reload => reload(&server, &args.config),
                Signal::Stop(name) => break name,
            }
        };
        sd_notify::notify("STOPPING=1\nSTATUS=draining: finishing the requests and streams in flight");
        info!("{signal}: draining for up to {}s (stop again to exit at once)", args.shutdown_timeout.as_secs());
        // A second stop is an operator who will not wait: the process keeps its signal handlers,
        // so without this only SIGKILL would end the drain. One within a second of the first is
        // the same stop delivered twice (Ctrl-C reaches a wrapper's whole process group, which
        // may pass it on), not a second request.
        let stopped_at = std::time::Instant::now();
        let drain = server.shutdown(args.shutdown_timeout);
        tokio::pin!(drain);
        let drained = loop {
            tokio::select! {
                drained = &mut drain => break Some(drained),
                next = signals.next() => match next {
                    Signal::Stop(_) if stopped_at.elapsed() < REPEATED_STOP => {}
                    Signal::Stop(again) => {
                        warn!("{again} while draining: exiting now; requests in flight are cut");
                        break None;
                    }
                    Signal::Reload => info!("SIGHUP while draining: ignored"),
                },
            }
        };
        match drained {
            Some(true) => info!("drained; bye"),
            Some(false) => warn!("shutdown timeout reached with requests still in flight; exiting"),
            None => {}
        }
        ExitCode::SUCCESS
    })
}

/// SIGHUP: re-read the file; a valid configuration is swapped in like an admin API change, an
/// invalid one is logged and the running configuration stays.
fn reload(server: &Server, path: &std::path::Path) {
    info!("SIGHUP: reloading {}", path.display());
    let result = config::load(path, &ProcessEnv).map_err(|e| e.to_string()).and_then(|c| server.reload(c));
    // `systemctl reload` returns before the outcome is known: `systemctl status` shows it. The
    // reason stays in the journal, which only administrators read; the status is for anyone.
    match result {
        Ok(()) => {
            info!("reload: configuration applied");
            sd_notify::notify("STATUS=serving; the last reload was applied");
        }
        Err(e) => {
            error!("reload rejected, the running configuration stays: {e}");
            sd_notify::notify("STATUS=serving; the last reload was rejected (the reason is in the journal)");
        }
    }
}

/// A stop signal this soon after the first is taken as the same one, delivered twice.
const REPEATED_STOP: std::time::Duration = std::time::Duration::from_secs(1);

enum Signal {
    Reload,
    Stop(&'static str),
}

/// Signal streams, created once so that a signal arriving while a reload runs is not lost.
struct Signals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup()];
            let streams = match kinds.map(signal) {
                [Ok(term), Ok(int), Ok(hup)] => Some([term, int, hup]),
                _ => {
                    warn!("cannot listen for SIGTERM/SIGINT/SIGHUP; only Ctrl-C stops the proxy");
                    None
                }
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some([term, int, hup]) = &mut self.streams {
            return tokio::select! {
                _ = term.recv() => Signal::Stop("SIGTERM"),
                _ = int.recv() => Signal::Stop("SIGINT"),
                _ = hup.recv() => Signal::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop("SIGINT")
    }
}
