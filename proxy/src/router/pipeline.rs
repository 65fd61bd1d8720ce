//! One request's path through the router, as a fixed list of phases:
//!
//! 0. the client: one outside the enforced cgroups ([`crate::attribution`])
//!    is refused `403 permission_error` before its body is read;
//! 1. admit (`limits.maxConcurrentRequests`);
//! 2. check the surface ([`super::surface`]: method, path, encoding) and
//!    read the body ([`super::body`]);
//! 3. find the model ([`super::model`]; a byte-order mark is refused);
//! 4. pick the lane ([`super::lane`]), check it forwards this method and
//!    path, and build the upstream URI;
//! 5. decide the credential ([`super::credentials`]);
//! 6. rewrite the headers ([`super::headers`]);
//! 7. send upstream and wait for the response head (first-byte limit);
//! 8. relay the response ([`super::stream`]).
//!
//! [`handle`] reads as that list: each phase is a function that returns
//! `Result<_, RouteError>`, and every refusal goes through `refuse`, so
//! every request ends in one Anthropic-shaped error or one relayed response,
//! and in one audit event ([`Pending`] emits on drop if the task dies).
//! The policy snapshot is taken once at arrival: a reload never changes a
//! request in flight.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response, Uri, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use policy::{Limits, Policy, Provider, Snapshot};
use tokio::sync::watch;
use tokio::time::Instant;

use super::audit::{Peer, RouterAuditSink, RouterEvent};
use super::body::{BodyHead, BodyLimits, read_body};
use super::credentials::{CredentialSource, plan_auth};
use super::error::{RouteError, TimeoutLimit};
use super::headers::{clean_response_headers, upstream_request_headers};
use super::lane::{LaneReason, choose_lane, target_uri};
use super::model::find_model;
use super::stream::{Pending, RelayBody, RouterBody, StreamLimits};
use super::surface;
use super::upstream::{UpstreamClient, connect_error, describe};
use crate::admission::Admission;
use crate::attribution::{Admitted, ClientGate};
use crate::reason::Reason;

/// What every request handler shares.
pub struct RouterState {
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
    /// Client attribution and the outside-clients rule; `None` serves everyone.
    pub gate: Option<ClientGate>,
}

fn refuse(mut pending: Pending, err: RouteError) -> Response<RouterBody> {
    let reason = err.reason();
    let resp = err.response();
    pending.event.status = Some(resp.status().as_u16());
    match reason {
        Reason::ClientClosed => tracing::debug!(error = %err, "client went away"),
        Reason::ClientNotEnforced => {
            tracing::debug!(outcome = reason.as_str(), error = %err, "client refused")
        }
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

/// Handles one request from `peer`: the phases of the module docs, top to
/// bottom.
pub async fn handle(
    state: &RouterState,
    req: Request<Incoming>,
    peer: Peer,
    admitted: &Admitted,
) -> Response<RouterBody> {
    let start = Instant::now();
    let snapshot = state.policy.borrow().clone();
    let policy = snapshot.policy();
    let limits = policy.limits;
    let deadline = start + limits.total_timeout;
    let (parts, mut body) = req.into_parts();
    let mut event = arrival_event(&parts, peer, policy);
    event.identity = admitted.identity.clone();
    let mut pending = Pending::new(event, start, state.sink.clone());

    // 0. the client (attributed once per connection, on accept)
    if admitted.verdict.is_err() {
        let client = pending.event.client.to_string();
        return refuse(pending, RouteError::ClientNotEnforced { client });
    }
    // 1. admit
    if let Err(err) = admit(state, &mut pending, &limits) {
        return refuse(pending, err);
    }
    // 2. the surface (method, path, encoding), then the body
    if let Err(err) = surface::check_head(&parts) {
        return refuse(pending, err);
    }
    let bytes = match read_request_body(&parts.headers, &mut body, &limits, deadline).await {
        Ok(bytes) => bytes,
        Err(err) => return refuse(pending, err),
    };
    drop(body);
    // 3.-4. model, lane and target
    let route = match route(policy, &bytes, &parts, &mut pending) {
        Ok(route) => route,
        Err(err) => return refuse(pending, err),
    };
    // 5.-6. credential and headers
    let upstream = match upstream_request(state, policy, parts, bytes, &route, &mut pending).await {
        Ok(upstream) => upstream,
        Err(err) => return refuse(pending, err),
    };
    // 7. send, wait for the response head
    let response = match send(state, upstream, &route, &limits, deadline).await {
        Ok(response) => response,
        Err(err) => return refuse(pending, err),
    };
    pending.event.ttfb = Some(pending.start().elapsed());
    // 8. relay
    relay_response(response, &limits, deadline, pending)
}

/// The audit event as known on arrival (the reason if nothing else happens:
/// the client went away).
fn arrival_event(parts: &Parts, peer: Peer, policy: &Policy) -> RouterEvent {
    RouterEvent {
        time: SystemTime::now(),
        client: peer,
        identity: Default::default(),
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
    }
}

/// Phase 1: a request slot (`limits.maxConcurrentRequests`), held by the
/// pending event until the response ends.
fn admit(state: &RouterState, pending: &mut Pending, limits: &Limits) -> Result<(), RouteError> {
    let limit = usize::try_from(limits.max_concurrent_requests).unwrap_or(usize::MAX);
    let slot = state
        .admission
        .try_admit(limit)
        .ok_or(RouteError::Overloaded {
            limit: limits.max_concurrent_requests,
        })?;
    pending.hold(slot);
    Ok(())
}

/// Phase 2: the whole body, bounded by `limits.maxRequestBytes`, the idle
/// and the total timeout.
async fn read_request_body(
    headers: &HeaderMap,
    body: &mut Incoming,
    limits: &Limits,
    deadline: Instant,
) -> Result<Bytes, RouteError> {
    let head = BodyHead {
        declared: declared_length(headers),
        expect_continue: expect_continue(headers),
    };
    let body_limits = BodyLimits {
        max: limits.max_request_bytes,
        idle: limits.idle_timeout,
        deadline,
    };
    read_body(body, head, body_limits).await
}

/// Where one request goes.
struct Route<'p> {
    provider: &'p Provider,
    /// `host[:port]` of the provider, for events and errors.
    provider_host: String,
    uri: Uri,
    model: Option<String>,
    default_lane: bool,
}

/// Phases 3-4: the top-level `model` (read without re-serialising), the
/// first matching lane, and the upstream URI.
fn route<'p>(
    policy: &'p Policy,
    bytes: &[u8],
    parts: &Parts,
    pending: &mut Pending,
) -> Result<Route<'p>, RouteError> {
    surface::check_body(bytes)?;
    let model = find_model(bytes)?.map(|m| m.into_owned());
    pending.event.model.clone_from(&model);
    let choice = choose_lane(policy, model.as_deref())?;
    let provider = choice.provider;
    let base = &provider.base_url;
    let provider_host = if base.port() == 443 {
        base.host().to_string()
    } else {
        format!("{}:{}", base.host(), base.port())
    };
    pending.event.lane = Some(provider.name.clone());
    pending.event.provider_host = Some(provider_host.clone());
    surface::check_route(provider, parts)?;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = target_uri(base, target)?;
    Ok(Route {
        provider,
        provider_host,
        uri,
        model,
        default_lane: choice.reason == LaneReason::Default,
    })
}

/// Phases 5-6: the lane's credential (the client's only for a passthrough
/// lane), then the headers: client credentials stripped, the lane's
/// injected, hop-by-hop dropped. The body is the original bytes.
async fn upstream_request(
    state: &RouterState,
    policy: &Policy,
    parts: Parts,
    bytes: Bytes,
    route: &Route<'_>,
    pending: &mut Pending,
) -> Result<Request<Full<Bytes>>, RouteError> {
    let provider = route.provider;
    let auth = plan_auth(
        &provider.name,
        &provider.auth,
        &parts.headers,
        &state.credentials,
    )
    .await?;
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
        model = route.model.as_deref().unwrap_or(""),
        default_lane = route.default_lane,
        host = %route.provider_host,
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
    *up.uri_mut() = route.uri.clone();
    *up.headers_mut() = headers;
    Ok(up)
}

/// Phase 7: send upstream and wait for the response head, within the
/// first-byte timeout (or the total timeout, if that ends first).
async fn send(
    state: &RouterState,
    up: Request<Full<Bytes>>,
    route: &Route<'_>,
    limits: &Limits,
    deadline: Instant,
) -> Result<Response<Incoming>, RouteError> {
    let first_byte_due = Instant::now() + limits.first_byte_timeout;
    let (due, limit) = if first_byte_due < deadline {
        (first_byte_due, TimeoutLimit::FirstByte)
    } else {
        (deadline, TimeoutLimit::Total)
    };
    let lane = || route.provider.name.clone();
    match tokio::time::timeout_at(due, state.client.request(up)).await {
        Err(_) => Err(RouteError::UpstreamTimeout {
            lane: lane(),
            host: route.provider_host.clone(),
            secs: limit.seconds(limits),
            limit,
        }),
        Ok(Err(e)) => Err(match connect_error(&e) {
            Some(c) => RouteError::UpstreamConnect {
                lane: lane(),
                host: route.provider_host.clone(),
                detail: c.to_string(),
            },
            None => RouteError::UpstreamProtocol {
                lane: lane(),
                host: route.provider_host.clone(),
                detail: describe(&e),
            },
        }),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Phase 8: the provider's status and headers (hop-by-hop dropped), and its
/// body streamed as it arrives, within the response limits.
fn relay_response(
    response: Response<Incoming>,
    limits: &Limits,
    deadline: Instant,
    mut pending: Pending,
) -> Response<RouterBody> {
    let (mut head, incoming) = response.into_parts();
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
