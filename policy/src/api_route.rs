//! The API surface a lane forwards: `METHOD /path` routes. By default every
//! provider forwards only the Anthropic API an agent needs
//! ([`DEFAULT_ROUTES`]); a provider's `paths` list in the pack widens it.
//! Anything else is refused by the router without reaching the provider,
//! so a provider path that reflects headers cannot hand a lane's key back.

use std::fmt;

/// The routes every provider forwards.
pub const DEFAULT_ROUTES: [&str; 4] = [
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "GET /v1/models",
    "GET /v1/models/*",
];

/// Methods a route may name. `CONNECT`, `TRACE` and `OPTIONS` are never
/// forwarded.
pub const FORWARDABLE_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// One forwarded route: a method and a path pattern whose `*` segments
/// match exactly one path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRoute {
    method: &'static str,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

/// Why a `paths` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not `METHOD /path`.
    #[error("`{input}` is not `METHOD /path` (e.g. `POST /v1/messages/batches`)")]
    Syntax {
        /// The entry as written.
        input: String,
    },
    /// A method the router never forwards.
    #[error(
        "`{input}`: method `{method}` is never forwarded; use one of GET, HEAD, POST, PUT, PATCH, DELETE"
    )]
    Method {
        /// The entry as written.
        input: String,
        /// The method.
        method: String,
    },
    /// A path segment that is empty, `.`/`..`, or holds characters a route may not.
    #[error(
        "`{input}`: segment `{segment}` is not allowed (letters, digits, `-`, `_`, `.`, `:`, `~`, or `*` for one segment)"
    )]
    Segment {
        /// The entry as written.
        input: String,
        /// The offending segment.
        segment: String,
    },
}

impl ApiRoute {
    /// Parses `METHOD /path`, e.g. `GET /v1/models/*`.
    pub fn parse(input: &str) -> Result<Self, RouteError> {
        let syntax = || RouteError::Syntax {
            input: input.to_owned(),
        };
        let (method, path) = input.trim().split_once(' ').ok_or_else(syntax)?;
        let path = path.trim();
        let method = FORWARDABLE_METHODS
            .into_iter()
            .find(|m| *m == method)
            .ok_or_else(|| RouteError::Method {
                input: input.to_owned(),
                method: method.to_owned(),
            })?;
        let rest = path.strip_prefix('/').ok_or_else(syntax)?;
        let mut segments = Vec::new();
        for segment in rest.split('/') {
            if segment == "*" {
                segments.push(Segment::Any);
            } else if is_plain_segment(segment) {
                segments.push(Segment::Literal(segment.to_owned()));
            } else {
                return Err(RouteError::Segment {
                    input: input.to_owned(),
                    segment: segment.to_owned(),
                });
            }
        }
        Ok(Self { method, segments })
    }

    /// The default surface ([`DEFAULT_ROUTES`]).
    pub fn defaults() -> Vec<Self> {
        DEFAULT_ROUTES
            .iter()
            .filter_map(|route| Self::parse(route).ok())
            .collect()
    }

    /// Whether `method` and `path` (the request path, no query) match.
    /// The path must already be plain (see [`plain_path_segments`]).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.method != method {
            return false;
        }
        let Some(segments) = plain_path_segments(path) else {
            return false;
        };
        segments.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(pattern, segment)| match pattern {
                    Segment::Any => true,
                    Segment::Literal(literal) => literal == segment,
                })
    }
}

impl fmt::Display for ApiRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.method)?;
        for segment in &self.segments {
            match segment {
                Segment::Any => f.write_str("/*")?,
                Segment::Literal(literal) => write!(f, "/{literal}")?,
            }
        }
        Ok(())
    }
}

/// The segments of a request path, or `None` when the path is not plain:
/// empty segments (`//`), dot segments (`.`, `..`), percent-escapes,
/// backslashes or anything outside the route alphabet. Such paths are never
/// forwarded, so what the provider sees is exactly what was checked.
pub fn plain_path_segments(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    segments
        .iter()
        .all(|segment| is_plain_segment(segment))
        .then_some(segments)
}

fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn forwards(routes: &[ApiRoute], method: &str, path: &str) -> bool {
        routes.iter().any(|route| route.matches(method, path))
    }

    #[test]
    fn the_defaults_are_the_anthropic_api_an_agent_needs() {
        let routes = ApiRoute::defaults();
        assert_eq!(routes.len(), DEFAULT_ROUTES.len());
        assert!(forwards(&routes, "POST", "/v1/messages"));
        assert!(forwards(&routes, "POST", "/v1/messages/count_tokens"));
        assert!(forwards(&routes, "GET", "/v1/models"));
        assert!(forwards(&routes, "GET", "/v1/models/claude-haiku-4-5"));
        for (method, path) in [
            ("GET", "/v1/messages"),
            ("TRACE", "/v1/messages"),
            ("CONNECT", "/v1/messages"),
            ("POST", "/v1/messages/"),
            ("POST", "/v1/other"),
            ("GET", "/v1/models/a/b"),
            ("GET", "/"),
            ("POST", "/v1/../v1/messages"),
            ("POST", "/v1/./messages"),
            ("POST", "//v1/messages"),
            ("POST", "/v1/%6dessages"),
            ("POST", "/v1\\messages"),
            ("GET", "/v1/models/.."),
        ] {
            assert!(!forwards(&routes, method, path), "{method} {path}");
        }
    }

    #[test]
    fn pack_routes_parse_and_refuse_what_cannot_be_forwarded() {
        let route = ApiRoute::parse("GET /v1/files/*").unwrap();
        assert!(route.matches("GET", "/v1/files/file_01"));
        assert!(!route.matches("POST", "/v1/files/file_01"));
        assert_eq!(route.to_string(), "GET /v1/files/*");
        assert!(matches!(
            ApiRoute::parse("TRACE /v1/messages"),
            Err(RouteError::Method { .. })
        ));
        assert!(matches!(
            ApiRoute::parse("/v1/messages"),
            Err(RouteError::Syntax { .. })
        ));
        assert!(matches!(
            ApiRoute::parse("POST v1/messages"),
            Err(RouteError::Syntax { .. })
        ));
        for bad in [
            "POST /v1/../x",
            "POST /v1//x",
            "POST /v1/%2e",
            "POST /v1/a b",
        ] {
            assert!(
                matches!(ApiRoute::parse(bad), Err(RouteError::Segment { .. })),
                "{bad}"
            );
        }
    }
}
