//! Shared helpers for the integration tests: the real daemon started
//! in-process on loopback with free ports, throwaway PostgreSQL clusters, a
//! small HTTP client, and a parser for the exposition so tests assert on
//! values, not on substrings.

#![allow(dead_code)]

pub mod redis_server;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tenantwatch::config::Settings;
use tenantwatch::{Config, Daemon};

/// The defaults with loopback ephemeral ports and no waiting: what every
/// test daemon starts from (and what a test reloads from).
pub fn file_config() -> Settings {
    let mut file = Settings::default();
    file.server.listen = "127.0.0.1:0".parse().unwrap();
    file.ingest.udp_listen = Some("127.0.0.1:0".parse().unwrap());
    file.server.shutdown_grace = std::time::Duration::from_secs(2);
    file.server.shutdown_delay = std::time::Duration::from_secs(0);
    // Every scrape encodes afresh, so a test sees what it just sent.
    file.server.metrics_max_age = std::time::Duration::from_secs(0);
    file
}

/// A daemon on `127.0.0.1:0` (HTTP and UDP), shut down on drop.
pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub http: SocketAddr,
    pub udp: Option<SocketAddr>,
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        TestDaemon::start_with(|_| {}).await
    }

    /// Starts a daemon whose file config is [`file_config`], changed by
    /// `customize`.
    pub async fn start_with(customize: impl FnOnce(&mut Settings)) -> TestDaemon {
        let mut file = file_config();
        customize(&mut file);
        let config = Config::try_from(file).expect("test config is valid");
        let daemon = Daemon::start(config).await.expect("daemon starts");
        TestDaemon {
            http: daemon.http_addr(),
            udp: daemon.udp_addr(),
            daemon: Some(daemon),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get(&self, path: &str) -> HttpReply {
        http(self.http, "GET", path, &[], Vec::new()).await
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> HttpReply {
        http(self.http, "POST", path, headers, body.into()).await
    }

    /// The exposition in OpenMetrics (what [`Exposition::parse`] reads;
    /// without `Accept`, `/metrics` answers the text format 0.0.4).
    pub async fn metrics(&self) -> Exposition {
        let reply = http(self.http, "GET", "/metrics", &[OPENMETRICS], Vec::new()).await;
        assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text());
        Exposition::parse(&reply.text())
    }

    /// The exposition in the Prometheus protobuf format (what a Prometheus
    /// with native histograms enabled asks for).
    pub async fn protobuf_families(
        &self,
    ) -> Vec<prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily>
    {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
        use prost::Message as _;
        let accept = tenantwatch::metrics::Format::Protobuf.content_type();
        let reply = http(
            self.http,
            "GET",
            "/metrics",
            &[("accept", accept)],
            Vec::new(),
        )
        .await;
        assert_eq!(reply.status, 200);
        let mut rest = &reply.body[..];
        let mut families = Vec::new();
        while !rest.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut rest).unwrap());
        }
        families
    }

    /// Sends one datagram to the UDP listener.
    pub fn send_udp(&self, payload: &[u8]) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .send_to(payload, self.udp.expect("UDP is on"))
            .unwrap();
    }

    /// Waits until `/metrics` satisfies `done`, and returns that exposition.
    pub async fn metrics_when(&self, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exposition = self.metrics().await;
            if done(&exposition) {
                return exposition;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown();
            daemon.wait().await;
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = &self.daemon {
            daemon.shutdown();
        }
    }
}

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The `Accept` header of a scraper that reads OpenMetrics.
pub const OPENMETRICS: (&str, &str) = ("accept", "application/openmetrics-text; version=1.0.0");

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpReply {
    try_http(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
}

/// As [`http`], with connection errors returned instead of panicking.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpReply, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed OpenMetrics text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name -> type, from the `# TYPE` lines.
    pub families: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        let mut saw_eof = false;
        for line in text.lines() {
            if line == "# EOF" {
                saw_eof = true;
                continue;
            }
            assert!(!saw_eof, "content after # EOF");
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
                let previous = exposition.families.insert(name.into(), kind.into());
                assert!(previous.is_none(), "family {name} declared twice");
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            exposition.samples.push(parse_sample(line));
        }
        assert!(saw_eof, "exposition does not end with # EOF");
        exposition
    }

    /// The value of the one sample with this name and exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted);
        let sample = found.next()?;
        assert!(found.next().is_none(), "duplicate sample {name} {labels:?}");
        Some(sample.value)
    }

    /// As [`Exposition::value`], 0 when absent.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Samples with this name, in exposition order.
    pub fn samples_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The names users query: counters with `_total`, others as declared.
    pub fn family_names(&self) -> BTreeSet<String> {
        self.families
            .iter()
            .map(|(name, kind)| {
                if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.clone()
                }
            })
            .collect()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("sample has a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("labels end with }");
            (name.to_string(), parse_labels(body))
        }
    };
    Sample {
        name,
        labels,
        value,
    }
}

fn parse_labels(mut body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body.split_once("=\"").expect("label has =\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("label value ends");
            match c {
                '\\' => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        body = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Detection that tightens fast: every 200 ms, `error_storm` raised at
/// once and tightening, over a default quota of 100,000/s far above any
/// fair share (so advice visibly lowers it).
pub fn tighten_on_error_storm(c: &mut Settings) {
    c.detect.interval = std::time::Duration::from_millis(200);
    c.ratelimit.default_qps = 100_000.0;
    c.ratelimit.default_burst = 100_000;
    {
        let rule = c
            .detect
            .rule_mut(tenantwatch::detect::RuleName::parse("error_storm").expect("a rule"));
        rule.for_ = std::time::Duration::from_secs(0);
        rule.min = 5.0;
        rule.tighten = true;
    }
}

/// 200 events of tenant `stormy`, half of them errors, and 200 calm ones
/// over ten tenants `calm0`..`calm9`: a body for `POST /v1/events`.
pub fn error_storm_events() -> String {
    (0..200)
        .map(|i| {
            format!(
                "tenantwatch.query:5|ms|#tenant:stormy,error:{}\ntenantwatch.query:5|ms|#tenant:calm{}\n",
                i % 2 == 0,
                i % 10
            )
        })
        .collect()
}

/// Retries `check` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A throwaway PostgreSQL cluster on a free port (several can run at once;
/// each is stopped and removed on drop; `stop`, `start` and `restart` keep
/// its port). See `tenantwatch::demo::cluster`, which `tenantwatch demo` uses too.
pub async fn cluster() -> tenantwatch::demo::cluster::Cluster {
    tokio::task::spawn_blocking(tenantwatch::demo::cluster::Cluster::start_new)
        .await
        .expect("cluster start-up thread")
        .expect("a throwaway PostgreSQL starts (needs the postgresql server package: apt-get install postgresql)")
}

/// A PostgreSQL client for test set-up (the connection runs in the background).
pub async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {dsn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Metric families listed in docs/metrics.md: the first backticked name of
/// each table row.
pub fn documented_metrics() -> BTreeSet<String> {
    include_str!("../../docs/metrics.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.starts_with("tenantwatch_") || name.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is an exported series name: a documented family, or a
/// histogram's `_bucket`, `_sum` or `_count`.
pub fn is_exported(name: &str, documented: &BTreeSet<String>) -> bool {
    documented.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| documented.contains(base))
        })
}

/// The `tenantwatch_*` metric names a PromQL expression reads (recording-rule
/// names, `level:tenantwatch_…:op`, are skipped).
pub fn metric_names_in(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(offset) = expr[i..].find("tenantwatch_") {
        let start = i + offset;
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if start == 0 || bytes[start - 1] != b':' {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// An attribution rule without a comment key.
pub fn rule(source: &str, pattern: &str) -> tenantwatch::config::RuleSettings {
    tenantwatch::config::RuleSettings {
        source: tenantwatch::attribution::RuleSource::parse(source).expect("a rule source"),
        pattern: pattern.into(),
        key: None,
    }
}
