//! The Prometheus text exposition format (version 0.0.4), written into one reused `String`.

use super::{Histogram, BUCKETS};
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Encoder {
    out: String,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder { out: String::with_capacity(16 * 1024) }
    }

    pub fn into_string(self) -> String {
        self.out
    }

    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// `# HELP` and `# TYPE` lines; each family is declared once, before its samples.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        if labels.is_empty() && extra.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().chain(extra.iter()).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    pub fn int(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        // fmt into a String never allocates beyond the String's own growth.
        let _ = writeln!(self.out, " {value}");
    }

    pub fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        push_float(&mut self.out, value);
        self.out.push('\n');
    }

    /// `_bucket` lines (cumulative, ending with `+Inf`), `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let cumulative = h.cumulative();
        // An observation counts in its bucket before it counts in `count`: one taking place
        // during this scrape could otherwise show a bucket above +Inf.
        let count = h.count().max(cumulative[cumulative.len() - 1]);
        let mut le = String::with_capacity(8);
        for (bound, n) in BUCKETS.iter().zip(cumulative) {
            le.clear();
            push_float(&mut le, *bound);
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(("le", &le)));
            let _ = writeln!(self.out, " {n}");
        }
        self.out.push_str(name);
        self.out.push_str("_bucket");
        self.labels(labels, Some(("le", "+Inf")));
        let _ = writeln!(self.out, " {count}");
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        self.out.push(' ');
        push_float(&mut self.out, h.sum());
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {count}");
    }
}

fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_exposition_with_escaping() {
        let mut e = Encoder::new();
        e.family("llmproxy_x_total", "counter", "A help text with \\ and\nnewline.");
        e.int("llmproxy_x_total", &[("forward", "a\"b\\c\nd"), ("method", "POST")], 7);
        e.family("llmproxy_g", "gauge", "A gauge.");
        e.float("llmproxy_g", &[], 1.5);
        let h = Histogram::default();
        h.observe(0.2);
        h.observe(42.0);
        e.family("llmproxy_h_seconds", "histogram", "A histogram.");
        e.histogram("llmproxy_h_seconds", &[("upstream", "u")], &h);
        let text = e.into_string();
        let expected_head = "# HELP llmproxy_x_total A help text with \\\\ and\\nnewline.\n\
# TYPE llmproxy_x_total counter\n\
llmproxy_x_total{forward=\"a\\\"b\\\\c\\nd\",method=\"POST\"} 7\n\
# HELP llmproxy_g A gauge.\n\
# TYPE llmproxy_g gauge\n\
llmproxy_g 1.5\n\
# HELP llmproxy_h_seconds A histogram.\n\
# TYPE llmproxy_h_seconds histogram\n\
llmproxy_h_seconds_bucket{upstream=\"u\",le=\"0.005\"} 0\n";
        assert!(text.starts_with(expected_head), "{text}");
        assert!(text.contains("llmproxy_h_seconds_bucket{upstream=\"u\",le=\"0.25\"} 1\n"));
        assert!(text.contains("llmproxy_h_seconds_bucket{upstream=\"u\",le=\"30\"} 1\n"));
        assert!(text.contains("llmproxy_h_seconds_bucket{upstream=\"u\",le=\"60\"} 2\n"));
        assert!(text.ends_with(
            "llmproxy_h_seconds_bucket{upstream=\"u\",le=\"+Inf\"} 2\nllmproxy_h_seconds_sum{upstream=\"u\"} 42.2\nllmproxy_h_seconds_count{upstream=\"u\"} 2\n"
        ));
    }
}
