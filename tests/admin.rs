//! The admin configuration API end to end: every change reaches live traffic.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use llmproxy::server::Server;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;

async fn start_admin(yaml: &str, token: Option<&str>) -> Server {
    let config = llmproxy::config::from_str(yaml, &HashMap::<String, String>::new()).unwrap();
    Server::start_with_admin_token(config, token.map(str::to_string)).await.unwrap()
}

async fn api(admin: SocketAddr, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    api_with(admin, method, path, body.map(|b| b.to_string()), None).await
}

async fn api_with(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(format!("http://{admin}/api/v1{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let (status, headers, body) = send(admin, req).await;
    if status == StatusCode::UNAUTHORIZED {
        assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The model the mock behind the default group reports: tells which upstream served.
async fn served_model(addr: SocketAddr, path: &str) -> String {
    let (status, _, body) = get(addr, path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    json_of(&body)["data"][0]["id"].as_str().unwrap().to_string()
}

const BASE: &str = r#"
http_server:
  forwards:
    - {name: main, port: 0, address: 127.0.0.1, default_group: g}
  admin: {port: 0, address: 127.0.0.1}
upstreams:
  - {name: a, url: "mock://", mock: {model: model-a, ttft_ms: 0}, breaker: {threshold: 0.5, cooldown: 600}}
  - {name: other, url: "mock://", mock: {model: model-other, ttft_ms: 0}}
upstream_groups:
  - {name: g, upstreams: [{name: a}]}
  - {name: g2, upstreams: [{name: other}]}
"#;

#[tokio::test]
async fn upstream_crud_follows_live_traffic() {
    let server = start_admin(BASE, None).await;
    let (admin, addr) = (server.admin_addr(), server.forward_addr("main").unwrap());
    assert_eq!(served_model(addr, "/v1/models").await, "model-a");

    let (status, list) = api(admin, Method::GET, "/upstreams", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][0]["status"]["breaker"], "closed");

    let b = json!({"name": "b", "url": "mock://", "mock": {"model": "model-b", "ttft_ms": 0}});
    let (status, created) = api(admin, Method::POST, "/upstreams", Some(b.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["data"]["name"], "b");
    assert_eq!(api(admin, Method::POST, "/upstreams", Some(b)).await.0, StatusCode::CONFLICT);

    let (status, g) =
        api(admin, Method::PATCH, "/upstream-groups/g", Some(json!({"upstreams": [{"name": "b"}]}))).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["data"]["upstreams"][0]["name"], "b");
    assert_eq!(served_model(addr, "/v1/models").await, "model-b", "the next request sees the change");

    let (status, _) = api(
        admin,
        Method::PUT,
        "/upstreams/b",
        Some(json!({"url": "mock://", "mock": {"model": "model-b2", "ttft_ms": 0}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served_model(addr, "/v1/models").await, "model-b2");

    let (status, e) = api(admin, Method::DELETE, "/upstreams/b", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(e["error"]["message"].as_str().unwrap().contains("used by group(s) g"));
    assert_eq!((&e["code"], &e["status"]), (&json!(409), &json!("error")), "LLMProxy's envelope: {e}");
    api(admin, Method::PATCH, "/upstream-groups/g", Some(json!({"upstreams": [{"name": "a"}]}))).await;
    let delete = Request::delete(format!("http://{admin}/api/v1/upstreams/b")).body(Full::default()).unwrap();
    let (status, headers, body) = send(admin, delete).await;
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    assert!(!headers.contains_key("content-type"), "no content, no type");
    assert_eq!(api(admin, Method::GET, "/upstreams/b", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(served_model(addr, "/v1/models").await, "model-a");
}

#[tokio::test]
async fn routes_crud_follows_live_traffic() {
    let server = start_admin(BASE, None).await;
    let (admin, addr) = (server.admin_addr(), server.forward_addr("main").unwrap());
    assert_eq!(served_model(addr, "/v2/models").await, "model-a");
    let (status, r) =
        api(admin, Method::POST, "/forwards/main/routes", Some(json!({"path": "/v2/*", "target_group": "g2"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!((&r["code"], &r["status"]), (&json!(200), &json!("success")), "LLMProxy's envelope: {r}");
    let id = r["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(id, llmproxy::base64::encode_url(b"/v2/*"));
    // LLMProxy's route update names only the target: the path stays.
    let (status, moved) =
        api(admin, Method::PUT, &format!("/forwards/main/routes/{id}"), Some(json!({"target_group": "g"}))).await;
    assert_eq!((status, &moved["data"]["path"]), (StatusCode::OK, &json!("/v2/*")), "{moved}");
    assert_eq!(served_model(addr, "/v2/models").await, "model-a");
    // Empty conditions name nothing, as in the file.
    let back = json!({"target_group": "g2", "model": null, "headers": {}});
    assert_eq!(api(admin, Method::PUT, &format!("/forwards/main/routes/{id}"), Some(back)).await.0, StatusCode::OK);
    assert_eq!(served_model(addr, "/v2/models").await, "model-other");
    let (status, got) = api(admin, Method::GET, &format!("/forwards/main/routes/{id}"), None).await;
    assert_eq!((status, got["data"]["target_group"].as_str()), (StatusCode::OK, Some("g2")));
    assert_eq!(
        api(admin, Method::POST, "/forwards/main/routes", Some(json!({"path": "/v2/*", "target_group": "g"}))).await.0,
        StatusCode::CONFLICT
    );

    // An invalid pattern is a 400 with the reason, never a silent success.
    let (status, e) =
        api(admin, Method::POST, "/forwards/main/routes", Some(json!({"path": "/v1/{x:[}", "target_group": "g"})))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["error"]["message"].as_str().unwrap().contains("routing[1].path"), "{e}");
    let (status, e) =
        api(admin, Method::POST, "/forwards/main/routes", Some(json!({"path": "/v3", "target_group": "ghost"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["error"]["message"].as_str().unwrap().contains("unknown upstream group \"ghost\""));

    let (status, _) = api(
        admin,
        Method::PUT,
        &format!("/forwards/main/routes/{id}"),
        Some(json!({"path": "/v2/models", "target_group": "g2"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served_model(addr, "/v2/models").await, "model-other");
    assert_eq!(served_model(addr, "/v2/other/models").await, "model-a", "the wildcard route is gone");
    let new_id = llmproxy::base64::encode_url(b"/v2/models");
    assert_eq!(api(admin, Method::DELETE, &format!("/forwards/main/routes/{new_id}"), None).await.0, 204);
    assert_eq!(served_model(addr, "/v2/models").await, "model-a");
    assert_eq!(
        api(admin, Method::GET, &format!("/forwards/main/routes/{new_id}"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, forwards) = api(admin, Method::GET, "/forwards", None).await;
    assert_eq!((status, forwards["data"][0]["name"].as_str()), (StatusCode::OK, Some("main")));
}

/// A route on a credential header holds most of a credential: its glob is shown masked, kept
/// out of the route's id, and put back when a GET → PUT round trip sends the mask.
#[tokio::test]
async fn a_route_condition_on_a_credential_header_is_never_shown() {
    let server = start_admin(BASE, None).await;
    let (admin, addr) = (server.admin_addr(), server.forward_addr("main").unwrap());
    let served = |headers: &'static [(&'static str, &'static str)]| async move {
        let mut req = Request::get(format!("http://{addr}/v1/models"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let (_, _, body) = send(addr, req.body(Full::default()).unwrap()).await;
        json_of(&body)["data"][0]["id"].as_str().unwrap().to_string()
    };
    const TEAM_A: &[(&str, &str)] = &[("x-team", "a"), ("authorization", "Bearer sk-team-a1")];
    const TEAM_B: &[(&str, &str)] = &[("x-team", "a"), ("authorization", "Bearer sk-team-b1")];
    let rule = json!({"path": "/v1/*", "headers": {"authorization": "Bearer sk-team-a*", "x-team": "a"}, "target_group": "g2"});
    let (status, added) = api(admin, Method::POST, "/forwards/main/routes", Some(rule)).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let (_, listed) = api(admin, Method::GET, "/forwards/main/routes", None).await;
    let id = listed["data"][0]["id"].as_str().unwrap().to_string();
    let decoded = String::from_utf8(llmproxy::base64::decode_url(&id).unwrap()).unwrap();
    for shown in [added.to_string(), listed.to_string(), decoded] {
        assert!(!shown.contains("sk-team"), "{shown}");
    }
    assert_eq!(listed["data"][0]["headers"], json!({"authorization": "***", "x-team": "a"}));
    assert_eq!(served(TEAM_A).await, "model-other");
    assert_eq!(served(TEAM_B).await, "model-a");

    // What a GET showed, sent back with another target: the glob is the one it was.
    let mut edited = listed["data"][0].clone();
    edited["target_group"] = json!("g");
    let (status, replaced) = api(admin, Method::PUT, &format!("/forwards/main/routes/{id}"), Some(edited)).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(server.shared.runtime().config.http_server.forwards[0].routing[0].headers[0].1, "Bearer sk-team-a*");
    assert_eq!(served(TEAM_A).await, "model-a", "now routed to g");
    // A mask with nothing to stand for is refused, never stored as the glob `***`.
    let masked = json!({"path": "/v2/*", "headers": {"x-api-key": "***"}, "target_group": "g2"});
    assert_eq!(api(admin, Method::POST, "/forwards/main/routes", Some(masked)).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn errors_have_real_statuses() {
    let server = start_admin(BASE, None).await;
    let admin = server.admin_addr();
    let (status, e) = api_with(admin, Method::POST, "/upstreams", Some("{not json".into()), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["error"]["message"].as_str().unwrap().starts_with("malformed JSON"));
    let (status, e) =
        api(admin, Method::PATCH, "/upstream-groups/g", Some(json!({"upstreams": [{"name": "a", "weight": 0}]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("upstream_groups[0].upstreams[0].weight: 0 is out of range"),
        "{e}"
    );
    let (status, e) =
        api(admin, Method::POST, "/upstreams", Some(json!({"name": "x", "url": "mock://", "colour": "red"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["error"]["message"].as_str().unwrap().contains("unknown key \"colour\""), "{e}");
    assert_eq!(api(admin, Method::GET, "/upstreams/ghost", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api(admin, Method::PATCH, "/upstream-groups/ghost", Some(json!({}))).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api(admin, Method::GET, "/forwards/ghost/routes", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api(admin, Method::GET, "/nothing", None).await.0, StatusCode::NOT_FOUND);
    // Over 1 MiB is refused as too large, in the envelope.
    let (status, e) = api_with(admin, Method::POST, "/upstreams", Some("x".repeat(1024 * 1024 + 1)), None).await;
    assert_eq!((status, &e["code"]), (StatusCode::PAYLOAD_TOO_LARGE, &json!(413)), "{e}");
    // A refused method names those the path answers; a HEAD is answered as its GET.
    let delete = Request::delete(format!("http://{admin}/api/v1/upstreams")).body(Full::default()).unwrap();
    assert_eq!(send(admin, delete).await.1["allow"], "GET, HEAD, POST");
    let head = Request::head(format!("http://{admin}/api/v1/upstreams")).body(Full::default()).unwrap();
    let (status, headers, body) = send(admin, head).await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap(), body.len()),
        (StatusCode::OK, "application/json", 0)
    );
    // Every error comes in LLMProxy's envelope, its code the HTTP status.
    for (method, path, status) in [(Method::GET, "/nothing", 404), (Method::DELETE, "/upstreams", 405)] {
        let (got, e) = api(admin, method, path, None).await;
        assert_eq!((got.as_u16(), &e["code"], &e["status"]), (status, &json!(status), &json!("error")), "{e}");
    }
    assert_eq!(api(admin, Method::DELETE, "/upstreams", None).await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api(admin, Method::GET, "/forwards/main/routes/%%%", None).await.0, StatusCode::BAD_REQUEST);
    // Nothing above changed the running configuration.
    assert_eq!(server.shared.runtime().config.upstreams.len(), 2);
}

#[tokio::test]
async fn the_token_is_required_when_set() {
    let server = start_admin(BASE, Some("admin-s3cret")).await;
    let admin = server.admin_addr();
    assert_eq!(api_with(admin, Method::GET, "/upstreams", None, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api_with(admin, Method::GET, "/upstreams", None, Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api_with(admin, Method::GET, "/upstreams", None, Some("admin-s3cret")).await.0, StatusCode::OK);
    // Health, metrics and the API description stay open.
    assert_eq!(get(admin, "/health").await.0, 200);
    assert_eq!(get(admin, "/metrics").await.0, 200);
    let (status, _, doc) = get(admin, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(json_of(&doc)["paths"]["/upstreams"].is_object());
}

#[tokio::test]
async fn secrets_are_masked_and_masks_sent_back_keep_them() {
    let up = TestUpstream::start().await;
    let yaml = group_config(
        &[(
            "secret",
            up.url("/v1"),
            "    auth: {type: bearer, token: sk-live-123}\n    headers: [{op: replace, key: x-api-key, value: ak-456}]",
        )],
        "    http_client: {proxy: {url: \"http://pu:proxy-pw@127.0.0.1:9\", enabled: false}}",
    );
    let server = start_admin(&yaml, None).await;
    let (admin, addr) = (server.admin_addr(), server.forward_addr("main").unwrap());
    let mut everything = String::new();
    for path in ["/upstreams", "/upstreams/secret", "/upstream-groups", "/upstream-groups/g", "/forwards"] {
        let (status, v) = api(admin, Method::GET, path, None).await;
        assert_eq!(status, 200);
        everything.push_str(&v.to_string());
    }
    for secret in ["sk-live-123", "ak-456"] {
        assert!(!everything.contains(secret), "{secret} leaked: {everything}");
    }
    let (_, shown) = api(admin, Method::GET, "/upstreams/secret", None).await;
    assert_eq!(shown["data"]["auth"]["token"], "***");
    // GET → edit → PUT with the masks (and the live `status` the GET added): the secrets stay
    // what they were.
    let mut edited = shown["data"].clone();
    assert!(edited["status"].is_object());
    edited["weight"] = json!(3);
    let (status, v) = api(admin, Method::PUT, "/upstreams/secret", Some(edited)).await;
    assert_eq!(status, 200, "{v}");
    let (_, _, body) = get(addr, "/v1/echo").await;
    let echoed = json_of(&body);
    assert_eq!(echoed["headers"]["authorization"][0], "Bearer sk-live-123");
    assert_eq!(echoed["headers"]["x-api-key"][0], "ak-456");
    assert_eq!(server.shared.runtime().config.upstreams[0].weight, 3);
    assert_eq!(server.shared.runtime().groups[0].members[0].weight, 3, "a group that set none takes it");
    // A mask has nothing to stand for in something new: copied from a GET, it is refused.
    let mut copy = shown["data"].clone();
    copy["name"] = json!("copy");
    let (status, v) = api(admin, Method::POST, "/upstreams", Some(copy)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("auth.token"), "{v}");
    let key = json!({"name": "copied", "key": "***"});
    let (status, v) = api(admin, Method::POST, "/forwards/main/keys", Some(key)).await;
    assert_eq!(status, 400, "a key anyone could guess: {v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("key: "), "{v}");
}

#[tokio::test]
async fn unchanged_upstreams_keep_their_breaker_state() {
    let server = start_admin(BASE, None).await;
    let admin = server.admin_addr();
    let a = server.shared.runtime().upstreams[0].clone();
    let breaker = a.breaker.as_ref().unwrap();
    for _ in 0..5 {
        let (adm, _) = breaker.admit(llmproxy::clock::now());
        breaker.record(adm, false, llmproxy::clock::now());
    }
    let (_, v) = api(admin, Method::GET, "/upstreams/a", None).await;
    assert_eq!(v["data"]["status"]["breaker"], "open");
    api(admin, Method::POST, "/upstreams", Some(json!({"name": "c", "url": "mock://"}))).await;
    let (_, v) = api(admin, Method::GET, "/upstreams/a", None).await;
    assert_eq!(v["data"]["status"]["breaker"], "open", "state survives an unrelated change");
    assert!(std::sync::Arc::ptr_eq(&server.shared.runtime().upstreams[0], &a));
    assert_eq!(
        get(server.forward_addr("main").unwrap(), "/v1/models").await.0,
        503,
        "traffic still sees the open breaker"
    );
}

#[tokio::test]
async fn a_reload_moves_the_admin_listener_all_or_nothing() {
    let server = start_admin(BASE, None).await;
    let old = server.admin_addr();
    let reload = |admin: &str| {
        let yaml = BASE.replace("admin: {port: 0, address: 127.0.0.1}", admin);
        server.reload(llmproxy::config::from_str(&yaml, &HashMap::<String, String>::new()).unwrap())
    };
    // A port another process holds: the reload is rejected and the admin port stays.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = reload(&format!("admin: {{port: {port}, address: 127.0.0.1}}")).unwrap_err();
    assert!(err.contains(&port.to_string()), "{err}");
    assert_eq!(server.admin_addr(), old);
    assert_eq!(get(old, "/health").await.0, 200);

    // A free one: the admin API answers there, and the old listener closes.
    drop(taken);
    reload(&format!("admin: {{port: {port}, address: 127.0.0.1}}")).unwrap();
    assert_eq!(server.admin_addr().port(), port);
    assert_eq!(get(server.admin_addr(), "/health").await.0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::net::TcpStream::connect(old).await.is_ok() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(tokio::net::TcpStream::connect(old).await.is_err(), "the old admin listener closed");
}
