//! Logging set-up, done once, and a rate limiter for warnings on hot paths.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, crate::settings::Reload)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `plain` or `json`. The level comes from `TENANTWATCH_LOG` or `RUST_LOG`.
    pub format: LogFormat,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global tracing subscriber. The filter comes from
/// `TENANTWATCH_LOG`, then `RUST_LOG`, then `info`. Logs go to stderr.
pub fn init(format: LogFormat) {
    let filter = std::env::var("TENANTWATCH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests starting several daemons) keeps the first one.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Lets one warning through per `period` and counts the ones held back, so a
/// flood of bad input cannot turn into a flood of log lines.
#[derive(Debug)]
pub struct RateLimitedWarn {
    period_ms: u64,
    start: Instant,
    /// Milliseconds since `start` of the last logged warning, plus one (0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    pub fn new(period: Duration) -> RateLimitedWarn {
        RateLimitedWarn {
            period_ms: period.as_millis() as u64,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a warning may be logged now, `n` being how many were
    /// held back since the last one; `None` when this one should be dropped.
    pub fn should_log(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.period_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_period() {
        let warn = RateLimitedWarn::new(Duration::from_secs(3600));
        assert_eq!(warn.should_log(), Some(0));
        assert_eq!(warn.should_log(), None);
        assert_eq!(warn.should_log(), None);
        let always = RateLimitedWarn::new(Duration::ZERO);
        assert_eq!(always.should_log(), Some(0));
        assert_eq!(always.should_log(), Some(0));
    }
}
