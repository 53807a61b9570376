//! Envoy's rate-limit service (`ratelimit.grpc_listen`) answered to a
//! client generated from Envoy's protos (`proto/`, the client half of
//! `src/rls/generated/`, over tonic's HTTP/2 channel): the quota spent then
//! `OVER_LIMIT` with Envoy's fields and the RateLimit headers, shadow mode,
//! a claimed tier, a flagged tenant tightened, one quota with the HTTP check
//! (locally and across daemons sharing Redis), tokens, TLS, the health
//! service, and malformed requests answered with a gRPC status.

use crate::support;

use std::path::PathBuf;
use std::time::Duration;

use crate::support::TestDaemon;
use crate::support::redis_server::RedisServer;
use tenantwatch::config::Settings;
use tenantwatch::rls::generated::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use tenantwatch::rls::generated::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, rate_limit::Unit,
};
use tenantwatch::rls::generated::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_service_client::RateLimitServiceClient,
};
use tonic::transport::{Channel, Endpoint};

/// Starts a daemon with the gRPC service on a free loopback port.
async fn daemon(customize: impl FnOnce(&mut Settings)) -> (TestDaemon, String) {
    let daemon = TestDaemon::start_with(|c| {
        c.ratelimit.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        customize(c);
    })
    .await;
    let addr = daemon.daemon.as_ref().unwrap().grpc_addr().unwrap();
    (daemon, format!("http://{addr}"))
}

async fn client(url: &str) -> RateLimitServiceClient<Channel> {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    RateLimitServiceClient::new(channel)
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        limit: None,
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: hits,
    }
}

/// One descriptor `tenant=<tenant>` in the default domain.
fn for_tenant(tenant: &str) -> RateLimitRequest {
    request("tenantwatch", vec![descriptor(&[("tenant", tenant)])], 0)
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner()
}

fn header<'a>(response: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    response
        .response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

async fn http_check(daemon: &TestDaemon, tenant: &str) -> support::HttpReply {
    daemon
        .post(
            "/v1/ratelimit/check",
            &[("content-type", "application/json")],
            format!(r#"{{"tenant":"{tenant}"}}"#),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_spent_then_over_limit_with_envoys_fields_and_headers() {
    let (daemon, url) = daemon(|c| {
        c.ratelimit.default_qps = 1.0;
        c.ratelimit.default_burst = 3;
    })
    .await;
    let mut client = client(&url).await;
    for remaining in [2, 1, 0] {
        let answer = ask(&mut client, for_tenant("clinic1")).await;
        assert_eq!(answer.overall_code, Code::Ok as i32, "{answer:?}");
        let status = &answer.statuses[0];
        assert_eq!(status.code, Code::Ok as i32);
        assert_eq!(status.limit_remaining, remaining);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("default", 1, Unit::Second as i32)
        );
        assert_eq!(
            header(&answer, "ratelimit"),
            Some(format!("\"default\";r={remaining};t=0").as_str())
        );
        assert_eq!(
            header(&answer, "ratelimit-policy"),
            Some("\"default\";q=3;w=3")
        );
    }
    // Over: the descriptor and the whole answer, with Retry-After; a
    // descriptor that names no tenant is OK and spends nothing.
    let answer = ask(
        &mut client,
        request(
            "tenantwatch",
            vec![
                descriptor(&[("remote_address", "10.0.0.1")]),
                descriptor(&[("tenant", "clinic1"), ("path", "/x")]),
            ],
            0,
        ),
    )
    .await;
    assert_eq!(answer.overall_code, Code::OverLimit as i32, "{answer:?}");
    assert_eq!(answer.statuses.len(), 2);
    assert_eq!(answer.statuses[0].code, Code::Ok as i32);
    assert!(answer.statuses[0].current_limit.is_none());
    assert_eq!(answer.statuses[1].code, Code::OverLimit as i32);
    let wait = answer.statuses[1].duration_until_reset.unwrap();
    assert!(
        wait.seconds == 0 && wait.nanos > 0 || wait.seconds == 1,
        "{wait:?}"
    );
    assert_eq!(header(&answer, "retry-after"), Some("1"));
    // hits_addend is the cost: another tenant's burst of 3 takes one
    // request of 3, then nothing more.
    let answer = ask(
        &mut client,
        request("tenantwatch", vec![descriptor(&[("tenant", "c2")])], 3),
    )
    .await;
    assert_eq!(answer.statuses[0].limit_remaining, 0);
    assert_eq!(answer.overall_code, Code::Ok as i32);
    // The HTTP check spends the same limiter: clinic1 is still out.
    assert_eq!(http_check(&daemon, "clinic1").await.status, 429);

    let metrics = daemon.metrics().await;
    let count = |tenant: &str, decision: &str, protocol: &str| {
        metrics.value_or_zero(
            "tenantwatch_ratelimit_decisions_total",
            &[
                ("tenant", tenant),
                ("decision", decision),
                ("protocol", protocol),
            ],
        )
    };
    assert_eq!(count("clinic1", "allowed", "grpc"), 3.0);
    assert_eq!(count("clinic1", "denied", "grpc"), 1.0);
    assert_eq!(count("clinic1", "denied", "http"), 1.0);
    assert_eq!(count("c2", "allowed", "grpc"), 1.0);
    assert_eq!(
        metrics.value(
            "tenantwatch_ratelimit_grpc_untenanted_descriptors_total",
            &[]
        ),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_answers_ok_and_counts_what_it_would_deny() {
    let (daemon, url) = daemon(|c| {
        c.ratelimit.default_qps = 1.0;
        c.ratelimit.default_burst = 1;
        c.ratelimit.shadow = true;
    })
    .await;
    let mut client = client(&url).await;
    for _ in 0..3 {
        let answer = ask(&mut client, for_tenant("trial1")).await;
        assert_eq!(answer.overall_code, Code::Ok as i32, "{answer:?}");
        assert!(header(&answer, "retry-after").is_none());
    }
    let metrics = daemon.metrics().await;
    let labels = [
        ("tenant", "trial1"),
        ("decision", "shadow_denied"),
        ("protocol", "grpc"),
    ];
    assert_eq!(
        metrics.value("tenantwatch_ratelimit_decisions_total", &labels),
        Some(2.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_may_claim_a_tier_only_for_a_tenant_without_one() {
    let (daemon, url) = daemon(|c| {
        c.ratelimit.rls.tier_keys = vec!["plan".into()];
        c.ratelimit.tiers.insert(
            "gold".into(),
            tenantwatch::ratelimit::TierSettings {
                qps: 50.0,
                burst: 500,
                shadow: false,
            },
        );
        c.ratelimit.tenants.insert(
            "capped".into(),
            tenantwatch::ratelimit::TenantOverride {
                tier: None,
                qps: Some(2.0),
                burst: Some(4),
            },
        );
    })
    .await;
    let mut client = client(&url).await;
    let limit_of = |answer: &RateLimitResponse| {
        let limit = answer.statuses[0].current_limit.clone().unwrap();
        (limit.name, limit.requests_per_unit)
    };
    let claim = |tenant: &str, plan: &str| {
        request(
            "tenantwatch",
            vec![descriptor(&[("tenant", tenant), ("plan", plan)])],
            0,
        )
    };
    let gold = ask(&mut client, claim("newcomer", "gold")).await;
    assert_eq!(limit_of(&gold), ("tier:gold".into(), 50));
    let unknown = ask(&mut client, claim("other", "platinum")).await;
    assert_eq!(limit_of(&unknown), ("default".into(), 100));
    let capped = ask(&mut client, claim("capped", "gold")).await;
    assert_eq!(limit_of(&capped), ("tenant:capped".into(), 2));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_tenant_is_tightened_over_grpc_too() {
    let (daemon, url) = daemon(support::tighten_on_error_storm).await;
    let mut client = client(&url).await;
    let events = support::error_storm_events();
    let per_second = |answer: RateLimitResponse| {
        let limit = answer.statuses[0].current_limit.clone().unwrap();
        assert_eq!(limit.unit, Unit::Second as i32);
        limit.requests_per_unit
    };
    let tightened = support::eventually("stormy tightened", Duration::from_secs(20), || {
        let (daemon, events, mut client) = (&daemon, events.clone(), client.clone());
        async move {
            daemon.post("/v1/events", &[], events).await;
            let n = per_second(ask(&mut client, for_tenant("stormy")).await);
            (n < 100_000).then_some(n)
        }
    })
    .await;
    assert!(tightened >= 1, "{tightened}");
    assert_eq!(
        per_second(ask(&mut client, for_tenant("calm1")).await),
        100_000
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_one_quota_whichever_protocol_spends_it() {
    let redis = RedisServer::start();
    let shared = |c: &mut Settings, instance: &str| {
        c.ratelimit.backend = tenantwatch::config::Backend::Redis;
        c.ratelimit.redis.url = redis.url();
        c.ratelimit.redis.instance = instance.into();
        c.ratelimit.default_qps = 0.01;
        c.ratelimit.default_burst = 6;
    };
    let (gateway, url) = daemon(|c| shared(c, "gateway")).await;
    let app = TestDaemon::start_with(|c| shared(c, "app")).await;
    let mut client = client(&url).await;
    // Alternating: the gateway's gRPC answers and the app's HTTP checks
    // count down one bucket.
    for remaining in [5u32, 3, 1] {
        let answer = ask(&mut client, for_tenant("shared1")).await;
        assert_eq!(answer.statuses[0].limit_remaining, remaining, "{answer:?}");
        let reply = http_check(&app, "shared1").await;
        assert_eq!(reply.json()["remaining"], remaining - 1, "{}", reply.text());
        assert_eq!(reply.json()["backend"], "redis");
    }
    let answer = ask(&mut client, for_tenant("shared1")).await;
    assert_eq!(answer.overall_code, Code::OverLimit as i32, "{answer:?}");
    assert_eq!(http_check(&app, "shared1").await.status, 429);
    gateway.stop().await;
    app.stop().await;
}

fn token_file(tag: &str, token: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tw-rls-{tag}-{}", std::process::id()));
    std::fs::write(&path, token).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_their_token_in_the_authorization_metadata() {
    let write = token_file("write", "write-secret");
    let gateway = token_file("gateway", "gateway-secret");
    let (daemon, url) = daemon(|c| {
        c.server.auth_token_file = Some(write.clone());
        c.ratelimit.callers.insert(
            "gateway".into(),
            tenantwatch::ratelimit::CallerSettings {
                token_file: gateway.clone(),
                tenants: vec!["^a.*$".into()],
            },
        );
    })
    .await;
    let mut client = client(&url).await;
    let with_token = |token: Option<&str>, tenant: &str| {
        let mut request = tonic::Request::new(for_tenant(tenant));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    let code = |result: Result<tonic::Response<RateLimitResponse>, tonic::Status>| match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let cases = [
        (None, "acme", tonic::Code::Unauthenticated),
        (Some("wrong"), "acme", tonic::Code::Unauthenticated),
        (
            Some("gateway-secret"),
            "beta",
            tonic::Code::PermissionDenied,
        ),
        (Some("gateway-secret"), "acme", tonic::Code::Ok),
        (Some("write-secret"), "beta", tonic::Code::Ok),
    ];
    for (token, tenant, expected) in cases {
        let got = code(client.should_rate_limit(with_token(token, tenant)).await);
        assert_eq!(got, expected, "{token:?} for {tenant}");
    }
    let metrics = daemon.metrics().await;
    let refused = |reason: &str| {
        metrics.value(
            "tenantwatch_ratelimit_grpc_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("unauthenticated"), Some(2.0));
    assert_eq!(refused("forbidden"), Some(1.0));
    // Nothing was spent for a refused request.
    let beta = metrics.value_or_zero(
        "tenantwatch_ratelimit_decisions_total",
        &[
            ("tenant", "beta"),
            ("decision", "allowed"),
            ("protocol", "grpc"),
        ],
    );
    assert_eq!(beta, 1.0);
    daemon.stop().await;
    let _ = std::fs::remove_file(write);
    let _ = std::fs::remove_file(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_service_says_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (daemon, url) = daemon(|_| {}).await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_grpc_status_and_the_service_goes_on() {
    let (daemon, url) = daemon(|_| {}).await;
    let mut client = client(&url).await;
    let long = "x".repeat(300);
    let many: Vec<RateLimitDescriptor> = (0..65).map(|_| descriptor(&[("tenant", "a")])).collect();
    let wide: Vec<(&str, &str)> = (0..33).map(|_| ("k", "v")).collect();
    let cases = [
        ("another domain", for_tenant_in("envoy", "a")),
        ("no descriptor", request("tenantwatch", vec![], 0)),
        ("65 descriptors", request("tenantwatch", many, 0)),
        (
            "33 entries",
            request("tenantwatch", vec![descriptor(&wide)], 0),
        ),
        ("empty tenant", for_tenant("")),
        ("long tenant", for_tenant(&long)),
        ("tenant with a newline", for_tenant("a\nb")),
        (
            "hits above the limit",
            request(
                "tenantwatch",
                vec![descriptor(&[("tenant", "a")])],
                1_000_001,
            ),
        ),
    ];
    for (what, request) in cases {
        let status = client.should_rate_limit(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }
    // A message over 64 KiB is refused before it is decoded.
    let huge = "t".repeat(70 * 1024);
    let big = request(
        "tenantwatch",
        vec![descriptor(&[("tenant", "a"), ("pad", &huge)])],
        0,
    );
    let status = client.should_rate_limit(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    // Bytes that are no protobuf message, and a path that is no method.
    let addr = daemon.daemon.as_ref().unwrap().grpc_addr().unwrap();
    let garbage = raw_grpc(
        addr,
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        &[0xff; 12],
    )
    .await;
    assert_eq!(garbage, tonic::Code::Internal as i32);
    let nowhere = raw_grpc(addr, "/no.such.Service/Method", &[]).await;
    assert_eq!(nowhere, tonic::Code::Unimplemented as i32);
    // Still answering.
    let answer = ask(&mut client, for_tenant("a")).await;
    assert_eq!(answer.overall_code, Code::Ok as i32);
    let metrics = daemon.metrics().await;
    assert_eq!(
        metrics.value(
            "tenantwatch_ratelimit_grpc_refused_total",
            &[("reason", "invalid")]
        ),
        // The seven invalid requests, the one too large, the garbage, the
        // unknown method.
        Some(10.0)
    );
    assert_eq!(
        metrics.value(
            "tenantwatch_ratelimit_grpc_refused_total",
            &[("reason", "unknown_domain")]
        ),
        Some(1.0)
    );
    daemon.stop().await;
}

fn for_tenant_in(domain: &str, tenant: &str) -> RateLimitRequest {
    request(domain, vec![descriptor(&[("tenant", tenant)])], 0)
}

/// Posts one gRPC frame holding `message` (any bytes) over a bare HTTP/2
/// connection; returns the `grpc-status` (from the trailers, or the
/// headers of a trailers-only answer).
async fn raw_grpc(addr: std::net::SocketAddr, path: &str, message: &[u8]) -> i32 {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status_in = |headers: &hyper::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<i32>().unwrap())
    };
    if let Some(status) = status_in(response.headers()) {
        return status;
    }
    let body = response.into_body().collect().await.unwrap();
    status_in(body.trailers().expect("trailers")).expect("grpc-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_tls_with_the_listeners_certificate() {
    let dir = std::env::temp_dir().join(format!("tw-rls-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = crate::tls_listener::self_signed(&dir, "grpc");
    let (daemon, _) = daemon(|c| {
        c.server.tls_cert_file = Some(cert.clone());
        c.server.tls_key_file = Some(key.clone());
    })
    .await;
    let addr = daemon.daemon.as_ref().unwrap().grpc_addr().unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&cert).unwrap(),
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RateLimitServiceClient::new(channel);
    let answer = ask(&mut client, for_tenant("secure1")).await;
    assert_eq!(answer.overall_code, Code::Ok as i32);
    // Plain HTTP/2 on the TLS port gets no answer.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let refused = RateLimitServiceClient::new(channel)
            .should_rate_limit(for_tenant("secure1"))
            .await;
        assert!(refused.is_err());
    }
    daemon.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The Python of `target/venv` (grpcio-tools, PyYAML), which
/// scripts/test.sh makes.
fn venv_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    let ready = std::process::Command::new(&python)
        .args(["-c", "import grpc_tools, yaml"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        ready,
        "target/venv with grpcio-tools and pyyaml is needed: scripts/test.sh makes it \
         (python3 -m venv target/venv && target/venv/bin/pip install grpcio-tools pyyaml)"
    );
    python
}

/// Runs tests/fixtures/envoy-config/check.py on `files`: (success, output).
fn check_envoy_configs(files: &[PathBuf]) -> (bool, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shipped: Settings = toml::from_str(
        &std::fs::read_to_string(root.join("deploy/envoy/tenantwatch.toml")).unwrap(),
    )
    .unwrap();
    let rls = &shipped.ratelimit.rls;
    let port = shipped.ratelimit.grpc_listen.expect("grpc_listen").port();
    let out = std::env::temp_dir().join(format!(
        "tw-envoy-protos-{}-{}",
        std::process::id(),
        files.len()
    ));
    std::fs::create_dir_all(&out).unwrap();
    let result = std::process::Command::new(venv_python())
        .arg(root.join("tests/fixtures/envoy-config/check.py"))
        .arg(&out)
        .args([&rls.domain, &rls.tenant_key, &port.to_string()])
        .args(files)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    (result.status.success(), text)
}

/// No Envoy binary can be installed here: the shipped Envoy configuration
/// and Istio EnvoyFilter are checked against Envoy's protos instead (their
/// rate-limit filter, service and route actions parse as Envoy's messages,
/// with the shipped tenantwatch.toml's domain, tenant key and port), and a
/// misspelt field is caught.
#[test]
fn the_envoy_and_istio_configurations_match_the_protos() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shipped = [
        root.join("deploy/envoy/envoy.yaml"),
        root.join("deploy/istio/envoyfilter-ratelimit.yaml"),
    ];
    let (ok, text) = check_envoy_configs(&shipped);
    assert!(ok, "{text}");
    assert_eq!(text.matches(": ok (1 filter(s)").count(), 2, "{text}");

    let envoy = std::fs::read_to_string(&shipped[0]).unwrap();
    let tampered = std::env::temp_dir().join(format!("tw-envoy-bad-{}.yaml", std::process::id()));
    for (from, to, complaint) in [
        (
            "descriptor_key: tenant\n",
            "descriptor_keyy: tenant\n",
            "no field named",
        ),
        (
            "transport_api_version: V3",
            "transport_api_version: V4",
            "V4",
        ),
        (
            "domain: tenantwatch",
            "domain: envoy",
            "is not 'tenantwatch'",
        ),
        (
            "http2_protocol_options: {}",
            "http_protocol_options: {}",
            "HTTP/2",
        ),
    ] {
        std::fs::write(&tampered, envoy.replacen(from, to, 1)).unwrap();
        let (ok, text) = check_envoy_configs(std::slice::from_ref(&tampered));
        assert!(!ok && text.contains(complaint), "{to}: {text}");
    }
    let _ = std::fs::remove_file(tampered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_the_service_from_serving_to_draining() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (daemon, url) = daemon(|c| c.server.shutdown_delay = Duration::from_millis(1500)).await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let watch = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .watch(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut server = watch("").await;
    let mut unknown = watch("no.such.Service").await;
    let next = |status: Option<tonic_health::pb::HealthCheckResponse>| status.unwrap().status;
    assert_eq!(
        next(server.message().await.unwrap()),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        next(unknown.message().await.unwrap()),
        ServingStatus::ServiceUnknown as i32
    );
    // Stopping: not serving at once (the shutdown delay), then the stream
    // ends with OK when the listener stops.
    daemon.daemon.as_ref().unwrap().shutdown();
    let draining = tokio::time::timeout(Duration::from_secs(1), server.message())
        .await
        .expect("the change within a second");
    assert_eq!(next(draining.unwrap()), ServingStatus::NotServing as i32);
    let end = tokio::time::timeout(Duration::from_secs(10), server.message())
        .await
        .expect("the stream ends when the daemon stops");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let checked = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(checked.is_err(), "the listener is closed: {checked:?}");
    daemon.stop().await;
}

/// A raw HTTP/2 connection to the gRPC listener.
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    (sender, tokio::spawn(connection))
}

fn grpc_request(addr: std::net::SocketAddr, content_type: &str) -> http::Request<()> {
    http::Request::post(format!(
        "http://{addr}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    ))
    .header("content-type", content_type)
    .header("te", "trailers")
    .header("grpc-timeout", "200m")
    .body(())
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_time_out_old_connections_close_and_non_grpc_is_refused() {
    let (daemon, _) = daemon(|c| c.server.request_timeout = Duration::from_secs(2)).await;
    let addr = daemon.daemon.as_ref().unwrap().grpc_addr().unwrap();
    let (mut sender, connection) = h2_connection(addr).await;

    // Headers, then nothing: the caller's grpc-timeout (200 ms) ends it.
    let started = std::time::Instant::now();
    let (response, _body) = sender
        .send_request(grpc_request(addr, "application/grpc"), false)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "4", "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Not gRPC: HTTP's answer, 415.
    let (response, mut body) = sender
        .send_request(grpc_request(addr, "application/json"), false)
        .unwrap();
    let _ = body.send_data(bytes::Bytes::from_static(b"{}"), true);
    assert_eq!(response.await.unwrap().status(), 415);

    // The connection is closed (GOAWAY, then the end) once it is
    // server.request_timeout old.
    let closed = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the daemon closes a connection older than request_timeout");
    assert!(closed.unwrap().is_ok(), "a graceful close");
    // A new connection is served.
    let mut client = client(&format!("http://{addr}")).await;
    let answer = ask(&mut client, for_tenant("later")).await;
    assert_eq!(answer.overall_code, Code::Ok as i32);
    daemon.stop().await;
}
