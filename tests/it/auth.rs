//! Who may read and who may spend: the read token on `/metrics` and
//! `/api/v1/*` (probes stay open), the write token on `/v1/*`, the Bearer
//! scheme matched case-insensitively, and both tokens rotated by a reload
//! without a restart.

use crate::support;

use crate::support::{TestDaemon, http};
use tenantwatch::Config;
use tenantwatch::config::Settings;

fn token_files(tag: &str, write: &str, read: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tw-auth-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (w, r) = (dir.join("write"), dir.join("read"));
    std::fs::write(&w, format!("{write}\n")).unwrap();
    std::fs::write(&r, format!("{read}\n")).unwrap();
    (w, r)
}

async fn status(daemon: &TestDaemon, method: &str, path: &str, auth: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let body = if method == "POST" {
        b"tenantwatch.query:1|ms|#tenant:t1".to_vec()
    } else {
        Vec::new()
    };
    http(daemon.http, method, path, &headers, body).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_the_read_token_and_probes_stay_open() {
    let (write, read) = token_files("read", "w-token", "r-token");
    let daemon = TestDaemon::start_with(|c| {
        c.server.auth_token_file = Some(write.clone());
        c.server.read_token_file = Some(read.clone());
    })
    .await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(&daemon, "GET", path, None).await, 200, "{path}");
    }
    for path in [
        "/metrics",
        "/api/v1/tenants",
        "/api/v1/tenants/t1",
        "/api/v1/targets",
        "/api/v1/capacity",
        "/api/v1/flags",
        "/api/v1/advice",
        "/api/v1/guard",
        "/api/v1/openapi.json",
    ] {
        assert_eq!(status(&daemon, "GET", path, None).await, 401, "{path}");
        assert_eq!(
            status(&daemon, "GET", path, Some("Bearer w-token-x")).await,
            401,
            "{path}"
        );
    }
    for auth in [
        "Bearer r-token",
        "bearer r-token",
        "BEARER  r-token ",
        "Bearer w-token",
    ] {
        assert_eq!(
            status(&daemon, "GET", "/metrics", Some(auth)).await,
            200,
            "{auth}"
        );
    }
    // The read token does not spend.
    assert_eq!(
        status(&daemon, "POST", "/v1/events", Some("Bearer r-token")).await,
        401
    );
    assert_eq!(
        status(&daemon, "POST", "/v1/events", Some("bearer w-token")).await,
        202
    );
    daemon.stop().await;
}

/// Off loopback, reads need the read token as writes need the write token:
/// a listener on every interface with only a write token is refused
/// (naming `server.listen`); with both it starts, and `/metrics` asked
/// without the read token is refused while the probes answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_off_loopback_needs_the_read_token() {
    let (write, read) = token_files("exposed", "w-token", "r-token");
    let mut exposed = support::file_config();
    exposed.server.listen = "0.0.0.0:0".parse().unwrap();
    exposed.server.auth_token_file = Some(write.clone());
    let err = Config::try_from(exposed.clone()).unwrap_err().to_string();
    assert!(err.contains("server.listen"), "{err}");
    assert!(err.contains("read token"), "{err}");

    let daemon = TestDaemon::start_with(|c| {
        c.server.listen = "0.0.0.0:0".parse().unwrap();
        c.server.auth_token_file = Some(write.clone());
        c.server.read_token_file = Some(read.clone());
    })
    .await;
    assert_eq!(status(&daemon, "GET", "/metrics", None).await, 401);
    assert_eq!(status(&daemon, "GET", "/api/v1/tenants", None).await, 401);
    assert_eq!(
        status(&daemon, "GET", "/metrics", Some("Bearer r-token")).await,
        200
    );
    assert_eq!(status(&daemon, "GET", "/healthz", None).await, 200);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_both_tokens() {
    let (write, read) = token_files("rotate", "old-w", "old-r");
    let configure = |c: &mut Settings| {
        c.server.auth_token_file = Some(write.clone());
        c.server.read_token_file = Some(read.clone());
    };
    let daemon = TestDaemon::start_with(configure).await;
    assert_eq!(
        status(&daemon, "POST", "/v1/events", Some("Bearer old-w")).await,
        202
    );
    std::fs::write(&write, "new-w").unwrap();
    std::fs::write(&read, "new-r").unwrap();
    let mut file = support::file_config();
    configure(&mut file);
    file.ingest.max_tenants = 5;
    let ignored = daemon
        .daemon
        .as_ref()
        .unwrap()
        .reload(&Config::try_from(file).unwrap());
    // A changed key that needs a restart is named, not applied.
    assert_eq!(ignored, ["ingest.max_tenants"]);
    assert_eq!(
        status(&daemon, "POST", "/v1/events", Some("Bearer old-w")).await,
        401
    );
    assert_eq!(
        status(&daemon, "POST", "/v1/events", Some("Bearer new-w")).await,
        202
    );
    assert_eq!(
        status(&daemon, "GET", "/metrics", Some("Bearer old-r")).await,
        401
    );
    assert_eq!(
        status(&daemon, "GET", "/metrics", Some("Bearer new-r")).await,
        200
    );
    daemon.stop().await;
}
