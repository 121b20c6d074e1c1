//! Active health checks: a background `GET` per upstream that has `health_check` configured.
//!
//! A failing check (connect error, timeout, or an answer the breaker counts as a failure: 5xx,
//! 429) takes the upstream out of picks; a passing one brings it back. This works beside the passive breaker: the check notices an upstream that
//! is down before a client request has to. The task holds only a weak reference, so it ends by
//! itself when the runtime that owns the upstream is replaced or dropped.

use super::client::HttpClient;
use super::{Target, Upstream};
use crate::config;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Starts the check loop for `upstream` if it has one configured. `proxy` is the outbound
/// proxy the upstream is reached through (that of the first group using it that has one): an
/// upstream reachable only through it must be checked through it.
pub fn spawn(upstream: &Arc<Upstream>, proxy: Option<config::OutboundProxy>) {
    let Some(cfg) = upstream.health_check.clone() else { return };
    let weak = Arc::downgrade(upstream);
    let client = match HttpClient::new(&config::HttpClient {
        agent: crate::config::parse::DEFAULT_AGENT.to_string(),
        keepalive: 60,
        stream: false,
        timeout: config::ClientTimeout { connect: cfg.timeout, request: cfg.timeout, idle: 60 },
        retry: None,
        proxy,
        track_usage: false,
        sse_keepalive: None,
    }) {
        Ok(c) => c,
        Err(e) => {
            crate::warn!("health check of upstream {}: {e}", upstream.name);
            return;
        }
    };
    // A newer loop for the same upstream (its group's proxy changed) replaces this one.
    let generation = upstream.health_loop.fetch_add(1, Ordering::AcqRel) + 1;
    tokio::spawn(run(weak, cfg, client, generation));
}

async fn run(weak: Weak<Upstream>, cfg: config::HealthCheck, client: HttpClient, generation: u64) {
    let mut interval = tokio::time::interval(Duration::from_secs(cfg.interval));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(upstream) = weak.upgrade() else { return };
        if upstream.health_loop.load(Ordering::Acquire) != generation {
            return;
        }
        let outcome = check(&upstream, &cfg, &client).await;
        // Replaced while checking (through an outbound proxy since changed): the newer loop's
        // verdict stands.
        if upstream.health_loop.load(Ordering::Acquire) != generation {
            return;
        }
        let ok = outcome.is_ok();
        if ok {
            upstream.health_passes.inc();
        } else {
            upstream.health_failures.inc();
        }
        let was = upstream.healthy.swap(ok, Ordering::AcqRel);
        match outcome {
            Ok(()) if !was => {
                crate::info!("health check of upstream {} passes again: back in rotation", upstream.name)
            }
            Err(why) if was => {
                crate::warn!("health check of upstream {} failed ({why}): out of rotation", upstream.name)
            }
            Err(why) => crate::debug!("health check of upstream {} still fails: {why}", upstream.name),
            Ok(()) => {}
        }
    }
}

/// One probe: an answer within the timeout that the breaker would not count as a failure (not
/// a 5xx or 429), or why not (logged when the upstream leaves rotation). Any other answer shows
/// the upstream up: a 404 from an upstream configured by a full endpoint URL (whose check path
/// is put behind it), a 401 from one whose clients bring their own keys (the check has none).
pub async fn check(upstream: &Upstream, cfg: &config::HealthCheck, client: &HttpClient) -> Result<(), String> {
    let timeout = Duration::from_secs(cfg.timeout);
    let success = |status: hyper::StatusCode| match crate::proxy::retry::is_failure_status(status.as_u16()) {
        false => Ok(()),
        true => Err(format!("status {}", status.as_u16())),
    };
    let probe = async {
        match &upstream.target {
            Target::Mock(mock) => success(crate::mock::respond(mock, &Method::GET, &cfg.path, b"").await.status()),
            Target::Http(t) => {
                let uri = Uri::builder()
                    .scheme(t.scheme.clone())
                    .authority(t.authority.clone())
                    .path_and_query(t.path_and_query(&cfg.path, None))
                    .build()
                    .map_err(|e| format!("invalid check URL: {e}"))?;
                let mut req = Request::new(Full::new(Bytes::new()));
                *req.uri_mut() = uri;
                req.headers_mut().insert(HOST, t.host_value.clone());
                req.headers_mut().insert(USER_AGENT, HeaderValue::from_static(crate::config::parse::DEFAULT_AGENT));
                crate::proxy::headers::apply_upstream_headers(req.headers_mut(), upstream);
                let resp = client.send(req).await.map_err(|e| super::client::error_chain(&e))?;
                let status = resp.status();
                // Drain so the pooled connection can be reused for the next check.
                let _ = resp.into_body().collect().await;
                success(status)
            }
        }
    };
    tokio::time::timeout(timeout, probe).await.unwrap_or_else(|_| Err(format!("no answer within {}s", cfg.timeout)))
}
