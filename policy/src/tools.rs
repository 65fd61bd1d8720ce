//! The `enforcer policy` operations as library functions: keygen, sign
//! (with `issuedAt` stamping), verify, lint, show and schema. The CLI is a
//! thin layer over these.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::model::{
    Auth, AuthMode, PackError, Policy, Problem, ValidationMode, describe_expiry, parse_pack,
    parse_raw,
};
use crate::raw::PackFile;
use crate::signing::{
    KeyId, SigningError, SigningKey, VerifyingKey, generate_key, read_signing_key, sha256_hex,
    sign_bytes, signature_path, verify_bytes, write_keypair,
};
use crate::timestamp::format_timestamp;

/// Why a pack tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pack is not valid.
    #[error("{path}: {error}")]
    Pack {
        /// The pack file.
        path: PathBuf,
        /// What is wrong (with JSON paths).
        error: PackError,
    },
    /// A key or signature problem.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// Signing a pack that is already past its lifetime.
    #[error(
        "{path}: the pack expired at {expired_at} (issuedAt + ttlSeconds); remove issuedAt to have sign stamp the current time, or raise ttlSeconds"
    )]
    AlreadyExpired {
        /// The pack file.
        path: PathBuf,
        /// When it expired.
        expired_at: String,
    },
    /// The pack's top level is not a JSON object, so `issuedAt` cannot be stamped.
    #[error("{path}: cannot stamp issuedAt: the pack does not start with a JSON object")]
    CannotStamp {
        /// The pack file.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ToolError> {
    fs::read(path).map_err(io(path))
}

/// Write a file atomically (temp file in the same directory, fsync,
/// rename), keeping the permissions of an existing file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pack".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// === keygen ===

/// `enforcer policy keygen --out NAME`: write `NAME` (0600) and `NAME.pub`.
pub fn keygen(out: &Path) -> Result<KeyId, ToolError> {
    let key = generate_key()?;
    Ok(write_keypair(out, &key)?)
}

// === stamp / sign ===

/// If the pack has no `issuedAt`, return its bytes with
/// `"issuedAt": "<now>"` inserted as the first member of the top-level
/// object; every other byte is kept as written. `None` if it has one.
pub fn stamp_issued_at(bytes: &[u8], now: SystemTime) -> Result<Option<Vec<u8>>, PackError> {
    let raw = parse_raw(bytes)?;
    if raw.issued_at.is_some() {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| PackError::Shape {
        path: ".".into(),
        message: "not UTF-8".into(),
    })?;
    let brace = text
        .char_indices()
        .find(|(_, c)| !c.is_whitespace() && *c != '\u{feff}')
        .filter(|(_, c)| *c == '{')
        .map(|(i, _)| i)
        .ok_or_else(|| PackError::Shape {
            path: ".".into(),
            message: "expected a JSON object".into(),
        })?;
    let after = &text[brace + 1..];
    let ts = format_timestamp(now);
    // Indent like the first member when it sits on its own line.
    let ws_len = after.len() - after.trim_start().len();
    let ws = &after[..ws_len];
    let insert = match ws.rfind('\n') {
        Some(nl) => format!("\n{}\"issuedAt\": \"{ts}\",", &ws[nl + 1..]),
        None if ws.is_empty() => format!("\"issuedAt\":\"{ts}\","),
        None => format!("{ws}\"issuedAt\": \"{ts}\","),
    };
    let mut out = String::with_capacity(text.len() + insert.len());
    out.push_str(&text[..=brace]);
    out.push_str(&insert);
    out.push_str(after);
    // The result must parse and carry exactly the stamp.
    let check = parse_raw(out.as_bytes())?;
    if check.issued_at.as_deref() != Some(ts.as_str()) {
        return Err(PackError::Shape {
            path: "issuedAt".into(),
            message: "stamping failed".into(),
        });
    }
    Ok(Some(out.into_bytes()))
}

/// What [`sign_pack`] did.
#[derive(Debug, Clone)]
pub struct SignReport {
    /// The signature file written.
    pub sig_path: PathBuf,
    /// The signing key's id.
    pub key_id: KeyId,
    /// The `issuedAt` stamped into the pack, if it had none.
    pub stamped: Option<String>,
    /// The pack's version.
    pub version: String,
    /// When the pack expires.
    pub expires_at: Option<String>,
    /// SHA-256 of the signed bytes (for pinning).
    pub sha256: String,
}

/// `enforcer policy sign PACK --key NAME`: validate the pack, stamp
/// `issuedAt` if missing (rewriting the file), refuse a pack already
/// expired, and write `PACK.sig` over the exact bytes on disk.
pub fn sign_pack(pack: &Path, key_path: &Path, now: SystemTime) -> Result<SignReport, ToolError> {
    let key = read_signing_key(key_path)?;
    sign_pack_with(pack, &key, now)
}

/// As [`sign_pack`], with a key already in memory.
pub fn sign_pack_with(
    pack: &Path,
    key: &SigningKey,
    now: SystemTime,
) -> Result<SignReport, ToolError> {
    let pack_err = |error| ToolError::Pack {
        path: pack.to_owned(),
        error,
    };
    let mut bytes = read(pack)?;
    parse_pack(&bytes, ValidationMode::Signed).map_err(pack_err)?;
    let mut stamped = None;
    if let Some(new) = stamp_issued_at(&bytes, now).map_err(pack_err)? {
        write_atomic(pack, &new).map_err(io(pack))?;
        // Sign what is on disk now.
        bytes = read(pack)?;
        stamped = Some(format_timestamp(now));
    }
    let policy = parse_pack(&bytes, ValidationMode::Signed).map_err(pack_err)?;
    if let Some(exp) = policy.expires_at()
        && exp <= now
    {
        return Err(ToolError::AlreadyExpired {
            path: pack.to_owned(),
            expired_at: format_timestamp(exp),
        });
    }
    let sig_path = signature_path(pack);
    write_atomic(&sig_path, sign_bytes(key, &bytes).as_bytes()).map_err(io(&sig_path))?;
    Ok(SignReport {
        sig_path,
        key_id: KeyId::of(&key.verifying_key()),
        stamped,
        version: policy.version.to_string(),
        expires_at: policy.expires_at().map(format_timestamp),
        sha256: sha256_hex(&bytes),
    })
}

// === verify ===

/// What [`verify_pack`] found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The key whose signature matched.
    pub key_id: KeyId,
    /// The validated policy.
    pub policy: Policy,
    /// SHA-256 of the pack bytes.
    pub sha256: String,
    /// Non-fatal observations (e.g. already expired).
    pub warnings: Vec<Problem>,
}

/// `enforcer policy verify PACK --pubkey K.pub [--sig FILE]`: check the
/// signature over the exact bytes with any of `keys`, then validate.
pub fn verify_pack(
    pack: &Path,
    keys: &[VerifyingKey],
    sig: Option<&Path>,
    now: SystemTime,
) -> Result<VerifyReport, ToolError> {
    let bytes = read(pack)?;
    let sig_path = sig
        .map(Path::to_owned)
        .unwrap_or_else(|| signature_path(pack));
    let sig_bytes = read(&sig_path)?;
    let key_id = verify_bytes(keys, &bytes, &sig_bytes, &sig_path)?;
    let policy = parse_pack(&bytes, ValidationMode::Signed).map_err(|error| ToolError::Pack {
        path: pack.to_owned(),
        error,
    })?;
    let warnings = policy.warnings(now);
    Ok(VerifyReport {
        key_id,
        sha256: sha256_hex(&bytes),
        policy,
        warnings,
    })
}

// === lint ===

/// Result of a successful lint.
#[derive(Debug, Clone)]
pub struct LintReport {
    /// The validated policy.
    pub policy: Policy,
    /// Non-fatal observations.
    pub warnings: Vec<Problem>,
}

/// Lint pack bytes: shape (unknown fields named with their path), values,
/// and warnings.
pub fn lint_bytes(bytes: &[u8], now: SystemTime) -> Result<LintReport, PackError> {
    let policy = parse_pack(bytes, ValidationMode::Signed)?;
    let warnings = policy.warnings(now);
    Ok(LintReport { policy, warnings })
}

/// `enforcer policy lint PACK`.
pub fn lint_pack(pack: &Path, now: SystemTime) -> Result<LintReport, ToolError> {
    lint_bytes(&read(pack)?, now).map_err(|error| ToolError::Pack {
        path: pack.to_owned(),
        error,
    })
}

// === show ===

fn auth_text(a: &Auth) -> String {
    let header = |m: &AuthMode| match m {
        AuthMode::XApiKey => "x-api-key",
        AuthMode::Bearer => "bearer",
        AuthMode::None => "none",
    };
    match a {
        Auth::None => "no credential".into(),
        Auth::Inject {
            header: h,
            credential,
        } => {
            format!("{} from credential {credential}", header(h))
        }
        Auth::Passthrough {
            header: h,
            fallback,
        } => match fallback {
            Some(f) => format!(
                "{} passthrough (client's own), else credential {f}",
                header(h)
            ),
            None => format!("{} passthrough (client's own)", header(h)),
        },
    }
}

/// `enforcer policy show PACK`: a human summary with lanes, allowlist and
/// direct entries with their expiry times.
pub fn show_policy(p: &Policy, now: SystemTime) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "version:   {}", p.version);
    match (p.issued_at, p.expires_at()) {
        (Some(i), Some(_)) => {
            let _ = writeln!(s, "issued:    {}", format_timestamp(i));
            let _ = writeln!(
                s,
                "pack:      {}",
                describe_expiry(p.ttl, p.expires_at(), now)
            );
        }
        (None, _) => {
            let _ = writeln!(
                s,
                "issued:    (not stamped; `enforcer policy sign` stamps it)"
            );
        }
        (Some(i), None) => {
            let _ = writeln!(s, "issued:    {}", format_timestamp(i));
        }
    }
    let _ = writeln!(s, "\nlanes (first match wins):");
    if p.routing.matchers.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for m in &p.routing.matchers {
        if let Some(provider) = p.providers.get(&m.lane) {
            let _ = writeln!(
                s,
                "  {:<24} -> {:<10} {}  [{}]",
                m.pattern.to_string(),
                m.lane,
                provider.base_url,
                auth_text(&provider.auth)
            );
        }
    }
    let f = &p.fronting;
    let _ = writeln!(
        s,
        "\nproxy: requireSNI={} requireHostEqSNI={} blockIPLiteral={} allowECH={}",
        f.require_sni, f.require_host_eq_sni, f.block_ip_literal, f.allow_ech
    );
    let _ = writeln!(s, "allowlist:");
    if f.allowlist.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for e in &f.allowlist {
        let _ = writeln!(
            s,
            "  {:<32} {}{}",
            e.pattern.to_string(),
            describe_expiry(e.ttl, e.expires_at, now),
            if e.allow_plain_http {
                "  +plain HTTP"
            } else {
                ""
            }
        );
    }
    if !f.allow_private_ranges.is_empty() {
        let list: Vec<String> = f
            .allow_private_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(s, "private ranges opened: {}", list.join(", "));
    }
    let e = &p.egress;
    let _ = writeln!(
        s,
        "\negress: mode={} dns={} loopback={}",
        match e.mode {
            crate::EgressMode::Redirect => "redirect",
            crate::EgressMode::ProxyOnly => "proxy-only",
        },
        match e.dns {
            crate::DnsMode::Filtered => "filtered",
            crate::DnsMode::Deny => "deny",
        },
        match e.loopback {
            crate::LoopbackMode::OwnCgroup => "own-cgroup",
            crate::LoopbackMode::Deny => "deny",
        }
    );
    let _ = writeln!(s, "direct:");
    if e.direct.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for d in &e.direct {
        let _ = writeln!(
            s,
            "  {:<32} {}",
            d.target.to_string(),
            describe_expiry(d.ttl, d.expires_at, now)
        );
    }
    let l = &p.limits;
    let _ = writeln!(
        s,
        "\nlimits: request {} B, response {} B, connect {}s, idle {}s, total {}s, tunnels {}",
        l.max_request_bytes,
        l.max_response_bytes,
        l.connect_timeout.as_secs(),
        l.idle_timeout.as_secs(),
        l.total_timeout.as_secs(),
        l.max_concurrent_tunnels
    );
    s
}

/// `enforcer policy show PACK` from a file (validated, signature not checked).
pub fn show_pack(pack: &Path, now: SystemTime) -> Result<String, ToolError> {
    let policy =
        parse_pack(&read(pack)?, ValidationMode::Signed).map_err(|error| ToolError::Pack {
            path: pack.to_owned(),
            error,
        })?;
    Ok(show_policy(&policy, now))
}

// === schema ===

/// The JSON Schema of a pack, generated from the serde types (what
/// `enforcer policy schema` prints and `policy/packs/schema.json` holds).
/// Object keys are sorted, so the text does not depend on serde_json's
/// `preserve_order` feature being enabled somewhere in the build.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(PackFile);
    let value = sort_keys(schema.to_value());
    let mut s = serde_json::to_string_pretty(&value).unwrap_or_else(|e| {
        // Serialising a JSON value cannot fail; keep a visible trace if it ever does.
        format!("{{\"error\": \"{e}\"}}")
    });
    s.push('\n');
    s
}

fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_900_000_000)
    }

    #[test]
    fn stamp_keeps_every_other_byte() {
        let pretty =
            "{\n  \"schema\": \"ccp.policy.v1\",\n  \"version\": \"1\",\n  \"ttlSeconds\": 60\n}\n";
        let out =
            String::from_utf8(stamp_issued_at(pretty.as_bytes(), now()).unwrap().unwrap()).unwrap();
        assert_eq!(
            out,
            "{\n  \"issuedAt\": \"2030-03-17T17:46:40Z\",\n  \"schema\": \"ccp.policy.v1\",\n  \"version\": \"1\",\n  \"ttlSeconds\": 60\n}\n"
        );
        let compact = r#"{"schema":"ccp.policy.v1","version":"1","ttlSeconds":60}"#;
        let out = String::from_utf8(stamp_issued_at(compact.as_bytes(), now()).unwrap().unwrap())
            .unwrap();
        assert_eq!(
            out,
            r#"{"issuedAt":"2030-03-17T17:46:40Z","schema":"ccp.policy.v1","version":"1","ttlSeconds":60}"#
        );
        let has = r#"{"issuedAt":"2030-01-01T00:00:00Z","schema":"ccp.policy.v1","version":"1","ttlSeconds":60}"#;
        assert!(stamp_issued_at(has.as_bytes(), now()).unwrap().is_none());
    }

    #[test]
    fn schema_is_generated() {
        let s = schema_json();
        assert!(s.contains("\"requireHostEqSNI\""));
        assert!(s.contains("\"allowECH\""));
        assert!(s.contains("\"additionalProperties\": false"));
    }
}
