//! Slow and heavy clients against a running daemon, for
//! `scripts/bench-slow-clients.sh`:
//!
//! ```text
//! slow_clients HTTP_ADDR UDP_ADDR DAEMON_PID SECONDS UDP_RATE
//! ```
//!
//! Fills 10,000 tenants over UDP, then for SECONDS holds 200 connections
//! that ask for `/metrics` and never read, runs 8 clients looping on
//! `/api/v1/capacity` and `/metrics`, sends UDP_RATE events/s (one per
//! datagram), and probes `/healthz` and `POST /v1/ratelimit/check` one
//! request at a time, each on its own keep-alive connection. Prints the daemon's peak RSS, the probes' p50/p99,
//! the heavy clients' answers by status, and the kernel's UDP drops.

// Benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        eprintln!("usage: slow_clients HTTP_ADDR UDP_ADDR DAEMON_PID SECONDS UDP_RATE");
        std::process::exit(2);
    }
    let http: SocketAddr = args[0].parse().unwrap();
    let udp: SocketAddr = args[1].parse().unwrap();
    let pid: u32 = args[2].parse().unwrap();
    let seconds: u64 = args[3].parse().unwrap();
    let rate: u64 = args[4].parse().unwrap();

    fill(udp, 10_000);
    std::thread::sleep(Duration::from_secs(1));
    let drops_before = kernel_drops(http);
    let stop = Arc::new(AtomicBool::new(false));

    // 200 scrapers that never read.
    let stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();

    // 8 heavy clients.
    let statuses: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let heavy: Vec<_> = (0..8)
        .map(|i| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            std::thread::spawn(move || {
                let path = if i % 2 == 0 {
                    "/api/v1/capacity"
                } else {
                    "/metrics"
                };
                while !stop.load(Ordering::Relaxed) {
                    let status = get(http, path);
                    let slot = match status {
                        200 => 0,
                        503 => 1,
                        _ => 2,
                    };
                    statuses[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // UDP at a fixed rate.
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || send_at(udp, rate, &stop))
    };

    // The daemon's peak RSS.
    let rss = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };

    // Probes, one request at a time on one keep-alive connection each, as
    // a kubelet and a router calling the check keep theirs.
    let mut probe = KeepAlive::connect(http);
    let mut router = KeepAlive::connect(http);
    let mut healthz = Vec::new();
    let mut checks = Vec::new();
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let t = Instant::now();
        assert_eq!(probe.request("GET /healthz HTTP/1.1", ""), 200);
        healthz.push(t.elapsed());
        let t = Instant::now();
        let body = format!("{{\"tenant\":\"t{}\"}}", i % 1000);
        let status = router.request("POST /v1/ratelimit/check HTTP/1.1", &body);
        assert!(status == 200 || status == 429, "check answered {status}");
        checks.push(t.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    for h in heavy {
        h.join().unwrap();
    }
    let peak_kib = rss.join().unwrap();
    drop(stalled);
    std::thread::sleep(Duration::from_secs(1));
    let drops = kernel_drops(http) - drops_before;

    println!("daemon peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
    println!(
        "/healthz: {} probes, {}",
        healthz.len(),
        percentiles(&mut healthz)
    );
    println!(
        "/v1/ratelimit/check: {} probes, {}",
        checks.len(),
        percentiles(&mut checks)
    );
    println!(
        "heavy clients: {} ok, {} busy (503), {} other",
        statuses[0].load(Ordering::Relaxed),
        statuses[1].load(Ordering::Relaxed),
        statuses[2].load(Ordering::Relaxed)
    );
    println!("udp: {sent} events sent at {rate}/s, {drops} kernel drops");
}

fn percentiles(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    )
}

fn fill(udp: SocketAddr, tenants: u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for tenant in 0..tenants {
        for kind in ["read", "write", "other"] {
            let line = format!(
                "tenantwatch.query:{}|ms|#tenant:t{tenant},kind:{kind}",
                tenant % 97
            );
            socket.send_to(line.as_bytes(), udp).unwrap();
        }
        if tenant % 500 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn send_at(udp: SocketAddr, rate: u64, stop: &AtomicBool) -> u64 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(udp).unwrap();
    let lines: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("tenantwatch.query:3|ms|#tenant:t{i},kind:read").into_bytes())
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let _ = socket.send(&lines[(sent % 1000) as usize]);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    sent
}

fn request(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{head}\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// One keep-alive HTTP/1.1 connection, for requests one at a time.
struct KeepAlive {
    stream: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        KeepAlive {
            stream: std::io::BufReader::new(stream),
        }
    }

    /// Sends one request and reads the whole response; returns its status.
    fn request(&mut self, head: &str, body: &str) -> u16 {
        use std::io::BufRead;
        write!(
            self.stream.get_mut(),
            "{head}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        status
    }
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    request(addr, &format!("GET {path} HTTP/1.1"), "").0
}

fn kernel_drops(http: SocketAddr) -> u64 {
    let (_, text) = request(http, "GET /metrics HTTP/1.1", "");
    text.lines()
        .find(|l| l.starts_with("tenantwatch_udp_kernel_drops_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
