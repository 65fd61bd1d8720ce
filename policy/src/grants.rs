//! Persisting runtime grants (`enforcer allow`) across restarts: a small
//! JSON file in the state directory, written atomically.
//!
//! ```json
//! {"grants": [{"hostport": "pypi.org:443", "scope": "proxy",
//!              "grantedAt": "2025-10-21T10:00:00Z", "ttlSeconds": 3600,
//!              "allowPlainHTTP": false, "reason": "pip install"}]}
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::allowlist::{Grant, GrantError, GrantScope};
use crate::timestamp::{format_timestamp, parse_timestamp};
use crate::tools::write_atomic;

/// Default file name of the grant store inside the state directory.
pub const GRANTS_FILE: &str = "grants.json";

/// Why the grant file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GrantsFileError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not the expected JSON.
    #[error("{path}: {path_in_json}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// JSON path of the problem.
        path_in_json: String,
        /// What is wrong.
        message: String,
    },
    /// An entry does not make a valid grant.
    #[error("{path}: grants[{index}]: {source}")]
    Grant {
        /// The file.
        path: PathBuf,
        /// Entry index.
        index: usize,
        /// What is wrong.
        source: GrantError,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum ScopeRecord {
    Proxy,
    Direct,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GrantRecord {
    hostport: String,
    scope: ScopeRecord,
    granted_at: String,
    ttl_seconds: u64,
    #[serde(rename = "allowPlainHTTP", default)]
    allow_plain_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    grants: Vec<GrantRecord>,
}

/// Read the grant file; a missing file is an empty list.
pub fn load_grants(path: &Path) -> Result<Vec<Grant>, GrantsFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(GrantsFileError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let file: GrantFile =
        serde_path_to_error::deserialize(&mut de).map_err(|e| GrantsFileError::Format {
            path: path.to_owned(),
            path_in_json: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    let mut out = Vec::with_capacity(file.grants.len());
    for (index, r) in file.grants.into_iter().enumerate() {
        let granted_at = parse_timestamp(&r.granted_at).map_err(|e| GrantsFileError::Format {
            path: path.to_owned(),
            path_in_json: format!("grants[{index}].grantedAt"),
            message: e.to_string(),
        })?;
        let scope = match r.scope {
            ScopeRecord::Proxy => GrantScope::Proxy,
            ScopeRecord::Direct => GrantScope::Direct,
        };
        let mut g = Grant::new(
            &r.hostport,
            scope,
            granted_at,
            Duration::from_secs(r.ttl_seconds),
        )
        .map_err(|source| GrantsFileError::Grant {
            path: path.to_owned(),
            index,
            source,
        })?;
        g.allow_plain_http = r.allow_plain_http;
        g.reason = r.reason;
        out.push(g);
    }
    Ok(out)
}

/// Write the grant file atomically.
pub fn save_grants(path: &Path, grants: &[Grant]) -> Result<(), GrantsFileError> {
    let file = GrantFile {
        grants: grants
            .iter()
            .map(|g| GrantRecord {
                hostport: g.pattern.to_string(),
                scope: match g.scope {
                    GrantScope::Proxy => ScopeRecord::Proxy,
                    GrantScope::Direct => ScopeRecord::Direct,
                },
                granted_at: format_timestamp(g.granted_at),
                ttl_seconds: g.ttl.as_secs(),
                allow_plain_http: g.allow_plain_http,
                reason: g.reason.clone(),
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).map_err(|e| GrantsFileError::Format {
        path: path.to_owned(),
        path_in_json: ".".into(),
        message: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).map_err(|source| GrantsFileError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The grants still live at `now` (drop expired ones before saving).
pub fn live_grants(grants: &[Grant], now: SystemTime) -> Vec<Grant> {
    grants.iter().filter(|g| g.is_live(now)).cloned().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GRANTS_FILE);
        assert!(load_grants(&path).unwrap().is_empty());
        let t = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let mut g =
            Grant::new("PyPI.org", GrantScope::Proxy, t, Duration::from_secs(3600)).unwrap();
        g.reason = Some("pip install".into());
        let d = Grant::new(
            "github.com:22",
            GrantScope::Direct,
            t,
            Duration::from_secs(60),
        )
        .unwrap();
        save_grants(&path, &[g.clone(), d.clone()]).unwrap();
        assert_eq!(load_grants(&path).unwrap(), vec![g.clone(), d]);
        assert_eq!(
            live_grants(&[g.clone()], t + Duration::from_secs(3600)),
            vec![]
        );
        std::fs::write(&path, r#"{"grants":[{"hostport":"a.com","scope":"proxy","grantedAt":"2030-01-01T00:00:00Z","ttlSeconds":1,"reson":"x"}]}"#).unwrap();
        let e = load_grants(&path).unwrap_err().to_string();
        assert!(e.contains("reson") && e.contains("grants[0]"), "{e}");
    }
}
