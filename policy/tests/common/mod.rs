//! Shared helpers for the policy integration tests (and the daemon's pack
//! loader tests, which include this file): packs, keys, times.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use policy::format_timestamp;
use policy::signing::{SigningKey, generate_key, sign_bytes};

/// A pack whose allowlist and lane names carry `marker`, so a reader can
/// tell whether everything in a snapshot came from the same pack.
pub fn pack(version: &str, issued_at: SystemTime, ttl_secs: u64, marker: &str) -> Vec<u8> {
    format!(
        r#"{{
  "schema": "ccp.policy.v1",
  "version": "{version}",
  "issuedAt": "{issued}",
  "ttlSeconds": {ttl_secs},
  "routing": {{ "matchers": [ {{"pattern": "claude-*", "lane": "{marker}"}} ] }},
  "providers": {{
    "{marker}": {{"baseURL": "https://{marker}.example.com",
                 "authHeader": {{"mode": "x-api-key", "env": "KEY_{marker}"}}}} }},
  "fronting": {{ "allowlist": [ {{"hostport": "{marker}.example.com:443", "ttl": "P7D"}} ] }},
  "egress": {{ "direct": [ {{"hostport": "{marker}.example.net:22", "ttl": "PT8H"}} ] }}
}}
"#,
        issued = format_timestamp(issued_at)
    )
    .into_bytes()
}

/// Write `bytes` to `dir/name` and its signature to `dir/name.sig`.
pub fn write_signed(dir: &Path, name: &str, bytes: &[u8], key: &SigningKey) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::write(dir.join(format!("{name}.sig")), sign_bytes(key, bytes)).unwrap();
    p
}

/// A fresh key.
pub fn key() -> SigningKey {
    generate_key().unwrap()
}

/// Now, truncated to whole seconds (packs carry whole-second timestamps).
pub fn now() -> SystemTime {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
}

/// A port on 127.0.0.1 with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
