//! The daemon as a whole: the binary's command line, graceful shutdown on
//! signals, readiness, and the metrics reference kept equal to `/metrics`.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::TestDaemon;

const BINARY: &str = env!("CARGO_BIN_EXE_tenantwatch");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tw-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `check-config … | head -1`: the reader closes the pipe before the report
/// is written, and the verdict (exit 0, no panic) stands.
#[test]
fn check_config_to_a_closed_pipe_still_exits_zero() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tenantwatch.example.toml");
    let mut child = Command::new(BINARY)
        .args(["check-config", example])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the child has read its file, let alone written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_config_accepts_the_example_and_names_every_bad_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tenantwatch.example.toml");
    let out = Command::new(BINARY)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("http listener: 127.0.0.1:9645"));

    let bad = temp_file(
        "bad.toml",
        "[server]\nlisten = \"localhost\"\n[ingest]\nmax_tenants = 0\ntenant_idle_ttl = \"forever\"\n",
    );
    let out = Command::new(BINARY)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "server.listen = \"localhost\"",
        "ingest.max_tenants = 0",
        "ingest.tenant_idle_ttl = \"forever\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }

    let typo = temp_file("typo.toml", "[ingest]\nmax_tenant = 5\n");
    let out = Command::new(BINARY)
        .arg("check-config")
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_tenant"));

    // `run` refuses the same file before binding anything.
    let out = Command::new(BINARY)
        .arg("run")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn help_and_version() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
    ] {
        let out = Command::new(BINARY).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    let out = Command::new(BINARY).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tenantwatch {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Starts the binary with `config` (which must log JSON) and returns it
/// with its HTTP address, read from its log line, and its later log lines.
struct Spawned {
    child: std::process::Child,
    http: String,
    logs: std::sync::mpsc::Receiver<String>,
    config: std::path::PathBuf,
}

/// Starts the binary on `config` with its stderr (JSON log lines) forwarded
/// to a channel, drained by a thread so the child never blocks on a full pipe.
fn spawn_logging(
    config: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .env("TENANTWATCH_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    (child, log_rx)
}

fn spawn_binary_with(config_text: &str) -> Spawned {
    let config = temp_file(&format!("run-{}.toml", rand_suffix()), config_text);
    let (child, logs) = spawn_logging(&config);
    let http = loop {
        let line = logs
            .recv_timeout(Duration::from_secs(20))
            .expect("daemon logs that it listens");
        let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if entry["message"] == "tenantwatch is listening" {
            break entry["http"].as_str().unwrap().to_string();
        }
    };
    Spawned {
        child,
        http,
        logs,
        config,
    }
}

/// The binary on free ports with the defaults otherwise.
fn spawn_binary() -> (std::process::Child, String) {
    let spawned = spawn_binary_with(
        "[server]\nlisten = \"127.0.0.1:0\"\n[ingest]\nudp_listen = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
    );
    (spawned.child, spawned.http)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon runs as it was started: under its own pid, with the
/// environment it was given (it used to re-execute itself with
/// `GLIBC_TUNABLES` added, which leaked into every child process; the
/// exposition buffer is reused instead, see docs/performance.md).
#[test]
fn the_daemon_runs_as_started_without_re_executing_itself() {
    let (mut child, http) = spawn_binary();
    let addr: std::net::SocketAddr = http.parse().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let tunables = environ
        .iter()
        .find_map(|v| v.strip_prefix("GLIBC_TUNABLES="));
    assert_eq!(
        tunables,
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
        "{environ:?}"
    );
    assert!(
        !environ
            .iter()
            .any(|v| v.starts_with("TENANTWATCH_REEXECUTED=")),
        "{environ:?}"
    );
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
}

#[test]
fn sigterm_and_sigint_shut_down_gracefully_with_exit_zero() {
    for sig in ["TERM", "INT"] {
        let (mut child, http) = spawn_binary();
        let addr: std::net::SocketAddr = http.parse().unwrap();
        assert!(std::net::TcpStream::connect(addr).is_ok());
        signal(&child, sig);
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(10)),
            Some(0),
            "SIG{sig}"
        );
        // (The port may already serve another test's daemon: exit 0 is the check.)
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    let (mut child, http) = spawn_binary();
    // Hold a connection open mid-request so the graceful drain has to wait.
    let mut stream = std::net::TcpStream::connect(&http).unwrap();
    use std::io::Write;
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining after one signal"
    );
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_turns_unready_and_closes_listeners() {
    let daemon = TestDaemon::start().await;
    let http = daemon.http;
    assert_eq!(daemon.get("/readyz").await.status, 200);
    let inner = daemon.daemon.as_ref().unwrap();
    inner.shutdown();
    let mut daemon = daemon;
    let started = Instant::now();
    daemon.daemon.take().unwrap().wait().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_metrics_lists_exactly_the_exposed_families() {
    let pg = support::cluster().await;
    let admin = support::connect(&pg.dsn("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE tenant_t1")
        .await
        .unwrap();
    // A PgBouncer in front, with one tenant's pool in use.
    let settings = tenantwatch::demo::pgbouncer::PgBouncerSettings {
        backend_port: pg.port(),
        default_pool_size: 2,
        max_client_conn: 50,
        users: Vec::new(),
    };
    let bouncer = tokio::task::spawn_blocking(move || {
        tenantwatch::demo::pgbouncer::PgBouncer::start_new(&settings)
    })
    .await
    .unwrap()
    .expect("a throwaway PgBouncer (apt-get install pgbouncer)");
    let pooled = support::connect(&bouncer.dsn("tenant_t1", "postgres")).await;
    pooled.batch_execute("SELECT 1").await.unwrap();
    let daemon = TestDaemon::start_with(|c| {
        let mut target = tenantwatch::config::TargetSettings::new("main", pg.dsn("postgres"));
        target.poll_interval = std::time::Duration::from_millis(200);
        target.stats_interval = std::time::Duration::from_millis(200);
        target.schema_detail = tenantwatch::store::SchemaDetail::Full;
        c.targets.push(target);
        let mut pgbouncer =
            tenantwatch::config::PgBouncerSettings::new("edge", bouncer.admin_dsn());
        pgbouncer.poll_interval = std::time::Duration::from_millis(200);
        c.pgbouncers.push(pgbouncer);
        c.tenants.rules.push(tenantwatch::config::RuleSettings {
            source: tenantwatch::attribution::RuleSource::Database,
            pattern: "^tenant_(?P<tenant>.+)$".into(),
            key: None,
        });
    })
    .await;
    // Some traffic so that every kind of family is present with samples
    // (a labelled family without samples is not declared at all).
    daemon.get("/healthz").await;
    daemon.send_udp(b"tenantwatch.query:1|ms|#tenant:t1,kind:read");
    let m = daemon
        .metrics_when("one event and one poll of each", |m| {
            m.value_or_zero("tenantwatch_events_received_total", &[("source", "udp")]) == 1.0
                && m.value("tenantwatch_target_up", &[("target", "main")]) == Some(1.0)
                && m.value("tenantwatch_pgbouncer_up", &[("pgbouncer", "edge")]) == Some(1.0)
        })
        .await;
    let exposed = m.family_names();
    let documented = support::documented_metrics();
    let missing: Vec<_> = exposed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/metrics.md is out of date: undocumented {missing:?}, no longer exposed {stale:?}"
    );
    daemon.stop().await;
    drop(pooled);
}

/// A blocking HTTP/1.1 POST on a fresh connection: (status, body).
fn post_blocking(addr: &str, path: &str, body: &str) -> (u16, String) {
    request_blocking(addr, "POST", path, body)
}

/// The exposition, fetched without a runtime.
fn metrics_blocking(addr: &str) -> support::Exposition {
    let accept = "Accept: application/openmetrics-text\r\n";
    let (status, body) = request_blocking_with(addr, "GET", "/metrics", accept, "");
    assert_eq!(status, 200);
    support::Exposition::parse(&body)
}

fn request_blocking(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    request_blocking_with(addr, method, path, "", body)
}

/// As [`request_blocking`], with `headers` (each line ending in CRLF) added.
fn request_blocking_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn sighup_reloads_quotas_and_refuses_an_invalid_file() {
    let Spawned {
        mut child,
        http,
        logs: log_rx,
        config,
    } = spawn_binary_with(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_max_age = \"0s\"\n[ingest]\nudp_listen = \"\"\n[log]\nformat = \"json\"\n\
         [ratelimit]\ndefault_qps = 0.01\ndefault_burst = 1\n",
    );
    let wait_for_log = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = log_rx.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return;
            }
        }
        panic!("no log line with {needle:?}");
    };
    let check = |tenant: &str| {
        post_blocking(
            &http,
            "/v1/ratelimit/check",
            &format!("{{\"tenant\":\"{tenant}\"}}"),
        )
        .0
    };

    assert_eq!(check("a"), 200);
    assert_eq!(check("a"), 429, "burst of 1");

    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_max_age = \"0s\"\n[ingest]\nudp_listen = \"\"\n[log]\nformat = \"json\"\n\
         [ratelimit]\ndefault_qps = 1000.0\ndefault_burst = 100\n",
    )
    .unwrap();
    let reloaded = |m: &support::Exposition| {
        (
            m.value("tenantwatch_config_last_reload_successful", &[]),
            m.value(
                "tenantwatch_config_last_reload_success_timestamp_seconds",
                &[],
            )
            .unwrap(),
        )
    };
    let (ok, started) = reloaded(&metrics_blocking(&http));
    assert_eq!(ok, Some(1.0), "start-up counts as applied");
    std::thread::sleep(Duration::from_millis(20));
    signal(&child, "HUP");
    wait_for_log("Configuration reloaded");
    for _ in 0..20 {
        assert_eq!(check("a"), 200, "the new quota applies");
    }
    let (ok, applied) = reloaded(&metrics_blocking(&http));
    assert_eq!(ok, Some(1.0));
    assert!(applied > started, "{applied} after {started}");

    std::fs::write(&config, "[ratelimit]\ndefault_qps = -5\n").unwrap();
    signal(&child, "HUP");
    wait_for_log("Reload refused");
    for _ in 0..20 {
        assert_eq!(check("b"), 200, "the running quota stays");
    }
    assert_eq!(
        reloaded(&metrics_blocking(&http)),
        (Some(0.0), applied),
        "refused: 0, and the last success keeps its time"
    );
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_it_serves_unready_for_the_shutdown_delay() {
    let mut daemon =
        TestDaemon::start_with(|c| c.server.shutdown_delay = std::time::Duration::from_secs(1))
            .await;
    let http = daemon.http;
    let inner = daemon.daemon.take().unwrap();
    inner.shutdown();
    let started = Instant::now();
    // Kubernetes sees 503 on /readyz and stops routing; requests still work.
    assert_eq!(daemon.get("/readyz").await.status, 503);
    assert_eq!(daemon.get("/healthz").await.status, 200);
    assert_eq!(
        daemon
            .post("/v1/events", &[], "tenantwatch.query:1|ms|#tenant:late")
            .await
            .status,
        202
    );
    inner.wait().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_queued_at_shutdown_are_still_counted() {
    let mut daemon = TestDaemon::start_with(|c| c.ingest.udp_receivers = 1).await;
    let udp = daemon.udp.unwrap();
    let store = daemon.daemon.as_ref().unwrap().store().clone();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Few enough for the receive buffer to hold them all (no kernel drops).
    let sent = 5_000;
    for i in 0..sent {
        let line = format!("tenantwatch.query:1|ms|#tenant:t{}", i % 10);
        socket.send_to(line.as_bytes(), udp).unwrap();
    }
    let inner = daemon.daemon.take().unwrap();
    inner.shutdown();
    inner.wait().await;
    let counted: f64 = store
        .snapshot()
        .tenants
        .iter()
        .flat_map(|t| t.kinds.iter().flatten())
        .map(|k| k.queries)
        .sum();
    assert_eq!(counted, f64::from(sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_page_healthcheck_and_process_metrics() {
    let daemon = TestDaemon::start().await;
    let root = daemon.get("/").await;
    assert_eq!(root.status, 200);
    assert_eq!(
        root.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    for link in [
        "/metrics",
        "/readyz",
        "/api/v1/tenants",
        "/api/v1/openapi.json",
    ] {
        assert!(root.text().contains(&format!("href=\"{link}\"")), "{link}");
    }
    assert!(root.text().contains(env!("CARGO_PKG_VERSION")));

    let healthcheck = |addr: String| {
        Command::new(BINARY)
            .args(["healthcheck", "--addr", &addr, "--timeout", "2s"])
            .output()
            .unwrap()
            .status
            .code()
    };
    let addr = daemon.http.to_string();
    let ready = tokio::task::spawn_blocking(move || healthcheck(addr))
        .await
        .unwrap();
    assert_eq!(ready, Some(0));
    let m = daemon.metrics().await;
    for family in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value = m
            .value(family, &[])
            .unwrap_or_else(|| panic!("{family} missing"));
        assert!(value > 0.0, "{family} = {value}");
    }
    let build = m.samples_named("tenantwatch_build_info").next().unwrap();
    assert!(build.labels.contains_key("revision"), "{build:?}");
    daemon.stop().await;

    // Nobody listening: not ready.
    let closed = format!("127.0.0.1:{}", tenantwatch::demo::cluster::free_port());
    let down = tokio::task::spawn_blocking(move || healthcheck(closed))
        .await
        .unwrap();
    assert_eq!(down, Some(1));
}

/// The series budget: a tenant sending every kind of query, with errors,
/// rows and latencies in every bucket, costs at most 20 samples with the
/// default configuration (issue 16); the folded buckets count right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_budget_per_tenant() {
    let daemon = TestDaemon::start().await;
    let tenants: Vec<String> = (0..30).map(|i| format!("budget{i}")).collect();
    let latencies_ms = [0.3, 2.0, 7.0, 60.0, 400.0, 3000.0, 40000.0];
    let mut sent = 0.0;
    for tenant in &tenants {
        let mut datagram = String::new();
        for kind in ["read", "write", "other"] {
            for ms in latencies_ms {
                datagram.push_str(&format!(
                    "tenantwatch.query:{ms}|ms|#tenant:{tenant},kind:{kind},rows:3\n"
                ));
                sent += 1.0;
            }
            datagram.push_str(&format!(
                "tenantwatch.errors:1|c|#tenant:{tenant},kind:{kind}\n"
            ));
            sent += 1.0;
        }
        daemon.send_udp(datagram.as_bytes());
    }
    let m = daemon
        .metrics_when("every event counted", |m| {
            m.value_or_zero("tenantwatch_events_received_total", &[("source", "udp")]) == sent
        })
        .await;
    let mut per_tenant = std::collections::BTreeMap::<&str, usize>::new();
    for sample in &m.samples {
        if let Some(tenant) = sample.labels.get("tenant") {
            *per_tenant.entry(tenant.as_str()).or_default() += 1;
        }
    }
    assert_eq!(per_tenant.len(), tenants.len(), "{per_tenant:?}");
    for (tenant, samples) in &per_tenant {
        assert!(
            *samples <= 20,
            "tenant {tenant} costs {samples} samples, over the budget of 20"
        );
    }
    // One histogram per tenant over all kinds, folded into the default bounds.
    let bucket = |le: &str| {
        m.value(
            "tenantwatch_tenant_query_duration_seconds_bucket",
            &[("tenant", "budget0"), ("le", le)],
        )
    };
    assert_eq!(bucket("0.001"), Some(3.0));
    assert_eq!(bucket("0.005"), Some(6.0));
    assert_eq!(bucket("0.025"), Some(9.0));
    assert_eq!(bucket("0.1"), Some(12.0));
    assert_eq!(bucket("0.25"), Some(12.0));
    assert_eq!(bucket("1.0"), Some(15.0));
    assert_eq!(bucket("5.0"), Some(18.0));
    assert_eq!(bucket("+Inf"), Some(21.0));
    assert_eq!(
        m.value(
            "tenantwatch_tenant_query_duration_seconds_count",
            &[("tenant", "budget0")]
        ),
        Some(21.0)
    );
    // Scraped in protobuf (Prometheus with native histograms), a tenant's
    // native latency histogram is one series: still within the budget.
    let families = daemon.protobuf_families().await;
    let mut per_tenant = std::collections::BTreeMap::<&str, usize>::new();
    for metric in families.iter().flat_map(|f| &f.metric) {
        if let Some(tenant) = metric.label.iter().find(|l| l.name == "tenant") {
            *per_tenant.entry(tenant.value.as_str()).or_default() += 1;
        }
    }
    assert_eq!(per_tenant.len(), tenants.len(), "{per_tenant:?}");
    assert!(
        per_tenant.values().all(|series| *series <= 20),
        "{per_tenant:?}"
    );
    let latency = families
        .iter()
        .find(|f| f.name == "tenantwatch_tenant_query_duration_seconds")
        .unwrap();
    let native = latency.metric[0].histogram.as_ref().unwrap();
    assert_eq!((native.schema, native.sample_count), (3, 21));
    daemon.stop().await;

    // Per kind, on request, with a bound set of one's own.
    let daemon = TestDaemon::start_with(|c| {
        c.metrics.histogram_by_kind = true;
        c.metrics.latency_buckets = vec![0.01, 1.0];
    })
    .await;
    daemon.send_udp(
        b"tenantwatch.query:2|ms|#tenant:k,kind:write\ntenantwatch.query:20|ms|#tenant:k,kind:read",
    );
    let m = daemon
        .metrics_when("two events", |m| {
            m.value_or_zero("tenantwatch_events_received_total", &[("source", "udp")]) == 2.0
        })
        .await;
    let bucket = |kind: &str, le: &str| {
        m.value(
            "tenantwatch_tenant_query_duration_seconds_bucket",
            &[("tenant", "k"), ("kind", kind), ("le", le)],
        )
    };
    assert_eq!(bucket("write", "0.01"), Some(1.0));
    assert_eq!(bucket("read", "0.01"), Some(0.0));
    assert_eq!(bucket("read", "1.0"), Some(1.0));
    assert_eq!(bucket("read", "+Inf"), Some(1.0));
    assert_eq!(bucket("other", "+Inf"), None);
    daemon.stop().await;
}

/// SIGHUP's default action kills a process: a reload sent while the daemon
/// is still starting (here, held reading its state file, a FIFO) must be
/// taken, not fatal.
#[test]
fn a_sighup_during_start_up_is_not_fatal() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK on Linux: open a FIFO for writing only once it has a reader.
    const O_NONBLOCK: i32 = 0o4000;

    let fifo = std::env::temp_dir().join(format!("tw-state-{}.fifo", rand_suffix()));
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let config = temp_file(
        &format!("hup-{}.toml", rand_suffix()),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_delay = \"0s\"\n[ingest]\nudp_listen = \"\"\n\
             [log]\nformat = \"json\"\n[state]\nfile = \"{}\"\n",
            fifo.display()
        ),
    );
    let (mut child, log_rx) = spawn_logging(&config);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
        {
            Ok(writer) => break writer,
            Err(_) => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "exited before start-up"
                );
                assert!(Instant::now() < deadline, "never read its state file");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    // Start-up now waits in the state file's read.
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        child.try_wait().unwrap().map(|s| s.code()),
        None,
        "SIGHUP during start-up killed the daemon"
    );
    writer.write_all(b"not a state file").unwrap();
    drop(writer);
    let listening = std::iter::from_fn(|| log_rx.recv_timeout(Duration::from_secs(10)).ok())
        .any(|line| line.contains("tenantwatch is listening"));
    assert!(listening, "start-up did not finish");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_file(&fifo);
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// 100,000 events, each with a new endpoint and a new pod, over ten
/// tenants: the series stay within ingest.max_endpoints_per_tenant and
/// ingest.max_instances, the rest fold into `__other__`, and the daemon's
/// memory barely moves. A separate process, so its RSS is its own.
#[test]
fn a_flood_of_endpoints_and_instances_stays_bounded() {
    let Spawned {
        mut child,
        http,
        logs: _logs,
        config: _config,
    } = spawn_binary_with(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_max_age = \"0s\"\n\
         [ingest]\nudp_listen = \"\"\n[log]\nformat = \"json\"\n",
    );
    // Warm up: the first exposition's buffers are not the flood's cost.
    post_blocking(&http, "/v1/events", "tenantwatch.query:1|ms|#tenant:t0\n");
    metrics_blocking(&http);
    let before = rss_bytes(child.id());
    for batch in 0..10 {
        let mut body = String::with_capacity(10_000 * 80);
        for i in 0..10_000 {
            let id = batch * 10_000 + i;
            body.push_str(&format!(
                "tenantwatch.query:2|ms|#tenant:t{},endpoint:GET /random/{id},pod:web-{id}\n",
                id % 10
            ));
        }
        let (status, reply) = post_blocking(&http, "/v1/events", &body);
        assert_eq!(status, 202, "{reply}");
    }
    // A schema switch is its own histogram, not a query.
    post_blocking(
        &http,
        "/v1/events",
        r#"{"tenant":"t0","kind":"schema_switch","duration_ms":0.4,"endpoint":"GET /x"}"#,
    );
    let m = metrics_blocking(&http);
    let grown = rss_bytes(child.id()).saturating_sub(before);
    let endpoints = m
        .samples_named("tenantwatch_tenant_endpoint_queries_total")
        .count();
    assert_eq!(endpoints, 10 * 21, "20 endpoints and __other__ per tenant");
    let other: f64 = m
        .samples_named("tenantwatch_tenant_endpoint_queries_total")
        .filter(|s| s.labels["endpoint"] == "__other__")
        .map(|s| s.value)
        .sum();
    assert_eq!(other, 100_000.0 - 200.0);
    assert_eq!(
        m.samples_named("tenantwatch_instance_queries_total")
            .count(),
        501
    );
    assert_eq!(
        m.value(
            "tenantwatch_instance_queries_total",
            &[("app_instance", "__other__")]
        ),
        Some(100_000.0 - 500.0)
    );
    assert_eq!(
        m.value("tenantwatch_endpoints_folded_total", &[]),
        Some(100_000.0 - 200.0)
    );
    assert_eq!(
        m.value("tenantwatch_instances_folded_total", &[]),
        Some(100_000.0 - 500.0)
    );
    assert_eq!(
        m.value(
            "tenantwatch_tenant_schema_switch_duration_seconds_count",
            &[("tenant", "t0")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "tenantwatch_tenant_queries_total",
            &[("tenant", "t0"), ("kind", "other")]
        ),
        Some(10_001.0)
    );
    eprintln!(
        "100,000 endpoint and instance names: RSS grew by {} KiB",
        grown / 1024
    );
    assert!(grown < 32 << 20, "RSS grew by {grown} bytes");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
}
