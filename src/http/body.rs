//! Reading a whole request body within its size and time limits.
//!
//! A body sent with `Content-Length` usually arrives as one frame, already
//! in hyper's read buffer when the handler first asks: that frame is passed
//! on as it is (no copy, no list of chunks) and no timer is armed. Only a
//! body that is not there yet is read under `server.body_read_timeout`.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyError {
    /// Longer than the endpoint accepts (declared or sent): 413.
    TooLarge,
    /// Not received within the body-read timeout: 408.
    TimedOut,
    /// The connection failed or the framing was broken mid-body: 400.
    Unreadable,
}

/// The whole body, at most `max` bytes, received within `within`.
pub(super) async fn read_body(
    body: Incoming,
    max: usize,
    within: Duration,
) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut read = pin!(read_limited(body, max));
    // Polled once before a timer exists: a timer costs a clock read and a
    // runtime handle per request, and the body is usually there already.
    let first = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    match first {
        Some(result) => result,
        None => tokio::time::timeout(within, read)
            .await
            .unwrap_or(Err(BodyError::TimedOut)),
    }
}

/// Data frames until the end, at most `max` bytes in all; trailers are
/// ignored. One frame is returned as it came.
async fn read_limited(mut body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    // The end is known once `Content-Length` bytes came: stopping there
    // saves waiting for hyper to close the body channel.
    while !body.is_end_stream()
        && let Some(frame) = body.frame().await
    {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Err(BodyError::TooLarge);
        }
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut buffer = BytesMut::with_capacity(total);
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(match joined {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}
