//! Events sent over UDP and HTTP against the real daemon, read back from
//! `/metrics`.

use crate::support;

use std::time::Duration;

use crate::support::TestDaemon;

const QUERIES: &str = "tenantwatch_tenant_queries_total";
const ERRORS: &str = "tenantwatch_tenant_query_errors_total";
const ROWS: &str = "tenantwatch_tenant_rows_total";
const COUNT: &str = "tenantwatch_tenant_query_duration_seconds_count";
const SUM: &str = "tenantwatch_tenant_query_duration_seconds_sum";
const BUCKET: &str = "tenantwatch_tenant_query_duration_seconds_bucket";
const RECEIVED: &str = "tenantwatch_events_received_total";
const REJECTED: &str = "tenantwatch_events_rejected_total";

fn tk<'a>(tenant: &'a str, kind: &'a str) -> [(&'a str, &'a str); 2] {
    [("tenant", tenant), ("kind", kind)]
}

/// A daemon exposing the store's histograms as they are kept: per kind, all
/// 15 bounds, so the tests see every bucket edge.
async fn start_with_full_histograms() -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.metrics.histogram_by_kind = true;
        c.metrics.latency_buckets = tenantwatch::store::LATENCY_BUCKETS_SECONDS.to_vec();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_events_appear_with_exact_counts() {
    let daemon = start_with_full_histograms().await;
    // 3 datagrams: NDJSON, DogStatsD with a sample rate and several values,
    // and a mix with bad lines beside good ones.
    daemon.send_udp(
        b"{\"tenant\":\"clinic1\",\"kind\":\"read\",\"duration_ms\":12.5,\"rows\":100,\"error\":false}\n\
          {\"tenant\":\"clinic1\",\"kind\":\"read\",\"duration_ms\":700,\"rows\":1,\"error\":true}\n",
    );
    daemon.send_udp(b"tenantwatch.query:2:4|ms|@0.5|#tenant:dental7,kind:write,rows:3");
    daemon.send_udp(
        b"tenantwatch.rows:10|c|#tenant:clinic1,kind:read\n\
          tenantwatch.errors:2|c|#tenant:dental7,kind:write\n\
          tenantwatch.query:1|s|#tenant:clinic1\n\
          {\"tenant\":\"clinic1\",\"kind\":\"read\",\"duration_ms\":-5}\n\
          tenantwatch.query:1|ms|#kind:read\n\
          {\"tenant\":\"clinic1\",\"kind\":\"read\",\"duration_ms\":1}\n",
    );
    // 2 + 2 + 6 lines; the multi-value line counts 2 events.
    let m = daemon
        .metrics_when("10 UDP events", |m| {
            m.value_or_zero(RECEIVED, &[("source", "udp")]) == 10.0
        })
        .await;

    assert_eq!(m.value(QUERIES, &tk("clinic1", "read")), Some(3.0));
    assert_eq!(m.value(ERRORS, &tk("clinic1", "read")), Some(1.0));
    assert_eq!(m.value(ROWS, &tk("clinic1", "read")), Some(111.0));
    assert_eq!(m.value(COUNT, &tk("clinic1", "read")), Some(3.0));
    assert!((m.value(SUM, &tk("clinic1", "read")).unwrap() - 0.7135).abs() < 1e-9);
    let bucket = |le: &str| {
        m.value(
            BUCKET,
            &[("tenant", "clinic1"), ("kind", "read"), ("le", le)],
        )
        .unwrap()
    };
    assert_eq!(bucket("0.001"), 1.0);
    assert_eq!(bucket("0.025"), 2.0);
    assert_eq!(bucket("0.5"), 2.0);
    assert_eq!(bucket("1.0"), 3.0);
    assert_eq!(bucket("+Inf"), 3.0);

    // Sampled at 0.5: each of the two values weighs 2.
    assert_eq!(m.value(QUERIES, &tk("dental7", "write")), Some(4.0));
    assert_eq!(m.value(ROWS, &tk("dental7", "write")), Some(12.0));
    assert_eq!(m.value(ERRORS, &tk("dental7", "write")), Some(2.0));
    assert!((m.value(SUM, &tk("dental7", "write")).unwrap() - 0.012).abs() < 1e-9);

    let rejected = |reason| {
        m.value(REJECTED, &[("source", "udp"), ("reason", reason)])
            .unwrap()
    };
    assert_eq!(rejected("unsupported_type"), 1.0);
    assert_eq!(rejected("invalid_duration"), 1.0);
    assert_eq!(rejected("missing_field"), 1.0);
    assert_eq!(rejected("malformed"), 0.0);
    assert_eq!(
        m.value("tenantwatch_udp_datagrams_received_total", &[]),
        Some(3.0)
    );
    assert_eq!(m.value("tenantwatch_tenants_tracked", &[]), Some(2.0));
    assert_eq!(
        m.value("tenantwatch_udp_kernel_drops_total", &[]),
        Some(0.0)
    );
    assert!(
        m.value("tenantwatch_udp_receive_buffer_bytes", &[])
            .unwrap()
            >= 4096.0
    );

    // db time share: clinic1 713.5 ms, dental7 (2 + 4) * 2 = 12 ms.
    let share = m
        .value("tenantwatch_tenant_db_time_ratio", &[("tenant", "clinic1")])
        .unwrap();
    assert!((share - 713.5 / 725.5).abs() < 1e-9, "{share}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_datagrams_are_refused_whole() {
    let daemon = TestDaemon::start_with(|c| c.ingest.max_datagram_bytes = 1024).await;
    let mut big = Vec::new();
    while big.len() < 2000 {
        big.extend_from_slice(b"tenantwatch.query:1|ms|#tenant:big\n");
    }
    daemon.send_udp(&big);
    daemon.send_udp(b"tenantwatch.query:1|ms|#tenant:small");
    // A datagram is counted as it is taken, before its lines reach the
    // store: wait for the small one's query too, or a scrape between the
    // two finds it counted and not yet recorded.
    let m = daemon
        .metrics_when("2 datagrams, the small one recorded", |m| {
            m.value_or_zero("tenantwatch_udp_datagrams_received_total", &[]) == 2.0
                && m.value(QUERIES, &tk("small", "other")).is_some()
        })
        .await;
    assert_eq!(
        m.value(
            REJECTED,
            &[("source", "udp"), ("reason", "datagram_too_large")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value(QUERIES, &tk("small", "other")), Some(1.0));
    assert_eq!(m.value(QUERIES, &tk("big", "other")), None);
    daemon.stop().await;
}

/// UDP has no token: a sender outside `ingest.udp_allow` (here one bound
/// to 127.0.0.2, as a spoofed or stray source would be) is dropped whole,
/// before parsing, and counted; the admitted sender's events count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_from_outside_udp_allow_are_dropped_and_counted() {
    let daemon =
        TestDaemon::start_with(|c| c.ingest.udp_allow = vec!["127.0.0.1/32".parse().unwrap()])
            .await;
    let to = daemon.udp.unwrap();
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for _ in 0..3 {
        stranger
            .send_to(b"tenantwatch.query:5000|ms|#tenant:victim", to)
            .unwrap();
    }
    let trusted = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    trusted
        .send_to(
            b"tenantwatch.query:5|ms|#tenant:own
tenantwatch.query:7|ms|#tenant:own",
            to,
        )
        .unwrap();
    let m = daemon
        .metrics_when("4 datagrams", |m| {
            m.value_or_zero("tenantwatch_udp_datagrams_received_total", &[]) == 4.0
        })
        .await;
    assert_eq!(
        m.value(
            REJECTED,
            &[("source", "udp"), ("reason", "source_not_allowed")]
        ),
        Some(3.0)
    );
    assert_eq!(m.value(QUERIES, &tk("victim", "other")), None);
    assert_eq!(m.value(QUERIES, &tk("own", "other")), Some(2.0));
    // Each refused datagram is one received, refused unit, as an
    // oversized one is.
    assert_eq!(m.value(RECEIVED, &[("source", "udp")]), Some(5.0));
    daemon.stop().await;
}

/// The senders rule, as `check-config` and `run` apply it: a UDP listener
/// off loopback that names no sender network is refused (exit 64, naming
/// `ingest.udp_listen`); `udp_allow` or `udp_allow_any = true` admits it.
#[test]
fn a_non_loopback_udp_listener_must_say_whom_it_admits() {
    let dir = std::env::temp_dir().join(format!("tw-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, ingest: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("[ingest]\n{ingest}")).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let open = check("open.toml", "udp_listen = \"0.0.0.0:8125\"\n");
    assert_eq!(open.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(
        stderr.contains("ingest.udp_listen = \"0.0.0.0:8125\""),
        "{stderr}"
    );
    let loopback_only = check(
        "loopback.toml",
        "udp_listen = \"0.0.0.0:8125\"\nudp_allow = [\"127.0.0.1/32\"]\n",
    );
    assert_eq!(loopback_only.status.code(), Some(64));
    for (name, ingest) in [
        (
            "allow.toml",
            "udp_listen = \"0.0.0.0:8125\"\nudp_allow = [\"10.0.0.0/8\"]\n",
        ),
        (
            "any.toml",
            "udp_listen = \"0.0.0.0:8125\"\nudp_allow_any = true\n",
        ),
        ("local.toml", "udp_listen = \"127.0.0.1:8125\"\n"),
    ] {
        let out = check(name, ingest);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let typo = check("typo.toml", "udp_allow = [\"10.1.2.3/8\"]\n");
    assert_eq!(typo.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("10.0.0.0/8"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reports_which_lines_failed() {
    let daemon = TestDaemon::start().await;
    let ndjson = [("content-type", "application/x-ndjson")];
    let reply = daemon
        .post(
            "/v1/events",
            &ndjson,
            "{\"tenant\":\"t1\",\"kind\":\"read\",\"duration_ms\":5}\n\
             {\"tenant\":\"t1\",\"kind\":\"lookup\",\"duration_ms\":5}\n\
             tenantwatch.query:3|ms|#tenant:t2,kind:write\n\
             \n\
             {\"tenant\":\"t1\",\"kind\":\"read\",\"duration_ms\":\"fast\"}\n",
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected_count"], 2);
    assert_eq!(body["rejected"][0]["line"], 2);
    assert_eq!(body["rejected"][0]["reason"], "invalid_kind");
    assert_eq!(body["rejected"][1]["line"], 5);
    assert_eq!(body["rejected"][1]["reason"], "invalid_duration");

    // Nothing good: 400 with the same shape.
    let reply = daemon.post("/v1/events", &ndjson, "nope\n{}\n").await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"][0]["reason"], "malformed");
    assert_eq!(body["rejected"][1]["reason"], "missing_field");

    // Content types: plain text is fine, forms are not.
    let reply = daemon
        .post(
            "/v1/events",
            &[("content-type", "text/plain; charset=utf-8")],
            "tenantwatch.query:1|ms|#tenant:t3",
        )
        .await;
    assert_eq!(reply.status, 202);
    let reply = daemon
        .post(
            "/v1/events",
            &[("content-type", "application/x-www-form-urlencoded")],
            "a=b",
        )
        .await;
    assert_eq!(reply.status, 415);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );

    let m = daemon.metrics().await;
    assert_eq!(m.value(QUERIES, &tk("t1", "read")), Some(1.0));
    assert_eq!(m.value(QUERIES, &tk("t2", "write")), Some(1.0));
    assert_eq!(m.value(QUERIES, &tk("t3", "other")), Some(1.0));
    assert_eq!(m.value(RECEIVED, &[("source", "http")]), Some(7.0));
    assert_eq!(
        m.value(
            "tenantwatch_http_requests_total",
            &[("endpoint", "events"), ("code", "415")]
        ),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_limits_and_routes() {
    let daemon = TestDaemon::start_with(|c| c.ingest.max_body_bytes = 2048).await;
    let line = "tenantwatch.query:1|ms|#tenant:big\n";
    let reply = daemon.post("/v1/events", &[], line.repeat(100)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["status"], 413);

    let reply = daemon.get("/v1/events").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = daemon.post("/metrics", &[], "").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    let reply = daemon.get("/nowhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["detail"], "no endpoint at /nowhere");

    assert_eq!(daemon.get("/healthz").await.status, 200);
    assert_eq!(daemon.get("/readyz").await.status, 200);

    let m = daemon.metrics().await;
    assert_eq!(
        m.value(
            REJECTED,
            &[("source", "http"), ("reason", "body_too_large")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value(QUERIES, &tk("big", "other")), None);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoints_require_the_token_when_one_is_set() {
    let dir = std::env::temp_dir().join(format!("tw-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let daemon =
        TestDaemon::start_with(|c| c.server.auth_token_file = Some(token_file.clone())).await;
    let line = "tenantwatch.query:1|ms|#tenant:t1";

    let reply = daemon.post("/v1/events", &[], line).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let reply = daemon
        .post(
            "/v1/events",
            &[("authorization", "Bearer wrong-token!")],
            line,
        )
        .await;
    assert_eq!(reply.status, 401);
    let reply = daemon
        .post(
            "/v1/events",
            &[("authorization", "Bearer s3cret-token")],
            line,
        )
        .await;
    assert_eq!(reply.status, 202);
    // Reads stay open.
    assert_eq!(daemon.get("/metrics").await.status, 200);
    assert!(!daemon.get("/metrics").await.text().contains("s3cret"));
    daemon.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_dogstatsd_client_library_is_understood() {
    use cadence::prelude::*;
    use cadence::{StatsdClient, UdpMetricSink};

    let daemon = start_with_full_histograms().await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink = UdpMetricSink::from(daemon.udp.unwrap(), socket).unwrap();
    let client = StatsdClient::builder("tenantwatch", sink)
        .with_tag("env", "test")
        .build();

    client
        .time_with_tags("query", Duration::from_millis(12))
        .with_tag("tenant", "clinic1")
        .with_tag("kind", "read")
        .try_send()
        .unwrap();
    client
        .histogram_with_tags("query", 250.0)
        .with_tag("tenant", "clinic1")
        .with_tag("kind", "write")
        .with_tag("error", "true")
        .try_send()
        .unwrap();
    client
        .distribution_with_tags("query", 40.0)
        .with_tag("tenant", "clinic1")
        .with_tag("kind", "read")
        .with_sampling_rate(0.25)
        .try_send()
        .unwrap();
    client
        .count_with_tags("rows", 42)
        .with_tag("tenant", "clinic1")
        .with_tag("kind", "read")
        .try_send()
        .unwrap();
    // A set is refused with a reason.
    client
        .set_with_tags("users", 7)
        .with_tag("tenant", "clinic1")
        .try_send()
        .unwrap();

    let m = daemon
        .metrics_when("5 statsd events", |m| {
            m.value_or_zero(RECEIVED, &[("source", "udp")]) == 5.0
        })
        .await;
    assert_eq!(m.value(QUERIES, &tk("clinic1", "read")), Some(5.0));
    assert_eq!(m.value(ROWS, &tk("clinic1", "read")), Some(42.0));
    assert_eq!(m.value(QUERIES, &tk("clinic1", "write")), Some(1.0));
    assert_eq!(m.value(ERRORS, &tk("clinic1", "write")), Some(1.0));
    assert!((m.value(SUM, &tk("clinic1", "read")).unwrap() - 0.172).abs() < 1e-9);
    assert_eq!(
        m.value(REJECTED, &[("source", "udp"), ("reason", "unknown_metric")]),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tenant_ids_stays_bounded() {
    let daemon = TestDaemon::start().await;
    // 100,000 distinct tenants in 10 bodies of 10,000 lines.
    for batch in 0..10 {
        let mut body = String::with_capacity(10_000 * 48);
        for i in 0..10_000 {
            let id = batch * 10_000 + i;
            body.push_str(&format!("tenantwatch.query:1|ms|#tenant:flood{id}\n"));
        }
        let reply = daemon.post("/v1/events", &[], body).await;
        assert_eq!(reply.status, 202);
        assert_eq!(reply.json()["accepted"], 10_000);
    }
    let m = daemon.metrics().await;
    assert_eq!(m.value("tenantwatch_tenants_tracked", &[]), Some(10_000.0));
    assert_eq!(
        m.value("tenantwatch_tenants_overflow_total", &[]),
        Some(90_000.0)
    );
    assert_eq!(
        m.value(QUERIES, &tk("__overflow__", "other")),
        Some(90_000.0)
    );
    let tenants: std::collections::BTreeSet<&str> = m
        .samples_named(QUERIES)
        .map(|s| s.labels["tenant"].as_str())
        .collect();
    assert_eq!(tenants.len(), 10_001);
    // A tenant admitted early still counts on its own.
    daemon
        .post("/v1/events", &[], "tenantwatch.query:1|ms|#tenant:flood5")
        .await;
    let m = daemon.metrics().await;
    assert_eq!(m.value(QUERIES, &tk("flood5", "other")), Some(2.0));
    daemon.stop().await;
}

/// Sends `parts` over one connection, a pause between each, and returns
/// the start of the answer.
async fn send_in_parts(daemon: &TestDaemon, parts: &[&[u8]]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(daemon.http).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        stream.write_all(part).await.unwrap();
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_read_whole_within_their_limits() {
    let daemon =
        TestDaemon::start_with(|c| c.server.body_read_timeout = std::time::Duration::from_secs(1))
            .await;
    let line = b"tenantwatch.query:4|ms|#tenant:split,kind:read\n";
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        2 * line.len()
    );
    // A body that arrives in three packets is joined, not cut at the first.
    let answer = send_in_parts(
        &daemon,
        &[
            head.as_bytes(),
            &line[..10],
            &[&line[10..], &line[..]].concat(),
        ],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    // A chunked check, in two chunks.
    let answer = send_in_parts(
        &daemon,
        &[
            b"POST /v1/ratelimit/check HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"tenant",
            b"\r\n",
            b"c\r\n\":\"chunked\"}\r\n0\r\n\r\n",
        ],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"tenant\":\"chunked\""), "{answer}");

    // A chunked check beyond 16 KiB, with no length declared up front: 413.
    let filler = "x".repeat(20 * 1024);
    let chunk = format!(
        "{:x}\r\n{{\"tenant\":\"{filler}\"}}\r\n0\r\n\r\n",
        filler.len() + 13
    );
    let answer = send_in_parts(
        &daemon,
        &[
            b"POST /v1/ratelimit/check HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk.as_bytes(),
        ],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A body promised and never sent: 408 after server.body_read_timeout.
    let answer = send_in_parts(
        &daemon,
        &[b"POST /v1/ratelimit/check HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"ten"],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let m = daemon.metrics().await;
    assert_eq!(m.value(QUERIES, &tk("split", "read")), Some(2.0));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_excess_connections_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = TestDaemon::start_with(|c| {
        c.server.max_connections = 2;
        c.server.max_connections_per_ip = 3;
        c.server.header_read_timeout = std::time::Duration::from_millis(500);
    })
    .await;

    // A client that never finishes its headers is disconnected.
    let mut slow = tokio::net::TcpStream::connect(daemon.http).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the server closes a connection stuck in its headers");
    let closed = match read {
        Ok(0) => true,
        Ok(n) => String::from_utf8_lossy(&buf[..n]).contains("408"),
        Err(_) => true,
    };
    assert!(closed);

    // Two idle connections use the cap; a third, not a probe (probes have
    // a reserve of their own), is closed unanswered.
    let _first = tokio::net::TcpStream::connect(daemon.http).await.unwrap();
    let _second = tokio::net::TcpStream::connect(daemon.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(daemon.http).await.unwrap();
    let _ = third
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the excess connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop((_first, _second));

    // Once the idle ones time out, the server answers again and has counted.
    let m = support::eventually(
        "a free connection slot",
        Duration::from_secs(10),
        || async {
            let get = support::try_http(
                daemon.http,
                "GET",
                "/metrics",
                &[support::OPENMETRICS],
                Vec::new(),
            );
            let reply = tokio::time::timeout(Duration::from_secs(2), get)
                .await
                .ok()?
                .ok()?;
            (reply.status == 200).then(|| support::Exposition::parse(&reply.text()))
        },
    )
    .await;
    assert!(
        m.value(
            "tenantwatch_http_connections_rejected_total",
            &[("reason", "max_connections")]
        )
        .unwrap()
            >= 1.0
    );
    daemon.stop().await;
}
