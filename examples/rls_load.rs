//! gRPC load generator for `scripts/bench-ratelimit.sh`: Envoy's
//! `ShouldRateLimit` against `ratelimit.grpc_listen`, as `wrk` drives the
//! HTTP check beside it (`ghz` is not packaged here).
//!
//! ```text
//! rls_load ADDR CONNECTIONS SECONDS TENANTS THREADS
//!     CONNECTIONS HTTP/2 connections, one request in flight on each (as
//!     wrk -c), for SECONDS, one descriptor `tenant=tenant<n>` per request
//!     spread over TENANTS tenants, on THREADS runtime threads (as wrk -t);
//!     prints "requests N rps R p50_ms A p99_ms B errors E over_limit O".
//! ```
//!
//! The client is the one generated from Envoy's protos with the service
//! (`tenantwatch::rls::generated`).

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tenantwatch::rls::generated::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use tenantwatch::rls::generated::envoy::service::ratelimit::v3::{
    RateLimitRequest, rate_limit_response::Code, rate_limit_service_client::RateLimitServiceClient,
};

fn usage(problem: &str) -> ! {
    eprintln!("rls_load: {problem}\nusage: rls_load ADDR CONNECTIONS SECONDS TENANTS THREADS");
    std::process::exit(64)
}

/// What one connection saw: latencies in microseconds, errors, denials.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    over_limit: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| usage("missing argument"))
    };
    let addr: std::net::SocketAddr = arg(0).parse().unwrap_or_else(|_| usage("bad ADDR"));
    let connections: usize = arg(1).parse().unwrap_or_else(|_| usage("bad CONNECTIONS"));
    let seconds: f64 = arg(2).parse().unwrap_or_else(|_| usage("bad SECONDS"));
    let tenants: usize = arg(3).parse().unwrap_or_else(|_| usage("bad TENANTS"));
    let threads: usize = arg(4).parse().unwrap_or_else(|_| usage("bad THREADS"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(
        addr,
        connections.max(1),
        Duration::from_secs_f64(seconds),
        tenants.max(1),
    ));
}

async fn run(addr: std::net::SocketAddr, connections: usize, length: Duration, tenants: usize) {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|e| usage(&format!("cannot connect to {addr}: {e}")));
        clients.push(RateLimitServiceClient::new(channel));
    }
    let started = Instant::now();
    let until = started + length;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = c;
                while Instant::now() < until {
                    n += connections;
                    let request = RateLimitRequest {
                        domain: "tenantwatch".into(),
                        descriptors: vec![RateLimitDescriptor {
                            entries: vec![Entry {
                                key: "tenant".into(),
                                value: format!("tenant{}", n % tenants),
                            }],
                            limit: None,
                        }],
                        hits_addend: 1,
                    };
                    let sent = Instant::now();
                    match client.should_rate_limit(request).await {
                        Ok(answer) => {
                            let us = sent.elapsed().as_micros().min(u128::from(u32::MAX));
                            tally.latencies_us.push(us as u32);
                            if answer.get_ref().overall_code == Code::OverLimit as i32 {
                                tally.over_limit += 1;
                            }
                        }
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        all.latencies_us.extend(tally.latencies_us);
        all.errors += tally.errors;
        all.over_limit += tally.over_limit;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let quantile = |q: f64| {
        let n = all.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        f64::from(all.latencies_us[i]) / 1000.0
    };
    println!(
        "requests {} rps {:.0} p50_ms {:.3} p99_ms {:.3} errors {} over_limit {}",
        all.latencies_us.len(),
        all.latencies_us.len() as f64 / elapsed,
        quantile(0.5),
        quantile(0.99),
        all.errors,
        all.over_limit
    );
}
