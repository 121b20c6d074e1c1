//! Listeners, connection serving, reload and graceful shutdown.
//!
//! Each forward and the admin port get a listener and an accept loop. HTTP/1.1 on plain-TCP
//! forwards — nearly all traffic — is served by the proxy's own server (`http1`); HTTP/2 by
//! prior knowledge, TLS listeners (HTTP/2 or HTTP/1.1 by ALPN) and the admin port by hyper-util's
//! auto builder. A reload binds listeners for new forwards (and a changed admin port), swaps the
//! runtime, and drains the listeners of removed ones. Shutdown stops accepting, lets requests
//! and streams in flight finish (each connection closes after its current response), and gives
//! up after the grace period.

pub mod drain;
pub mod http1;
pub mod idle;
pub mod listener;
pub mod sd_notify;
pub mod tls;

use crate::config::{self, Config};
use crate::proxy::ClientConn;
use crate::runtime::{Runtime, Shared};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How long a connection hyper serves may take to begin its first request once a drain began.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// A listener a reload retired drains without a deadline of its own: its requests and streams
/// finish as they would have (each bounded by its own timeouts), and the task that waits for
/// them keeps running until they have — a shutdown meanwhile waits for them under its own
/// deadline. A deadline here would only stop the tracking: the connections would run on
/// unseen, and a shutdown would not wait for them.
const RETIRED_DRAIN: Duration = Duration::MAX;

/// A running gateway: its listeners and the shared runtime.
pub struct Server {
    pub shared: Arc<Shared>,
    forwards: Mutex<Vec<Bound<config::Forward>>>,
    admin: Mutex<Bound<config::Admin>>,
    /// Accept loops of listeners a reload removed or replaced, finishing their requests and
    /// streams.
    retired: Mutex<Vec<JoinHandle<bool>>>,
}

/// An accept loop and the handle that stops it.
struct Running {
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<bool>,
}

impl Running {
    fn stop(self, grace: Duration) -> JoinHandle<bool> {
        let _ = self.stop.send(Some(grace));
        self.task
    }
}

/// A listener serving: a forward's (`C` = [`config::Forward`]) or the admin port's.
struct Bound<C> {
    /// What the listener was made from: a reload replaces it when this changes.
    config: C,
    addr: SocketAddr,
    running: Running,
    tls: Option<Arc<tls::CertSlot>>,
}

impl<C> Bound<C> {
    fn start(l: Listener, config: C, shared: &Arc<Shared>) -> Result<Self, String> {
        let tls = l.tls.clone();
        let (addr, running) = spawn(l, shared)?;
        Ok(Bound { config, addr, running, tls })
    }
}

#[derive(Clone)]
enum Role {
    Forward(Arc<str>),
    Admin,
}

struct Listener {
    role: Role,
    socket: TcpListener,
    tls: Option<Arc<tls::CertSlot>>,
    header_timeout: Duration,
}

impl Listener {
    /// Binds `address:port` and reads the TLS files, if any.
    fn open(role: Role, address: IpAddr, port: u16, tls: Option<&config::Tls>, connect: u64) -> Result<Self, String> {
        Ok(Listener {
            role,
            socket: listener::bind(SocketAddr::new(address, port))?,
            tls: tls.map(tls::CertSlot::load).transpose()?,
            header_timeout: Duration::from_secs(connect),
        })
    }
}

fn forward_listener(f: &config::Forward) -> Result<Listener, String> {
    Listener::open(Role::Forward(f.name.as_str().into()), f.address, f.port, f.tls.as_ref(), f.timeout.connect)
}

fn admin_listener(a: &config::Admin) -> Result<Listener, String> {
    Listener::open(Role::Admin, a.address, a.port, a.tls.as_ref(), a.timeout.connect)
}

/// Says so when the configuration API is reachable from other hosts yet unprotected — it then
/// answers only this host (see `admin`), which an operator scripting it remotely must know.
fn note_admin_exposure(a: &config::Admin, shared: &Shared) {
    if shared.admin_token.is_none() && !a.address.is_loopback() {
        crate::warn!(
            "admin listens on {} without {}: /api/v1 answers only clients on this host (/health and /metrics answer all)",
            a.address,
            config::ADMIN_TOKEN_VAR
        );
    }
}

/// The certificate a kept TLS listener is to serve after a reload, read again from its files.
fn renewal(slot: Option<&Arc<tls::CertSlot>>) -> Result<Option<(Arc<tls::CertSlot>, TlsAcceptor)>, String> {
    slot.map(|slot| Ok((slot.clone(), tls::acceptor(&slot.files)?))).transpose()
}

/// The parts of a forward that its listener depends on (the rest is read per request from the
/// runtime, so changing it needs no new listener).
fn same_listener(a: &config::Forward, b: &config::Forward) -> bool {
    a.name == b.name && a.address == b.address && a.port == b.port && a.tls == b.tls && a.timeout == b.timeout
}

fn spawn(l: Listener, shared: &Arc<Shared>) -> Result<(SocketAddr, Running), String> {
    let addr = l.socket.local_addr().map_err(|e| format!("listener address: {e}"))?;
    let scheme = if l.tls.is_some() { "https" } else { "http" };
    match &l.role {
        Role::Forward(name) => crate::info!("forward {name} listening on {scheme}://{addr}"),
        Role::Admin => crate::info!("admin listening on {scheme}://{addr}"),
    }
    let (stop, rx) = watch::channel(None);
    let task = tokio::spawn(accept_loop(l, shared.clone(), rx));
    Ok((addr, Running { stop, task }))
}

impl Server {
    /// Compiles the runtime, binds every listener (all or nothing), and starts serving.
    pub async fn start(config: Config) -> Result<Server, String> {
        Self::start_with_admin_token(config, std::env::var(config::ADMIN_TOKEN_VAR).ok().filter(|t| !t.is_empty()))
            .await
    }

    /// As [`Server::start`], with the admin API token given rather than read from the
    /// environment (tests run in parallel and must not share process state).
    pub async fn start_with_admin_token(config: Config, admin_token: Option<String>) -> Result<Server, String> {
        crate::metrics::process::mark_start();
        let forward_sockets =
            config.http_server.forwards.iter().map(forward_listener).collect::<Result<Vec<_>, _>>()?;
        let admin_socket = admin_listener(&config.http_server.admin)?;
        let (forward_configs, admin_config) = (config.http_server.forwards.clone(), config.http_server.admin.clone());
        let runtime = Runtime::build(config)?;
        runtime.start_background(None);
        let shared = Arc::new(Shared::new(runtime, admin_token));
        let forwards = forward_sockets
            .into_iter()
            .zip(forward_configs)
            .map(|(l, cfg)| Bound::start(l, cfg, &shared))
            .collect::<Result<Vec<_>, _>>()?;
        note_admin_exposure(&admin_config, &shared);
        let admin = Bound::start(admin_socket, admin_config, &shared)?;
        Ok(Server { shared, forwards: Mutex::new(forwards), admin: Mutex::new(admin), retired: Mutex::default() })
    }

    /// The bound address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.lock_admin().addr
    }

    /// The bound address of a forward, by name.
    pub fn forward_addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock_forwards().iter().find(|f| f.config.name == name).map(|f| f.addr)
    }

    /// (forward name, bound address), in configuration order.
    pub fn forward_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.lock_forwards().iter().map(|f| (f.config.name.clone(), f.addr)).collect()
    }

    fn lock_forwards(&self) -> std::sync::MutexGuard<'_, Vec<Bound<config::Forward>>> {
        self.forwards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_admin(&self) -> std::sync::MutexGuard<'_, Bound<config::Admin>> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a configuration read from the file: binds listeners for new or moved forwards
    /// and for a changed admin port, and reads every TLS certificate again (a failure rejects
    /// the whole reload), swaps the runtime, renews the certificates of the listeners kept, then
    /// drains the listeners that are gone or replaced.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let mut forwards = self.lock_forwards();
        let mut fresh = Vec::new();
        let mut renewed = Vec::new();
        for f in &config.http_server.forwards {
            match forwards.iter().find(|old| same_listener(&old.config, f)) {
                Some(kept) => renewed.extend(renewal(kept.tls.as_ref())?),
                // The old listener of a moved forward still holds the port: with SO_REUSEPORT the
                // new one can bind beside it, and the old one drains once the swap is done.
                None => fresh.push((forward_listener(f)?, f.clone())),
            }
        }
        let mut admin = self.lock_admin();
        let new_admin = if config.http_server.admin == admin.config {
            renewed.extend(renewal(admin.tls.as_ref())?);
            None
        } else {
            Some((admin_listener(&config.http_server.admin)?, config.http_server.admin.clone()))
        };
        let new_forwards = config.http_server.forwards.clone();
        let file = Arc::new(config.clone());
        // Compared under the update's lock, so an API change landing meanwhile is not replaced
        // unreported.
        let mut diverged = false;
        self.shared.update(|running| {
            diverged = self.shared.differs_from_file(&running.config);
            Ok::<_, String>(config)
        })?;
        self.shared.set_file_config(file);
        if diverged {
            crate::warn!("reload: changes made through the admin API since the last load are replaced by the file");
        }
        for (slot, acceptor) in renewed {
            slot.replace(acceptor);
        }
        let (keep, gone): (Vec<_>, Vec<_>) =
            forwards.drain(..).partition(|old| new_forwards.iter().any(|f| same_listener(&old.config, f)));
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|t| !t.is_finished());
        for old in gone {
            crate::info!("forward {} removed or changed: draining its listener on {}", old.config.name, old.addr);
            retired.push(old.running.stop(RETIRED_DRAIN));
        }
        *forwards = keep;
        for (l, cfg) in fresh {
            forwards.push(Bound::start(l, cfg, &self.shared)?);
        }
        if let Some((l, cfg)) = new_admin {
            note_admin_exposure(&cfg, &self.shared);
            let old = std::mem::replace(&mut *admin, Bound::start(l, cfg, &self.shared)?);
            crate::info!("http_server.admin changed: draining the admin listener on {}", old.addr);
            retired.push(old.running.stop(RETIRED_DRAIN));
        }
        // Configuration order, so `forward_addrs` lists what the file lists.
        forwards.sort_by_key(|f| new_forwards.iter().position(|n| n.name == f.config.name));
        Ok(())
    }

    /// Stops accepting, waits up to `grace` for requests and streams in flight, and returns
    /// whether everything finished in time. The admin port keeps answering (health: 503
    /// "draining") until the forwards are done, so a load balancer sees the drain — unless
    /// another instance shares it, which then answers instead.
    pub async fn shutdown(self, grace: Duration) -> bool {
        // An instance started beside this one (a zero-downtime restart) shares the admin port:
        // from now on it answers health checks, scrapes and the API — a load balancer must not
        // see this one's "draining" for a host that keeps serving. Handed over before the drain
        // begins, so the requests still queued here are answered as from a serving host.
        let mut admin = Some(self.admin.into_inner().unwrap_or_else(|p| p.into_inner()));
        if let Some(a) = admin.take_if(|a| listener::others_listen_on(a.addr)) {
            let _ = a.running.stop(Duration::from_secs(1)).await;
            crate::info!("another instance listens on the admin address {}: it answers from now on", a.addr);
        }
        self.shared.set_draining();
        let forwards = std::mem::take(&mut *self.forwards.lock().unwrap_or_else(|p| p.into_inner()));
        let mut tasks: Vec<_> = forwards.into_iter().map(|f| f.running.stop(grace)).collect();
        // Listeners a reload retired may still be finishing streams: they are waited for too.
        tasks.append(&mut self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        let waited = tokio::time::timeout(grace, async {
            let mut drained = true;
            for t in tasks {
                drained &= t.await.unwrap_or(false);
            }
            drained
        });
        let drained = waited.await.unwrap_or(false);
        if let Some(a) = admin {
            let _ = a.running.stop(Duration::from_secs(1)).await;
        }
        drained
    }
}

async fn accept_loop(l: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<Option<Duration>>) -> bool {
    let drain = drain::Drain::default();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head must arrive within `timeout.connect` (slowloris guard, see `idle`); the body and
    // the wait for the model are not bounded by it.
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
    // The head limits of the proxy's own HTTP/1.1 server hold on hyper's HTTP/1.1 connections too
    // (HTTP/2 keeps hyper's tighter 16 KiB header list: a connection can carry 200 streams).
    builder.http1().max_buf_size(http1::request::MAX_HEAD).max_headers(http1::request::MAX_HEADERS);
    let builder = Arc::new(builder);
    let grace = loop {
        tokio::select! {
            accepted = l.socket.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer, &l, &builder, &shared, drain.watcher()),
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
        serve(stream, peer, &l, &builder, &shared, drain.watcher());
    }
    drop(l);
    tokio::time::timeout(grace, drain.drain()).await.is_ok()
}

fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    l: &Listener,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    shared: &Arc<Shared>,
    watcher: watch::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let role = l.role.clone();
    let builder = builder.clone();
    let shared = shared.clone();
    let conn = ClientConn::new(peer, l.tls.is_some());
    let idle_limit = l.header_timeout;
    match (l.tls.as_ref().map(|slot| slot.current()), role) {
        (None, Role::Forward(name)) => {
            tokio::spawn(serve_plain_forward(stream, name, builder, shared, conn, watcher, idle_limit));
        }
        (None, role) => {
            tokio::spawn(serve_io(stream, role, builder, shared, conn, watcher, idle_limit));
        }
        (Some(acceptor), role) => {
            let handshake_timeout = l.header_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_io(tls, role, builder, shared, conn, watcher, idle_limit).await,
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
    drain: watch::Receiver<()>,
    idle_limit: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = idle::Activity::new();
    let requests = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let role = role.clone();
        let conn = conn.clone();
        let busy = requests.begin();
        async move {
            // The request's future (some kilobytes) is boxed once here; hyper moves the future it
            // is given several times per request, and that one is now a few hundred bytes.
            let resp = match &role {
                Role::Forward(name) => {
                    let (head, body) = crate::message::RequestHead::split(req);
                    let body = idle::Stalling::new(body, idle_limit);
                    Box::pin(crate::proxy::handle(&shared.runtime(), name, conn, head, body)).await.into_response()
                }
                Role::Admin => Box::pin(crate::admin::handle(&shared, req, conn.peer.ip())).await,
            };
            Ok::<_, Infallible>(resp.map(|body| idle::Tracked::new(body, busy)))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service).into_owned();
    // A drain waits for every receiver to drop; `interrupts` drops its own when it fires, so this
    // one keeps the connection counted until it has closed.
    let _draining = drain.clone();
    // hyper's graceful shutdown closes a connection that has not begun a request at once, even
    // when the request is on its way (TLS handshake just done, or accepted in the drain's last
    // sweep): such a connection gets a moment to begin one.
    let side = interrupts(drain, activity, idle_limit, FIRST_REQUEST_GRACE);
    let outcome = drain::Guarded::new(connection, side, |c| c.graceful_shutdown());
    match outcome.await {
        Some(Ok(())) => {}
        Some(Err(e)) => crate::debug!("connection from {peer} ended: {e}"),
        None => closed_idle(peer, idle_limit),
    }
}

/// A plain-TCP forward connection: HTTP/1.1 served by `http1`, HTTP/2 by prior knowledge by
/// hyper.
async fn serve_plain_forward(
    stream: tokio::net::TcpStream,
    forward: Arc<str>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    conn: ClientConn,
    drain: watch::Receiver<()>,
    idle_limit: Duration,
) {
    let peer = conn.peer;
    let mut draining = drain.clone();
    let sniffed = {
        let mut sniff = std::pin::pin!(tokio::time::timeout(idle_limit, http1::looks_like_h2(&stream)));
        tokio::select! {
            biased;
            sniffed = &mut sniff => sniffed,
            // A connection that has not said a word yet does not hold up a drain; one whose
            // first request has arrived (perhaps unreported yet: accepted in the drain's last
            // sweep) is answered.
            _ = draining.changed() => {
                if !http1::has_input(&stream) {
                    return;
                }
                sniff.await
            }
        }
    };
    match sniffed {
        Ok(Ok(false)) => {}
        Ok(Ok(true)) => {
            let role = Role::Forward(forward);
            return serve_io(stream, role, builder, shared, conn, drain, idle_limit).await;
        }
        Ok(Err(_)) => return,
        Err(_) => return closed_idle(peer, idle_limit),
    }
    let activity = idle::Activity::new();
    let closing = Arc::new(AtomicBool::new(false));
    let connection = http1::serve(
        stream,
        http1::Connection { shared, forward, conn, activity: activity.clone(), closing: closing.clone(), idle_limit },
    );
    let _draining = drain.clone();
    let on_drain = move |_: std::pin::Pin<&mut _>| closing.store(true, Ordering::Relaxed);
    // The HTTP/1.1 server answers a request that has arrived by itself (see `http1::next_head`).
    let side = interrupts(drain, activity, idle_limit, Duration::ZERO);
    if drain::Guarded::new(connection, side, on_drain).await.is_none() {
        closed_idle(peer, idle_limit);
    }
}

/// What may end a connection early: the listener's drain, or `idle_limit` without a request
/// (also during the drain). On a drain, a connection that has not begun any request yet is
/// given up to `first_request` to begin one.
fn interrupts(
    mut drain: watch::Receiver<()>,
    activity: Arc<idle::Activity>,
    idle_limit: Duration,
    first_request: Duration,
) -> drain::Interrupts {
    let starting = activity.clone();
    let drained = async move {
        let _ = drain.changed().await;
        if !first_request.is_zero() {
            let _ = tokio::time::timeout(first_request.min(idle_limit), starting.first_request()).await;
        }
    };
    drain::Interrupts::new(drained, idle::expired(activity, idle_limit))
}

fn closed_idle(peer: SocketAddr, idle_limit: Duration) {
    crate::debug!("closed the connection from {peer}: no request for {}s (timeout.connect)", idle_limit.as_secs());
}
