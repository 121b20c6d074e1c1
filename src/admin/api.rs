//! The configuration API under `/api/v1` (JSON).
//!
//! Reads render the running configuration with secrets masked. Every change is applied to the
//! running configuration's tree, validated exactly like the file (same paths in the errors),
//! compiled, and swapped in atomically: requests in flight finish on the old snapshot, the next
//! request sees the new one, and unchanged upstreams keep their breaker and load state. Values
//! sent to the API are literal (no `${VAR}` expansion). A reload (SIGHUP) re-reads the file and
//! replaces API changes that the file does not have.

use super::redact::{redact, restore};
use crate::base64;
use crate::body::{full, BoxError, ProxyBody};
use crate::config::{self, Literal};
use crate::error::ApiError;
use crate::runtime::{Runtime, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use std::sync::Arc;

/// Configuration documents are small; anything larger is a mistake.
const MAX_BODY: usize = 1024 * 1024;

type Reply = Result<(StatusCode, Value), ApiError>;

pub async fn handle<B>(shared: &Shared, req: Request<B>) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::body_too_large(MAX_BODY as u64).into_admin_response()
        }
        // The client broke off: it will not read an answer, but one that says so is still true.
        Err(_) => return ApiError::bad_request("the request body could not be read").into_admin_response(),
    };
    let path = parts.uri.path().strip_prefix("/api/v1").unwrap_or("");
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(crate::percent::decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match route(shared, &parts.method, &segments, &body) {
        // A deletion answers as LLMProxy's did: no content.
        Ok((StatusCode::NO_CONTENT, _)) => {
            let mut resp = Response::new(full(String::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Ok((status, data)) => {
            // LLMProxy's envelope, whose `code` is 200 on every success (a creation included).
            let envelope = json!({ "code": 200, "status": "success", "data": data });
            let mut resp = Response::new(full(envelope.to_string()));
            *resp.status_mut() = status;
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            let refused_method = e.status == StatusCode::METHOD_NOT_ALLOWED;
            let mut resp = e.into_admin_response();
            if let Some(methods) = allowed(&segments).filter(|_| refused_method) {
                resp.headers_mut().insert(ALLOW, HeaderValue::from_static(methods));
            }
            resp
        }
    }
}

/// A deletion done: 204 and no body.
fn deleted() -> Reply {
    Ok((StatusCode::NO_CONTENT, Value::Null))
}

/// The methods an API path answers (for 405's `Allow`), or `None` for a path it does not have.
fn allowed(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["forwards"] | ["forwards", _] | ["upstream-groups"] => "GET, HEAD",
        ["forwards", _, "routes" | "keys"] | ["upstreams"] => "GET, HEAD, POST",
        ["forwards", _, "routes", _] | ["upstreams", _] => "GET, HEAD, PUT, DELETE",
        ["forwards", _, "keys", _] => "DELETE",
        ["upstream-groups", _] => "GET, HEAD, PATCH",
        _ => return None,
    })
}

fn route(shared: &Shared, method: &Method, segments: &[&str], body: &[u8]) -> Reply {
    let rt = shared.runtime();
    // A HEAD is answered as its GET, without the body (the server leaves it out).
    let method = if method == Method::HEAD { &Method::GET } else { method };
    match (segments, method) {
        (["forwards"], &Method::GET) => ok(rt.config.http_server.forwards.iter().map(masked).collect()),
        (["forwards", name], &Method::GET) => ok(masked(forward(&rt, name)?)),
        (["forwards", name, "routes"], &Method::GET) => {
            ok(forward(&rt, name)?.routing.iter().map(route_json).collect::<Vec<_>>().into())
        }
        (["forwards", name, "routes"], &Method::POST) => add_route(shared, name, body),
        (["forwards", name, "routes", id], &Method::GET) => {
            let key = route_key(id)?;
            let r = forward(&rt, name)?.routing.iter().find(|r| r.key() == key).ok_or_else(|| no_route(name, &key))?;
            ok(route_json(r))
        }
        (["forwards", name, "routes", id], &Method::PUT) => replace_route(shared, name, id, body),
        (["forwards", name, "routes", id], &Method::DELETE) => delete_route(shared, name, id),
        (["forwards", name, "keys"], &Method::GET) => {
            ok(forward(&rt, name)?.auth.iter().flat_map(|a| &a.keys).map(masked).collect())
        }
        (["forwards", name, "keys"], &Method::POST) => add_key(shared, name, body),
        (["forwards", name, "keys", key], &Method::DELETE) => delete_key(shared, name, key),
        (["upstream-groups"], &Method::GET) => ok(rt.config.upstream_groups.iter().map(masked).collect()),
        (["upstream-groups", name], &Method::GET) => ok(masked(group(&rt, name)?)),
        (["upstream-groups", name], &Method::PATCH) => patch_group(shared, name, body),
        (["upstreams"], &Method::GET) => ok(rt.config.upstreams.iter().map(|u| upstream_json(&rt, u)).collect()),
        (["upstreams"], &Method::POST) => create_upstream(shared, body),
        (["upstreams", name], &Method::GET) => ok(upstream_json(&rt, upstream(&rt, name)?)),
        (["upstreams", name], &Method::PUT) => replace_upstream(shared, name, body),
        (["upstreams", name], &Method::DELETE) => delete_upstream(shared, name),
        _ if allowed(segments).is_some() => {
            Err(ApiError::method_not_allowed(format!("{method} is not supported on /api/v1/{}", segments.join("/"))))
        }
        _ => Err(ApiError::not_found(format!("no API endpoint /api/v1/{}", segments.join("/")))),
    }
}

fn ok(data: Value) -> Reply {
    Ok((StatusCode::OK, data))
}

fn masked<T: serde::Serialize>(item: &T) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
    redact(&mut v);
    v
}

fn forward<'a>(rt: &'a Runtime, name: &str) -> Result<&'a config::Forward, ApiError> {
    rt.config
        .http_server
        .forwards
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no forward named \"{name}\"")))
}

fn group<'a>(rt: &'a Runtime, name: &str) -> Result<&'a config::UpstreamGroup, ApiError> {
    rt.config.group(name).ok_or_else(|| ApiError::not_found(format!("no upstream group named \"{name}\"")))
}

fn upstream<'a>(rt: &'a Runtime, name: &str) -> Result<&'a config::Upstream, ApiError> {
    rt.config.upstream(name).ok_or_else(|| ApiError::not_found(format!("no upstream named \"{name}\"")))
}

/// An upstream's live state (`status`), shown next to its configuration by a GET and ignored
/// when the upstream comes back in a PUT or POST, so a GET → edit → PUT round trip works.
fn without_live_state(item: &mut Value) {
    if let Some(map) = item.as_object_mut() {
        map.remove("status");
    }
}

/// An upstream with its live state: what an operator wants next to the configuration.
fn upstream_json(rt: &Runtime, u: &config::Upstream) -> Value {
    let mut v = masked(u);
    if let Some(live) = rt.upstreams.iter().find(|x| x.name == u.name) {
        v["status"] = json!({
            "healthy": live.healthy.load(std::sync::atomic::Ordering::Relaxed),
            "breaker": live.breaker.as_ref().map(|b| b.state().as_str()),
            "inflight": live.load.inflight(),
        });
    }
    v
}

fn route_json(r: &config::Route) -> Value {
    let mut v = masked(r);
    v["id"] = Value::String(base64::encode_url(r.key().as_bytes()));
    v
}

/// Route ids are the base64url of the rule's key (the path pattern for path rules): stable, and
/// safe in a URL whatever the pattern contains.
fn route_key(id: &str) -> Result<String, ApiError> {
    base64::decode_url(id)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request(format!("\"{id}\" is not a route id (base64url of the route's path)")))
}

fn no_route(forward: &str, key: &str) -> ApiError {
    ApiError::not_found(format!("forward \"{forward}\" has no route {key}"))
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

fn to_yaml(v: &Value) -> Result<Yaml, ApiError> {
    serde_yaml::to_value(v).map_err(|e| ApiError::bad_request(format!("unsupported value: {e}")))
}

/// Applies `edit` to the running configuration's tree, validates it like the file, and swaps
/// the result in.
fn change(
    shared: &Shared,
    what: String,
    edit: impl FnOnce(&mut Yaml) -> Result<(), ApiError>,
) -> Result<Arc<Runtime>, ApiError> {
    let rt = shared.update(|rt| {
        let mut tree = serde_yaml::to_value(&*rt.config).map_err(|e| ApiError::invalid_config(e.to_string()))?;
        edit(&mut tree)?;
        config::from_value(&tree, &Literal).map_err(|e| ApiError::invalid_config(format!("invalid configuration: {e}")))
    })?;
    crate::info!("admin API: {what}");
    Ok(rt)
}

fn list_mut<'a>(tree: &'a mut Yaml, path: &[&str]) -> Result<&'a mut Vec<Yaml>, ApiError> {
    let mut node = tree;
    for key in path {
        node = node.get_mut(*key).ok_or_else(|| ApiError::invalid_config(format!("configuration has no {key}")))?;
    }
    node.as_sequence_mut().ok_or_else(|| ApiError::invalid_config("configuration list expected"))
}

fn position(list: &[Yaml], key: &str, value: &str) -> Option<usize> {
    list.iter().position(|item| item.get(key).and_then(Yaml::as_str) == Some(value))
}

/// A JSON object with a required `name`, and its YAML form for the configuration tree.
/// A new item's body. A masked secret in it (`"***"`, copied from a GET) has nothing to stand
/// for and is refused — taken literally it would be a key anyone could guess, or a credential
/// sent upstream as `***`.
fn named_body(body: &[u8]) -> Result<(Value, String, Yaml), ApiError> {
    let mut item = Value::Object(parse_object(body)?);
    without_live_state(&mut item);
    restore(&mut item, &Value::Null).map_err(ApiError::invalid_config)?;
    let name = item.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("\"name\" is required"))?;
    let name = name.to_string();
    let yaml = to_yaml(&item)?;
    Ok((item, name, yaml))
}

fn create_upstream(shared: &Shared, body: &[u8]) -> Reply {
    let (_, name, yaml) = named_body(body)?;
    let rt = change(shared, format!("upstream {name} created"), |tree| {
        let list = list_mut(tree, &["upstreams"])?;
        if position(list, "name", &name).is_some() {
            return Err(ApiError::conflict(format!("an upstream named \"{name}\" already exists")));
        }
        list.push(yaml);
        Ok(())
    })?;
    Ok((StatusCode::CREATED, upstream_json(&rt, upstream(&rt, &name)?)))
}

fn replace_upstream(shared: &Shared, name: &str, body: &[u8]) -> Reply {
    let mut item = Value::Object(parse_object(body)?);
    without_live_state(&mut item);
    match item.get("name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the body names \"{n}\" but the URL names \"{name}\" (renaming is create + delete)"
            )))
        }
        _ => item["name"] = Value::String(name.to_string()),
    }
    let current = serde_json::to_value(upstream(&shared.runtime(), name)?).unwrap_or(Value::Null);
    restore(&mut item, &current).map_err(ApiError::invalid_config)?;
    let yaml = to_yaml(&item)?;
    let rt = change(shared, format!("upstream {name} replaced"), |tree| {
        let list = list_mut(tree, &["upstreams"])?;
        let i =
            position(list, "name", name).ok_or_else(|| ApiError::not_found(format!("no upstream named \"{name}\"")))?;
        list[i] = yaml;
        Ok(())
    })?;
    ok(upstream_json(&rt, upstream(&rt, name)?))
}

fn delete_upstream(shared: &Shared, name: &str) -> Reply {
    change(shared, format!("upstream {name} deleted"), |tree| {
        let users: Vec<String> = list_mut(tree, &["upstream_groups"])?
            .iter()
            .filter(|g| {
                g.get("upstreams").and_then(Yaml::as_sequence).is_some_and(|m| position(m, "name", name).is_some())
            })
            .filter_map(|g| g.get("name").and_then(Yaml::as_str).map(str::to_string))
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "upstream \"{name}\" is used by group(s) {}; remove it there first",
                users.join(", ")
            )));
        }
        let list = list_mut(tree, &["upstreams"])?;
        let i =
            position(list, "name", name).ok_or_else(|| ApiError::not_found(format!("no upstream named \"{name}\"")))?;
        list.remove(i);
        Ok(())
    })?;
    deleted()
}

/// Replaces the keys the body has (typically `upstreams`); the rest of the group stays.
fn patch_group(shared: &Shared, name: &str, body: &[u8]) -> Reply {
    let mut patch = Value::Object(parse_object(body)?);
    if patch.get("name").and_then(Value::as_str).is_some_and(|n| n != name) {
        return Err(ApiError::bad_request("a group cannot be renamed"));
    }
    let current = serde_json::to_value(group(&shared.runtime(), name)?).unwrap_or(Value::Null);
    restore(&mut patch, &current).map_err(ApiError::invalid_config)?;
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let mut entries = Vec::new();
    for (k, v) in &patch {
        entries.push((k.clone(), to_yaml(v)?));
    }
    let rt = change(shared, format!("upstream group {name} updated"), |tree| {
        let list = list_mut(tree, &["upstream_groups"])?;
        let i = position(list, "name", name)
            .ok_or_else(|| ApiError::not_found(format!("no upstream group named \"{name}\"")))?;
        let Some(map) = list[i].as_mapping_mut() else {
            return Err(ApiError::invalid_config("group is not a mapping"));
        };
        for (k, v) in entries {
            map.insert(Yaml::String(k), v);
        }
        Ok(())
    })?;
    ok(masked(group(&rt, name)?))
}

fn routes_mut<'a>(tree: &'a mut Yaml, forward: &str) -> Result<&'a mut Vec<Yaml>, ApiError> {
    let forwards = list_mut(tree, &["http_server", "forwards"])?;
    let i = position(forwards, "name", forward)
        .ok_or_else(|| ApiError::not_found(format!("no forward named \"{forward}\"")))?;
    let f = forwards[i].as_mapping_mut().ok_or_else(|| ApiError::invalid_config("forward is not a mapping"))?;
    let routing = f.entry(Yaml::String("routing".into())).or_insert_with(|| Yaml::Sequence(Vec::new()));
    if routing.is_null() {
        *routing = Yaml::Sequence(Vec::new());
    }
    routing.as_sequence_mut().ok_or_else(|| ApiError::invalid_config("routing is not a list"))
}

/// A rule from the request body, with the masked values of `current` (the rule it replaces, if
/// any) put back, and its key (computed as the validated rule's would be).
fn route_body(body: &[u8], current: Option<&config::Route>) -> Result<(String, Yaml), ApiError> {
    let mut item = Value::Object(parse_object(body)?);
    if let Some(map) = item.as_object_mut() {
        map.remove("id");
    }
    let current = current.and_then(|r| serde_json::to_value(r).ok()).unwrap_or(Value::Null);
    // LLMProxy's route update sends only `{"target_group": …}`: a body that names no
    // condition keeps those of the rule it replaces.
    const CONDITIONS: [&str; 3] = ["path", "model", "headers"];
    if let (Some(map), Some(kept)) = (item.as_object_mut(), current.as_object()) {
        // `null` and `{}` name nothing, as in the file.
        let names = |v: &Value| !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty()));
        if !CONDITIONS.iter().any(|c| map.get(*c).is_some_and(names)) {
            for c in CONDITIONS {
                if let Some(v) = kept.get(c) {
                    map.insert(c.to_string(), v.clone());
                }
            }
        }
    }
    restore(&mut item, &current).map_err(ApiError::invalid_config)?;
    let yaml = to_yaml(&item)?;
    let key = config::route_key_of(&yaml).map_err(|e| ApiError::invalid_config(format!("invalid route: {e}")))?;
    Ok((key, yaml))
}

fn position_of_route(routes: &[Yaml], key: &str) -> Option<usize> {
    routes.iter().position(|r| config::route_key_of(r).is_ok_and(|k| k == key))
}

fn added_route(rt: &Runtime, forward_name: &str, key: &str) -> Reply {
    let r = forward(rt, forward_name)?
        .routing
        .iter()
        .find(|r| r.key() == key)
        .ok_or_else(|| no_route(forward_name, key))?;
    Ok((StatusCode::OK, route_json(r)))
}

fn add_route(shared: &Shared, name: &str, body: &[u8]) -> Reply {
    let (path, yaml) = route_body(body, None)?;
    let rt = change(shared, format!("forward {name}: route {path} added"), |tree| {
        let routes = routes_mut(tree, name)?;
        if position_of_route(routes, &path).is_some() {
            return Err(ApiError::conflict(format!("forward \"{name}\" already has the route {path}")));
        }
        routes.push(yaml);
        Ok(())
    })?;
    added_route(&rt, name, &path).map(|(_, v)| (StatusCode::CREATED, v))
}

fn replace_route(shared: &Shared, name: &str, id: &str, body: &[u8]) -> Reply {
    let old = route_key(id)?;
    let rt = shared.runtime();
    let current = forward(&rt, name)?.routing.iter().find(|r| r.key() == old).ok_or_else(|| no_route(name, &old))?;
    let (path, yaml) = route_body(body, Some(current))?;
    let rt = change(shared, format!("forward {name}: route {old} replaced by {path}"), |tree| {
        let routes = routes_mut(tree, name)?;
        let i = position_of_route(routes, &old).ok_or_else(|| no_route(name, &old))?;
        if path != old && position_of_route(routes, &path).is_some() {
            return Err(ApiError::conflict(format!("forward \"{name}\" already has the route {path}")));
        }
        routes[i] = yaml;
        Ok(())
    })?;
    added_route(&rt, name, &path)
}

fn delete_route(shared: &Shared, name: &str, id: &str) -> Reply {
    let path = route_key(id)?;
    change(shared, format!("forward {name}: route {path} deleted"), |tree| {
        let routes = routes_mut(tree, name)?;
        let i = position_of_route(routes, &path).ok_or_else(|| no_route(name, &path))?;
        routes.remove(i);
        Ok(())
    })?;
    deleted()
}

fn keys_mut<'a>(tree: &'a mut Yaml, forward: &str) -> Result<&'a mut Vec<Yaml>, ApiError> {
    let forwards = list_mut(tree, &["http_server", "forwards"])?;
    let i = position(forwards, "name", forward)
        .ok_or_else(|| ApiError::not_found(format!("no forward named \"{forward}\"")))?;
    let f = forwards[i].as_mapping_mut().ok_or_else(|| ApiError::invalid_config("forward is not a mapping"))?;
    let auth = f.entry(Yaml::String("auth".into())).or_insert_with(|| Yaml::Mapping(Default::default()));
    if !auth.is_mapping() {
        *auth = Yaml::Mapping(Default::default());
    }
    let keys = auth
        .as_mapping_mut()
        .map(|a| a.entry(Yaml::String("keys".into())).or_insert_with(|| Yaml::Sequence(Vec::new())));
    keys.and_then(Yaml::as_sequence_mut).ok_or_else(|| ApiError::invalid_config("auth.keys is not a list"))
}

/// Adds a client key; the response shows it masked like every other secret.
fn add_key(shared: &Shared, forward_name: &str, body: &[u8]) -> Reply {
    let (item, name, yaml) = named_body(body)?;
    change(shared, format!("forward {forward_name}: client key {name} added"), |tree| {
        let keys = keys_mut(tree, forward_name)?;
        if position(keys, "name", &name).is_some() {
            return Err(ApiError::conflict(format!("forward \"{forward_name}\" already has a key named \"{name}\"")));
        }
        keys.push(yaml);
        Ok(())
    })?;
    let mut shown = item;
    redact(&mut shown);
    Ok((StatusCode::CREATED, shown))
}

/// Removes a client key by name. The last key cannot be removed: a forward left without keys
/// would serve anyone on the upstreams' credentials (revoking a leaked only key must not open the
/// gateway). Opening a forward on purpose is a change to its `auth`, made in its configuration.
fn delete_key(shared: &Shared, forward_name: &str, name: &str) -> Reply {
    change(shared, format!("forward {forward_name}: client key {name} removed"), |tree| {
        let keys = keys_mut(tree, forward_name)?;
        let i = position(keys, "name", name)
            .ok_or_else(|| ApiError::not_found(format!("forward \"{forward_name}\" has no key named \"{name}\"")))?;
        if keys.len() == 1 {
            return Err(ApiError::conflict(format!(
                "\"{name}\" is the last key of forward \"{forward_name}\": without keys the forward would be open to \
                 anyone; add its replacement first (or remove `auth` from the forward to open it)"
            )));
        }
        keys.remove(i);
        Ok(())
    })?;
    deleted()
}
