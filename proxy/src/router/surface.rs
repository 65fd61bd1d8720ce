//! The router's API surface: what it forwards at all. Checked before the
//! body is read (method, path shape, `Content-Encoding`), after it (a
//! byte-order mark), and once the lane is known (the lane's routes), so a
//! request outside the surface never reaches a provider with a lane's key.
//! Pure functions over the request head and the policy.

use http::HeaderMap;
use http::request::Parts;
use policy::Provider;
use policy::api_route::{FORWARDABLE_METHODS, plain_path_segments};

use super::error::RouteError;

/// A UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Before the body: a forwardable method, a plain path, no content encoding.
pub fn check_head(parts: &Parts) -> Result<(), RouteError> {
    let method = parts.method.as_str();
    if !FORWARDABLE_METHODS.contains(&method) {
        return Err(RouteError::MethodNotForwarded {
            method: method.chars().take(32).collect(),
        });
    }
    let path = parts.uri.path();
    if plain_path_segments(path).is_none() {
        return Err(RouteError::UnsafePath {
            path: path.chars().take(128).collect(),
        });
    }
    check_encoding(&parts.headers)
}

fn check_encoding(headers: &HeaderMap) -> Result<(), RouteError> {
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(value.as_bytes());
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(RouteError::ContentEncoding {
                encoding: encoding.chars().take(64).collect(),
            });
        }
    }
    Ok(())
}

/// After the body: no byte-order mark (the model scanner would not see the
/// `model`, and the request would go to the default lane).
pub fn check_body(body: &[u8]) -> Result<(), RouteError> {
    if body.starts_with(BOM) {
        return Err(RouteError::BodyBom);
    }
    Ok(())
}

/// Once the lane is chosen: the lane forwards this method and path.
pub fn check_route(provider: &Provider, parts: &Parts) -> Result<(), RouteError> {
    let method = parts.method.as_str();
    let path = parts.uri.path();
    if provider.forwards(method, path) {
        return Ok(());
    }
    Err(RouteError::PathNotForwarded {
        lane: provider.name.clone(),
        method: method.to_owned(),
        path: path.chars().take(128).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::reason::Reason;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn methods_paths_and_encodings_outside_the_surface_are_refused_before_the_body() {
        assert!(check_head(&parts("POST", "/v1/messages?beta=true", &[])).is_ok());
        for (method, uri, reason) in [
            ("TRACE", "/v1/messages", Reason::MethodNotForwarded),
            ("CONNECT", "/v1/messages", Reason::MethodNotForwarded),
            ("OPTIONS", "/v1/messages", Reason::MethodNotForwarded),
            ("POST", "/v1/../v1/messages", Reason::BadRequest),
            ("POST", "/v1/%2e%2e/messages", Reason::BadRequest),
            ("POST", "/v1//messages", Reason::BadRequest),
        ] {
            let error = check_head(&parts(method, uri, &[])).unwrap_err();
            assert_eq!(error.reason(), reason, "{method} {uri}");
        }
        let error = check_head(&parts(
            "POST",
            "/v1/messages",
            &[("content-encoding", "gzip")],
        ))
        .unwrap_err();
        assert_eq!(error.reason(), Reason::ContentEncoding);
        assert_eq!(error.status(), 400);
        assert!(
            check_head(&parts(
                "POST",
                "/v1/messages",
                &[("content-encoding", "identity")]
            ))
            .is_ok()
        );
    }

    #[test]
    fn a_bom_is_refused_not_sent_to_the_default_lane() {
        assert_eq!(
            check_body(b"\xEF\xBB\xBF{\"model\":\"claude-haiku-4-5\"}")
                .unwrap_err()
                .reason(),
            Reason::BodyBom
        );
        assert!(check_body(b"{\"model\":\"claude-haiku-4-5\"}").is_ok());
        assert!(check_body(b"").is_ok());
    }
}
