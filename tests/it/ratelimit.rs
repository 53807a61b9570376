//! `POST /v1/ratelimit/check` against the real daemon: quotas from the
//! default, tiers and overrides, the IETF draft headers, shadow mode, bad
//! requests, batches, and the decision counters; the flags and advice
//! endpoints. Each test runs against both backends: this instance's own
//! limiters, and a throwaway Redis.

use crate::support;

use crate::support::TestDaemon;
use crate::support::redis_server::RedisServer;
use tenantwatch::config::{Settings, TenantOverride, TierSettings};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Local,
    Redis,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
        }
    }
}

/// Runs an `async fn(Backend)` test once per backend, as `<name>::local`
/// and `<name>::redis`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$test(super::Backend::Local).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$test(super::Backend::Redis).await;
            }
        }
    )*};
}

on_both_backends!(
    the_burst_is_allowed_then_denied_with_headers,
    shadow_mode_allows_and_counts_what_it_would_deny,
    bad_checks_are_refused_with_problem_details,
    callers_spend_only_their_own_tenants_quota,
    a_batch_answers_every_check,
);

/// A daemon on `backend` (with its own Redis, kept alive by the returned
/// handle), configured by `customize`.
async fn start(
    backend: Backend,
    customize: impl FnOnce(&mut Settings),
) -> (TestDaemon, Option<RedisServer>) {
    let redis = (backend == Backend::Redis).then(RedisServer::start);
    let url = redis.as_ref().map(RedisServer::url);
    let daemon = TestDaemon::start_with(|c| {
        if let Some(url) = url {
            c.ratelimit.backend = tenantwatch::config::Backend::Redis;
            c.ratelimit.redis.url = url;
        }
        customize(c);
    })
    .await;
    (daemon, redis)
}

async fn daemon(backend: Backend) -> (TestDaemon, Option<RedisServer>) {
    start(backend, |c| {
        c.ratelimit.default_qps = 1.0;
        c.ratelimit.default_burst = 3;
        c.ratelimit.tiers.insert(
            "gold".into(),
            TierSettings {
                qps: 1000.0,
                burst: 100,
                shadow: false,
            },
        );
        c.ratelimit.tiers.insert(
            "trial".into(),
            TierSettings {
                qps: 1.0,
                burst: 1,
                shadow: true,
            },
        );
        c.ratelimit.tenants.insert(
            "vip".into(),
            TenantOverride {
                tier: Some("gold".into()),
                ..Default::default()
            },
        );
        c.ratelimit.tenants.insert(
            "newbie".into(),
            TenantOverride {
                tier: Some("trial".into()),
                ..Default::default()
            },
        );
    })
    .await
}

async fn check(daemon: &TestDaemon, body: &str) -> support::HttpReply {
    daemon
        .post(
            "/v1/ratelimit/check",
            &[("content-type", "application/json")],
            body,
        )
        .await
}

async fn the_burst_is_allowed_then_denied_with_headers(backend: Backend) {
    let (daemon, _redis) = daemon(backend).await;
    for remaining in [2, 1, 0] {
        let reply = check(&daemon, r#"{"tenant":"clinic1"}"#).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["allowed"], true);
        assert_eq!(body["remaining"], remaining);
        assert_eq!(body["limit"], 3);
        assert_eq!(body["policy"], "default");
        assert_eq!(body["backend"], backend.name());
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"default\";q=3;w=3")
        );
        assert_eq!(
            reply.header("ratelimit"),
            Some(format!("\"default\";r={remaining};t=0").as_str())
        );
        assert!(reply.header("retry-after").is_none());
    }
    let reply = check(&daemon, r#"{"tenant":"clinic1","cost":1}"#).await;
    assert_eq!(reply.status, 429);
    let body = reply.json();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["reason"], "quota exceeded");
    let retry_ms = body["retry_after_ms"].as_u64().unwrap();
    assert!(retry_ms > 0 && retry_ms <= 1000, "{retry_ms}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=1"));

    // A cost larger than the burst can never pass.
    let reply = check(&daemon, r#"{"tenant":"other","cost":10}"#).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["reason"], "cost exceeds the burst");

    // Another tenant has its own bucket; a gold tenant its tier's quota.
    assert_eq!(check(&daemon, r#"{"tenant":"clinic2"}"#).await.status, 200);
    for _ in 0..50 {
        let reply = check(&daemon, r#"{"tenant":"vip"}"#).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["policy"], "tier:gold");
    }

    let m = daemon.metrics().await;
    let decisions = |tenant: &str, decision: &str| {
        m.value(
            "tenantwatch_ratelimit_decisions_total",
            &[
                ("tenant", tenant),
                ("decision", decision),
                ("protocol", "http"),
            ],
        )
    };
    assert_eq!(decisions("clinic1", "allowed"), Some(3.0));
    assert_eq!(decisions("clinic1", "denied"), Some(1.0));
    assert_eq!(decisions("vip", "allowed"), Some(50.0));
    assert_eq!(
        m.value("tenantwatch_tenant_ratelimit_qps", &[("tenant", "vip")]),
        Some(1000.0)
    );
    daemon.stop().await;
}

async fn shadow_mode_allows_and_counts_what_it_would_deny(backend: Backend) {
    let (daemon, _redis) = daemon(backend).await;
    for _ in 0..4 {
        let reply = check(&daemon, r#"{"tenant":"newbie"}"#).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["allowed"], true);
    }
    let m = daemon.metrics().await;
    let decisions = |decision: &str| {
        m.value(
            "tenantwatch_ratelimit_decisions_total",
            &[
                ("tenant", "newbie"),
                ("decision", decision),
                ("protocol", "http"),
            ],
        )
    };
    assert_eq!(decisions("allowed"), Some(1.0));
    assert_eq!(decisions("shadow_denied"), Some(3.0));
    assert_eq!(decisions("denied"), Some(0.0));
    daemon.stop().await;
}

async fn bad_checks_are_refused_with_problem_details(backend: Backend) {
    let (daemon, _redis) = daemon(backend).await;
    for (body, needle) in [
        ("not json", "expected"),
        (r#"{"cost":1}"#, "tenant"),
        (r#"{"tenant":"a b"}"#, "tenant"),
        (r#"{"tenant":"a","cost":0}"#, "cost"),
        (r#"{"tenant":"a","cost":-1}"#, "expected"),
        (r#"{"tenant":"a","extra":true}"#, "unknown field"),
        (r#"{"checks":[]}"#, "1 to 100"),
        (r#"{"tenant":"a","checks":[{"tenant":"b"}]}"#, "not both"),
        (
            r#"{"checks":[{"tenant":"a"},{"tenant":"b c"}]}"#,
            "checks[1].tenant",
        ),
        (r#"{"checks":[{"tenant":"a","cost":0}]}"#, "checks[0].cost"),
    ] {
        let reply = check(&daemon, body).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert!(
            reply.json()["detail"].as_str().unwrap().contains(needle),
            "{body}: {}",
            reply.text()
        );
    }
    let reply = daemon.get("/v1/ratelimit/check").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));

    let flags = daemon.get("/api/v1/flags").await;
    assert_eq!(flags.status, 200);
    assert_eq!(flags.json()["flags"], serde_json::json!([]));
    // Local: this replica alone; Redis: the fleet (of one).
    let scope = flags.json()["scope"].as_str().map(str::to_owned);
    assert!(
        matches!(scope.as_deref(), Some("replica" | "fleet")),
        "{}",
        flags.text()
    );
    let advice = daemon.get("/api/v1/advice").await;
    assert_eq!(advice.json(), serde_json::json!({"advice": []}));
    daemon.stop().await;
}

async fn callers_spend_only_their_own_tenants_quota(backend: Backend) {
    let dir = std::env::temp_dir().join(format!(
        "tw-callers-{}-{}",
        std::process::id(),
        backend.name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (router, write) = (dir.join("router"), dir.join("write"));
    std::fs::write(&router, "router-token\n").unwrap();
    std::fs::write(&write, "admin-token\n").unwrap();
    let (daemon, _redis) = start(backend, |c| {
        c.server.auth_token_file = Some(write.clone());
        c.ratelimit.callers.insert(
            "router".into(),
            tenantwatch::config::CallerSettings {
                token_file: router.clone(),
                tenants: vec!["^clinic[0-9]+$".into()],
            },
        );
    })
    .await;
    let check_as = |token: Option<&'static str>, tenant: &'static str| {
        let addr = daemon.http;
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = &auth {
                headers.push(("authorization", auth.as_str()));
            }
            let body = format!(r#"{{"tenant":"{tenant}"}}"#).into_bytes();
            support::http(addr, "POST", "/v1/ratelimit/check", &headers, body)
                .await
                .status
        }
    };
    assert_eq!(check_as(Some("router-token"), "clinic7").await, 200);
    assert_eq!(check_as(Some("router-token"), "dental1").await, 403);
    assert_eq!(check_as(Some("admin-token"), "dental1").await, 200);
    assert_eq!(check_as(Some("nobody"), "clinic7").await, 401);
    assert_eq!(check_as(None, "clinic7").await, 401);
    // A batch is refused whole when any tenant is not the caller's.
    let batch = br#"{"checks":[{"tenant":"clinic7"},{"tenant":"dental1"}]}"#.to_vec();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer router-token"),
    ];
    let reply = support::http(daemon.http, "POST", "/v1/ratelimit/check", &headers, batch).await;
    assert_eq!(reply.status, 403);
    assert!(reply.text().contains("dental1"), "{}", reply.text());
    daemon.stop().await;
}

async fn a_batch_answers_every_check(backend: Backend) {
    let (daemon, _redis) = daemon(backend).await;
    let reply = check(
        &daemon,
        r#"{"checks":[{"tenant":"clinic1"},{"tenant":"clinic1"},{"tenant":"clinic1"},
            {"tenant":"clinic1"},{"tenant":"vip","cost":2},{"tenant":"other","cost":10}]}"#,
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["allowed"], false);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    // In order: the same tenant's checks spend one bucket one after another.
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        assert_eq!(results[i]["tenant"], "clinic1");
        assert_eq!(results[i]["allowed"], true, "{body}");
        assert_eq!(results[i]["remaining"], remaining, "{body}");
        assert_eq!(results[i]["backend"], backend.name());
    }
    assert_eq!(results[3]["allowed"], false);
    assert_eq!(results[3]["reason"], "quota exceeded");
    assert!(results[3]["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(results[4]["allowed"], true);
    assert_eq!(results[4]["policy"], "tier:gold");
    assert_eq!(results[5]["reason"], "cost exceeds the burst");
    // The longest wait: a cost of 10 against a burst of 3 at 1/s.
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert!(reply.header("ratelimit").is_none());

    let reply = check(
        &daemon,
        r#"{"checks":[{"tenant":"vip"},{"tenant":"clinic2"}]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["allowed"], true);
    assert!(reply.header("retry-after").is_none());

    let many: Vec<String> = (0..101)
        .map(|i| format!(r#"{{"tenant":"t{i}"}}"#))
        .collect();
    let reply = check(&daemon, &format!(r#"{{"checks":[{}]}}"#, many.join(","))).await;
    assert_eq!(reply.status, 400);

    let m = daemon.metrics().await;
    let decisions = |decision: &str| {
        m.value(
            "tenantwatch_ratelimit_decisions_total",
            &[
                ("tenant", "clinic1"),
                ("decision", decision),
                ("protocol", "http"),
            ],
        )
    };
    assert_eq!(decisions("allowed"), Some(3.0));
    assert_eq!(decisions("denied"), Some(1.0));
    let backend_up = m.value(
        "tenantwatch_ratelimit_backend_up",
        &[("backend", backend.name())],
    );
    assert_eq!(backend_up, Some(1.0));
    daemon.stop().await;
}

/// Tiers from `tenants.tiers_file`: quotas of `[ratelimit.tiers]`, the
/// `tenantwatch_tenant_info` series, the tenant detail, and a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_from_a_file_set_quotas_and_label_tenants() {
    let dir = std::env::temp_dir().join(format!("tw-tiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tiers = dir.join("tiers.csv");
    std::fs::write(&tiers, "# tenant,tier\nclinic1,gold\nclinic2, bronze\n\n").unwrap();
    let configure = |c: &mut Settings| {
        c.tenants.tiers_file = Some(tiers.clone());
        c.ratelimit.tiers.insert(
            "gold".into(),
            TierSettings {
                qps: 1000.0,
                burst: 100,
                shadow: false,
            },
        );
        c.ratelimit.tenants.insert(
            "vip".into(),
            TenantOverride {
                tier: Some("gold".into()),
                ..Default::default()
            },
        );
    };
    let (daemon, _) = start(Backend::Local, configure).await;
    assert_eq!(
        check(&daemon, r#"{"tenant":"clinic1"}"#).await.json()["policy"],
        "tier:gold"
    );
    // A tier without quotas is a label only.
    assert_eq!(
        check(&daemon, r#"{"tenant":"clinic2"}"#).await.json()["policy"],
        "default"
    );
    let m = daemon.metrics().await;
    let info = |tenant: &str, tier: &str| {
        m.value(
            "tenantwatch_tenant_info",
            &[("tenant", tenant), ("tier", tier)],
        )
    };
    assert_eq!(info("clinic1", "gold"), Some(1.0));
    assert_eq!(info("clinic2", "bronze"), Some(1.0));
    assert_eq!(info("vip", "gold"), Some(1.0));
    daemon
        .post(
            "/v1/events",
            &[],
            "tenantwatch.query:5|ms|#tenant:clinic1\n",
        )
        .await;
    let detail = daemon.get("/api/v1/tenants/clinic1").await.json();
    assert_eq!(detail["quota"]["tier"], "gold", "{detail}");

    // SIGHUP re-reads the file.
    std::fs::write(&tiers, "clinic1,silver\n").unwrap();
    let mut file = support::file_config();
    configure(&mut file);
    let config = tenantwatch::Config::try_from(file).unwrap();
    daemon.daemon.as_ref().unwrap().reload(&config);
    let m = daemon.metrics().await;
    assert_eq!(
        m.value(
            "tenantwatch_tenant_info",
            &[("tenant", "clinic1"), ("tier", "silver")],
        ),
        Some(1.0)
    );
    assert!(
        m.value(
            "tenantwatch_tenant_info",
            &[("tenant", "clinic2"), ("tier", "bronze")]
        )
        .is_none()
    );
    assert_eq!(
        check(&daemon, r#"{"tenant":"clinic1"}"#).await.json()["policy"],
        "default"
    );

    // A bad line is refused by number.
    std::fs::write(&tiers, "clinic1,gold\nno comma here\nbad tenant!,gold\n").unwrap();
    let mut file = support::file_config();
    configure(&mut file);
    let err = tenantwatch::Config::try_from(file).unwrap_err().to_string();
    assert!(err.contains("tiers.csv:2"), "{err}");
    assert!(err.contains("tiers.csv:3"), "{err}");
    daemon.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A check request as raw bytes, head and body.
fn raw_check(tenant: &str) -> (Vec<u8>, Vec<u8>) {
    let body = format!("{{\"tenant\":\"{tenant}\"}}").into_bytes();
    let head = format!(
        "POST /v1/ratelimit/check HTTP/1.1\r\nHost: tenantwatch\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    (head, body)
}

/// One response read off a raw connection: the status line, the headers
/// (names in lower case, `date` left out but required) and the body.
async fn read_response(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> (String, std::collections::BTreeMap<String, String>, String) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().to_owned();
            let mut headers = std::collections::BTreeMap::new();
            for line in lines {
                let (name, value) = line.split_once(": ").unwrap();
                let previous = headers.insert(name.to_ascii_lowercase(), value.to_owned());
                assert!(previous.is_none(), "{name} twice in {head}");
            }
            let length: usize = headers["content-length"].parse().unwrap();
            if pending.len() >= end + 4 + length {
                let body = String::from_utf8(pending[end + 4..end + 4 + length].to_vec()).unwrap();
                pending.drain(..end + 4 + length);
                let date = headers.remove("date").expect("a date header");
                assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
                return (status, headers, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "the connection closed before a whole response");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Checks whose bytes arrive whole are answered without hyper's
/// dispatcher; one whose body comes later goes through hyper. A client
/// cannot tell them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_is_answered_alike_whole_or_cut() {
    use tokio::io::AsyncWriteExt;
    let (daemon, _redis) = daemon(Backend::Local).await;
    let addr = daemon.http;

    let mut whole = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (head, body) = raw_check("alpha");
    whole.write_all(&[head, body].concat()).await.unwrap();
    let answer_whole = read_response(&mut whole, &mut Vec::new()).await;

    let mut cut = tokio::net::TcpStream::connect(&addr).await.unwrap();
    cut.set_nodelay(true).unwrap();
    let (head, body) = raw_check("bravo");
    cut.write_all(&head).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    cut.write_all(&body).await.unwrap();
    let (status, headers, body) = read_response(&mut cut, &mut Vec::new()).await;
    let answer_cut = (status, headers, body.replace("bravo", "alpha"));

    assert_eq!(answer_whole, answer_cut);
    let (status, headers, body) = answer_whole;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["ratelimit"], "\"default\";r=2;t=0");
    assert!(body.contains("\"remaining\":2"), "{body}");
}

/// Pipelined checks are answered in order on one connection; the first
/// other request (a probe) is served there too, and so is everything after
/// it. Every answer is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_checks_and_a_probe_share_one_connection() {
    use tokio::io::AsyncWriteExt;
    let (daemon, _redis) = daemon(Backend::Local).await;
    let addr = daemon.http;
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (head, body) = raw_check("pipelined");
    let check = [head, body].concat();
    let mut burst = check.repeat(4);
    burst.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: tenantwatch\r\n\r\n");
    stream.write_all(&burst).await.unwrap();
    let mut pending = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(read_response(&mut stream, &mut pending).await.0);
    }
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 429 Too Many Requests",
            "HTTP/1.1 200 OK",
        ]
    );
    // hyper serves the connection from here on.
    stream.write_all(&check).await.unwrap();
    let (status, headers, _) = read_response(&mut stream, &mut pending).await;
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    assert!(headers.contains_key("retry-after"));

    let m = daemon.metrics().await;
    let requests = |endpoint: &str, code: &str| {
        m.value(
            "tenantwatch_http_requests_total",
            &[("endpoint", endpoint), ("code", code)],
        )
    };
    assert_eq!(requests("ratelimit_check", "200"), Some(3.0));
    assert_eq!(requests("ratelimit_check", "429"), Some(2.0));
    assert_eq!(requests("healthz", "200"), Some(1.0));
}

/// A keep-alive connection that sends nothing more is closed after
/// `server.idle_timeout`, and at once when the daemon stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_check_connections_are_closed_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (daemon, _redis) = start(Backend::Local, |c| {
        c.server.idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let addr = daemon.http;
    let (head, body) = raw_check("idle");
    let check = [head, body].concat();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(&check).await.unwrap();
    read_response(&mut idle, &mut Vec::new()).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        idle.read(&mut [0u8; 64]).await.unwrap()
    })
    .await
    .expect("closed after idle_timeout");
    assert_eq!(closed, 0);
    // The same once hyper serves the connection.
    let mut probed = tokio::net::TcpStream::connect(&addr).await.unwrap();
    probed
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tenantwatch\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut probed, &mut Vec::new()).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        probed.read(&mut [0u8; 64]).await.unwrap_or(0)
    })
    .await
    .expect("closed after idle_timeout under hyper");
    assert_eq!(closed, 0);

    daemon.stop().await;

    let (daemon, _redis) = start(Backend::Local, |c| {
        c.server.header_read_timeout = std::time::Duration::from_secs(60);
        c.server.idle_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let addr = daemon.http;
    let mut open = tokio::net::TcpStream::connect(&addr).await.unwrap();
    open.write_all(&check).await.unwrap();
    read_response(&mut open, &mut Vec::new()).await;
    daemon.stop().await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        open.read(&mut [0u8; 64]).await.unwrap_or(0)
    })
    .await
    .expect("closed when the daemon stops");
    assert_eq!(closed, 0);
}
