//! `/metrics` answers each scraper in the format its `Accept` asks for:
//! the Prometheus protobuf format (with native latency histograms) when
//! asked, OpenMetrics when accepted, the text format 0.0.4 otherwise; each
//! gzipped on request.

use std::io::Read as _;

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prost::Message as _;

use tenantwatch::store::native::bucket_index;

use crate::support::{self, HttpReply, TestDaemon, http};

const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

async fn scrape(daemon: &TestDaemon, accept: Option<&str>, gzip: bool) -> (HttpReply, Vec<u8>) {
    let mut headers = Vec::new();
    if let Some(accept) = accept {
        headers.push(("accept", accept));
    }
    if gzip {
        headers.push(("accept-encoding", "gzip"));
    }
    let reply = http(daemon.http, "GET", "/metrics", &headers, Vec::new()).await;
    assert_eq!(reply.status, 200);
    let mut body = Vec::new();
    if gzip {
        assert_eq!(reply.header("content-encoding"), Some("gzip"));
        flate2::read::GzDecoder::new(&reply.body[..])
            .read_to_end(&mut body)
            .unwrap();
    } else {
        assert_eq!(reply.header("content-encoding"), None);
        body = reply.body.to_vec();
    }
    (reply, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scraper_gets_the_format_it_asks_for_gzipped_or_not() {
    let daemon = TestDaemon::start().await;
    let events: Vec<String> = (1..=200)
        .map(|i| format!("tenantwatch.query:{}|ms|#tenant:acme,kind:read", i))
        .collect();
    let reply = daemon.post("/v1/events", &[], events.join("\n")).await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    for gzip in [false, true] {
        // curl, `*/*` and old agents: the text format 0.0.4.
        for accept in [None, Some("*/*"), Some("text/plain; version=0.0.4")] {
            let (reply, body) = scrape(&daemon, accept, gzip).await;
            assert_eq!(
                reply.header("content-type"),
                Some("text/plain; version=0.0.4; charset=utf-8"),
                "{accept:?}"
            );
            assert_eq!(reply.header("vary"), Some("accept, accept-encoding"));
            let text = String::from_utf8(body).unwrap();
            assert!(!text.contains("# EOF"));
            assert!(text.contains("# TYPE tenantwatch_tenant_queries_total counter\n"));
            assert!(
                text.contains(
                    "tenantwatch_tenant_queries_total{tenant=\"acme\",kind=\"read\"} 200\n"
                )
            );
        }

        let (reply, body) = scrape(&daemon, Some(support::OPENMETRICS.1), gzip).await;
        assert_eq!(
            reply.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        let exposition = support::Exposition::parse(&String::from_utf8(body).unwrap());
        let labels = [("tenant", "acme"), ("kind", "read")];
        assert_eq!(
            exposition.value("tenantwatch_tenant_queries_total", &labels),
            Some(200.0)
        );

        let (reply, body) = scrape(&daemon, Some(PROTOBUF), gzip).await;
        assert_eq!(
            reply.header("content-type"),
            Some(tenantwatch::metrics::Format::Protobuf.content_type())
        );
        let mut rest = &body[..];
        let mut families = Vec::new();
        while !rest.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut rest).unwrap());
        }
        let latency = families
            .iter()
            .find(|f| f.name == "tenantwatch_tenant_query_duration_seconds")
            .expect("the latency family");
        let h = latency.metric[0].histogram.as_ref().unwrap();
        assert_eq!((h.schema, h.sample_count), (3, 200));
        // 1 ms to 200 ms, one bucket per 2^(1/8), gaps skipped.
        let expected: std::collections::BTreeSet<i32> = (1..=200)
            .map(|ms| bucket_index(f64::from(ms) / 1000.0, 3))
            .collect();
        let buckets: u32 = h.positive_span.iter().map(|s| s.length).sum();
        assert_eq!(h.positive_delta.len(), buckets as usize);
        assert_eq!(buckets as usize, expected.len());
        assert_eq!(h.positive_span[0].offset, *expected.first().unwrap());
        let total: i64 = h
            .positive_delta
            .iter()
            .scan(0i64, |count, delta| {
                *count += delta;
                Some(*count)
            })
            .sum();
        assert_eq!(total, 200);
        assert!(
            families
                .iter()
                .any(|f| f.name == "tenantwatch_events_received_total")
        );
    }
    daemon.stop().await;
}
