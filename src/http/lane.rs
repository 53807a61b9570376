//! The check lane: rate-limit checks on a keep-alive connection, answered
//! without hyper's per-request machinery.
//!
//! A check is the one request that services send on every call they make,
//! so its cost per request is what they feel. Every connection starts in
//! this lane. It reads what the client sent and answers each request that
//! is a single `POST /v1/ratelimit/check` whose head and body are both
//! already received, with nothing unusual about it: HTTP/1.1, a
//! `Content-Length`, no `Transfer-Encoding`, `Expect`, `Upgrade` or
//! `Connection: close`, a body that parses as one check, and a token that
//! may spend that tenant's quota. The answer is the same as
//! [`super::check::ratelimit_check`] gives (it is built by the same code),
//! written out here.
//!
//! The first request that is anything else, or is not whole yet, ends the
//! lane: the connection goes to hyper for the rest of its life, with the
//! bytes already read put back in front ([`Rewind`]). hyper is then the
//! reference for every error, limit and timeout; nothing is consumed before
//! the lane knows it can answer.
//!
//! While it waits for a request, the lane keeps the listener's rules: a new
//! connection must send its first request within `server.header_read_timeout`
//! of its accept, a keep-alive connection that sends nothing for
//! `server.idle_timeout` after an answer is closed, and on shutdown or at
//! the end of the connection's lifetime it closes an idle connection at
//! once and any other after its answer. A request handed to hyper keeps the
//! time it started (the accept, for a connection's first request): hyper's
//! header-read deadline counts from it (see `clock`), so the lane's wait and
//! hyper's are one `header_read_timeout`, not two.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{AppState, ConnectionEnds, Endpoint, check, count_request};

/// What the lane holds of a connection's input. A check request is about
/// 200 bytes; one that does not fit is not for the lane.
const LANE_BUFFER_BYTES: usize = 4096;

/// Most request headers the lane reads; a request with more goes to hyper.
const LANE_MAX_HEADERS: usize = 24;

/// How a connection leaves the lane.
pub(super) enum LaneEnd<I> {
    /// Closed: the client went, the connection timed out, or the daemon is
    /// shutting down.
    Closed,
    /// For hyper to serve from here on, the bytes read so far in front,
    /// with the time the request they start began.
    HandOff(Rewind<I>, Instant),
}

/// Serves checks on `io` until the connection closes or a request needs
/// hyper.
pub(super) async fn serve_checks<I>(
    mut io: I,
    state: &AppState,
    ends: &ConnectionEnds,
    mut lifetime: Pin<&mut Sleep>,
    accepted: Instant,
) -> LaneEnd<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // The first request counts from the accept; a later one may idle first.
    let mut wait_limit = state.listener.server.header_read_timeout;
    // When the request being read began: the accept for the first.
    let mut head_started = accepted;
    let mut input: Vec<u8> = vec![0; LANE_BUFFER_BYTES];
    let mut output: Vec<u8> = Vec::with_capacity(1024);
    let mut body: Vec<u8> = Vec::with_capacity(512);
    let mut answered_any = false;
    let shutdown = ends.shutdown.cancelled();
    let hard_stop = ends.hard_stop.cancelled();
    tokio::pin!(shutdown, hard_stop);
    // The idle timer is armed once and moved on only when it fires early:
    // re-arming it for every request would cost a timer update each.
    let mut waiting_since = accepted;
    let idle = tokio::time::sleep_until(waiting_since + wait_limit);
    tokio::pin!(idle);
    loop {
        // Wait for a request; an idle connection closes on any of the ends,
        // and quietly after its wait limit, as hyper closes it.
        let read = tokio::select! {
            biased;
            read = io.read(&mut input) => read,
            _ = &mut hard_stop => return LaneEnd::Closed,
            _ = &mut shutdown => return LaneEnd::Closed,
            _ = &mut lifetime => return LaneEnd::Closed,
            _ = &mut idle => {
                let due = waiting_since + wait_limit;
                if Instant::now() >= due {
                    return LaneEnd::Closed;
                }
                idle.as_mut().reset(due);
                continue;
            }
        };
        let filled = match read {
            Ok(0) | Err(_) => return LaneEnd::Closed,
            Ok(n) => n,
        };
        if answered_any {
            // What is left after this read's checks began in this read.
            head_started = Instant::now();
        }
        // Answer every whole check received, in order.
        let mut answered = 0;
        let mut closing = false;
        while answered < filled {
            let pending = &input[answered..filled];
            let Some(request) = whole_check(pending) else {
                break;
            };
            let request_body = &pending[request.head_len..request.head_len + request.body_len];
            let Some(answer) =
                check::answer_single(state, request.bearer(pending), request_body).await
            else {
                break;
            };
            closing = ends.shutdown.is_cancelled() || lifetime.is_elapsed();
            count_request(state, Endpoint::RatelimitCheck.as_str(), answer.status());
            write_answer(&mut output, &mut body, &answer, closing);
            answered += request.head_len + request.body_len;
            answered_any = true;
            head_started = Instant::now();
            if closing {
                break;
            }
        }
        if !output.is_empty() {
            let written = io.write_all(&output).await.and(io.flush().await);
            output.clear();
            if written.is_err() || closing {
                return LaneEnd::Closed;
            }
        }
        if answered < filled {
            // What is left is not a whole check the lane may answer (or
            // not yet whole): hyper's from here on.
            return hand_off(io, &input[answered..filled], head_started);
        }
        waiting_since = Instant::now();
        wait_limit = state.listener.server.idle_timeout;
        // Moved later lazily (above); sooner only when the idle timeout is
        // shorter than the first request's limit, once per connection.
        let due = waiting_since + wait_limit;
        if due < idle.deadline() {
            idle.as_mut().reset(due);
        }
    }
}

fn hand_off<I>(io: I, read: &[u8], head_started: Instant) -> LaneEnd<I> {
    LaneEnd::HandOff(
        Rewind {
            prefix: Bytes::copy_from_slice(read),
            inner: io,
        },
        head_started,
    )
}

/// Where a whole check request lies in the bytes received.
struct WholeCheck {
    head_len: usize,
    body_len: usize,
    /// The `Authorization` value's place, if given.
    authorization: Option<(usize, usize)>,
}

impl WholeCheck {
    fn bearer<'a>(&self, request: &'a [u8]) -> Option<&'a str> {
        let (start, end) = self.authorization?;
        super::auth::bearer_token(&request[start..end])
    }
}

/// The check request at the start of `bytes`, if it is whole and the lane
/// may answer it (see the module doc); `None` for anything else.
fn whole_check(bytes: &[u8]) -> Option<WholeCheck> {
    let mut headers = [httparse::EMPTY_HEADER; LANE_MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = request.parse(bytes).ok()? else {
        return None;
    };
    if request.method != Some("POST")
        || request.path != Some("/v1/ratelimit/check")
        || request.version != Some(1)
    {
        return None;
    }
    let mut content_length = None;
    let mut authorization = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return None;
            }
            content_length = Some(decimal(header.value)?);
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return None;
            }
            let start = header.value.as_ptr() as usize - bytes.as_ptr() as usize;
            authorization = Some((start, start + header.value.len()));
        } else if name.eq_ignore_ascii_case("connection") {
            if !header.value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
    }
    let body_len = content_length?;
    if bytes.len() - head_len < body_len {
        return None;
    }
    Some(WholeCheck {
        head_len,
        body_len,
        authorization,
    })
}

/// A `Content-Length` value: digits only, and small (a check body is at
/// most a few kilobytes; a larger one cannot be whole in the lane anyway).
fn decimal(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 6 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, &d| n * 10 + usize::from(d - b'0')))
}

/// Writes `answer` as hyper writes a response: status line, the handler's
/// headers, `connection: close` when the connection ends after it,
/// `content-length`, `date`, then the body (written first into `body`, for
/// its length). Both buffers are the connection's, so nothing is allocated.
fn write_answer(
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    answer: &check::SingleAnswer<'_>,
    closing: bool,
) {
    body.clear();
    answer.write_body(body);
    let status = answer.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    answer.headers(|name, value| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    });
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

thread_local! {
    /// The `Date` value of the current second, as hyper keeps it.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> =
        const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the IMF-fixdate of now, formatted once per second per thread.
pub(super) fn http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if let Ok(fixed) = <[u8; 29]>::try_from(text.as_bytes()) {
                *date = (second, fixed);
            }
        }
        out.extend_from_slice(&date.1);
    });
}

/// A connection with bytes already read from it put back in front.
pub(super) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

super::delegate_async_write!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: &[u8] = b"POST /v1/ratelimit/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"tenant\":\"acme\"}";

    #[test]
    fn a_whole_check_is_found_with_its_token() {
        let found = whole_check(CHECK).expect("a whole check");
        assert_eq!(found.head_len + found.body_len, CHECK.len());
        assert_eq!(found.bearer(CHECK), Some("t0ken"));
        // Followed by the start of the next request: still found.
        let mut two = CHECK.to_vec();
        two.extend_from_slice(b"POST /v1/rate");
        let found = whole_check(&two).expect("a whole check");
        assert_eq!(found.head_len + found.body_len, CHECK.len());
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        let replace = |from: &str, to: &str| {
            String::from_utf8(CHECK.to_vec())
                .unwrap()
                .replacen(from, to, 1)
                .into_bytes()
        };
        let cases = [
            ("a cut body", CHECK[..CHECK.len() - 1].to_vec()),
            ("a cut head", CHECK[..40].to_vec()),
            ("another path", replace("/v1/ratelimit/check", "/v1/events")),
            ("a query", replace("/check", "/check?x=1")),
            ("another method", replace("POST", "PUT")),
            ("HTTP/1.0", replace("HTTP/1.1", "HTTP/1.0")),
            (
                "chunked",
                replace("Content-Length: 17", "Transfer-Encoding: chunked"),
            ),
            (
                "two lengths",
                replace(
                    "Content-Length: 17",
                    "Content-Length: 17\r\nContent-Length: 17",
                ),
            ),
            ("a signed length", replace("Length: 17", "Length: +17")),
            ("no length", replace("Content-Length: 17\r\n", "")),
            ("expect", replace("Host: x", "Expect: 100-continue")),
            ("close", replace("Host: x", "Connection: close")),
            ("upgrade", replace("Host: x", "Upgrade: h2c")),
            (
                "two tokens",
                replace("Host: x", "Authorization: Bearer other"),
            ),
            ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00".to_vec()),
        ];
        for (case, bytes) in cases {
            assert!(whole_check(&bytes).is_none(), "{case}");
        }
        let keep_alive = replace("Host: x", "Connection: Keep-Alive");
        assert!(whole_check(&keep_alive).is_some());
    }

    proptest::proptest! {
        /// Whatever arrives (a check with a byte changed and cut anywhere,
        /// or noise), the lane never reads past what it holds, and what it
        /// takes for a check is one to hyper's reading too: a POST to the
        /// check path with a body of the length it declares.
        #[test]
        fn the_lane_reads_only_whole_checks(
            at in 0..CHECK.len(),
            byte in proptest::num::u8::ANY,
            cut in 0..=CHECK.len(),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut changed = CHECK.to_vec();
            changed[at] = byte;
            changed.truncate(cut);
            for bytes in [&changed, &noise] {
                if let Some(found) = whole_check(bytes) {
                    proptest::prop_assert!(found.head_len + found.body_len <= bytes.len());
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut request = httparse::Request::new(&mut headers);
                    let parsed = request.parse(bytes);
                    proptest::prop_assert_eq!(parsed.ok(), Some(httparse::Status::Complete(found.head_len)));
                    proptest::prop_assert_eq!(request.path, Some("/v1/ratelimit/check"));
                    let length = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| h.value);
                    let declared = found.body_len.to_string();
                    proptest::prop_assert_eq!(length, Some(declared.as_bytes()));
                }
            }
        }
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
        assert_eq!(text.len(), 29);
    }

    #[tokio::test]
    async fn rewind_reads_the_prefix_first() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut rewound = Rewind {
            prefix: Bytes::from_static(b"first "),
            inner: client,
        };
        server.write_all(b"then").await.unwrap();
        drop(server);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "first then");
    }
}
