//! Relaying a provider's response body frame by frame, under limits.
//!
//! [`RelayBody`] wraps the upstream body and hands each frame on as soon as
//! it arrives: nothing is buffered, so an SSE event leaves the router when
//! it arrives (hyper flushes whenever the body has nothing more ready).
//! Limits, from the policy snapshot the request started with:
//! - `maxResponseBytes`: a frame that would cross it is not sent; the
//!   stream is cut;
//! - `idleTimeoutSeconds`: no frame for that long cuts the stream;
//! - `totalTimeoutSeconds`: counted from the request's arrival.
//!
//! A cut ends the response abnormally (HTTP/1.1: the connection closes
//! before the last chunk; HTTP/2: the stream is reset), so the client sees
//! a truncated response rather than a forged ending. Dropping the body
//! (the client went away) drops the upstream response with it: an
//! HTTP/1.1 upstream connection is closed, an HTTP/2 stream is reset, so
//! the provider stops generating.
//!
//! Every request ends in exactly one audit event, emitted by [`Pending`]:
//! at a refusal, at the end of the relayed body, at a cut, or when the
//! body or the request future is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::audit::{RouterAuditSink, RouterEvent, log_event};
use crate::admission::Slot;
use crate::reason::Reason;

// === impl Pending ===

/// A request's audit record while it is in flight. Emits its event exactly
/// once: on [`Pending::finish`], or on drop (as [`Reason::ClientClosed`]:
/// the only way a request is dropped unfinished is its client going away).
pub struct Pending {
    /// The event being filled in.
    pub event: RouterEvent,
    start: Instant,
    sink: Arc<dyn RouterAuditSink>,
    slot: Option<Slot>,
    done: bool,
}

impl Pending {
    /// A record for a request that arrived at `start`.
    pub fn new(event: RouterEvent, start: Instant, sink: Arc<dyn RouterAuditSink>) -> Self {
        Self {
            event,
            start,
            sink,
            slot: None,
            done: false,
        }
    }

    /// Holds the request's concurrency slot until the event is emitted.
    pub fn hold(&mut self, slot: Slot) {
        self.slot = Some(slot);
    }

    /// When the request arrived.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Emits the event with `reason` (once; later calls do nothing).
    pub fn finish(&mut self, reason: Reason) {
        if self.done {
            return;
        }
        self.done = true;
        self.event.reason = reason;
        self.event.duration = self.start.elapsed();
        log_event(&self.event);
        self.sink.record(self.event.clone());
        self.slot = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Reason::ClientClosed);
    }
}

// === impl RelayBody ===

/// Why a relayed stream was cut.
#[derive(Debug, thiserror::Error)]
#[error("response stream cut: {}", reason.as_str())]
pub struct RelayError {
    /// What cut it.
    pub reason: Reason,
}

/// Response limits for one request.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Most body bytes relayed.
    pub max_bytes: u64,
    /// Longest gap between frames.
    pub idle: Duration,
    /// When the whole request must be over.
    pub deadline: Instant,
}

/// The upstream body relayed frame by frame under [`StreamLimits`].
pub struct RelayBody {
    inner: Incoming,
    limits: StreamLimits,
    idle: Pin<Box<Sleep>>,
    last_frame: Instant,
    total: Pin<Box<Sleep>>,
    pending: Pending,
    ended: bool,
}

impl RelayBody {
    /// Wraps `inner`; `pending` gets the byte count and the reason.
    pub fn new(inner: Incoming, limits: StreamLimits, pending: Pending) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            last_frame: now,
            total: Box::pin(tokio::time::sleep_until(limits.deadline)),
            pending,
            ended: false,
        }
    }

    fn cut(&mut self, reason: Reason) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        self.ended = true;
        self.pending.finish(reason);
        Poll::Ready(Some(Err(RelayError { reason })))
    }

    /// Whether the idle limit has passed; re-arms the timer lazily (once
    /// per idle period, not once per frame).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_frame + self.limits.idle;
            if Instant::now() >= due {
                return true;
            }
            self.idle.as_mut().reset(due);
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.total.as_mut().poll(cx).is_ready() {
            return this.cut(Reason::TotalTimeout);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let next = this.pending.event.bytes_down + data.len() as u64;
                    if next > this.limits.max_bytes {
                        return this.cut(Reason::ResponseTooLarge);
                    }
                    this.pending.event.bytes_down = next;
                }
                this.last_frame = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(
                    lane = this.pending.event.lane.as_deref().unwrap_or(""),
                    error = %e,
                    "upstream body failed"
                );
                this.cut(Reason::UpstreamReset)
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.pending.finish(Reason::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle_expired(cx) {
                    this.cut(Reason::IdleTimeout)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // hyper may stop polling once a body with a known length is
        // complete; that is a completed response, not a client abort.
        if !self.ended && self.inner.is_end_stream() {
            self.pending.finish(Reason::Completed);
        }
    }
}

// === impl RouterBody ===

/// The body of every response the router sends: a router-made message, or
/// a relayed provider body.
pub enum RouterBody {
    /// A complete body (router errors).
    Full(Option<Bytes>),
    /// A provider body, relayed.
    Relay(Box<RelayBody>),
}

impl Body for RouterBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Relay(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Relay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Relay(body) => body.size_hint(),
        }
    }
}
