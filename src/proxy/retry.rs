//! When and how long to wait before another attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest backoff between attempts on the same upstream, whatever `initial` and the attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest `Retry-After` we wait for; an upstream asking for more gets its answer relayed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Statuses worth another attempt: rate limited, or a server/gateway failure that another try
/// (or another upstream) may not have — among them Anthropic's 529, "overloaded", which is
/// exactly when another upstream should answer. Other statuses — 4xx above all — are the answer.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
}

/// What the breaker and the load statistics count as a failure of the upstream.
pub fn is_failure_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// `initial × 2^n`, capped, with "equal jitter" (half fixed, half random) so that clients
/// retrying together spread out without ever retrying at once.
pub fn backoff(initial: Duration, reuse: u32) -> Duration {
    let full = initial.saturating_mul(1u32 << reuse.min(16)).min(MAX_BACKOFF);
    let half = full / 2;
    half + Duration::from_nanos(crate::rand::below(half.as_nanos() as u64 + 1))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`), relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Parses `retry-after-ms` (Azure OpenAI, and read first by OpenAI's SDKs): milliseconds, maybe
/// with a fraction. Finer than `Retry-After`'s whole seconds, so it is preferred when both come.
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms: f64 = value.trim().parse().ok().filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)?;
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

fn parse_http_date(s: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let mut parts = s.split_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    // Years beyond 9999 are not HTTP dates (RFC 9110 §5.6.7 has four digits), and bounding the
    // year keeps the day arithmetic below from overflowing.
    let year: i64 = parts.next()?.parse().ok().filter(|y| (0..=9999).contains(y))?;
    let mut hms = parts.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days).ok().map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO),
            "past dates mean now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after_ms("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after_ms(" 2.5 "), Some(Duration::from_micros(2500)));
        for bad in ["-1", "NaN", "inf", "1e400", "soon", ""] {
            assert_eq!(parse_retry_after_ms(bad), None, "{bad}");
        }
        assert_eq!(parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", now), None);
        for huge in ["Sun, 06 Nov 999999999999999 08:49:37 GMT", "Sun, 06 Nov -9223372036854775808 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(huge, now), None, "{huge}: no overflow, not a date");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let initial = Duration::from_millis(200);
        for n in 0..4 {
            let full = initial * (1 << n);
            for _ in 0..50 {
                let d = backoff(initial, n);
                assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?}");
            }
        }
        assert!(backoff(initial, 30) <= MAX_BACKOFF);
    }

    #[test]
    fn status_classes() {
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(is_retryable_status(s) && is_failure_status(s));
        }
        for s in [400, 401, 404, 413, 422] {
            assert!(!is_retryable_status(s) && !is_failure_status(s));
        }
        assert!(!is_retryable_status(501) && is_failure_status(501));
    }
}
