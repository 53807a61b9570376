//! hyper's header-read timer, made to tell an idle keep-alive connection
//! from a slow request.
//!
//! hyper arms one timer each time it starts waiting for a request head, and
//! gives it one length. This module is the [`hyper::rt::Timer`] it arms
//! (on server HTTP/1 connections hyper uses the timer for nothing else):
//! the timer fires `server.idle_timeout` after it was armed while nothing
//! has arrived, and `server.header_read_timeout` after the first byte of
//! the head once one has ([`Watched`] notes when bytes arrive; hyper polls
//! the timer again after every read that leaves the head unfinished, and
//! the deadline moves then).
//!
//! The first head hyper reads on a connection was started in the check
//! lane: its deadline counts from the time the lane gives (the connection's
//! accept for its first request), so a slow sender gets one
//! `header_read_timeout` in all, not the lane's and then a fresh one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// When the head being waited for started, shared by a connection's
/// [`Watched`] reader and its [`HeadTimer`].
#[derive(Debug, Default)]
struct HeadStart {
    /// When its first byte arrived; `None` while idle.
    first_byte: Option<Instant>,
    /// Heads waited for so far on the connection.
    armed: u64,
}

/// The timer hyper arms for each request head of one connection.
#[derive(Debug, Clone)]
pub(super) struct HeadTimer {
    start: Arc<Mutex<HeadStart>>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
}

impl HeadTimer {
    /// A timer, and the reader that tells it when bytes arrive, for a
    /// connection whose first head (handed over by the lane) started at
    /// `head_started`.
    pub(super) fn new<I>(
        io: I,
        head_started: Instant,
        idle_timeout: Duration,
        header_read_timeout: Duration,
    ) -> (HeadTimer, Watched<I>) {
        let start = Arc::new(Mutex::new(HeadStart {
            first_byte: Some(head_started),
            armed: 0,
        }));
        let timer = HeadTimer {
            start: start.clone(),
            idle_timeout,
            header_read_timeout,
        };
        (timer, Watched { inner: io, start })
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    /// hyper starts waiting for a request head (`_deadline` is its own,
    /// `header_read_timeout` from now: the deadline is worked out here).
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let armed_at = Instant::now();
        {
            let mut start = self.start.lock().unwrap_or_else(PoisonError::into_inner);
            // The first head's start is the lane's; a later one starts idle.
            if start.armed > 0 {
                start.first_byte = None;
            }
            start.armed += 1;
        }
        let mut sleep = HeadSleep {
            start: self.start.clone(),
            idle_due: armed_at + self.idle_timeout,
            header_read_timeout: self.header_read_timeout,
            due: armed_at,
            sleep: Box::pin(tokio::time::sleep_until(armed_at.into())),
        };
        sleep.refresh();
        Box::pin(sleep)
    }
}

/// One head's deadline: `idle_timeout` after arming while nothing arrived,
/// `header_read_timeout` after the first byte once one did.
struct HeadSleep {
    start: Arc<Mutex<HeadStart>>,
    idle_due: Instant,
    header_read_timeout: Duration,
    due: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadSleep {
    fn refresh(&mut self) {
        let first_byte = self
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_byte;
        let due = first_byte.map_or(self.idle_due, |t| t + self.header_read_timeout);
        if due != self.due {
            self.due = due;
            self.sleep.as_mut().reset(due.into());
        }
    }
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.refresh();
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// A connection whose reads tell its [`HeadTimer`] when a head's first
/// byte arrives.
pub(super) struct Watched<I> {
    inner: I,
    start: Arc<Mutex<HeadStart>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut start = self.start.lock().unwrap_or_else(PoisonError::into_inner);
            start.first_byte.get_or_insert_with(Instant::now);
        }
        polled
    }
}

super::delegate_async_write!(Watched);
