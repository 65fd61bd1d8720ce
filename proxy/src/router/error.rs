//! The router's own errors, in Anthropic's error shape so agents show them
//! well: `{"type":"error","error":{"type":"...","message":"..."}}`.
//!
//! One enum, [`RouteError`], covers every way the router itself refuses or
//! fails a request; [`RouteError::status`], [`RouteError::error_type`] and
//! [`RouteError::reason`] map it to the HTTP status, Anthropic's error
//! type and the audit outcome in one place. Provider errors never pass
//! through here: they are relayed unchanged. Router-made responses carry an
//! `x-enforcer-error` header with the outcome name so they can be told from
//! provider responses.
//!
//! Messages name the lane, model, limit or credential *name* involved and
//! never a credential value or a request body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::credentials::AuthError;
use super::lane::{LaneError, TargetError};
use super::model::ModelError;
use crate::reason::Reason;

/// Header naming the router outcome on router-made error responses.
pub const ERROR_HEADER: &str = "x-enforcer-error";

/// Why the router refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The body is larger than `limits.maxRequestBytes`.
    #[error("request body exceeds limits.maxRequestBytes ({limit} bytes)")]
    RequestTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {secs} s (limits.idleTimeoutSeconds)")]
    RequestBodyTimeout {
        /// The idle timeout, seconds.
        secs: u64,
    },
    /// The client's body stream failed (usually: the client went away).
    #[error("reading the request body failed: {detail}")]
    RequestBody {
        /// What happened.
        detail: String,
    },
    /// The model could not be read from the body.
    #[error("{0}")]
    BadModel(#[from] ModelError),
    /// No lane for the model (or no lanes at all).
    #[error("{0}")]
    Lane(#[from] LaneError),
    /// The request target cannot be forwarded.
    #[error("{0}")]
    Target(#[from] TargetError),
    /// No credential for the lane.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// A method the router never forwards.
    #[error("method {method} is never forwarded to a provider")]
    MethodNotForwarded {
        /// The method.
        method: String,
    },
    /// A path with dot segments, empty segments, escapes or characters a
    /// forwarded path may not hold.
    #[error(
        "the path `{path}` is not forwarded: it must be plain segments of letters, digits, `-`, `_`, `.`, `:`, `~`"
    )]
    UnsafePath {
        /// The path (at most 128 characters of it).
        path: String,
    },
    /// The lane does not forward this method and path.
    #[error(
        "lane `{lane}` does not forward {method} {path} (widen it with providers.{lane}.paths)"
    )]
    PathNotForwarded {
        /// The lane.
        lane: String,
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The body is content-encoded (the model cannot be read from it).
    #[error(
        "request bodies with Content-Encoding `{encoding}` are not accepted; send the JSON unencoded"
    )]
    ContentEncoding {
        /// The encoding named (at most 64 characters of it).
        encoding: String,
    },
    /// The body starts with a UTF-8 byte-order mark.
    #[error("the request body starts with a byte-order mark; send plain JSON")]
    BodyBom,
    /// The client is not a process of an enforced cgroup.
    #[error(
        "this client ({client}) is not a process of an enforced cgroup: the lane router serves only enforced agents (run the agent with `enforcer run`; an operator can serve clients outside with --serve-outside-clients)"
    )]
    ClientNotEnforced {
        /// The client's address or unix credentials.
        client: String,
    },
    /// Too many requests in flight.
    #[error(
        "the router is handling its limit of {limit} concurrent requests (limits.maxConcurrentRequests); retry shortly"
    )]
    Overloaded {
        /// The limit.
        limit: u64,
    },
    /// The provider could not be reached.
    #[error("lane `{lane}`: cannot reach {host}: {detail}")]
    UpstreamConnect {
        /// The lane.
        lane: String,
        /// Provider host:port.
        host: String,
        /// What failed (resolve, connect, TLS).
        detail: String,
    },
    /// The provider failed the exchange before sending a response head.
    #[error("lane `{lane}`: {host} failed the request: {detail}")]
    UpstreamProtocol {
        /// The lane.
        lane: String,
        /// Provider host:port.
        host: String,
        /// What failed.
        detail: String,
    },
    /// No response head within the first-byte timeout (or the total timeout).
    #[error("lane `{lane}`: {host} sent no response within {secs} s ({limit})")]
    UpstreamTimeout {
        /// The lane.
        lane: String,
        /// Provider host:port.
        host: String,
        /// Seconds waited.
        secs: u64,
        /// Which limit ran out.
        limit: TimeoutLimit,
    },
}

/// Which limit bounded the wait for a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutLimit {
    /// `limits.firstByteTimeoutSeconds`.
    FirstByte,
    /// `limits.totalTimeoutSeconds` (it ended before the first-byte limit).
    Total,
}

impl TimeoutLimit {
    /// The policy field, as the error message names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstByte => "limits.firstByteTimeoutSeconds",
            Self::Total => "limits.totalTimeoutSeconds",
        }
    }

    /// The limit's value in seconds.
    pub fn seconds(self, limits: &policy::Limits) -> u64 {
        match self {
            Self::FirstByte => limits.first_byte_timeout.as_secs(),
            Self::Total => limits.total_timeout.as_secs(),
        }
    }
}

impl std::fmt::Display for TimeoutLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RouteError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::RequestBody { .. }
            | Self::BadModel(_)
            | Self::Target(_)
            | Self::MethodNotForwarded { .. }
            | Self::UnsafePath { .. }
            | Self::ContentEncoding { .. }
            | Self::BodyBom => StatusCode::BAD_REQUEST,
            Self::PathNotForwarded { .. } => StatusCode::NOT_FOUND,
            Self::ClientNotEnforced { .. } => StatusCode::FORBIDDEN,
            Self::Lane(LaneError::UnknownModel { .. }) => StatusCode::BAD_REQUEST,
            Self::Lane(LaneError::NoLanes) => StatusCode::BAD_GATEWAY,
            Self::Auth(AuthError::NoClientCredential { .. }) => StatusCode::UNAUTHORIZED,
            Self::Auth(AuthError::Credential { .. }) => StatusCode::BAD_GATEWAY,
            // Anthropic's "overloaded" status: agents back off and retry.
            Self::Overloaded { .. } => {
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::UpstreamConnect { .. } | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Anthropic's error type for this error.
    pub fn error_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 408 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            504 => "timeout_error",
            529 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// The audit reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::RequestTooLarge { .. } => Reason::RequestTooLarge,
            Self::RequestBodyTimeout { .. } => Reason::RequestTimeout,
            Self::RequestBody { .. } => Reason::ClientClosed,
            Self::BadModel(_) => Reason::BadModel,
            Self::Lane(LaneError::UnknownModel { .. }) => Reason::UnknownModel,
            Self::Lane(LaneError::NoLanes) => Reason::NoLanes,
            Self::Target(_) | Self::UnsafePath { .. } => Reason::BadRequest,
            Self::MethodNotForwarded { .. } => Reason::MethodNotForwarded,
            Self::PathNotForwarded { .. } => Reason::PathNotForwarded,
            Self::ContentEncoding { .. } => Reason::ContentEncoding,
            Self::BodyBom => Reason::BodyBom,
            Self::ClientNotEnforced { .. } => Reason::ClientNotEnforced,
            Self::Auth(AuthError::Credential { .. }) => Reason::MissingCredential,
            Self::Auth(AuthError::NoClientCredential { .. }) => Reason::NoClientCredential,
            Self::Overloaded { .. } => Reason::Overloaded,
            Self::UpstreamConnect { .. } => Reason::UpstreamConnectFailed,
            Self::UpstreamProtocol { .. } => Reason::UpstreamFailed,
            Self::UpstreamTimeout { .. } => Reason::FirstByteTimeout,
        }
    }

    /// The Anthropic-shaped JSON body.
    pub fn body(&self) -> Bytes {
        error_json(self.error_type(), &self.to_string())
    }

    /// The full response: status, JSON body, `x-enforcer-error`.
    pub fn response(&self) -> Response<Bytes> {
        let mut resp = Response::new(self.body());
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            ERROR_HEADER,
            HeaderValue::from_static(self.reason().as_str()),
        );
        resp
    }
}

/// `{"type":"error","error":{"type":<error_type>,"message":<message>}}`.
pub fn error_json(error_type: &str, message: &str) -> Bytes {
    let v = serde_json::json!({
        "type": "error",
        "error": { "type": error_type, "message": message },
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_is_an_anthropic_400_naming_the_model() {
        let e = RouteError::Lane(LaneError::UnknownModel {
            model: "gpt-\"5\"".into(),
            patterns: "`claude-*`".into(),
        });
        let resp = e.response();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[ERROR_HEADER], "unknown_model");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gpt-\"5\"")
        );
    }

    #[test]
    fn statuses_and_types() {
        let cases: Vec<(RouteError, u16, &str)> = vec![
            (
                RouteError::RequestTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                RouteError::UpstreamTimeout {
                    lane: "a".into(),
                    host: "h".into(),
                    secs: 1,
                    limit: TimeoutLimit::FirstByte,
                },
                504,
                "timeout_error",
            ),
            (
                RouteError::UpstreamConnect {
                    lane: "a".into(),
                    host: "h".into(),
                    detail: "refused".into(),
                },
                502,
                "api_error",
            ),
            (RouteError::Overloaded { limit: 1 }, 529, "overloaded_error"),
            (
                RouteError::ClientNotEnforced {
                    client: "127.0.0.1:1".into(),
                },
                403,
                "permission_error",
            ),
            (
                RouteError::Auth(AuthError::NoClientCredential {
                    lane: "p".into(),
                    header: "x-api-key",
                }),
                401,
                "authentication_error",
            ),
        ];
        for (e, status, ty) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.error_type(), ty, "{e}");
        }
    }
}
