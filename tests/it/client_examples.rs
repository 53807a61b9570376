//! Runs the client examples of docs/ingest.md against a live daemon, so the
//! documentation cannot drift from the wire formats. Needs `python3`, `node`,
//! `java` and `go` (scripts/test.sh installs them).

use std::process::Command;

use crate::support::TestDaemon;

/// The body of the first fenced block in `language` in docs/ingest.md.
fn example(language: &str) -> String {
    let docs = include_str!("../../docs/ingest.md");
    let fence = format!("```{language}\n");
    let start = docs
        .find(&fence)
        .unwrap_or_else(|| panic!("no {language} example"))
        + fence.len();
    let end = start + docs[start..].find("```").expect("example block ends");
    docs[start..end].to_string()
}

fn require(tool: &str, package: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is needed to run the docs/ingest.md examples: apt-get install {package} (scripts/test.sh does it)"
    );
}

async fn run_example(language: &str, program: &str, args: &[&str], file_name: &str) {
    let daemon = TestDaemon::start().await;
    let port = daemon.udp.unwrap().port().to_string();
    let code = example(language).replace("8125", &port);
    let dir = std::env::temp_dir().join(format!("tw-example-{}-{language}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(file_name);
    std::fs::write(&file, code).unwrap();
    let out = Command::new(program)
        .args(args)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{language} example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = [("tenant", "clinic1"), ("kind", "read")];
    let write = [("tenant", "clinic1"), ("kind", "write")];
    let m = daemon
        .metrics_when(&format!("the {language} example's events"), |m| {
            m.value_or_zero("tenantwatch_events_received_total", &[("source", "udp")]) >= 2.0
        })
        .await;
    assert_eq!(
        m.value("tenantwatch_tenant_queries_total", &read),
        Some(1.0)
    );
    assert_eq!(m.value("tenantwatch_tenant_rows_total", &read), Some(100.0));
    assert_eq!(
        m.value("tenantwatch_tenant_queries_total", &write),
        Some(1.0)
    );
    assert_eq!(
        m.value("tenantwatch_tenant_query_errors_total", &write),
        Some(1.0)
    );
    let rejected: f64 = m
        .samples_named("tenantwatch_events_rejected_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(rejected, 0.0);
    daemon.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example() {
    require("python3", "python3");
    run_example("python", "python3", &[], "send_events.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_example() {
    require("node", "nodejs");
    run_example("javascript", "node", &[], "send_events.js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_example() {
    require("java", "default-jdk-headless");
    run_example("java", "java", &[], "SendEvents.java").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_example() {
    require("go", "golang-go");
    run_example("go", "go", &["run"], "send_events.go").await;
}
