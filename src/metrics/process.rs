//! The process's own figures under the standard names every exporter uses
//! (`process_*`), read from `/proc/self` at scrape time: memory, CPU, file
//! descriptors and start time. On a system without `/proc` they are left
//! out rather than reported as zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::encode::family;

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// Fields of `/proc/self/stat` after the command name, by their 1-based
/// position in proc(5).
fn stat_field(stat: &str, position: usize) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: count fields
    // from after its closing parenthesis, which is field 2.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(position.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The number after `key` on the line of `text` that starts with it (the
/// layout of `/proc/self/status` and `/proc/stat`).
fn value_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn boot_time() -> Option<f64> {
    value_after(&std::fs::read_to_string("/proc/stat").ok()?, "btime ")
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cpu = stat_field(&stat, 14)
            .zip(stat_field(&stat, 15))
            .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
        let start = stat_field(&stat, 22)
            .zip(boot_time())
            .map(|(ticks, boot)| boot + ticks / TICKS_PER_SECOND);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as f64);
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                value_after(&status, "VmRSS:").map(|kib| kib * 1024.0),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                value_after(&status, "VmSize:").map(|kib| kib * 1024.0),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max_fds(),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                start,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                family(&mut encoder, name, help, MetricType::Gauge)?.encode_gauge(&value)?;
            }
        }
        if let Some(cpu) = cpu {
            family(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, f64>(&cpu, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_past_a_command_with_spaces() {
        let stat = "4242 (tenant watch) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 7 0 12345 1000 10";
        // Field 3 is the state letter, not a number.
        assert_eq!(stat_field(stat, 3), None);
        assert_eq!(stat_field(stat, 14), Some(250.0));
        assert_eq!(stat_field(stat, 15), Some(50.0));
        assert_eq!(stat_field(stat, 22), Some(12345.0));
    }
}
