//! Replays the committed fuzz corpus through the fuzz targets' entry points (on stable), and
//! runs the router property on generated rules and paths.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} fails", path.display());
        count += 1;
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn router_corpus() {
    replay("router", llmproxy::fuzzing::router);
}

#[test]
fn config_corpus() {
    replay("config", llmproxy::fuzzing::config);
}

#[test]
fn sse_corpus() {
    replay("sse", llmproxy::fuzzing::sse);
}

#[test]
fn http1_corpus() {
    replay("http1", llmproxy::fuzzing::http1_requests);
}

/// xorshift64: deterministic inputs, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn trie_agrees_with_the_naive_matcher_on_random_rules() {
    let rule_segments = ["a", "b", "v1", ":p", ":q", "{r:a.*}", "{s:[ab]}", "{t:v[0-9]}", "*"];
    let path_segments = ["a", "b", "ab", "v1", "v2", "x", ""];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let mut input = String::new();
        for _ in 0..(1 + rng.next() % 8) {
            let n = 1 + rng.next() % 4;
            for _ in 0..n {
                input.push('/');
                input.push_str(rng.pick(&rule_segments));
            }
            input.push('\n');
        }
        input.push('\n');
        for _ in 0..10 {
            let n = rng.next() % 5;
            input.push('/');
            for i in 0..n {
                if i > 0 {
                    input.push('/');
                }
                input.push_str(rng.pick(&path_segments));
            }
            input.push('\n');
        }
        let result = std::panic::catch_unwind(|| llmproxy::fuzzing::router(input.as_bytes()));
        assert!(result.is_ok(), "disagreement on:\n{input}");
    }
}
