//! gRPC load generator for `scripts/bench-ratelimit.sh`: Envoy's
//! `ShouldRateLimit` against `ratelimit.grpc_listen`, as `wrk` drives the
//! HTTP check beside it (`ghz` is not packaged here).
//!
//! ```text
//! rls_load ADDR CONNECTIONS SECONDS TENANTS THREADS [CLIENT [STREAMS]]
//!     CONNECTIONS HTTP/2 connections, one request in flight on each (as
//!     wrk -c), for SECONDS, one descriptor `tenant=tenant<n>` per request
//!     spread over TENANTS tenants, on THREADS runtime threads (as wrk -t);
//!     prints "requests N rps R p50_ms A p99_ms B errors E over_limit O".
//!     CLIENT is `h2` (default) or `tonic`. STREAMS (default 1)
//!     requests in flight on each connection instead of one, as Envoy
//!     sends every rate-limit call of a worker thread over one HTTP/2
//!     connection.
//! ```
//!
//! Two clients, both speaking gRPC with the messages generated from Envoy's
//! protos (`tenantwatch::rls::generated`):
//! - `h2`: a small one, as wrk is for HTTP/1.1: each tenant's request
//!   encoded once up front, then only HTTP/2 framing per call (the `h2`
//!   crate directly), the answer's status, trailers and message read and
//!   decoded. It leaves the daemon most of the 2 cores.
//! - `tonic`: the generated tonic client, as an application would call it
//!   (its own encoding, tower stack and channel per call cost about as much
//!   CPU as the daemon's side, taken from the same cores).

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use tenantwatch::rls::generated::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use tenantwatch::rls::generated::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response::Code,
    rate_limit_service_client::RateLimitServiceClient,
};

fn usage(problem: &str) -> ! {
    eprintln!(
        "rls_load: {problem}\nusage: rls_load ADDR CONNECTIONS SECONDS TENANTS THREADS [h2|tonic]"
    );
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
    let client = match args.get(5).map(String::as_str).unwrap_or("h2") {
        "h2" => Client::H2,
        "tonic" => Client::Tonic,
        _ => usage("CLIENT is h2 or tonic"),
    };
    let streams: usize = args
        .get(6)
        .map_or(Ok(1), |s| s.parse())
        .unwrap_or_else(|_| usage("bad STREAMS"));
    // One thread is one event loop, as `wrk -t1` is.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    let connections = connections.max(1);
    let length = Duration::from_secs_f64(seconds);
    let tenants = tenants.max(1);
    let all = runtime.block_on(async {
        match client {
            Client::H2 => run_h2(addr, connections, streams.max(1), length, tenants).await,
            Client::Tonic => run_tonic(addr, connections, streams.max(1), length, tenants).await,
        }
    });
    report(all, length.as_secs_f64());
}

#[derive(Clone, Copy)]
enum Client {
    H2,
    Tonic,
}

fn request_for(tenant: usize) -> RateLimitRequest {
    RateLimitRequest {
        domain: "tenantwatch".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: format!("tenant{tenant}"),
            }],
            limit: None,
        }],
        hits_addend: 1,
    }
}

impl Tally {
    /// One call's answer (its overall code) or failure, `sent` at.
    fn record<E: std::fmt::Display>(&mut self, sent: Instant, answer: Result<i32, E>) {
        match answer {
            Ok(code) => {
                let us = sent.elapsed().as_micros().min(u128::from(u32::MAX));
                self.latencies_us.push(us as u32);
                if code == Code::OverLimit as i32 {
                    self.over_limit += 1;
                }
            }
            Err(error) => {
                if self.errors == 0 {
                    eprintln!("rls_load: {error}");
                }
                self.errors += 1;
            }
        }
    }

    fn add(mut self, other: Tally) -> Tally {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.over_limit += other.over_limit;
        self
    }
}

/// Sums the connections' tallies.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for task in tasks {
        all = all.add(task.await.unwrap());
    }
    all
}

async fn run_h2(
    addr: std::net::SocketAddr,
    connections: usize,
    streams: usize,
    length: Duration,
    tenants: usize,
) -> Tally {
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..tenants)
            .map(|t| tenantwatch::rls::framed(&request_for(t)))
            .collect(),
    );
    let uri: http::Uri =
        format!("http://{addr}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
            .parse()
            .unwrap();
    let mut connected = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| usage(&format!("cannot connect to {addr}: {e}")));
        tcp.set_nodelay(true).unwrap();
        connected.push(
            h2::client::handshake(tcp)
                .await
                .unwrap_or_else(|e| usage(&format!("HTTP/2 handshake with {addr}: {e}"))),
        );
    }
    let until = Instant::now() + length;
    let tasks = connected
        .into_iter()
        .enumerate()
        .map(|(c, (sender, mut connection))| {
            let bodies = bodies.clone();
            let uri = uri.clone();
            // The calls and the connection's I/O in one task, as one
            // connection of wrk's event loop: no wake-up between them.
            tokio::spawn(async move {
                let in_flight = connections * streams;
                let calls = (0..streams).map(|s| {
                    let mut sender = sender.clone();
                    let (bodies, uri) = (&bodies, &uri);
                    async move {
                        let mut tally = Tally::default();
                        let mut n = c * streams + s;
                        while Instant::now() < until {
                            n += in_flight;
                            let sent = Instant::now();
                            let body = bodies[n % bodies.len()].clone();
                            tally.record(sent, call_h2(&mut sender, uri, body).await);
                        }
                        tally
                    }
                });
                let calls = futures_util::future::join_all(calls);
                tokio::select! {
                    tallies = calls => tallies.into_iter().fold(Tally::default(), Tally::add),
                    closed = &mut connection => {
                        eprintln!("rls_load: the connection closed: {closed:?}");
                        Tally { errors: 1, ..Tally::default() }
                    }
                }
            })
        })
        .collect();
    gather(tasks).await
}

/// One unary call: the request's headers and message, then the answer's
/// headers, message and trailers (`grpc-status` 0); the overall code.
async fn call_h2(
    sender: &mut h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    body: Bytes,
) -> Result<i32, String> {
    let request = http::Request::post(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let (response, mut stream) = sender
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    stream.send_data(body, true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    let status = trailers.as_ref().and_then(|t| t.get("grpc-status"));
    if status.map(http::HeaderValue::as_bytes) != Some(b"0") {
        return Err(format!("grpc-status {status:?}"));
    }
    let answer = RateLimitResponse::decode(message.get(5..).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    Ok(answer.overall_code)
}

async fn run_tonic(
    addr: std::net::SocketAddr,
    connections: usize,
    streams: usize,
    length: Duration,
    tenants: usize,
) -> Tally {
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
    let until = Instant::now() + length;
    let in_flight = connections * streams;
    // A tonic client's clones share its connection: STREAMS of them each.
    let tasks: Vec<_> = clients
        .iter()
        .flat_map(|client| std::iter::repeat_n(client.clone(), streams))
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = c;
                while Instant::now() < until {
                    n += in_flight;
                    let request = request_for(n % tenants);
                    let sent = Instant::now();
                    let answer = client.should_rate_limit(request).await;
                    tally.record(sent, answer.map(|a| a.get_ref().overall_code));
                }
                tally
            })
        })
        .collect();
    gather(tasks).await
}

fn report(mut all: Tally, elapsed: f64) {
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
