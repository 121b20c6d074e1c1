//! Globs for model and header rules: `*` matches any run of characters (including none);
//! everything else matches itself. `claude-*`, `*-mini`, `gpt-4*-preview`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob { pattern: pattern.into() }
    }

    /// Linear-time match with single backtracking point (the last `*` seen), allocation-free.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.pattern.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("claude-*", "claude-3-5-sonnet", true),
            ("claude-*", "claude-", true),
            ("claude-*", "gpt-4o", false),
            ("*-mini", "gpt-4o-mini", true),
            ("gpt-4*-preview", "gpt-4-turbo-preview", true),
            ("gpt-4*-preview", "gpt-4-turbo", false),
            ("*", "", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("acme-*", "ACME-1", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).matches(t), want, "{p} vs {t}");
        }
    }
}
