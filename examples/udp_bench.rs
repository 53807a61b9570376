//! Load generator and raw-receive baseline for `scripts/bench-ingest.sh`.
//!
//! ```text
//! udp_bench send ADDR RATE PER_DATAGRAM SECONDS TENANTS
//!     sends RATE events/s (PER_DATAGRAM DogStatsD lines per datagram) for
//!     SECONDS, spread over TENANTS tenants; prints the events sent and the
//!     rate achieved (lower than RATE when the sender cannot keep up).
//! udp_bench sink ADDR RECV_BUFFER_BYTES IDLE_MS
//!     receives and counts datagrams (and the lines in them) until no datagram
//!     arrived for IDLE_MS after the first; prints "datagrams lines".
//! ```
//!
//! The sink is the baseline: the most a receiver that does nothing but count
//! can take, on the same socket settings as the daemon.

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| usage("missing argument"))
    };
    match arg(0) {
        "send" => send(
            arg(1).parse().unwrap_or_else(|_| usage("bad ADDR")),
            arg(2).parse().unwrap_or_else(|_| usage("bad RATE")),
            arg(3).parse().unwrap_or_else(|_| usage("bad PER_DATAGRAM")),
            arg(4).parse().unwrap_or_else(|_| usage("bad SECONDS")),
            arg(5).parse().unwrap_or_else(|_| usage("bad TENANTS")),
        ),
        "sink" => sink(
            arg(1).parse().unwrap_or_else(|_| usage("bad ADDR")),
            arg(2)
                .parse()
                .unwrap_or_else(|_| usage("bad RECV_BUFFER_BYTES")),
            arg(3).parse().unwrap_or_else(|_| usage("bad IDLE_MS")),
        ),
        _ => usage("unknown mode"),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "udp_bench: {problem}\nusage: udp_bench send ADDR RATE PER_DATAGRAM SECONDS TENANTS\n       udp_bench sink ADDR RECV_BUFFER_BYTES IDLE_MS"
    );
    std::process::exit(2);
}

fn send(addr: SocketAddr, rate: u64, per_datagram: u64, seconds: f64, tenants: u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    socket.connect(addr).expect("connect sender");
    // Pre-built datagrams, cycled: the sender measures the receiver, not
    // its own formatting.
    let kinds = ["read", "write", "other"];
    // Enough datagrams that every tenant sends every kind (3 x TENANTS
    // events; 1,024 datagrams of 20 reached only 20,480 tenants).
    let count = (tenants.max(1) * 3).div_ceil(per_datagram.max(1)).max(1024);
    let datagrams: Vec<Vec<u8>> = (0..count)
        .map(|d| {
            let mut payload = String::new();
            for i in 0..per_datagram {
                let n = d * per_datagram + i;
                let tenant = n % tenants.max(1);
                let kind = kinds[(n % 3) as usize];
                let ms = (n % 500) as f64 / 10.0 + 0.3;
                payload.push_str(&format!(
                    "tenantwatch.query:{ms}|ms|#tenant:tenant{tenant},kind:{kind}\n"
                ));
            }
            payload.into_bytes()
        })
        .collect();

    let datagrams_per_second = (rate as f64 / per_datagram.max(1) as f64).max(1.0);
    // Pace in short ticks: send what is due, then sleep until the next tick.
    // Stop at the deadline whatever was sent, so a sender that cannot keep
    // up shows as a lower achieved rate instead of a longer trial.
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds {
            break;
        }
        let due = (elapsed * datagrams_per_second) as u64;
        while sent < due {
            let payload = &datagrams[(sent % datagrams.len() as u64) as usize];
            // Loopback sends only fail when the receiver is gone; count what left.
            if socket.send(payload).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed().as_secs_f64();
    // "events sent" and "events per second achieved"
    println!(
        "{} {:.0}",
        sent * per_datagram,
        (sent * per_datagram) as f64 / elapsed
    );
}

fn sink(addr: SocketAddr, recv_buffer_bytes: usize, idle_ms: u64) {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    socket
        .set_recv_buffer_size(recv_buffer_bytes)
        .expect("SO_RCVBUF");
    socket.bind(&addr.into()).expect("bind sink");
    let socket: UdpSocket = socket.into();
    let mut buf = vec![0u8; 65_536];
    let (mut datagrams, mut lines) = (0u64, 0u64);
    // Wait for the first datagram without a deadline, then stop after idle.
    socket.set_read_timeout(None).expect("timeout");
    while let Ok(len) = socket.recv(&mut buf) {
        if datagrams == 0 {
            socket
                .set_read_timeout(Some(Duration::from_millis(idle_ms)))
                .expect("timeout");
        }
        datagrams += 1;
        lines += buf[..len].iter().filter(|b| **b == b'\n').count() as u64;
    }
    println!("{datagrams} {lines}");
}
