//! Runs the recipes of docs/integration.md (Go, Node/Express, PHP, Java
//! with Spring and Hikari) against a live daemon: the middleware is taken
//! from the page's `// file:` blocks, the scenario around it from
//! `tests/recipes/`. Each must send events that add up exactly, answer 429
//! with `Retry-After` and the RateLimit headers for a tenant over its quota,
//! and allow every request when the daemon is down. Needs `go`, `node` with
//! Express in `target/node`, `php`, `javac` and Debian's Spring, servlet,
//! HikariCP and PostgreSQL JDBC jars (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use tenantwatch::config::TenantOverride;

use crate::support::{self, TestDaemon};

/// The `// file: NAME` blocks of docs/integration.md whose name ends in `ext`.
fn doc_files(ext: &str) -> Vec<(String, String)> {
    let page = include_str!("../../docs/integration.md");
    let mut files = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').expect("a fence line ends") + 1;
        let end = after[body_start..].find("```").expect("a code block ends");
        let body = &after[body_start..body_start + end];
        if let Some(line) = body.lines().take(2).find(|l| l.starts_with("// file: ")) {
            let name = line.trim_start_matches("// file: ").trim();
            if name.ends_with(ext) {
                files.push((name.to_string(), body.to_string()));
            }
        }
        rest = &after[body_start + end + 3..];
    }
    assert!(!files.is_empty(), "docs/integration.md has no {ext} recipe");
    files
}

fn require(tool: &str, version_arg: &str, package: &str) {
    let found = Command::new(tool).arg(version_arg).output().is_ok();
    assert!(
        found,
        "{tool} is needed to run the docs/integration.md recipes: apt-get install {package} (scripts/test.sh does it)"
    );
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory with the recipe's files from the page and the
/// scenario's from tests/recipes/<lang>.
fn workdir(lang: &str, ext: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tw-recipe-{}-{lang}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, body) in doc_files(ext) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    for entry in std::fs::read_dir(root().join("tests/recipes").join(lang)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// What a scenario printed: its last stdout line, as JSON.
fn run(mut command: Command, what: &str) -> serde_json::Value {
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed {stdout:?}: {e}"))
}

struct Expect {
    endpoint: &'static str,
    rows_per_read: f64,
}

async fn check_recipe(lang: &str, expect: Expect, command: impl Fn(&str, &str) -> Command) {
    let daemon = TestDaemon::start_with(|c| {
        c.ratelimit.tenants.insert(
            "tiny".into(),
            TenantOverride {
                qps: Some(0.2),
                burst: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    let url = daemon.url("");
    let udp = daemon.udp.unwrap().to_string();
    // A long timeout while the daemon is up: on a loaded machine a 50 ms
    // one could fail open and make the counts below lie.
    let mut up = command(&url, &udp);
    up.env("TW_TIMEOUT_MS", "2000")
        .env("TENANTWATCH_TIMEOUT_MS", "2000");
    let out = tokio::task::spawn_blocking(move || run(up, "the scenario"));
    let out = out.await.unwrap();
    println!("{lang}: {out}");
    assert_eq!(
        out["clinic1"],
        serde_json::json!([200, 200, 200, 200, 200]),
        "{out}"
    );
    assert_eq!(out["tiny"], serde_json::json!([200, 200, 429]), "{out}");
    let retry: u64 = out["retry_after"].as_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{out}");
    let ratelimit = out["ratelimit"].as_str().unwrap();
    assert!(ratelimit.starts_with("\"tenant:tiny\";r=0"), "{out}");
    assert_eq!(out["failures"], 0, "{out}");
    // 5 requests of clinic1 and 2 allowed ones of tiny, a read and a write each.
    let m = daemon
        .metrics_when(&format!("the {lang} recipe's events"), |m| {
            m.value_or_zero("tenantwatch_events_received_total", &[("source", "udp")]) >= 14.0
        })
        .await;
    assert_eq!(
        m.value("tenantwatch_events_received_total", &[("source", "udp")]),
        Some(14.0)
    );
    for (tenant, requests) in [("clinic1", 5.0), ("tiny", 2.0)] {
        let read = [("tenant", tenant), ("kind", "read")];
        let write = [("tenant", tenant), ("kind", "write")];
        assert_eq!(
            m.value("tenantwatch_tenant_queries_total", &read),
            Some(requests)
        );
        assert_eq!(
            m.value("tenantwatch_tenant_queries_total", &write),
            Some(requests)
        );
        assert_eq!(
            m.value_or_zero("tenantwatch_tenant_rows_total", &read),
            requests * expect.rows_per_read
        );
        assert_eq!(
            m.value("tenantwatch_tenant_rows_total", &write),
            Some(requests)
        );
        let endpoint = [("tenant", tenant), ("endpoint", expect.endpoint)];
        assert_eq!(
            m.value("tenantwatch_tenant_endpoint_queries_total", &endpoint),
            Some(2.0 * requests)
        );
    }
    let rejected: f64 = m
        .samples_named("tenantwatch_events_rejected_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(rejected, 0.0);

    // The daemon's HTTP port closed: every request is allowed, every check
    // (8 requests, then the 200 timed ones) counted as a failure.
    let closed = format!(
        "http://127.0.0.1:{}",
        tenantwatch::demo::cluster::free_port()
    );
    let down = command(&closed, &udp);
    let down = tokio::task::spawn_blocking(move || run(down, "the scenario, daemon down"));
    let down = down.await.unwrap();
    assert_eq!(
        down["clinic1"],
        serde_json::json!([200, 200, 200, 200, 200]),
        "{down}"
    );
    assert_eq!(down["tiny"], serde_json::json!([200, 200, 200]), "{down}");
    assert_eq!(down["failures"], 208, "{down}");
    daemon.stop().await;
}

fn port_of(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http_recipe() {
    require("go", "version", "golang-go");
    let dir = workdir("go", ".go");
    std::fs::write(dir.join("go.mod"), "module recipe\n\ngo 1.19\n").unwrap();
    // Build once; both runs use the binary.
    let out = Command::new("go")
        .args(["build", "-o", "scenario", "."])
        .current_dir(&dir)
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expect = Expect {
        endpoint: "GET /patients/{id}",
        rows_per_read: 3.0,
    };
    check_recipe("go", expect, |url, udp| {
        let mut c = Command::new(dir.join("scenario"));
        c.env("TW_URL", url).env("TW_UDP", udp);
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_express_recipe() {
    require("node", "--version", "nodejs");
    let modules = root().join("target/node/node_modules");
    assert!(
        modules.join("express").is_dir(),
        "express is needed in target/node: npm install --prefix target/node express@4 (scripts/test.sh does it)"
    );
    let dir = workdir("node", ".js");
    let expect = Expect {
        endpoint: "GET /patients/:id",
        rows_per_read: 3.0,
    };
    check_recipe("node", expect, |url, udp| {
        let mut c = Command::new("node");
        c.arg(dir.join("scenario.js"))
            .env("NODE_PATH", &modules)
            .env("TW_URL", url)
            .env("TW_UDP", udp);
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_laravel_style_recipe() {
    require("php", "--version", "php-cli");
    let dir = workdir("php", ".php");
    let expect = Expect {
        endpoint: "GET /patients/{id}",
        rows_per_read: 3.0,
    };
    check_recipe("php", expect, |url, udp| {
        let mut c = Command::new("php");
        c.arg(dir.join("scenario.php"))
            .env("TENANTWATCH_HOST", "127.0.0.1")
            .env("TENANTWATCH_PORT", port_of(url))
            .env("TENANTWATCH_UDP", udp);
        c
    })
    .await;
}

const JARS: [(&str, &str); 7] = [
    ("spring3-web.servlet.jar", "libspring-web-servlet-java"),
    ("spring3-web.jar", "libspring-web-java"),
    ("spring3-core.jar", "libspring-core-java"),
    ("servlet-api.jar", "libservlet-api-java"),
    ("HikariCP.jar", "libhikaricp-java"),
    ("postgresql.jar", "libpostgresql-jdbc-java"),
    ("slf4j-api.jar", "libslf4j-java"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_spring_hikari_recipe() {
    require("javac", "-version", "default-jdk-headless");
    let mut classpath = Vec::new();
    for (jar, package) in JARS {
        let path = Path::new("/usr/share/java").join(jar);
        assert!(
            path.is_file(),
            "{} is needed by the Java recipe: apt-get install {package} (scripts/test.sh does it)",
            path.display()
        );
        classpath.push(path.display().to_string());
    }
    let dir = workdir("java", ".java");
    let sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "java"))
        .collect();
    let out = Command::new("javac")
        .arg("-d")
        .arg(dir.join("classes"))
        .arg("-cp")
        .arg(classpath.join(":"))
        .args(&sources)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    classpath.insert(0, dir.join("classes").display().to_string());
    let cluster = support::cluster().await;
    let jdbc = format!(
        "jdbc:postgresql://127.0.0.1:{}/postgres?user=postgres",
        cluster.port()
    );
    // Reads report no rows through JDBC (see the recipe).
    let expect = Expect {
        endpoint: "GET /patients/{id}",
        rows_per_read: 0.0,
    };
    check_recipe("java", expect, |url, udp| {
        let mut c = Command::new("java");
        c.arg("-cp")
            .arg(classpath.join(":"))
            .arg("Scenario")
            .env("TW_URL", url)
            .env("TW_UDP", udp)
            .env("TW_JDBC_URL", &jdbc);
        c
    })
    .await;
    drop(cluster);
}
