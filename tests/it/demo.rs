//! `tenantwatch demo` end to end: the binary starts its own PostgreSQL, runs
//! the workload and the daemon, shows the misbehaving tenant on top, flagged
//! and with its quota tightened within a minute while no healthy tenant is,
//! and removes everything when it stops by itself.

use std::process::Command;

#[test]
fn the_demo_runs_shows_the_noisy_tenant_on_top_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
        .args([
            "demo",
            "--duration",
            "58s",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
            "12",
        ])
        .env("TENANTWATCH_LOG", "warn")
        .output()
        .expect("run tenantwatch demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("/metrics"), "prints the URLs: {stdout}");

    // The last live table: clinic7 first, with a large share.
    let last_table = stdout
        .rsplit("top tenants by share of database time")
        .next()
        .expect("at least one live table");
    let first_row = last_table.lines().nth(2).unwrap_or_default();
    let mut columns = first_row.split_whitespace();
    assert_eq!(
        columns.next(),
        Some(tenantwatch::demo::NOISY_TENANT),
        "{last_table}"
    );
    let share: f64 = columns
        .next()
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .expect("a share column");
    assert!(share > 30.0, "{last_table}");
    // Within the minute it is flagged and its quota is tightened; nobody else is.
    let cap: f64 = first_row
        .split_whitespace()
        .nth(5)
        .and_then(|c| c.parse().ok())
        .expect("a qps cap column");
    assert!(cap < 100.0, "quota tightened: {last_table}");
    assert!(first_row.contains("db_time_hog"), "{last_table}");
    for row in last_table.lines().skip(3).filter(|l| !l.trim().is_empty()) {
        let columns: Vec<&str> = row.split_whitespace().collect();
        if columns.len() >= 6 && columns[0].starts_with("clinic") {
            assert_eq!(columns.len(), 6, "a healthy tenant is flagged: {row}");
        }
    }
    assert!(stdout.contains("Done."));

    // The cluster directory named in the output is gone.
    let dir = stdout
        .split_whitespace()
        .find(|w| w.contains("tenantwatch-pg-"))
        .map(|w| w.trim_matches(|c| c == '(' || c == ')' || c == ';'))
        .expect("the cluster directory is printed");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
}
