//! Header isolation (pure): which client headers go upstream, and which
//! provider headers come back.
//!
//! Upstream requests: everything the client sent is copied in order
//! except
//! - credential-bearing headers ([`policy::model::BUILTIN_STRIPPED_HEADERS`]:
//!   `authorization`, `x-api-key`, `cookie`, `proxy-authorization`) and the
//!   policy's `routing.stripHeaders`;
//! - hop-by-hop headers (RFC 9110 §7.6.1: `connection`, the headers it
//!   names, `keep-alive`, `proxy-connection`, `te`, `trailer`,
//!   `transfer-encoding`, `upgrade`) and `expect` (the router has read the
//!   whole body already);
//! - `host` and `content-length`, which are set again: Host (or HTTP/2
//!   `:authority`) becomes the provider's, and the length is the body's.
//!
//! then the lane's credential header is added. `anthropic-version`,
//! `anthropic-beta` and every unknown header pass byte-for-byte.
//!
//! Responses: everything but hop-by-hop headers passes unchanged.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers, never forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What [`upstream_request_headers`] removed (header names only: values
/// are never logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stripped {
    /// Credential headers the client sent (built-in and policy list).
    pub credentials: Vec<HeaderName>,
}

fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, connection: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || connection.contains(name)
}

/// Whether `name` is a credential header the router strips: built-in or on
/// the policy's list (`policy_strip` holds lowercase names).
pub fn is_stripped_credential(name: &HeaderName, policy_strip: &[String]) -> bool {
    policy::model::BUILTIN_STRIPPED_HEADERS.contains(&name.as_str())
        || policy_strip.iter().any(|s| s == name.as_str())
}

/// Builds the upstream request headers from the client's (pure).
///
/// `auth` is the lane's credential header (already decided);
/// `content_length` is the body length to declare, if any.
pub fn upstream_request_headers(
    client: &HeaderMap,
    policy_strip: &[String],
    auth: Option<(HeaderName, HeaderValue)>,
    content_length: Option<usize>,
) -> (HeaderMap, Stripped) {
    let connection = named_by_connection(client);
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    let mut stripped = Stripped::default();
    for (name, value) in client {
        if is_stripped_credential(name, policy_strip) {
            if !stripped.credentials.contains(name) {
                stripped.credentials.push(name.clone());
            }
            continue;
        }
        if is_hop_by_hop(name, &connection)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(len) = content_length {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some((name, value)) = auth {
        out.insert(name, value);
    }
    (out, stripped)
}

/// Removes hop-by-hop headers from a provider response, in place (pure).
pub fn clean_response_headers(headers: &mut HeaderMap) {
    let connection = named_by_connection(headers);
    for name in HOP_BY_HOP.iter().copied() {
        headers.remove(name);
    }
    for name in connection {
        headers.remove(&name);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn map(headers: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_credentials_hop_by_hop_and_host_keeps_the_rest() {
        let client = map(&[
            ("host", b"127.0.0.1:8787"),
            ("authorization", b"Bearer client"),
            ("x-api-key", b"client-key"),
            ("cookie", b"a=1"),
            ("proxy-authorization", b"Basic x"),
            ("x-internal-token", b"t"),
            ("connection", b"keep-alive, X-Drop-Me"),
            ("x-drop-me", b"1"),
            ("keep-alive", b"timeout=5"),
            ("te", b"trailers"),
            ("transfer-encoding", b"chunked"),
            ("expect", b"100-continue"),
            ("content-length", b"999"),
            ("anthropic-version", b"2023-06-01"),
            ("anthropic-beta", b"a-2025-01-01"),
            ("anthropic-beta", b"b-2025-02-02"),
            ("x-unknown", b"\xe9t\xe9 \t  spaced"),
        ]);
        let auth = (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("lane-key"),
        );
        let (out, stripped) = upstream_request_headers(
            &client,
            &["x-internal-token".to_owned()],
            Some(auth),
            Some(12),
        );
        for gone in [
            "host",
            "authorization",
            "cookie",
            "proxy-authorization",
            "x-internal-token",
            "connection",
            "x-drop-me",
            "keep-alive",
            "te",
            "transfer-encoding",
            "expect",
        ] {
            assert!(out.get(gone).is_none(), "{gone} forwarded");
        }
        assert_eq!(out.get("x-api-key").unwrap(), "lane-key");
        assert_eq!(out.get_all("x-api-key").iter().count(), 1);
        assert_eq!(out.get("content-length").unwrap(), "12");
        assert_eq!(out.get("anthropic-version").unwrap(), "2023-06-01");
        let betas: Vec<_> = out.get_all("anthropic-beta").iter().collect();
        assert_eq!(betas, ["a-2025-01-01", "b-2025-02-02"]);
        assert_eq!(
            out.get("x-unknown").unwrap().as_bytes(),
            b"\xe9t\xe9 \t  spaced"
        );
        let names: Vec<&str> = stripped.credentials.iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "authorization",
                "x-api-key",
                "cookie",
                "proxy-authorization",
                "x-internal-token"
            ]
        );
    }

    #[test]
    fn no_auth_and_no_length() {
        let (out, _) = upstream_request_headers(&map(&[("accept", b"*/*")]), &[], None, None);
        assert_eq!(out.len(), 1);
        assert!(out.get("content-length").is_none());
    }

    #[test]
    fn response_keeps_all_but_hop_by_hop() {
        let mut h = map(&[
            ("content-type", b"text/event-stream"),
            ("connection", b"close, x-hop"),
            ("x-hop", b"1"),
            ("transfer-encoding", b"chunked"),
            ("request-id", b"req_1"),
            ("anthropic-ratelimit-requests-remaining", b"10"),
        ]);
        clean_response_headers(&mut h);
        assert_eq!(h.len(), 3);
        assert!(h.get("x-hop").is_none());
        assert_eq!(h.get("request-id").unwrap(), "req_1");
    }
}
