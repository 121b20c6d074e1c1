//! Listeners, connection serving and graceful shutdown.
//!
//! Each forward and the admin port get a listener and an accept loop. Connections are served by
//! hyper-util's auto builder (HTTP/1.1, and HTTP/2 by prior knowledge or ALPN). Shutdown stops
//! accepting, lets requests and streams in flight finish (hyper's graceful shutdown closes each
//! connection after its current response), and gives up after the grace period.

pub mod listener;
pub mod tls;

use crate::config::Config;
use crate::proxy::ClientConn;
use crate::runtime::{Runtime, Shared};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Server {
    pub shared: Arc<Shared>,
    /// (forward name, bound address), in configuration order.
    pub forwards: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    stop_forwards: watch::Sender<Option<Duration>>,
    stop_admin: watch::Sender<Option<Duration>>,
    forward_loops: Vec<JoinHandle<bool>>,
    admin_loop: JoinHandle<bool>,
}

#[derive(Clone)]
enum Role {
    Forward(Arc<str>),
    Admin,
}

struct Listener {
    role: Role,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
}

impl Server {
    /// Compiles the runtime, binds every listener (all or nothing), and starts serving.
    pub async fn start(config: Config) -> Result<Server, String> {
        let mut listeners = Vec::new();
        for f in &config.http_server.forwards {
            listeners.push(Listener {
                role: Role::Forward(f.name.as_str().into()),
                socket: listener::bind(SocketAddr::new(f.address, f.port))?,
                tls: f.tls.as_ref().map(tls::acceptor).transpose()?,
                header_timeout: Duration::from_secs(f.timeout.connect),
            });
        }
        let admin = &config.http_server.admin;
        listeners.push(Listener {
            role: Role::Admin,
            socket: listener::bind(SocketAddr::new(admin.address, admin.port))?,
            tls: admin.tls.as_ref().map(tls::acceptor).transpose()?,
            header_timeout: Duration::from_secs(admin.timeout.connect),
        });
        crate::metrics::process::mark_start();
        let runtime = Runtime::build(config)?;
        runtime.start_background(None);
        let shared = Arc::new(Shared::new(runtime));
        let (stop_forwards, _) = watch::channel(None);
        let (stop_admin, _) = watch::channel(None);
        let mut forwards = Vec::new();
        let mut forward_loops = Vec::new();
        let mut admin_loop = None;
        let mut admin = None;
        for l in listeners {
            let addr = l.socket.local_addr().map_err(|e| format!("listener address: {e}"))?;
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            match &l.role {
                Role::Forward(name) => {
                    crate::info!("forward {name} listening on {scheme}://{addr}");
                    forwards.push((name.to_string(), addr));
                    forward_loops.push(tokio::spawn(accept_loop(l, shared.clone(), stop_forwards.subscribe())));
                }
                Role::Admin => {
                    crate::info!("admin listening on {scheme}://{addr}");
                    admin = Some(addr);
                    admin_loop = Some(tokio::spawn(accept_loop(l, shared.clone(), stop_admin.subscribe())));
                }
            }
        }
        let (Some(admin), Some(admin_loop)) = (admin, admin_loop) else {
            return Err("admin listener missing".into());
        };
        Ok(Server { shared, forwards, admin, stop_forwards, stop_admin, forward_loops, admin_loop })
    }

    /// The bound address of a forward, by name.
    pub fn forward_addr(&self, name: &str) -> Option<SocketAddr> {
        self.forwards.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops accepting, waits up to `grace` for requests and streams in flight, and returns
    /// whether everything finished in time. The admin port keeps answering (health: 503
    /// "draining") until the forwards are done, so a load balancer sees the drain.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shared.set_draining();
        let _ = self.stop_forwards.send(Some(grace));
        let mut drained = true;
        for l in self.forward_loops {
            drained &= l.await.unwrap_or(false);
        }
        let _ = self.stop_admin.send(Some(Duration::from_secs(1)));
        let _ = self.admin_loop.await;
        drained
    }
}

async fn accept_loop(l: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<Option<Duration>>) -> bool {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head must arrive within `timeout.connect` (slowloris guard); the body and the wait for
    // the model are not bounded by it.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(l.header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let grace = loop {
        tokio::select! {
            accepted = l.socket.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer, &l, &builder, &shared, graceful.watcher()),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    crate::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = stop.changed() => {
                let grace = *stop.borrow();
                if changed.is_err() || grace.is_some() {
                    break grace.unwrap_or(Duration::ZERO);
                }
            }
        }
    };
    // Take what the kernel already queued for us before closing: with SO_REUSEPORT, a listener
    // that closes drops its queue, and a restarted instance beside us must lose no request.
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, l.socket.accept()).await {
        serve(stream, peer, &l, &builder, &shared, graceful.watcher());
    }
    drop(l);
    tokio::time::timeout(grace, graceful.shutdown()).await.is_ok()
}

fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    l: &Listener,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    shared: &Arc<Shared>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let role = l.role.clone();
    let builder = builder.clone();
    let shared = shared.clone();
    let conn = ClientConn { peer, tls: l.tls.is_some() };
    match l.tls.clone() {
        None => {
            tokio::spawn(serve_io(stream, role, builder, shared, conn, watcher));
        }
        Some(acceptor) => {
            let handshake_timeout = l.header_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_io(tls, role, builder, shared, conn, watcher).await,
                    Ok(Err(e)) => crate::debug!("TLS handshake with {peer} failed: {e}"),
                    Err(_) => crate::debug!("TLS handshake with {peer} timed out"),
                }
            });
        }
    }
}

async fn serve_io<I>(
    io: I,
    role: Role,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    conn: ClientConn,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let role = role.clone();
        async move {
            let resp = match &role {
                Role::Forward(name) => crate::proxy::handle(&shared.runtime(), name, conn, req).await,
                Role::Admin => crate::admin::handle(&shared, req).await,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(e) = watcher.watch(builder.serve_connection(TokioIo::new(io), service).into_owned()).await {
        crate::debug!("connection from {} ended: {e}", conn.peer);
    }
}
