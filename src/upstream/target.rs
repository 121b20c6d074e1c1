//! Where an upstream lives, and how a client's path and query are joined onto its URL.
//!
//! The join rule ("segment-aligned overlap"): the longest run of trailing segments of the
//! upstream's base path that equals the leading segments of the client's path is written once.
//!
//! | upstream url                                  | client path               | upstream path              |
//! |-----------------------------------------------|---------------------------|----------------------------|
//! | `https://api.openai.com/v1`                   | `/v1/chat/completions`    | `/v1/chat/completions`     |
//! | `https://api.openai.com/v1/chat/completions`  | `/v1/chat/completions`    | `/v1/chat/completions`     |
//! | `https://api.openai.com/v1/chat/completions`  | `/chat/completions`       | `/v1/chat/completions`     |
//! | `https://gw.example.com/openai/v1`            | `/v1/models`              | `/openai/v1/models`        |
//! | `http://localhost:11434`                      | `/v1/models`              | `/v1/models`               |
//! | `https://example.com/api`                     | `/v1/models`              | `/api/v1/models`           |
//!
//! So a base URL serves every endpoint, and the full-endpoint URLs that LLMProxy configurations
//! use still reach exactly that endpoint when the client calls it. Queries are merged: the
//! upstream URL's query first (Azure's `?api-version=…`), then the client's.

use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};

#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Non-empty segments of the URL's path.
    base_segments: Vec<Box<str>>,
    /// The URL's path without a trailing slash ("" for the root).
    base_path: String,
    base_query: Option<String>,
    /// The `Host` header for this upstream, built once.
    pub host_value: HeaderValue,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or_else(|| format!("{url:?} has no scheme"))?;
        let authority = parts.authority.ok_or_else(|| format!("{url:?} has no host"))?;
        let (path, query) = match &parts.path_and_query {
            Some(pq) => (pq.path(), pq.query()),
            None => ("/", None),
        };
        let base_path = path.trim_end_matches('/').to_string();
        let base_segments = base_path.split('/').filter(|s| !s.is_empty()).map(Into::into).collect();
        let host = authority.as_str().rsplit('@').next().unwrap_or(authority.as_str());
        let host_value = HeaderValue::from_str(host).map_err(|e| format!("{url:?} has an invalid host: {e}"))?;
        Ok(HttpTarget {
            scheme,
            authority,
            base_segments,
            base_path,
            base_query: query.map(str::to_string),
            host_value,
        })
    }

    /// The user name and password written into the URL, percent-decoded, if any.
    pub fn userinfo(&self) -> Option<(String, String)> {
        let (userinfo, _) = self.authority.as_str().rsplit_once('@')?;
        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        Some((crate::percent::decode(user), crate::percent::decode(pass)))
    }

    /// The upstream path and query for a client request. When the join leaves the client's
    /// unchanged (an upstream URL without a path, or whose path the client's starts with, and
    /// without a query of its own) the client's is reused as it is: no string is built or
    /// parsed again.
    pub fn upstream_path(&self, client: &PathAndQuery) -> Result<PathAndQuery, String> {
        let path = client.path();
        if self.base_query.is_none() && path.starts_with('/') {
            let end = self.overlap_end(path);
            if path[..end].trim_end_matches('/') == self.base_path {
                return Ok(client.clone());
            }
        }
        PathAndQuery::try_from(self.path_and_query(path, client.query())).map_err(|e| e.to_string())
    }

    /// The upstream path and query for a client request (written into one new string).
    pub fn path_and_query(&self, client_path: &str, client_query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.base_path.len() + client_path.len() + 16);
        out.push_str(&self.base_path);
        out.push_str(&client_path[self.overlap_end(client_path)..]);
        if out.is_empty() {
            out.push('/');
        }
        let queries = [self.base_query.as_deref(), client_query];
        let mut first = true;
        for q in queries.into_iter().flatten().filter(|q| !q.is_empty()) {
            out.push(if first { '?' } else { '&' });
            out.push_str(q);
            first = false;
        }
        out
    }

    /// Byte offset in `client_path` after the segments the base path already ends with.
    fn overlap_end(&self, client_path: &str) -> usize {
        let n = self.base_segments.len();
        for k in (1..=n).rev() {
            let tail = &self.base_segments[n - k..];
            let mut segs = client_path.split('/').filter(|s| !s.is_empty());
            if tail.iter().all(|t| segs.next() == Some(&**t)) {
                return offset_after_segments(client_path, k);
            }
        }
        0
    }
}

/// Byte offset just past the `k`-th non-empty segment of `path`.
fn offset_after_segments(path: &str, k: usize) -> usize {
    let mut seen = 0;
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' {
            i += 1;
            continue;
        }
        let end = path[i..].find('/').map_or(path.len(), |j| i + j);
        seen += 1;
        if seen == k {
            return end;
        }
        i = end;
    }
    path.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Joins both ways — building the string, and `upstream_path`, which reuses the client's
    /// path when it can — and checks they agree.
    fn join(url: &str, path: &str, query: Option<&str>) -> String {
        let target = HttpTarget::parse(url).unwrap();
        let built = target.path_and_query(path, query);
        let client: PathAndQuery = match query {
            Some(q) => format!("{path}?{q}").parse().unwrap(),
            None => path.parse().unwrap(),
        };
        assert_eq!(target.upstream_path(&client).unwrap().as_str(), built, "{url} + {client}");
        built
    }

    #[test]
    fn joins_base_and_full_endpoint_urls() {
        let cases = [
            ("https://api.openai.com/v1", "/v1/chat/completions", "/v1/chat/completions"),
            ("https://api.openai.com/v1/", "/v1/models", "/v1/models"),
            ("https://api.openai.com/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions"),
            ("https://api.openai.com/v1/chat/completions", "/chat/completions", "/v1/chat/completions"),
            ("https://gw.example.com/openai/v1", "/v1/models", "/openai/v1/models"),
            ("http://localhost:11434", "/v1/models", "/v1/models"),
            ("http://localhost:11434", "/", "/"),
            ("http://localhost:11434/v1", "/", "/v1/"),
            ("https://example.com/api", "/v1/models", "/api/v1/models"),
            ("https://example.com/v1", "/v1/files/", "/v1/files/"),
        ];
        for (url, path, want) in cases {
            assert_eq!(join(url, path, None), want, "{url} + {path}");
        }
    }

    #[test]
    fn merges_queries() {
        assert_eq!(join("https://a.example/v1", "/v1/models", Some("limit=2")), "/v1/models?limit=2");
        assert_eq!(
            join(
                "https://x.openai.azure.com/openai/deployments/d?api-version=2024-06-01",
                "/chat/completions",
                Some("a=1")
            ),
            "/openai/deployments/d/chat/completions?api-version=2024-06-01&a=1"
        );
        assert_eq!(join("https://a.example/v1?k=v", "/v1/x", None), "/v1/x?k=v");
    }
}
