//! The segment-trie path router.
//!
//! At each node children are tried static → regex (declaration order) → `:param` → `*` (one
//! segment) → trailing `*` (the rest), and a dead branch backtracks to the next kind, so
//! `/v1/models/special` can fall back to `/v1/:kind/special` when `/v1/models/list` is the only
//! static route below `models`. Priority therefore depends on the shape of the pattern, never on
//! declaration order (except among regexes at the same position). Lookup borrows the path and
//! allocates nothing; patterns and regexes are compiled once, at load.

pub mod model;
pub mod pattern;
pub mod rules;

pub use pattern::PatternError;
use pattern::Segment;
use regex_lite::Regex;

pub struct Router<T> {
    root: Node<T>,
}

struct Node<T> {
    /// Sorted by segment text for binary search.
    statics: Vec<(Box<str>, Node<T>)>,
    regexes: Vec<(Box<str>, Regex, Node<T>)>,
    param: Option<Box<Node<T>>>,
    wildcard: Option<Box<Node<T>>>,
    rest: Option<T>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { statics: Vec::new(), regexes: Vec::new(), param: None, wildcard: None, rest: None, value: None }
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router { root: Node::default() }
    }
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. Two patterns of the same shape (`/a/:x` and `/a/:y`) are the same route and
    /// the second is rejected as a duplicate, since it could never match.
    pub fn insert(&mut self, pattern: &str, value: T) -> Result<(), PatternError> {
        let segments = pattern::parse(pattern)?;
        let mut node = &mut self.root;
        for seg in segments {
            node = match seg {
                Segment::Static(s) => {
                    let i = match node.statics.binary_search_by(|(k, _)| k.as_ref().cmp(s.as_str())) {
                        Ok(i) => i,
                        Err(i) => {
                            node.statics.insert(i, (s.into_boxed_str(), Node::default()));
                            i
                        }
                    };
                    &mut node.statics[i].1
                }
                Segment::Regex { source, regex } => {
                    let i = match node.regexes.iter().position(|(k, _, _)| **k == *source) {
                        Some(i) => i,
                        None => {
                            node.regexes.push((source.into_boxed_str(), regex, Node::default()));
                            node.regexes.len() - 1
                        }
                    };
                    &mut node.regexes[i].2
                }
                Segment::Param => node.param.get_or_insert_with(Box::default),
                Segment::Wildcard => node.wildcard.get_or_insert_with(Box::default),
                Segment::Rest => {
                    if node.rest.is_some() {
                        return Err(PatternError(format!("route {pattern:?} duplicates an earlier route")));
                    }
                    node.rest = Some(value);
                    return Ok(());
                }
            };
        }
        if node.value.is_some() {
            return Err(PatternError(format!("route {pattern:?} duplicates an earlier route")));
        }
        node.value = Some(value);
        Ok(())
    }

    /// The value of the highest-priority route matching `path` (without its query string).
    pub fn lookup(&self, path: &str) -> Option<&T> {
        self.root.find(path)
    }

    pub fn is_empty(&self) -> bool {
        self.root.value.is_none()
            && self.root.rest.is_none()
            && self.root.statics.is_empty()
            && self.root.regexes.is_empty()
            && self.root.param.is_none()
            && self.root.wildcard.is_none()
    }
}

impl<T> Node<T> {
    fn find(&self, path: &str) -> Option<&T> {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return self.value.as_ref();
        }
        // A byte search: `split_once` with a `char` pattern goes through the generic searcher,
        // several times the cost for segments this short.
        let (seg, rest) = match path.bytes().position(|b| b == b'/') {
            Some(slash) => (&path[..slash], &path[slash + 1..]),
            None => (path, ""),
        };
        if let Ok(i) = self.statics.binary_search_by(|(k, _)| k.as_ref().cmp(seg)) {
            if let Some(v) = self.statics[i].1.find(rest) {
                return Some(v);
            }
        }
        for (_, re, child) in &self.regexes {
            if re.is_match(seg) {
                if let Some(v) = child.find(rest) {
                    return Some(v);
                }
            }
        }
        for child in [&self.param, &self.wildcard].into_iter().flatten() {
            if let Some(v) = child.find(rest) {
                return Some(v);
            }
        }
        self.rest.as_ref()
    }
}

/// Whether `path` has a `.` or `..` segment, plain or percent-encoded (`%2e`), between
/// separators an upstream may see: `/`, `\\`, and their encoded forms `%2f` and `%5c` (nginx,
/// and ingress controllers built on it, decode them before resolving dot segments; IIS takes
/// `\\` for `/`). Text after a `;` in a segment is left out (Tomcat and Spring read `..;x` as
/// `..`). Such a path is refused rather than resolved: joined onto an upstream's base path and
/// resolved there, `/v1/../../admin` or `/..%2fteam-b/v1` reaches outside the base path with
/// the proxy's credentials, and the routes would have judged a path the upstream never serves.
pub fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    // The segment read so far: its dots, whether anything else came before a `;`, and whether
    // a `;` came.
    let (mut dots, mut other, mut params) = (0u32, false, false);
    let mut rest = path.as_bytes();
    loop {
        let (separator, len, dot) = match rest {
            [] => (true, 0, false),
            [b'/' | b'\\', ..] => (true, 1, false),
            [b'%', b'2', x, ..] if x.eq_ignore_ascii_case(&b'f') => (true, 3, false),
            [b'%', b'5', x, ..] if x.eq_ignore_ascii_case(&b'c') => (true, 3, false),
            [b'%', b'2', x, ..] if x.eq_ignore_ascii_case(&b'e') => (false, 3, true),
            [b'.', ..] => (false, 1, true),
            [b';', ..] => {
                params = true;
                (false, 1, false)
            }
            _ => (false, 1, false),
        };
        if separator {
            if !other && (dots == 1 || dots == 2) {
                return true;
            }
            if rest.is_empty() {
                return false;
            }
            (dots, other, params) = (0, false, false);
        } else if !params {
            if dot {
                dots += 1;
            } else {
                other = true;
            }
        }
        rest = &rest[len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(patterns: &[&str]) -> Router<String> {
        let mut r = Router::new();
        for p in patterns {
            r.insert(p, p.to_string()).unwrap();
        }
        r
    }

    #[test]
    fn table() {
        let r = router(&[
            "/v1/chat/completions",
            "/v1/models/list",
            "/v1/:kind/special",
            "/v1/{model:gpt-[0-9]+}/info",
            "/v1/{model:gpt-.*}/info",
            "/v1/:x/info",
            "/v1/*/deep/end",
            "/files/*",
            "/gemini/models/gemini:generate",
            "/",
        ]);
        let cases: &[(&str, Option<&str>)] = &[
            // static beats everything, query strings are the caller's to strip
            ("/v1/chat/completions", Some("/v1/chat/completions")),
            ("/v1/chat/completions/", Some("/v1/chat/completions")),
            ("//v1//chat/completions", Some("/v1/chat/completions")),
            // backtracking: static "models" leads nowhere for "special", param does
            ("/v1/models/special", Some("/v1/:kind/special")),
            ("/v1/models/list", Some("/v1/models/list")),
            // regex beats param; among regexes the first declared wins
            ("/v1/gpt-4/info", Some("/v1/{model:gpt-[0-9]+}/info")),
            ("/v1/gpt-4o/info", Some("/v1/{model:gpt-.*}/info")),
            ("/v1/claude/info", Some("/v1/:x/info")),
            // regex is anchored to the whole segment
            ("/v1/xgpt-4/info", Some("/v1/:x/info")),
            // one-segment wildcard in the middle
            ("/v1/anything/deep/end", Some("/v1/*/deep/end")),
            ("/v1/a/b/deep/end", None),
            // trailing wildcard takes the rest, but needs at least one segment
            ("/files/a/b/c", Some("/files/*")),
            ("/files", None),
            ("/gemini/models/gemini:generate", Some("/gemini/models/gemini:generate")),
            ("/", Some("/")),
            ("/nope", None),
        ];
        for (path, want) in cases {
            assert_eq!(r.lookup(path).map(String::as_str), *want, "path {path}");
        }
    }

    #[test]
    fn priority_is_independent_of_declaration_order() {
        let a = router(&["/v1/*", "/v1/:p", "/v1/{p:m.*}", "/v1/models"]);
        let b = router(&["/v1/models", "/v1/{p:m.*}", "/v1/:p", "/v1/*"]);
        for (path, want) in
            [("/v1/models", "/v1/models"), ("/v1/mx", "/v1/{p:m.*}"), ("/v1/x", "/v1/:p"), ("/v1/x/y", "/v1/*")]
        {
            assert_eq!(a.lookup(path).unwrap(), want);
            assert_eq!(b.lookup(path).unwrap(), want);
        }
    }

    #[test]
    fn dot_segments_plain_or_encoded_are_found() {
        for path in [
            "/v1/../admin",
            "/v1/./x",
            "/..",
            "/v1/%2e%2E/x",
            "/v1/.%2e",
            "/v1\\..\\x",
            "/v1/..",
            "/..%2fteam-b/v1/models",
            "/v1/..%2Fx",
            "/v1/..%5cx",
            "/v1/%2e%2e%5C",
            "/v1/..;jsessionid=1/x",
            "/v1/.;x",
            "/v1/x%2f..%2fy",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/v1/chat/completions",
            "/v1/file.json",
            "/v1/...",
            "/v1/.well-known",
            "/v1/%2f",
            "/",
            "/v1/models/meta-llama%2FLlama-3.1-8B",
            "/v1/a;..",
            "/v1/a.b;c",
            "/v1/%2",
            "/v1/x%",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn parameter_names_may_be_left_out() {
        let r = router(&["/a/:", "/b/{}", "/c/{:\\d+}", "/d/{\\d+}", "/e/{id}"]);
        for (path, want) in [("/a/x", "/a/:"), ("/b/x", "/b/{}"), ("/c/42", "/c/{:\\d+}"), ("/d/42", "/d/{\\d+}")] {
            assert_eq!(r.lookup(path).map(String::as_str), Some(want), "{path}");
        }
        assert_eq!(r.lookup("/d/x"), None, "an unnamed regex is still a regex");
        assert_eq!(r.lookup("/e/anything").map(String::as_str), Some("/e/{id}"), "a name alone is any segment");
    }

    #[test]
    fn text_mixed_with_parameters_in_a_segment() {
        let r = router(&[
            "/v1beta/models/{model}:generateContent",
            "/v1beta/models/{m:gemini-[a-z0-9.-]+}:streamGenerateContent",
            "/v1beta/models/:model",
            "/files/*.json",
            "/v{n:\\d+}/{a}-{b}",
            "/ids/{id:\\d{3}}",
            "/tags/{t:[^}]+}",
            "/esc/{e:a\\}b}",
            "/mix/{m:[^}]+}:x",
        ]);
        for (path, want) in [
            ("/v1beta/models/gemini-2.0-flash:generateContent", Some("/v1beta/models/{model}:generateContent")),
            (
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                Some("/v1beta/models/{m:gemini-[a-z0-9.-]+}:streamGenerateContent"),
            ),
            // The regex does not match: the plain parameter takes it.
            ("/v1beta/models/gpt-4o:streamGenerateContent", Some("/v1beta/models/:model")),
            ("/v1beta/models/:generateContent", Some("/v1beta/models/:model")),
            ("/files/a.json", Some("/files/*.json")),
            ("/files/.json", Some("/files/*.json")),
            ("/files/a.jsonl", None),
            ("/v2/x-y", Some("/v{n:\\d+}/{a}-{b}")),
            ("/vx/x-y", None),
            ("/ids/123", Some("/ids/{id:\\d{3}}")),
            ("/ids/1234", None),
            ("/tags/a{b", Some("/tags/{t:[^}]+}")),
            ("/esc/a}b", Some("/esc/{e:a\\}b}")),
            ("/mix/ab:x", Some("/mix/{m:[^}]+}:x")),
        ] {
            assert_eq!(r.lookup(path).map(String::as_str), want, "{path}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        let mut r: Router<()> = Router::new();
        for bad in [
            "v1",
            "/v1/{x:[}",
            "/v1/{x",
            "/v1/:na-me",
            "/v1/{x:}",
            "/v1/{[}",
            "/v1/a}b",
            "/v1/{m}:x{",
            "/v1/{m:}:x",
            "/v1/{m:[}:x",
        ] {
            let why = r.insert(bad, ()).expect_err(bad);
            assert!(why.0.contains(bad), "names the route: {why}");
        }
        r.insert("/v1/:a", ()).unwrap();
        assert!(r.insert("/v1/:b", ()).unwrap_err().0.contains("duplicates"));
        r.insert("/x/*", ()).unwrap();
        assert!(r.insert("/x/*", ()).is_err());
    }
}
