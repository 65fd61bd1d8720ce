//! Reading the client's request body, whole, up to `limits.maxRequestBytes`.
//!
//! The router needs the complete body to find the model before it picks a
//! lane, and it forwards exactly these bytes. Over-limit bodies get `413`:
//! - a `Content-Length` above the limit is refused before any byte is
//!   read; with `Expect: 100-continue` the client never sends the body;
//! - otherwise the router reads and discards up to [`DRAIN_BYTES`] more
//!   (for at most [`DRAIN_TIME`]) before answering, so a client that writes
//!   its whole body before reading (most do) gets the `413` instead of a
//!   connection reset.
//!
//! Each frame must arrive within `limits.idleTimeoutSeconds`, and the body
//! within the request's total deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::RouteError;

/// Most bytes discarded after a `413` decision.
pub const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// Longest time spent discarding after a `413` decision.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// What the request head says about its body.
#[derive(Debug, Clone, Copy)]
pub struct BodyHead {
    /// `Content-Length`, if sent.
    pub declared: Option<u64>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// Limits for reading one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `limits.maxRequestBytes`.
    pub max: u64,
    /// Longest wait for one frame.
    pub idle: Duration,
    /// The request's total deadline.
    pub deadline: Instant,
}

enum Next {
    Data(Bytes),
    End,
}

async fn next_data(body: &mut Incoming, limits: &BodyLimits) -> Result<Next, RouteError> {
    loop {
        let until = (Instant::now() + limits.idle).min(limits.deadline);
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => {
                return Err(RouteError::RequestBodyTimeout {
                    secs: limits.idle.as_secs(),
                });
            }
            Ok(None) => return Ok(Next::End),
            Ok(Some(Err(e))) => {
                return Err(RouteError::RequestBody {
                    detail: e.to_string(),
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        // Request trailers carry nothing the router forwards.
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Ok(Next::Data(data));
        }
    }
}

/// Discards what the client is still sending, bounded in bytes and time.
async fn drain(body: &mut Incoming, idle: Duration) {
    let limits = BodyLimits {
        max: DRAIN_BYTES,
        idle: idle.min(DRAIN_TIME),
        deadline: Instant::now() + DRAIN_TIME,
    };
    let mut seen = 0u64;
    while seen < DRAIN_BYTES {
        match next_data(body, &limits).await {
            Ok(Next::Data(d)) => seen += d.len() as u64,
            _ => break,
        }
    }
}

/// Reads the whole body (one frame is kept without copying).
pub async fn read_body(
    body: &mut Incoming,
    head: BodyHead,
    limits: BodyLimits,
) -> Result<Bytes, RouteError> {
    let too_large = RouteError::RequestTooLarge { limit: limits.max };
    if let Some(declared) = head.declared
        && declared > limits.max
    {
        if !head.expect_continue {
            drain(body, limits.idle).await;
        }
        return Err(too_large);
    }
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0u64;
    loop {
        let data = match next_data(body, &limits).await? {
            Next::End => break,
            Next::Data(d) => d,
        };
        total += data.len() as u64;
        if total > limits.max {
            drain(body, limits.idle).await;
            return Err(too_large);
        }
        match (&mut first, &mut buf) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let cap = head.declared.map_or(total, |d| d.max(total));
                let mut b = BytesMut::with_capacity(usize::try_from(cap).unwrap_or(0));
                b.extend_from_slice(f);
                b.extend_from_slice(&data);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&data),
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}
