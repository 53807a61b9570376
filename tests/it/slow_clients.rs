//! Slow and heavy clients: a scraper that never reads is cut off after
//! `server.write_timeout`; heavy views beyond `server.max_heavy_requests`
//! get 503 with `Retry-After` while probes keep answering; `/metrics`
//! answers gzip to scrapers that accept it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::{TestDaemon, http};

/// Events for `tenants` tenants, in bodies the HTTP endpoint accepts.
async fn fill(daemon: &TestDaemon, tenants: usize) {
    let lines: Vec<String> = (0..tenants)
        .map(|i| {
            format!(
                "tenantwatch.query:{}|ms|#tenant:tenant{i},kind:read",
                i % 50
            )
        })
        .collect();
    for chunk in lines.chunks(20_000) {
        let reply = daemon.post("/v1/events", &[], chunk.join("\n")).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraper_that_never_reads_is_cut_off() {
    let daemon =
        TestDaemon::start_with(|c| c.server.write_timeout = std::time::Duration::from_millis(500))
            .await;
    fill(&daemon, 10_000).await;
    let full = daemon.get("/metrics").await.body.len();
    assert!(
        full > 8 << 20,
        "the exposition must outgrow the socket buffers: {full}"
    );
    let addr = daemon.http;
    let received = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Do not read: the server's writes stall and its deadline passes.
        std::thread::sleep(Duration::from_secs(2));
        let mut received = Vec::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let _ = stream.read_to_end(&mut received);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no EOF: still open"
        );
        received.len()
    })
    .await
    .unwrap();
    assert!(
        received < full,
        "the connection was closed before the whole exposition: {received} of {full}"
    );
    // The daemon is fine.
    assert_eq!(daemon.get("/healthz").await.status, 200);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_views_beyond_the_cap_get_503_and_probes_still_answer() {
    let daemon = TestDaemon::start_with(|c| c.server.max_heavy_requests = 1).await;
    fill(&daemon, 10_000).await;
    let addr = daemon.http;
    let mut busy = 0;
    for _ in 0..10 {
        let requests: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(http(
                    addr,
                    "GET",
                    "/api/v1/tenants?limit=1000",
                    &[],
                    Vec::new(),
                ))
            })
            .collect();
        assert_eq!(daemon.get("/healthz").await.status, 200);
        for request in requests {
            let reply = request.await.unwrap();
            match reply.status {
                200 => {}
                503 => {
                    busy += 1;
                    assert_eq!(reply.header("retry-after"), Some("1"));
                }
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
        if busy > 0 {
            break;
        }
    }
    assert!(
        busy > 0,
        "8 concurrent views with one permit never met the cap"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_gzipped_for_scrapers_that_accept_it() {
    let daemon = TestDaemon::start().await;
    fill(&daemon, 2_000).await;
    let plain = daemon.get("/metrics").await;
    let gzipped = http(
        daemon.http,
        "GET",
        "/metrics",
        &[("accept-encoding", "gzip, deflate")],
        Vec::new(),
    )
    .await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("accept-encoding"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gzipped.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("tenantwatch_tenant_queries_total{tenant=\"tenant1999\",kind=\"read\"} 1")
    );
    assert!(text.ends_with("# EOF\n"));
    assert!(
        gzipped.body.len() * 8 <= plain.body.len(),
        "gzip {} vs plain {}",
        gzipped.body.len(),
        plain.body.len()
    );
    daemon.stop().await;
}
