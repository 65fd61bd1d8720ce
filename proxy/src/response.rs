//! The proxy's own HTTP responses (exact bytes): `200 Connection
//! established`, and short plain-text refusals that name the reason and,
//! where an operator can change the outcome, the command that would.

use crate::reason::Reason;
use crate::request::Authority;

/// The answer to an allowed CONNECT.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The status line text for the statuses the proxy sends.
fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The HTTP status for a refusal answered before any tunnel or upstream
/// response exists.
pub fn status_for(reason: Reason) -> u16 {
    match reason {
        Reason::MalformedRequest | Reason::InvalidHost => 400,
        Reason::RequestTooLarge => 431,
        Reason::RequestTimeout => 408,
        Reason::Overloaded => 503,
        Reason::ResolveFailed | Reason::ConnectFailed => 502,
        Reason::ConnectTimeout => 504,
        _ => 403,
    }
}

/// A complete refusal response: status from [`status_for`], an
/// `X-Enforcer-Reason` header, and a short text body saying what happened
/// and what to do. `target` is the requested `host:port`, when known.
pub fn refusal(reason: Reason, target: Option<&Authority>, detail: Option<&str>) -> Vec<u8> {
    let status = status_for(reason);
    let mut body = String::new();
    match target {
        Some(target) => body.push_str(&format!("enforcer: refused {target} (reason: {reason})\n")),
        None => body.push_str(&format!(
            "enforcer: refused the request (reason: {reason})\n"
        )),
    }
    body.push_str(reason.explain());
    body.push('\n');
    if let Some(detail) = detail {
        body.push_str(detail);
        body.push('\n');
    }
    match (reason, target) {
        (Reason::NotAllowlisted | Reason::Expired, Some(target)) => body.push_str(&format!(
            "An operator can allow it with:\n  enforcer allow {target} --ttl 1h\n"
        )),
        (Reason::ClientNotEnforced, _) => body.push_str(
            "Run the agent with `enforcer run` (or inside the enforced cgroup); an operator can serve clients outside with --serve-outside-clients.\n",
        ),
        (Reason::IpLiteral, _) => {
            body.push_str("Connect to the host name instead of its address.\n");
        }
        (Reason::PlainHttpDenied, Some(target)) => body.push_str(&format!(
            "Use https:// (CONNECT {}:443), or ask an operator to allow plain HTTP for {} in the policy.\n",
            target.host_for_display(),
            target.host_for_display()
        )),
        _ => {}
    }
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Enforcer-Reason: {reason}\r\nConnection: close\r\n",
        status_text(status),
        body.len()
    );
    if reason == Reason::Overloaded {
        out.push_str("Retry-After: 1\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn target() -> Authority {
        Authority {
            host: "api.example.test".into(),
            port: 443,
            bracketed: false,
        }
    }

    #[test]
    fn not_allowlisted_names_the_reason_and_the_allow_command() {
        let bytes = refusal(Reason::NotAllowlisted, Some(&target()), None);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert!(
            head.contains("X-Enforcer-Reason: not_allowlisted"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("not_allowlisted"), "{body}");
        assert!(
            body.contains("enforcer allow api.example.test:443 --ttl 1h"),
            "{body}"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(status_for(Reason::IpLiteral), 403);
        assert_eq!(status_for(Reason::MalformedRequest), 400);
        assert_eq!(status_for(Reason::Overloaded), 503);
        let text = String::from_utf8(refusal(Reason::Overloaded, None, None)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    }

    #[test]
    fn ipv6_targets_keep_their_brackets() {
        let v6 = Authority {
            host: "::1".into(),
            port: 443,
            bracketed: true,
        };
        let text = String::from_utf8(refusal(Reason::IpLiteral, Some(&v6), None)).unwrap();
        assert!(text.contains("refused [::1]:443"), "{text}");
    }
}
