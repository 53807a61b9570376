//! The check lane against hyper: the same bytes (pipelined requests, cut
//! into writes at points the input chooses) are served once as the
//! listener serves them (the check lane, then hyper) and once by hyper
//! alone; the answers must be the same: each response's status line,
//! headers (in any order, but for `date`) and body, in order, and the
//! connection closed after the same bytes. (A `/metrics` answer is
//! compared without its process figures and timestamps, which differ
//! between any two scrapes, and as a set of lines: a family's series come
//! in its hash map's order.)
//!
//! The input: byte 0 says how many cuts (0 to 7), the next that many bytes
//! how far apart they are (1 to 256 bytes); the rest is what the client
//! sends. Quotas are 10^9 queries per second, so every decision (the
//! remaining count, a refusal of a cost over the burst) is the same
//! whenever it is made; the write token is `fuzz-token`, reads need
//! `fuzz-read-token`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tenantwatch::Config;
use tenantwatch::http::fuzzing::{self, Parts};

const CONFIG: &str = r#"
[ratelimit]
default_qps = 1000000000.0
default_burst = 5
[ratelimit.tiers.gold]
qps = 1000000000.0
burst = 3
[ratelimit.tiers.quiet]
qps = 1000000000.0
burst = 2
shadow = true
[ratelimit.tenants.gold1]
tier = "gold"
[ratelimit.tenants.quiet1]
tier = "quiet"
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| {
        let env = [
            ("TENANTWATCH_AUTH_TOKEN", "fuzz-token"),
            ("TENANTWATCH_READ_TOKEN", "fuzz-read-token"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        Config::from_toml_with_env(CONFIG, Path::new("fuzz.toml"), env)
            .expect("the fuzz configuration is valid")
    })
}

/// A fresh listener state: nothing either run did carries into the other.
fn state() -> std::sync::Arc<tenantwatch::http::AppState> {
    let config = config();
    fuzzing::state(Parts {
        server: &config.settings.server,
        ingest: &config.settings.ingest,
        metrics: &config.settings.metrics,
        api: &config.settings.api,
        ratelimit: config.ratelimit.clone(),
        tokens: config.tokens.clone(),
    })
}

/// One response: its status line, its header lines but `date` (sorted),
/// and its body.
#[derive(Debug, PartialEq)]
struct Response {
    status: String,
    headers: Vec<String>,
    body: Vec<u8>,
}

/// The responses in `bytes`, in order, and whatever is left that is not a
/// whole response (compared as it is, but for `date` lines).
///
/// An interim response (`100 Continue`, to a request with `Expect`) has no
/// body and no `Content-Length`; read as an unfinished response, it left
/// every answer after it to the raw comparison, `date` headers included,
/// and two runs a second apart then differed (a CI run failed on it).
fn responses(mut bytes: &[u8]) -> (Vec<Response>, Vec<u8>) {
    let mut found = Vec::new();
    loop {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_owned();
        let mut headers: Vec<String> = lines
            .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
            .map(str::to_owned)
            .collect();
        headers.sort();
        let length = headers
            .iter()
            .find_map(|h| {
                h.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok());
        let rest = &bytes[end + 4..];
        let interim = status
            .split(' ')
            .nth(1)
            .is_some_and(|code| code.len() == 3 && code.starts_with('1'));
        let length = if interim { Some(0) } else { length };
        let Some(length) = length.filter(|&n| n <= rest.len()) else {
            break;
        };
        let mut body = rest[..length].to_vec();
        if is_exposition(&headers) {
            // Figures of the process and of the clock differ from one run
            // to the other (so does the length); the rest must not.
            headers.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
            // The series of a family come in the order of its hash map,
            // which differs between two processes' states: compared as a
            // set of lines.
            let text = String::from_utf8_lossy(&body).into_owned();
            let mut lines: Vec<&str> = text
                .lines()
                .filter(|line| !line.starts_with("process_") && !line.contains("timestamp_seconds"))
                .collect();
            lines.sort_unstable();
            body = lines.join("\n").into_bytes();
        }
        found.push(Response {
            status,
            headers,
            body,
        });
        bytes = &rest[length..];
    }
    (found, without_dates(bytes))
}

/// `bytes` without its `date:` header lines, which differ between two runs
/// a second apart.
fn without_dates(bytes: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.to_ascii_lowercase().starts_with(b"date:") {
            kept.extend_from_slice(line);
        }
    }
    kept
}

/// A `/metrics` answer (either exposition format).
fn is_exposition(headers: &[String]) -> bool {
    headers.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        h.starts_with("content-type: application/openmetrics-text")
            || h.starts_with("content-type: text/plain; version=0.0.4")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(cuts % 8).min(rest.len());
    let (gaps, stream) = rest.split_at(cuts);
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut left = stream;
    for &gap in gaps {
        let at = (usize::from(gap) + 1).min(left.len());
        let (chunk, after) = left.split_at(at);
        chunks.push(chunk);
        left = after;
    }
    chunks.push(left);

    let lane = fuzzing::exchange(&state(), &chunks, fuzzing::Path::Lane)
        .expect("the lane's connection closes");
    let hyper = fuzzing::exchange(&state(), &chunks, fuzzing::Path::HyperOnly)
        .expect("hyper's connection closes");
    let (lane_answers, lane_rest) = responses(&lane);
    let (hyper_answers, hyper_rest) = responses(&hyper);
    assert_eq!(
        lane_answers,
        hyper_answers,
        "the lane and hyper answer differently to {:?}",
        String::from_utf8_lossy(stream)
    );
    assert_eq!(lane_rest, hyper_rest, "the lane and hyper end differently");
});
