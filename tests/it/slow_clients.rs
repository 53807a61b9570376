//! Slow and heavy clients: a scraper that never reads is cut off after
//! `server.write_timeout`; heavy views beyond `server.max_heavy_requests`
//! get 503 with `Retry-After` while probes keep answering; `/metrics`
//! answers gzip to scrapers that accept it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::{self, TestDaemon, http};

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
    let plain = http(
        daemon.http,
        "GET",
        "/metrics",
        &[support::OPENMETRICS],
        Vec::new(),
    )
    .await;
    let gzipped = http(
        daemon.http,
        "GET",
        "/metrics",
        &[("accept-encoding", "gzip, deflate"), support::OPENMETRICS],
        Vec::new(),
    )
    .await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("accept, accept-encoding"));
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

/// A connection to `addr` from the local address `from` (127.0.0.x: every
/// one of them is loopback on Linux), so tests can play several clients.
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends `request` on a fresh connection from `from` and reads until the
/// server closes it (at most 5 s): what came back.
async fn exchange_from(from: &str, addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_from(from, addr).await;
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// `GET /metrics` from `from`, once a slot is free for it.
async fn metrics_from(from: &str, addr: std::net::SocketAddr) -> support::Exposition {
    support::eventually("a scrape", Duration::from_secs(5), || async {
        let reply = exchange_from(
            from,
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| support::Exposition::parse(body))
    })
    .await
}

/// Whether the server closes `stream` within `within` (EOF or reset),
/// reading and dropping whatever comes first.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Idle connections from one address (127.0.0.1) up to its cap and beyond:
/// those beyond `server.max_connections_per_ip` are closed at once and
/// counted, and the probes and reads of another address (127.0.0.2) are
/// answered. With the per-address cap as large as `max_connections`, the
/// one address takes every ordinary slot, and the probes are still
/// answered from the reserve while any other request there is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_starve_probes_from_another() {
    const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let daemon = TestDaemon::start_with(|c| c.server.max_connections = 8).await;
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(connect_from("127.0.0.1", daemon.http).await);
    }
    // The cap per address is a quarter of max_connections: 2 stay open.
    let mut closed = 0;
    for stream in &mut held {
        if closed_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 10, "beyond the per-address cap, closed at once");
    let reply = exchange_from("127.0.0.2", daemon.http, GET_HEALTHZ).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let m = metrics_from("127.0.0.2", daemon.http).await;
    assert_eq!(
        m.value(
            "tenantwatch_http_connections_rejected_total",
            &[("reason", "per_ip")]
        ),
        Some(10.0)
    );
    drop(held);
    daemon.stop().await;

    let daemon = TestDaemon::start_with(|c| {
        c.server.max_connections = 4;
        c.server.max_connections_per_ip = 4;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.1", daemon.http).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (request, answered) in [
        (GET_HEALTHZ, "HTTP/1.1 200"),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200"),
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200"),
    ] {
        let reply = exchange_from("127.0.0.2", daemon.http, request).await;
        assert!(reply.starts_with(answered), "{reply:?}");
        assert!(reply.contains("connection: close"), "{reply:?}");
    }
    // Anything but a probe is closed unanswered while the slots are taken.
    let reply = exchange_from(
        "127.0.0.2",
        daemon.http,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(reply, "");
    drop(held);
    // (A scrape that came before the held connections were let go was
    // closed and counted too.)
    let m = metrics_from("127.0.0.2", daemon.http).await;
    let rejected = m.value_or_zero(
        "tenantwatch_http_connections_rejected_total",
        &[("reason", "max_connections")],
    );
    assert!(rejected >= 1.0, "{rejected}");
    assert_eq!(
        m.value(
            "tenantwatch_http_requests_total",
            &[("endpoint", "healthz"), ("code", "200")]
        ),
        Some(2.0)
    );
    daemon.stop().await;
}

/// A keep-alive connection that sends nothing after a response is closed
/// after `server.idle_timeout`, on hyper's path and on the check lane's,
/// though `header_read_timeout` is much longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = TestDaemon::start_with(|c| {
        c.server.idle_timeout = Duration::from_secs(1);
        c.server.header_read_timeout = Duration::from_secs(20);
    })
    .await;
    let check = b"POST /v1/ratelimit/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"tenant\":\"acme\"}";
    for request in [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], &check[..]] {
        let mut stream = connect_from("127.0.0.1", daemon.http).await;
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(!reply.contains("connection: close"), "{reply}");
        let idle = Instant::now();
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "still open 5 s after its response to {}",
            String::from_utf8_lossy(&request[..20])
        );
        let after = idle.elapsed();
        assert!(
            after >= Duration::from_millis(800) && after < Duration::from_secs(3),
            "closed after {after:?}"
        );
    }
    daemon.stop().await;
}

/// A slow sender that starts its request late and trickles its headers
/// gets one `header_read_timeout` from its accept in all, not the check
/// lane's wait and then a fresh one of hyper's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sender_gets_one_header_read_timeout_in_all() {
    use tokio::io::AsyncWriteExt;
    let daemon =
        TestDaemon::start_with(|c| c.server.header_read_timeout = Duration::from_secs(2)).await;
    let mut stream = connect_from("127.0.0.1", daemon.http).await;
    let connected = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"POST /v1/ratelimit/check HTTP/1.1\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut received = Vec::new();
    let read_all = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut received);
    let _ = tokio::time::timeout(Duration::from_secs(6), read_all).await;
    let after = connected.elapsed();
    trickle.abort();
    assert!(
        after < Duration::from_millis(2700),
        "closed {after:?} after the accept, header_read_timeout is 2 s"
    );
    daemon.stop().await;
}

/// hyper's read buffer is bounded (a request head has at most about
/// 64 KiB at the default limits): a longer head is refused, not buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_beyond_the_read_buffer_is_refused() {
    let daemon = TestDaemon::start().await;
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..20 {
        request.extend_from_slice(format!("x-{i}: {}\r\n", "a".repeat(5000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let reply = exchange_from("127.0.0.1", daemon.http, &request).await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply:?}"
    );
    assert_eq!(daemon.get("/healthz").await.status, 200);
    daemon.stop().await;
}
