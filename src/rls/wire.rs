//! gRPC over HTTP/2, the parts the listener speaks itself: status codes,
//! the length-prefixed message, `grpc-timeout`, `grpc-message`'s
//! percent-encoding, and the health service's two messages
//! (`grpc.health.v1`), as the gRPC specification ("gRPC over HTTP2",
//! "Health Checking Protocol") writes them.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// The gRPC status codes the listener fails a call with (`0`, OK, is
/// written as is in the trailers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unauthenticated = 16,
}

/// A call's failure: its code and a message for `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }
}

/// Bytes before a message: a compressed flag and a big-endian length.
pub const PREFIX: usize = 5;

/// A message with its prefix, uncompressed, ready for a DATA frame.
pub fn framed(message: &impl prost::Message) -> Bytes {
    let length = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + length);
    out.put_u8(0);
    // A message the listener writes is far below 4 GiB.
    out.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    // Cannot fail: the buffer holds `encoded_len` bytes.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// What a request body's first bytes say about its message.
#[derive(Debug, PartialEq, Eq)]
pub enum Prefix {
    /// Not all five bytes yet.
    Short,
    /// An uncompressed message of this many bytes.
    Plain(usize),
    /// A message compressed with the request's `grpc-encoding`.
    Compressed,
}

pub fn prefix(body: &[u8]) -> Prefix {
    match body {
        [0, a, b, c, d, ..] => Prefix::Plain(u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        [_, _, _, _, _, ..] => Prefix::Compressed,
        _ => Prefix::Short,
    }
}

/// `grpc-timeout`: up to eight digits and a unit (H, M, S, m, u, n).
pub fn timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-message`: printable ASCII but `%` as is, everything else
/// percent-encoded as UTF-8 bytes.
pub fn message_value(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        assert_eq!(timeout(b"20m"), Some(Duration::from_millis(20)));
        assert_eq!(timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout(b"500u"), Some(Duration::from_micros(500)));
        assert_eq!(
            timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"12x",
            b"-1m",
            b"1.5S",
            b"\xffm",
        ] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(message_value("a b:c"), "a b:c");
        assert_eq!(message_value("100%\n"), "100%25%0A");
        assert_eq!(message_value("é"), "%C3%A9");
    }

    #[test]
    fn a_prefix_says_how_long_the_message_is() {
        assert_eq!(prefix(&[0, 0, 0]), Prefix::Short);
        assert_eq!(prefix(&[0, 0, 0, 1, 0, 7]), Prefix::Plain(256));
        assert_eq!(prefix(&[1, 0, 0, 0, 3]), Prefix::Compressed);
        let framed = framed(&HealthCheckRequest {
            service: "x".into(),
        });
        assert_eq!(prefix(&framed), Prefix::Plain(framed.len() - PREFIX));
    }

    proptest::proptest! {
        /// Any header value: an answer or none, never a panic, and what is
        /// read back is what was written.
        #[test]
        fn any_timeout_value_is_read_or_refused(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
            let _ = timeout(&value);
        }

        #[test]
        fn written_timeouts_read_back(n in 0u32..100_000_000, unit in 0usize..6) {
            let n = u64::from(n);
            let (letter, expected) = [
                (b'H', Duration::from_secs(n * 3600)),
                (b'M', Duration::from_secs(n * 60)),
                (b'S', Duration::from_secs(n)),
                (b'm', Duration::from_millis(n)),
                (b'u', Duration::from_micros(n)),
                (b'n', Duration::from_nanos(n)),
            ][unit];
            let mut value = n.to_string().into_bytes();
            value.push(letter);
            proptest::prop_assert_eq!(timeout(&value), Some(expected));
        }

        #[test]
        fn any_body_start_has_a_prefix_reading(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)) {
            let read = prefix(&body);
            proptest::prop_assert_eq!(read == Prefix::Short, body.len() < PREFIX);
        }

        #[test]
        fn any_message_text_encodes_to_a_header_value(message in ".{0,64}") {
            let value = message_value(&message);
            proptest::prop_assert!(http::HeaderValue::from_str(&value).is_ok());
        }
    }
}
