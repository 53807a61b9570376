//! What the PostgreSQL benchmarks share: a child process killed on drop,
//! RSS from /proc, fetching a page with curl, medians, timed scrapes.

use std::process::{Child, Command};
use std::time::Instant;

/// A child process, killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/PID/status` memory field (`VmRSS:`, `VmHWM:`) in MiB.
pub fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The body of `url`, or `None` on any failure (within 10 minutes).
pub fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "600", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Scrapes `url` `times` times: (median seconds, bytes, samples).
pub fn scrape(url: &str, times: usize) -> (f64, usize, usize) {
    let mut seconds = Vec::new();
    let mut last = String::new();
    for _ in 0..times {
        let started = Instant::now();
        last = get(url).unwrap_or_default();
        seconds.push(started.elapsed().as_secs_f64());
    }
    let samples = last
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    (median(seconds), last.len(), samples)
}
