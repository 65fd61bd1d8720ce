//! Strict parser for proxy requests: `CONNECT host:port` (authority-form) and
//! plain-HTTP absolute-form requests (`GET http://host/path HTTP/1.1`).
//!
//! Pure code, no I/O. [`HeadScanner`] finds the end of the request head in a
//! growing buffer (resumable, so a head written one byte at a time costs
//! linear time) and enforces the line, header-count and byte bounds;
//! [`parse_head`] then turns the complete head into a [`Request`]. The
//! header-read timeout lives at the I/O edge (`server`).
//!
//! Strictness (anything else is [`RequestError`]): lines end in CRLF; the
//! request line is exactly `METHOD SP target SP HTTP/1.0|HTTP/1.1`; header
//! names are tokens with no space before the colon; no obs-fold; no control
//! bytes in values; the CONNECT target is `host:port` or `[v6]:port` with a
//! port in 1..=65535; absolute-form is `http://` with no userinfo and no
//! fragment. Errors never echo header values or paths (they can carry
//! credentials); they name the line and what was wrong.

use std::net::Ipv6Addr;

use thiserror::Error;

use crate::reason::Reason;

/// Bounds on a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest line, CRLF excluded.
    pub max_line_bytes: usize,
    /// Longest head, request line through the empty line.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 4096,
            max_head_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// Why a request head was refused. Messages say what was wrong and where,
/// without header values or paths.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// A line is longer than the bound.
    #[error("line {line} of the request head is longer than {limit} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// The bound.
        limit: usize,
    },
    /// The whole head is longer than the bound.
    #[error("the request head is longer than {limit} bytes")]
    HeadTooLarge {
        /// The bound.
        limit: usize,
    },
    /// More header lines than the bound.
    #[error("the request has more than {limit} header lines")]
    TooManyHeaders {
        /// The bound.
        limit: usize,
    },
    /// A line ended in a bare LF (or a CR not followed by LF).
    #[error("line {line} of the request head does not end in CRLF")]
    BadLineEnding {
        /// 1-based line number.
        line: usize,
    },
    /// The request line does not have the `METHOD SP target SP version` shape.
    #[error("the request line is malformed: {what}")]
    BadRequestLine {
        /// What was wrong.
        what: &'static str,
    },
    /// The HTTP version is not `HTTP/1.0` or `HTTP/1.1`.
    #[error("unsupported HTTP version (expected HTTP/1.1 or HTTP/1.0)")]
    BadVersion,
    /// The target is origin-form or asterisk-form: the client spoke to the
    /// proxy as if it were the server.
    #[error(
        "not a proxy request: use CONNECT host:port for HTTPS or an absolute http:// URL for plain HTTP"
    )]
    NotProxyRequest,
    /// A request to the transparent listener that is not an origin-form
    /// request with exactly one `Host` header.
    #[error(
        "a redirected plain-HTTP request needs an origin-form target (/path) and exactly one Host header"
    )]
    NotOriginRequest,
    /// Absolute-form with a scheme other than `http`.
    #[error("absolute-form requests must use http://; use CONNECT for https")]
    UnsupportedScheme,
    /// The `host[:port]` part is malformed.
    #[error("the request target's authority is malformed: {what}")]
    BadAuthority {
        /// What was wrong.
        what: &'static str,
    },
    /// A header line is malformed.
    #[error("header line {line} is malformed: {what}")]
    BadHeader {
        /// 1-based line number in the head (the request line is line 1).
        line: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// A CONNECT request announced a body.
    #[error("a CONNECT request must not carry a body (Content-Length or Transfer-Encoding)")]
    ConnectWithBody,
    /// A plain-HTTP request whose body length two parties could read
    /// differently (request smuggling): `Content-Length` together with
    /// `Transfer-Encoding`, or several `Content-Length` values that differ.
    #[error(
        "the request's body length is ambiguous: {what}; send exactly one of Content-Length or Transfer-Encoding"
    )]
    AmbiguousBodyLength {
        /// What was found.
        what: &'static str,
    },
}

impl RequestError {
    /// The audit reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::LineTooLong { .. } | Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => {
                Reason::RequestTooLarge
            }
            _ => Reason::MalformedRequest,
        }
    }

    /// The HTTP status the proxy answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::LineTooLong { .. } | Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => {
                431
            }
            _ => 400,
        }
    }
}

// === impl HeadScanner ===

/// Finds the end of a request head in a buffer that grows between calls,
/// enforcing [`RequestLimits`] on the way. Resumable: each byte is looked at
/// once however the head is split.
#[derive(Clone, Debug)]
pub struct HeadScanner {
    limits: RequestLimits,
    /// Next byte to look at.
    pos: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// 1-based number of the line being scanned.
    line: usize,
}

impl HeadScanner {
    /// A scanner for a new request.
    pub fn new(limits: RequestLimits) -> Self {
        Self {
            limits,
            pos: 0,
            line_start: 0,
            line: 1,
        }
    }

    /// Scans the new bytes of `buf` (which must start with the bytes seen on
    /// earlier calls). Returns the head's length (through the empty line's
    /// CRLF) once complete, `None` while more is needed.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, RequestError> {
        while self.pos < buf.len() {
            let byte = buf[self.pos];
            let line_len = self.pos - self.line_start;
            if byte == b'\n' {
                if line_len == 0 || buf[self.pos - 1] != b'\r' {
                    return Err(RequestError::BadLineEnding { line: self.line });
                }
                self.pos += 1;
                let content_len = line_len - 1;
                if content_len == 0 {
                    if self.line == 1 {
                        return Err(RequestError::BadRequestLine {
                            what: "empty request line",
                        });
                    }
                    return Ok(Some(self.pos));
                }
                self.line += 1;
                self.line_start = self.pos;
                // Lines after the request line are headers; one more line
                // than the bound is allowed to be the empty terminator.
                if self.line - 2 > self.limits.max_headers {
                    return Err(RequestError::TooManyHeaders {
                        limit: self.limits.max_headers,
                    });
                }
                continue;
            }
            if line_len > 0 && buf[self.pos - 1] == b'\r' {
                // A CR inside a line.
                return Err(RequestError::BadLineEnding { line: self.line });
            }
            // `line_len` counts the bytes before this one; with this byte the
            // content is `line_len + 1` long (a trailing CR is not content).
            if byte != b'\r' && line_len + 1 > self.limits.max_line_bytes {
                return Err(RequestError::LineTooLong {
                    line: self.line,
                    limit: self.limits.max_line_bytes,
                });
            }
            self.pos += 1;
            if self.pos > self.limits.max_head_bytes {
                return Err(RequestError::HeadTooLarge {
                    limit: self.limits.max_head_bytes,
                });
            }
        }
        Ok(None)
    }
}

// === impl Request ===

/// The HTTP version of the request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

impl HttpVersion {
    /// The version as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
        }
    }
}

/// A `host:port` as the client wrote it (syntax checked, not normalised:
/// normalisation and IP-literal detection belong to the policy crate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// The host: a name, a dotted or numeric IPv4 spelling, or the inside of
    /// `[...]` (then [`Authority::bracketed`] is set).
    pub host: String,
    /// The port, 1..=65535.
    pub port: u16,
    /// The host was written as `[v6]`; it is then a valid IPv6 address.
    pub bracketed: bool,
}

impl Authority {
    /// The host as it goes into `host:port` text (brackets restored for IPv6).
    pub fn host_for_display(&self) -> String {
        if self.bracketed {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host_for_display(), self.port)
    }
}

/// What the client asked the proxy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`: a tunnel.
    Connect(Authority),
    /// `METHOD http://host[:port]/path`: one plain-HTTP request.
    AbsoluteHttp {
        /// Host and port (80 when absent).
        authority: Authority,
        /// Path and query as sent (`/` when the URL has none). Never logged.
        path_and_query: String,
    },
}

impl Target {
    /// The authority the request is for.
    pub fn authority(&self) -> &Authority {
        match self {
            Self::Connect(authority) | Self::AbsoluteHttp { authority, .. } => authority,
        }
    }
}

/// One header line, name as sent, value with surrounding whitespace removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The name as the client wrote it (compare case-insensitively).
    pub name: String,
    /// The raw value bytes (may contain obs-text). Never logged.
    pub value: Vec<u8>,
}

/// A parsed, syntax-checked proxy request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method token (`CONNECT`, `GET`, …).
    pub method: String,
    /// The target.
    pub target: Target,
    /// The HTTP version.
    pub version: HttpVersion,
    /// Header lines in order.
    pub headers: Vec<Header>,
}

impl Request {
    /// Values of every header named `name` (case-insensitive).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }
}

/// The header lines after the request line, up to the blank line (line
/// numbers in errors count the request line as 1).
fn parse_headers<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Vec<Header>, RequestError> {
    let mut headers = Vec::new();
    for (index, line) in lines.enumerate() {
        if line.is_empty() {
            break;
        }
        headers.push(parse_header(line, index + 2)?);
    }
    Ok(headers)
}

/// Parses a complete head (as delimited by [`HeadScanner`]) into a [`Request`].
pub fn parse_head(head: &[u8]) -> Result<Request, RequestError> {
    let mut lines = split_crlf_lines(head);
    let request_line = lines.next().ok_or(RequestError::BadRequestLine {
        what: "empty request line",
    })?;
    let (method, target_raw, version) = split_request_line(request_line)?;

    let headers = parse_headers(lines)?;

    let target = if method == "CONNECT" {
        let authority = parse_authority(target_raw, None)?;
        let has_body = headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                || (h.name.eq_ignore_ascii_case("content-length") && h.value.as_slice() != b"0")
        });
        if has_body {
            return Err(RequestError::ConnectWithBody);
        }
        Target::Connect(authority)
    } else {
        check_body_length(&headers)?;
        parse_absolute_form(target_raw)?
    };

    Ok(Request {
        method: method.to_string(),
        target,
        version,
        headers,
    })
}

/// Parses the head of a plain-HTTP request the kernel redirected to the
/// transparent listener: the client spoke to the server, so the target is
/// origin-form (`GET /path HTTP/1.1`) and the host is its one `Host`
/// header. The result is the absolute-form request a proxy-aware client
/// would have sent for `http://<host>:<port>/path`, with `port` the
/// original destination's (a port in `Host` is not believed), so the
/// CONNECT path's plain-HTTP phases judge and forward it unchanged.
pub fn parse_redirected_head(head: &[u8], port: u16) -> Result<Request, RequestError> {
    let mut lines = split_crlf_lines(head);
    let request_line = lines.next().ok_or(RequestError::BadRequestLine {
        what: "empty request line",
    })?;
    let (method, target_raw, version) = split_request_line(request_line)?;
    if method == "CONNECT" || target_raw.first() != Some(&b'/') {
        return Err(RequestError::NotOriginRequest);
    }
    let headers = parse_headers(lines)?;
    check_body_length(&headers)?;
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(RequestError::NotOriginRequest);
    };
    let mut authority = parse_authority(&host.value, Some(port))?;
    authority.port = port;
    Ok(Request {
        method: method.to_string(),
        target: Target::AbsoluteHttp {
            authority,
            path_and_query: String::from_utf8_lossy(target_raw).into_owned(),
        },
        version,
        headers,
    })
}

/// A forwarded request's body length must be unambiguous: the proxy and the
/// origin must agree where the body ends, or a second request hides in it.
fn check_body_length(headers: &[Header]) -> Result<(), RequestError> {
    let chunked = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let mut lengths = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value.as_slice());
    let first = lengths.next();
    if chunked && first.is_some() {
        return Err(RequestError::AmbiguousBodyLength {
            what: "both Content-Length and Transfer-Encoding",
        });
    }
    if let Some(first) = first
        && lengths.any(|other| other != first)
    {
        return Err(RequestError::AmbiguousBodyLength {
            what: "Content-Length headers that differ",
        });
    }
    Ok(())
}

/// Lines of `head` without their CRLF (the scanner has checked the endings).
fn split_crlf_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

fn split_request_line(line: &[u8]) -> Result<(&str, &[u8], HttpVersion), RequestError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::BadRequestLine {
            what: "expected METHOD, target and version separated by single spaces",
        });
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(RequestError::BadRequestLine {
            what: "the method is not an HTTP token",
        });
    }
    if target.is_empty() {
        return Err(RequestError::BadRequestLine {
            what: "empty request target",
        });
    }
    let version = match version {
        b"HTTP/1.1" => HttpVersion::Http11,
        b"HTTP/1.0" => HttpVersion::Http10,
        _ => return Err(RequestError::BadVersion),
    };
    // Tokens are ASCII, so this cannot fail; stay total anyway.
    let method = std::str::from_utf8(method).map_err(|_| RequestError::BadRequestLine {
        what: "the method is not an HTTP token",
    })?;
    Ok((method, target, version))
}

fn parse_header(line: &[u8], line_no: usize) -> Result<Header, RequestError> {
    let bad = |what| RequestError::BadHeader {
        line: line_no,
        what,
    };
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(bad("line folding (obs-fold) is not accepted"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| bad("no colon"))?;
    let (name, rest) = line.split_at(colon);
    if name.is_empty() {
        return Err(bad("empty header name"));
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err(bad(
            "the header name is not an HTTP token (whitespace before the colon?)",
        ));
    }
    let value = trim_ows(&rest[1..]);
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad("control character in the header value"));
    }
    let name = String::from_utf8(name.to_vec()).map_err(|_| bad("the header name is not ASCII"))?;
    Ok(Header {
        name,
        value: value.to_vec(),
    })
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

fn parse_absolute_form(target: &[u8]) -> Result<Target, RequestError> {
    if target.first() == Some(&b'/') || target == b"*" {
        return Err(RequestError::NotProxyRequest);
    }
    let Some(scheme_end) = find_subslice(target, b"://") else {
        return Err(RequestError::NotProxyRequest);
    };
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") {
        return Err(RequestError::UnsupportedScheme);
    }
    let rest = &target[scheme_end + 3..];
    if rest.contains(&b'#') {
        return Err(RequestError::BadRequestLine {
            what: "a fragment (#) in the request target",
        });
    }
    if rest.iter().any(|&b| !(0x21..0x7f).contains(&b)) {
        return Err(RequestError::BadRequestLine {
            what: "the URL contains bytes outside visible ASCII",
        });
    }
    let authority_end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = parse_authority(&rest[..authority_end], Some(80))?;
    let path = &rest[authority_end..];
    let path_and_query = match path.first() {
        None => "/".to_string(),
        Some(b'?') => format!("/{}", String::from_utf8_lossy(path)),
        Some(_) => String::from_utf8_lossy(path).into_owned(),
    };
    Ok(Target::AbsoluteHttp {
        authority,
        path_and_query,
    })
}

/// Parses `host:port`, `[v6]:port`, or (with `default_port`) a bare host.
pub fn parse_authority(raw: &[u8], default_port: Option<u16>) -> Result<Authority, RequestError> {
    let bad = |what| RequestError::BadAuthority { what };
    if raw.is_empty() {
        return Err(bad("empty host"));
    }
    if raw.contains(&b'@') {
        return Err(bad("userinfo (user@) is not accepted"));
    }
    let (host, bracketed, port_part) = if raw[0] == b'[' {
        let close = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or_else(|| bad("'[' without ']'"))?;
        let inner = &raw[1..close];
        let inner = std::str::from_utf8(inner).map_err(|_| bad("non-ASCII inside [...]"))?;
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(bad("the text inside [...] is not an IPv6 address"));
        }
        let after = &raw[close + 1..];
        let port_part = match after {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(bad("unexpected text after ']'")),
        };
        (inner.to_string(), true, port_part)
    } else {
        let colons = raw.iter().filter(|&&b| b == b':').count();
        let (host, port_part) = match colons {
            0 => (raw, None),
            1 => {
                let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
                (&raw[..colon], Some(&raw[colon + 1..]))
            }
            _ => return Err(bad("an IPv6 address must be written in [brackets]")),
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let host = std::str::from_utf8(host).map_err(|_| bad("the host is not valid UTF-8"))?;
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii())
        {
            return Err(bad(
                "the host may contain only letters, digits, '-', '.', '_' (or be [IPv6])",
            ));
        }
        if host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("control or space character in the host"));
        }
        (host.to_string(), false, port_part)
    };
    let port = match (port_part, default_port) {
        (Some(digits), _) => parse_port(digits)
            .ok_or_else(|| bad("the port must be decimal 1-65535 without leading zeros"))?,
        (None, Some(default)) => default,
        (None, None) => return Err(bad("CONNECT needs host:port")),
    };
    Ok(Authority {
        host,
        port,
        bracketed,
    })
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    // Decimal, no sign, no leading zero (a leading zero reads as octal to
    // some tools; refusing it keeps one spelling per port).
    if digits.is_empty()
        || digits.len() > 5
        || digits[0] == b'0'
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).ok().filter(|&p| p != 0)
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn scan_all(bytes: &[u8]) -> Result<Option<usize>, RequestError> {
        HeadScanner::new(RequestLimits::default()).scan(bytes)
    }

    fn parse(bytes: &[u8]) -> Result<Request, RequestError> {
        let len = scan_all(bytes)?.expect("complete head");
        parse_head(&bytes[..len])
    }

    #[test]
    fn parses_a_curl_connect() {
        let head = b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\nUser-Agent: curl/7.88.1\r\nProxy-Connection: Keep-Alive\r\n\r\n";
        let request = parse(head).unwrap();
        assert_eq!(request.method, "CONNECT");
        assert_eq!(request.version, HttpVersion::Http11);
        assert_eq!(
            request.target,
            Target::Connect(Authority {
                host: "api.example.com".into(),
                port: 443,
                bracketed: false
            })
        );
        assert_eq!(request.headers.len(), 3);
        assert_eq!(
            request.header_values("user-agent").collect::<Vec<_>>(),
            vec![b"curl/7.88.1".as_slice()]
        );
    }

    #[test]
    fn scanner_returns_head_length_and_leaves_following_bytes() {
        let bytes = b"CONNECT a.test:443 HTTP/1.1\r\n\r\n\x16\x03\x01";
        assert_eq!(scan_all(bytes).unwrap(), Some(bytes.len() - 3));
    }

    #[test]
    fn scanner_is_resumable_one_byte_at_a_time() {
        let bytes = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let mut scanner = HeadScanner::new(RequestLimits::default());
        for end in 1..bytes.len() {
            assert_eq!(scanner.scan(&bytes[..end]).unwrap(), None, "at {end}");
        }
        assert_eq!(scanner.scan(bytes).unwrap(), Some(bytes.len()));
    }

    #[test]
    fn bare_lf_and_stray_cr_are_refused_with_the_line_number() {
        assert_eq!(
            scan_all(b"CONNECT a.test:443 HTTP/1.1\nHost: a\n\n"),
            Err(RequestError::BadLineEnding { line: 1 })
        );
        assert_eq!(
            scan_all(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
            Err(RequestError::BadLineEnding { line: 2 })
        );
    }

    #[test]
    fn bounds_are_enforced() {
        let limits = RequestLimits {
            max_line_bytes: 32,
            max_head_bytes: 64,
            max_headers: 2,
        };
        let long_line = [b"CONNECT ".as_slice(), &[b'a'; 40]].concat();
        assert_eq!(
            HeadScanner::new(limits).scan(&long_line),
            Err(RequestError::LineTooLong { line: 1, limit: 32 })
        );
        // A line of exactly the limit is fine.
        let exact = [&[b'a'; 32][..], b"\r\n"].concat();
        assert_eq!(HeadScanner::new(limits).scan(&exact), Ok(None));
        let many = b"CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            HeadScanner::new(limits).scan(many),
            Err(RequestError::TooManyHeaders { limit: 2 })
        );
        let two = b"CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(HeadScanner::new(limits).scan(two), Ok(Some(two.len())));
        let big = b"CONNECT a:1 HTTP/1.1\r\nAaaaaaaaaa: 1\r\nBbbbbbbbbbbbbbbbbbbbbbbbbb: 2\r\n";
        assert_eq!(
            HeadScanner::new(limits).scan(big),
            Err(RequestError::HeadTooLarge { limit: 64 })
        );
        assert_eq!(
            RequestError::HeadTooLarge { limit: 1 }.reason(),
            Reason::RequestTooLarge
        );
        assert_eq!(RequestError::HeadTooLarge { limit: 1 }.status(), 431);
    }

    #[test]
    fn request_line_shape_is_strict() {
        for bad in [
            &b"CONNECT  a.test:443 HTTP/1.1\r\n\r\n"[..],
            b"CONNECT a.test:443 HTTP/1.1 extra\r\n\r\n",
            b"CONNECT a.test:443\r\n\r\n",
            b"CON(NECT a.test:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(RequestError::BadRequestLine { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(b"CONNECT a.test:443 HTTP/2.0\r\n\r\n"),
            Err(RequestError::BadVersion)
        );
        assert_eq!(
            scan_all(b"\r\nCONNECT a:1 HTTP/1.1\r\n\r\n"),
            Err(RequestError::BadRequestLine {
                what: "empty request line"
            })
        );
    }

    #[test]
    fn connect_authority_rules() {
        let ok = |t: &str| parse_authority(t.as_bytes(), None);
        assert_eq!(ok("a.test:443").unwrap().port, 443);
        assert_eq!(ok("A.Test.:8443").unwrap().host, "A.Test.");
        let v6 = ok("[::ffff:127.0.0.1]:443").unwrap();
        assert!(v6.bracketed);
        assert_eq!(v6.host, "::ffff:127.0.0.1");
        assert_eq!(v6.to_string(), "[::ffff:127.0.0.1]:443");
        assert_eq!(ok("bücher.test:443").unwrap().host, "bücher.test");
        for bad in [
            "a.test",
            "a.test:",
            "a.test:0",
            "a.test:65536",
            "a.test:+443",
            "a.test:44a",
            ":443",
            "::1:443",
            "[::1:443",
            "[not-v6]:443",
            "[::1]x:443",
            "user@a.test:443",
            "a%2e.test:443",
            "a test:443",
            "a/b:443",
        ] {
            assert!(ok(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            ok("a.test:00443").unwrap_err(),
            RequestError::BadAuthority {
                what: "the port must be decimal 1-65535 without leading zeros"
            }
        );
    }

    #[test]
    fn numeric_ipv4_spellings_parse_as_hosts_for_the_policy_to_judge() {
        for host in ["127.0.0.3", "2130706691", "0x7f.0.0.3", "127.3"] {
            let request = parse(format!("CONNECT {host}:443 HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
            assert_eq!(request.target.authority().host, host);
        }
    }

    #[test]
    fn absolute_form_http() {
        let request =
            parse(b"GET http://plain.test/path?q=1 HTTP/1.1\r\nHost: plain.test\r\n\r\n").unwrap();
        assert_eq!(
            request.target,
            Target::AbsoluteHttp {
                authority: Authority {
                    host: "plain.test".into(),
                    port: 80,
                    bracketed: false
                },
                path_and_query: "/path?q=1".into()
            }
        );
        let request = parse(b"GET HTTP://plain.test:8080 HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(
            request.target,
            Target::AbsoluteHttp {
                authority: Authority {
                    host: "plain.test".into(),
                    port: 8080,
                    bracketed: false
                },
                path_and_query: "/".into()
            }
        );
        let request = parse(b"GET http://plain.test?x HTTP/1.1\r\n\r\n").unwrap();
        assert!(
            matches!(request.target, Target::AbsoluteHttp { path_and_query, .. } if path_and_query == "/?x")
        );
        assert_eq!(
            parse(b"GET https://a.test/ HTTP/1.1\r\n\r\n"),
            Err(RequestError::UnsupportedScheme)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(RequestError::NotProxyRequest)
        );
        assert_eq!(
            parse(b"OPTIONS * HTTP/1.1\r\n\r\n"),
            Err(RequestError::NotProxyRequest)
        );
        assert!(parse(b"GET http://u:p@a.test/ HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"GET http://a.test/#frag HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"CONNECT http://a.test:443 HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn plain_http_with_an_ambiguous_body_length_is_refused() {
        let post = |h: &str| format!("POST http://plain.test/x HTTP/1.1\r\n{h}\r\n\r\n");
        for both in [
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 3",
            "Content-Length: 3\r\nContent-Length: 4",
        ] {
            let error = parse(post(both).as_bytes()).unwrap_err();
            assert!(
                matches!(error, RequestError::AmbiguousBodyLength { .. }),
                "{both}: {error}"
            );
            assert_eq!(error.status(), 400);
            assert_eq!(error.reason(), Reason::MalformedRequest);
        }
        assert!(parse(post("Content-Length: 3").as_bytes()).is_ok());
        assert!(parse(post("Transfer-Encoding: chunked").as_bytes()).is_ok());
        assert!(parse(post("Content-Length: 3\r\nContent-Length: 3").as_bytes()).is_ok());
    }

    #[test]
    fn header_rules() {
        let head = |h: &str| format!("CONNECT a.test:443 HTTP/1.1\r\n{h}\r\n\r\n");
        let request = parse(head("X-A:   v  \t").as_bytes()).unwrap();
        assert_eq!(request.headers[0].value, b"v");
        let request = parse(head("X-Empty:").as_bytes()).unwrap();
        assert_eq!(request.headers[0].value, b"");
        for bad in ["X-A : v", "X-A", ": v", " X-A: v", "X A: v", "X-A: v\u{1}"] {
            let result = parse(head(bad).as_bytes());
            assert!(
                matches!(result, Err(RequestError::BadHeader { line: 2, .. })),
                "{bad:?}: {result:?}"
            );
        }
        // Folded continuation lines.
        assert!(matches!(
            parse(b"CONNECT a.test:443 HTTP/1.1\r\nX-A: v\r\n  more\r\n\r\n"),
            Err(RequestError::BadHeader { line: 3, .. })
        ));
        assert_eq!(
            parse(head("Content-Length: 5").as_bytes()),
            Err(RequestError::ConnectWithBody)
        );
        assert_eq!(
            parse(head("Transfer-Encoding: chunked").as_bytes()),
            Err(RequestError::ConnectWithBody)
        );
        assert!(parse(head("Content-Length: 0").as_bytes()).is_ok());
    }

    #[test]
    fn errors_do_not_echo_header_values() {
        let err =
            parse(b"CONNECT a.test:443 HTTP/1.1\r\nProxy-Authorization : Basic c2VjcmV0\r\n\r\n")
                .unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn redirected_origin_form_becomes_absolute_form_on_the_original_port() {
        let head = b"GET /x?y=1 HTTP/1.1\r\nHost: Plain.Test:9999\r\nAccept: */*\r\n\r\n";
        let request = parse_redirected_head(head, 8080).unwrap();
        assert_eq!(
            request.target,
            Target::AbsoluteHttp {
                authority: Authority {
                    host: "Plain.Test".into(),
                    port: 8080,
                    bracketed: false
                },
                path_and_query: "/x?y=1".into()
            },
            "the port is the original destination's, not the Host header's"
        );
        for bad in [
            &b"GET /x HTTP/1.1\r\n\r\n"[..],
            b"GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"CONNECT a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_redirected_head(bad, 80),
                    Err(RequestError::NotOriginRequest)
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_redirected_head(
                b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                80
            ),
            Err(RequestError::AmbiguousBodyLength { .. })
        ));
    }
}
