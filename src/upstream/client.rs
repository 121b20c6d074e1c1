//! The pooled HTTP client of an upstream group: HTTP/1.1, TLS with the webpki roots compiled in
//! (a static binary on a bare host trusts public CAs) and those `SSL_CERT_FILE` adds, connect
//! timeout (over the whole connect: TCP, the proxy's handshake and TLS), TCP keepalive, pool
//! idle timeout, and an optional outbound proxy (HTTP CONNECT or SOCKS5).
//! Plain `http://` upstreams reached without a proxy use [`super::direct`] instead, which is
//! cheaper per request; everything else goes through this client.

use crate::body::BoxError;
use crate::config;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type Pool<C> = Client<ConnectWithin<HttpsConnector<C>>, Full<Bytes>>;

/// One concrete client type per way of reaching the network; a trait object would cost a box per
/// connection attempt and hide the types hyper needs to see.
pub enum HttpClient {
    Direct(Pool<HttpConnector>),
    Tunnel(Pool<Tunnel<HttpConnector>>),
    Socks(Pool<SocksV5<HttpConnector>>),
}

impl HttpClient {
    pub fn new(cfg: &config::HttpClient) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(cfg.timeout.connect)));
        tcp.set_keepalive((cfg.keepalive > 0).then(|| Duration::from_secs(cfg.keepalive)));
        let tls = tls_config()?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(cfg.timeout.idle))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let limit = Duration::from_secs(cfg.timeout.connect);
        // HTTP/1.1 only: hyper-util's pool keeps one HTTP/2 connection per host and opens no
        // second one when the server's concurrent-stream limit (often 100) is reached — with
        // answers that stream for minutes, the requests beyond it would queue until
        // `timeout.request`. Over HTTP/1.1 the pool opens connections as they are needed.
        let https = |tls: rustls::ClientConfig| {
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1()
        };
        let Some(proxy) = &cfg.proxy else {
            return Ok(HttpClient::Direct(builder.build(ConnectWithin::new(https(tls).wrap_connector(tcp), limit))));
        };
        let uri: Uri = proxy.url.parse().map_err(|e| format!("proxy url: {e}"))?;
        let (userinfo, host_port) = match uri.authority().map(|a| a.as_str()) {
            Some(a) => match a.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h.to_string()),
                None => (None, a.to_string()),
            },
            None => return Err("proxy url has no host".into()),
        };
        let scheme = uri.scheme_str().unwrap_or("http");
        // The proxy's address as an `http://` URI; SOCKS's own port, 1080, when none is given.
        let host_port = match uri.port_u16() {
            None if scheme.starts_with("socks") => format!("{host_port}:1080"),
            _ => host_port,
        };
        let dst: Uri = format!("{}://{host_port}", if scheme.starts_with("socks") { "http" } else { scheme })
            .parse()
            .map_err(|e| format!("proxy url: {e}"))?;
        // Userinfo is percent-encoded in a URL (a password with `/`, `@` or `:` must be).
        let credentials = userinfo.as_deref().map(|u| match u.split_once(':') {
            Some((user, pass)) => (crate::percent::decode(user), crate::percent::decode(pass)),
            None => (crate::percent::decode(u), String::new()),
        });
        if scheme.starts_with("socks5") {
            let mut socks = SocksV5::new(dst, tcp).local_dns(scheme == "socks5");
            if let Some((user, pass)) = credentials {
                // RFC 1929 gives each a one-byte length.
                if user.len() > 255 || pass.len() > 255 {
                    return Err("SOCKS5 user name and password must be at most 255 bytes each".into());
                }
                socks = socks.with_auth(user, pass);
            }
            Ok(HttpClient::Socks(builder.build(ConnectWithin::new(https(tls).wrap_connector(socks), limit))))
        } else {
            let mut tunnel = Tunnel::new(dst, tcp);
            if let Some((user, pass)) = credentials {
                let value = format!("Basic {}", crate::base64::encode(format!("{user}:{pass}").as_bytes()));
                let header = hyper::header::HeaderValue::from_str(&value)
                    .map_err(|_| "proxy credentials are not valid".to_string())?;
                tunnel = tunnel.with_auth(header);
            }
            Ok(HttpClient::Tunnel(builder.build(ConnectWithin::new(https(tls).wrap_connector(tunnel), limit))))
        }
    }

    /// Sends `req`. As [`super::direct::DirectPool::send`] does, an idempotent request whose
    /// connection closed before any answer — a pooled connection the upstream let go as the
    /// request went out — is sent once more; hyper itself does so only for a request it had not
    /// written yet.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
        let again = req.method().is_idempotent().then(|| copy(&req));
        match self.send_once(req).await {
            Err(e) if closed_before_answer(&e) => match again {
                Some(req) => self.send_once(req).await,
                None => Err(e),
            },
            sent => sent,
        }
    }

    async fn send_once(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
        match self {
            HttpClient::Direct(c) => c.request(req).await,
            HttpClient::Tunnel(c) => c.request(req).await,
            HttpClient::Socks(c) => c.request(req).await,
        }
    }
}

fn copy(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Whether the error says the connection closed (or was reset) before an answer came.
fn closed_before_answer(e: &Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message)
            || s.downcast_ref::<std::io::Error>().is_some_and(super::direct::closed)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The innermost cause of a client error: hyper-util's own message ("client error (Connect)")
/// says less than the refused connection or failed handshake under it.
pub fn error_chain(e: &Error) -> String {
    use std::error::Error;
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

/// A connector whose whole connect — TCP, the proxy's CONNECT or SOCKS5 exchange, the TLS
/// handshake — must finish within `timeout.connect`. hyper's own connect timeout covers only
/// TCP: a proxy or upstream that accepts and then stalls would hold the attempt until
/// `timeout.request`, and a connect that lost its race to a pooled connection (which hyper
/// finishes in the background) would never end.
#[derive(Clone)]
pub struct ConnectWithin<C> {
    inner: C,
    limit: Duration,
}

impl<C> ConnectWithin<C> {
    fn new(inner: C, limit: Duration) -> Self {
        ConnectWithin { inner, limit }
    }
}

impl<C> tower_service::Service<Uri> for ConnectWithin<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (connecting, limit) = (self.inner.call(uri), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(format!("connect did not finish within {}s (timeout.connect)", limit.as_secs()).into()),
            }
        })
    }
}

/// Client TLS with the `ring` provider (builds for musl without cmake), trusting the webpki
/// roots and any of `SSL_CERT_FILE` ([`super::trust`]).
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = super::trust::roots();
    // ALPN (h2, http/1.1) is set by hyper-rustls from enable_http1/enable_http2.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}
