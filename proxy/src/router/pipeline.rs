//! One request's path through the router, as a fixed list of phases:
//!
//! 1. admit (`limits.maxConcurrentRequests`);
//! 2. read the body ([`super::body`]);
//! 3. find the model ([`super::model`]);
//! 4. pick the lane ([`super::lane`]) and build the upstream URI;
//! 5. decide the credential ([`super::credentials`]);
//! 6. rewrite the headers ([`super::headers`]);
//! 7. send upstream and wait for the response head (first-byte limit);
//! 8. relay the response ([`super::stream`]).
//!
//! Every refusal goes through [`refuse`], so every request ends in one
//! Anthropic-shaped error or one relayed response, and in one audit event.
//! The policy snapshot is taken once at arrival: a reload never changes a
//! request in flight.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Request, Response, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use policy::Snapshot;
use tokio::sync::watch;
use tokio::time::Instant;

use super::audit::{Peer, RouterAuditSink, RouterEvent};
use super::body::{BodyHead, BodyLimits, read_body};
use super::credentials::{CredentialSource, plan_auth};
use super::error::RouteError;
use super::headers::{clean_response_headers, upstream_request_headers};
use super::lane::{LaneReason, choose_lane, target_uri};
use super::model::find_model;
use super::stream::{Pending, RelayBody, RouterBody, StreamLimits};
use super::upstream::{UpstreamClient, connect_error, describe};
use crate::admission::Admission;
use crate::reason::Reason;

/// What every request handler shares.
pub struct Shared {
    /// The active policy.
    pub policy: watch::Receiver<Arc<Snapshot>>,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// Lane credentials.
    pub credentials: CredentialSource,
    /// Audit sink.
    pub sink: Arc<dyn RouterAuditSink>,
    /// Requests in flight.
    pub admission: Arc<Admission>,
}

fn refuse(mut pending: Pending, err: RouteError) -> Response<RouterBody> {
    let reason = err.reason();
    let resp = err.response();
    pending.event.status = Some(resp.status().as_u16());
    match reason {
        Reason::ClientClosed => tracing::debug!(error = %err, "client went away"),
        // Problems only the operator can fix (configuration, provider
        // reachability): say what is wrong at warn level.
        Reason::MissingCredential
        | Reason::NoLanes
        | Reason::UpstreamConnectFailed
        | Reason::UpstreamFailed
        | Reason::FirstByteTimeout => {
            tracing::warn!(outcome = reason.as_str(), error = %err, "request failed")
        }
        _ => tracing::debug!(outcome = reason.as_str(), error = %err, "request refused"),
    }
    pending.finish(reason);
    resp.map(|b| RouterBody::Full(Some(b)))
}

fn expect_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Handles one request from `peer`.
pub async fn handle(shared: &Shared, req: Request<Incoming>, peer: Peer) -> Response<RouterBody> {
    let start = Instant::now();
    let snapshot = shared.policy.borrow().clone();
    let policy = snapshot.policy();
    let limits = policy.limits;
    let (parts, mut body) = req.into_parts();
    let mut pending = Pending::new(
        RouterEvent {
            time: SystemTime::now(),
            client: peer,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().chars().take(512).collect(),
            model: None,
            lane: None,
            provider_host: None,
            upstream_version: None,
            status: None,
            reason: Reason::ClientClosed,
            bytes_up: 0,
            bytes_down: 0,
            ttfb: None,
            duration: Default::default(),
            policy_version: policy.version.to_string(),
        },
        start,
        shared.sink.clone(),
    );

    // 1. admit
    let limit = usize::try_from(limits.max_concurrent_requests).unwrap_or(usize::MAX);
    match shared.admission.try_admit(limit) {
        Some(slot) => pending.hold(slot),
        None => {
            return refuse(
                pending,
                RouteError::Overloaded {
                    limit: limits.max_concurrent_requests,
                },
            );
        }
    }
    let deadline = start + limits.total_timeout;

    // 2. body
    let head = BodyHead {
        declared: declared_length(&parts.headers),
        expect_continue: expect_continue(&parts.headers),
    };
    let body_limits = BodyLimits {
        max: limits.max_request_bytes,
        idle: limits.idle_timeout,
        deadline,
    };
    let bytes = match read_body(&mut body, head, body_limits).await {
        Ok(b) => b,
        Err(e) => return refuse(pending, e),
    };
    drop(body);

    // 3. model
    let model = match find_model(&bytes) {
        Ok(m) => m.map(|m| m.into_owned()),
        Err(e) => return refuse(pending, e.into()),
    };
    pending.event.model.clone_from(&model);

    // 4. lane and target
    let choice = match choose_lane(policy, model.as_deref()) {
        Ok(c) => c,
        Err(e) => return refuse(pending, e.into()),
    };
    let provider = choice.provider;
    let base = &provider.base_url;
    let provider_host = if base.port() == 443 {
        base.host().to_string()
    } else {
        format!("{}:{}", base.host(), base.port())
    };
    pending.event.lane = Some(provider.name.clone());
    pending.event.provider_host = Some(provider_host.clone());
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match target_uri(base, target) {
        Ok(u) => u,
        Err(e) => return refuse(pending, e.into()),
    };

    // 5. credential
    let auth = match plan_auth(
        &provider.name,
        &provider.auth,
        &parts.headers,
        &shared.credentials,
    ) {
        Ok(a) => a,
        Err(e) => return refuse(pending, e.into()),
    };

    // 6. headers
    let content_length = (!bytes.is_empty() || parts.headers.contains_key(header::CONTENT_LENGTH))
        .then_some(bytes.len());
    let (headers, stripped) = upstream_request_headers(
        &parts.headers,
        &policy.routing.strip_headers,
        auth.header,
        content_length,
    );
    let stripped_names: Vec<&str> = stripped.credentials.iter().map(|n| n.as_str()).collect();
    tracing::debug!(
        lane = %provider.name,
        model = model.as_deref().unwrap_or(""),
        default_lane = choice.reason == LaneReason::Default,
        host = %provider_host,
        method = %parts.method,
        path = %parts.uri.path(),
        auth = auth.source.as_str(),
        stripped = ?stripped_names,
        bytes_up = bytes.len(),
        "routing request"
    );
    pending.event.bytes_up = bytes.len() as u64;
    let mut up = Request::new(Full::new(bytes));
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;

    // 7. send, wait for the response head
    let first_byte_due = (Instant::now() + limits.first_byte_timeout).min(deadline);
    let which = if first_byte_due == deadline {
        "limits.totalTimeoutSeconds"
    } else {
        "limits.firstByteTimeoutSeconds"
    };
    let resp = match tokio::time::timeout_at(first_byte_due, shared.client.request(up)).await {
        Err(_) => {
            let secs = if which == "limits.totalTimeoutSeconds" {
                limits.total_timeout.as_secs()
            } else {
                limits.first_byte_timeout.as_secs()
            };
            return refuse(
                pending,
                RouteError::UpstreamTimeout {
                    lane: provider.name.clone(),
                    host: provider_host,
                    secs,
                    limit: which,
                },
            );
        }
        Ok(Err(e)) => {
            let err = match connect_error(&e) {
                Some(c) => RouteError::UpstreamConnect {
                    lane: provider.name.clone(),
                    host: provider_host,
                    detail: c.to_string(),
                },
                None => RouteError::UpstreamProtocol {
                    lane: provider.name.clone(),
                    host: provider_host,
                    detail: describe(&e),
                },
            };
            return refuse(pending, err);
        }
        Ok(Ok(r)) => r,
    };
    pending.event.ttfb = Some(pending.start().elapsed());

    // 8. relay
    let (mut head, incoming) = resp.into_parts();
    pending.event.status = Some(head.status.as_u16());
    pending.event.upstream_version = Some(version_name(head.version));
    head.version = Version::default();
    clean_response_headers(&mut head.headers);
    let relay = RelayBody::new(
        incoming,
        StreamLimits {
            max_bytes: limits.max_response_bytes,
            idle: limits.idle_timeout,
            deadline,
        },
        pending,
    );
    Response::from_parts(head, RouterBody::Relay(Box::new(relay)))
}
