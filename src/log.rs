//! Minimal leveled logging to stderr: `2026-11-22T00:42:27.123Z INFO message`.
//!
//! Under systemd, stderr goes to the journal; a timestamp is still printed so the same lines are
//! useful when run by hand or redirected to a file. A logging crate would bring more than the
//! three things we need: a level, a timestamp and one write per line.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: Arguments) {
    if !enabled(level) {
        return;
    }
    let name = match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
    };
    let line = format!("{} {name} {args}\n", timestamp(SystemTime::now()));
    // One write per line so concurrent lines never interleave; a closed stderr is not fatal.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A value from a client or an upstream in a `key=value` log line. Printed as it is when it is
/// plain (printable ASCII without spaces, quotes or `=`, the usual model name or path), else
/// quoted with escapes, so that no value can end the line, forge a field or send terminal
/// escapes; either way cut to `MAX_FIELD` bytes.
pub struct Field<'a>(pub &'a str);

/// A model name is at most a few dozen bytes; a longer value is a client's, not a model's.
const MAX_FIELD: usize = 256;

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut end = self.0.len().min(MAX_FIELD);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        let (shown, cut) = (&self.0[..end], end < self.0.len());
        let plain =
            !shown.is_empty() && shown.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='));
        match (plain, cut) {
            (true, false) => f.write_str(shown),
            (true, true) => write!(f, "{shown}…"),
            (false, _) => {
                f.write_str("\"")?;
                for c in shown.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str(if cut { "…\"" } else { "\"" })
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds, computed without a date crate (days → civil date).
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Howard Hinnant's days-from-epoch to (year, month, day) algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => {
    if $crate::log::enabled($crate::log::Level::Debug) {
        $crate::log::write($crate::log::Level::Debug, format_args!($($t)*))
    }
} }

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_308_147_123);
        assert_eq!(timestamp(t), "2026-11-22T00:42:27.123Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn fields_can_neither_end_the_line_nor_forge_a_field() {
        let shown = |v: &str| Field(v).to_string();
        assert_eq!(shown("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(shown("/v1/chat/completions?x=1"), "\"/v1/chat/completions?x=1\"");
        assert_eq!(shown("m\nINFO access status=200"), "\"m\\u{a}INFO access status=200\"");
        assert_eq!(shown("a \"b\" \\ \u{1b}[31m"), "\"a \\\"b\\\" \\\\ \\u{1b}[31m\"");
        assert_eq!(shown(""), "\"\"");
        let long = "é".repeat(200);
        let cut = shown(&long);
        assert!(cut.starts_with('"') && cut.ends_with("…\"") && cut.len() < 270, "{cut}");
        assert_eq!(shown(&"m".repeat(300)), format!("{}…", "m".repeat(256)));
    }
}
