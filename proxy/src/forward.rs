//! Rewriting an allowed plain-HTTP absolute-form request for its origin
//! server (pure): origin-form request line, `Host` set from the URL's
//! authority (RFC 9112 §3.2.2: the URL wins over the client's `Host`),
//! hop-by-hop and proxy headers dropped (`Proxy-Authorization` never leaves
//! the proxy), and `Connection: close` so one client connection carries
//! requests to that one origin only.

use crate::request::{Authority, Request, Target};

/// Headers that never go to the origin.
const DROPPED: [&str; 10] = [
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// The head to send upstream for an absolute-form request, or `None` for a
/// CONNECT request.
pub fn origin_head(request: &Request) -> Option<Vec<u8>> {
    let Target::AbsoluteHttp {
        authority,
        path_and_query,
    } = &request.target
    else {
        return None;
    };
    // Headers the client listed in Connection are hop-by-hop too.
    let listed: Vec<String> = request
        .header_values("connection")
        .flat_map(|value| value.split(|&b| b == b','))
        .map(|token| String::from_utf8_lossy(token).trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\nHost: ");
    out.extend_from_slice(host_header(authority).as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in &request.headers {
        let name = header.name.to_ascii_lowercase();
        if DROPPED.contains(&name.as_str()) || listed.contains(&name) {
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Some(out)
}

fn host_header(authority: &Authority) -> String {
    if authority.port == 80 {
        authority.host_for_display()
    } else {
        authority.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::request::{HeadScanner, RequestLimits, parse_head};

    fn request(bytes: &[u8]) -> Request {
        let len = HeadScanner::new(RequestLimits::default())
            .scan(bytes)
            .unwrap()
            .unwrap();
        parse_head(&bytes[..len]).unwrap()
    }

    #[test]
    fn rewrites_to_origin_form_and_strips_proxy_headers() {
        let req = request(
            b"POST http://plain.test:8080/submit?x=1 HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 3\r\nUser-Agent: t\r\n\r\n",
        );
        let head = String::from_utf8(origin_head(&req).unwrap()).unwrap();
        assert_eq!(
            head,
            "POST /submit?x=1 HTTP/1.1\r\nHost: plain.test:8080\r\nContent-Length: 3\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn default_port_is_left_out_of_host_and_connect_has_no_origin_head() {
        let req = request(b"GET http://plain.test/ HTTP/1.0\r\n\r\n");
        let head = String::from_utf8(origin_head(&req).unwrap()).unwrap();
        assert_eq!(
            head,
            "GET / HTTP/1.0\r\nHost: plain.test\r\nConnection: close\r\n\r\n"
        );
        let connect = request(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n");
        assert_eq!(origin_head(&connect), None);
    }
}
