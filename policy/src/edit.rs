//! Editing a pack's JSON: adding allowlist and direct entries (what
//! `enforcer policy suggest --apply` writes) while keeping every other
//! member and the order of every object's keys.
//!
//! serde_json's own `Value` sorts keys (the workspace does not enable its
//! `preserve_order` feature, which would change every map in every crate),
//! so the pack is read into [`Json`], a value whose objects are lists of
//! members in file order. Whitespace is not kept: the result is
//! pretty-printed (two-space indent), which `sign` then signs as written.
//!
//! An edited pack is a new pack: its `version` is bumped ([`Version::bumped`])
//! so the daemon does not refuse it as "the same version with different
//! bytes", and its `issuedAt` is removed so that `enforcer policy sign`
//! stamps the signing time (entry TTLs count from `issuedAt`: kept, a `1h`
//! entry added to a pack issued yesterday would be born expired). Nothing is
//! checked here beyond the shape; the caller validates the result like
//! `enforcer policy lint` does.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::model::{PackError, parse_raw};
use crate::version::Version;

/// Why a pack could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The bytes are not a pack of the right shape.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// A member that must be an object or an array is something else.
    #[error("`{path}` is not {expected}")]
    NotA {
        /// JSON path of the member.
        path: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// The version cannot be raised within the length limit.
    #[error(
        "version `{version}` cannot be raised within 64 characters; set a newer version by hand"
    )]
    VersionTooLong {
        /// The pack's version.
        version: String,
    },
    /// The version is not one this crate can raise.
    #[error("version `{version}` is not a pack version; set a newer version by hand")]
    BadVersion {
        /// The pack's version.
        version: String,
    },
    /// Entries with a TTL count from `issuedAt`, which the edit removes
    /// (signing stamps it anew): they would live again from the new stamp.
    #[error(
        "entries with a ttl count from issuedAt, which the edited copy drops for signing to stamp anew, so they would live again from then: {}; remove them or give them a new ttl by hand, then apply",
        entries.join(", ")
    )]
    TimedEntries {
        /// The entries (`section: hostport (ttl)`).
        entries: Vec<String>,
    },
    /// Serialising the result failed.
    #[error("writing the pack JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One entry to add: `{"hostport": ..., "ttl": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// `host:port` as the pack spells it.
    pub hostport: String,
    /// Short-form TTL (`1h`).
    pub ttl: String,
}

/// The edited pack and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    /// The new pack bytes (pretty-printed, trailing newline).
    pub bytes: Vec<u8>,
    /// The version the pack had.
    pub old_version: String,
    /// The version it has now.
    pub new_version: String,
    /// Whether an `issuedAt` was removed (for `sign` to stamp anew).
    pub removed_issued_at: bool,
}

/// Adds `allowlist` entries to `fronting.allowlist` and `direct` entries to
/// `egress.direct` (creating the sections and arrays when missing), bumps
/// `version` and removes `issuedAt`. Key order and every other member are
/// kept.
pub fn add_entries(
    bytes: &[u8],
    allowlist: &[NewEntry],
    direct: &[NewEntry],
) -> Result<Edited, EditError> {
    // The shape first: unknown fields and wrong types named with their path.
    let raw = parse_raw(bytes)?;
    let old_version = raw.version.clone();
    let new_version = Version::parse(&raw.version)
        .map_err(|_| EditError::BadVersion {
            version: raw.version.clone(),
        })?
        .bumped()
        .ok_or_else(|| EditError::VersionTooLong {
            version: raw.version.clone(),
        })?
        .to_string();
    if raw.issued_at.is_some() {
        let timed: Vec<String> = raw
            .fronting
            .allowlist
            .iter()
            .map(|entry| ("fronting.allowlist", &entry.hostport, &entry.ttl))
            .chain(
                raw.egress
                    .direct
                    .iter()
                    .map(|entry| ("egress.direct", &entry.hostport, &entry.ttl)),
            )
            .filter_map(|(section, hostport, ttl)| {
                ttl.as_ref()
                    .map(|ttl| format!("{section}: {hostport} ({ttl})"))
            })
            .collect();
        if !timed.is_empty() {
            return Err(EditError::TimedEntries { entries: timed });
        }
    }
    let mut pack: Json = serde_json::from_slice(bytes)?;
    let Json::Object(top) = &mut pack else {
        return Err(EditError::NotA {
            path: ".",
            expected: "an object",
        });
    };
    let before = top.len();
    top.retain(|(key, _)| key != "issuedAt");
    let removed_issued_at = top.len() != before;
    *member(top, "version") = Json::String(new_version.clone());
    append(
        top,
        "fronting",
        "fronting.allowlist",
        "allowlist",
        allowlist,
    )?;
    append(top, "egress", "egress.direct", "direct", direct)?;
    let mut bytes = serde_json::to_vec_pretty(&pack)?;
    bytes.push(b'\n');
    Ok(Edited {
        bytes,
        old_version,
        new_version,
        removed_issued_at,
    })
}

/// Appends `entries` to `top[section][key]`, creating both when missing.
fn append(
    top: &mut Vec<(String, Json)>,
    section: &'static str,
    path: &'static str,
    key: &str,
    entries: &[NewEntry],
) -> Result<(), EditError> {
    if entries.is_empty() {
        return Ok(());
    }
    let object = member_or(top, section, || Json::Object(Vec::new()));
    let Json::Object(object) = object else {
        return Err(EditError::NotA {
            path: section,
            expected: "an object",
        });
    };
    let Json::Array(array) = member_or(object, key, || Json::Array(Vec::new())) else {
        return Err(EditError::NotA {
            path,
            expected: "an array",
        });
    };
    array.extend(entries.iter().map(|entry| {
        Json::Object(vec![
            ("hostport".to_owned(), Json::String(entry.hostport.clone())),
            ("ttl".to_owned(), Json::String(entry.ttl.clone())),
        ])
    }));
    Ok(())
}

/// The member `key` of `object`, inserted as `null` at the end when missing.
fn member<'a>(object: &'a mut Vec<(String, Json)>, key: &str) -> &'a mut Json {
    member_or(object, key, || Json::Null)
}

/// The member `key` of `object`, inserted with `make()` at the end when missing.
fn member_or<'a>(
    object: &'a mut Vec<(String, Json)>,
    key: &str,
    make: impl FnOnce() -> Json,
) -> &'a mut Json {
    let index = match object.iter().position(|(k, _)| k == key) {
        Some(index) => index,
        None => {
            object.push((key.to_owned(), make()));
            object.len() - 1
        }
    };
    &mut object[index].1
}

// === impl Json ===

/// A JSON value whose objects keep their members in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as serde_json read it.
    Number(serde_json::Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object: members in file order.
    Object(Vec<(String, Json)>),
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (key, value) in members {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::tools::lint_bytes;

    const PACK: &str = r#"{
  "schema": "ccp.policy.v1",
  "version": "2025-10-21.3",
  "issuedAt": "2025-10-21T00:00:00Z",
  "ttlSeconds": 86400,
  "fronting": {
    "requireSNI": true,
    "allowlist": [{"hostport": "pypi.org:443"}],
    "allowPrivateRanges": ["10.20.0.0/16"]
  },
  "limits": {"maxRequestBytes": 1048576}
}"#;

    fn entry(hostport: &str) -> NewEntry {
        NewEntry {
            hostport: hostport.to_owned(),
            ttl: "1h".to_owned(),
        }
    }

    fn keys(json: &Json) -> Vec<&str> {
        match json {
            Json::Object(members) => members.iter().map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not an object: {json:?}"),
        }
    }

    #[test]
    fn adds_entries_keeping_order_and_every_other_member() {
        let edited = add_entries(
            PACK.as_bytes(),
            &[entry("npm.mirror.test:443")],
            &[entry("192.0.2.7:22")],
        )
        .unwrap();
        assert_eq!(edited.old_version, "2025-10-21.3");
        assert_eq!(edited.new_version, "2025-10-21.4");
        assert!(edited.removed_issued_at);
        let json: Json = serde_json::from_slice(&edited.bytes).unwrap();
        // issuedAt gone, the rest in file order, egress appended.
        assert_eq!(
            keys(&json),
            [
                "schema",
                "version",
                "ttlSeconds",
                "fronting",
                "limits",
                "egress"
            ]
        );
        let Json::Object(top) = &json else { panic!() };
        assert_eq!(
            keys(&top[3].1),
            ["requireSNI", "allowlist", "allowPrivateRanges"]
        );
        let value: serde_json::Value = serde_json::from_slice(&edited.bytes).unwrap();
        assert_eq!(
            value["fronting"]["allowlist"],
            serde_json::json!([
                {"hostport": "pypi.org:443"},
                {"hostport": "npm.mirror.test:443", "ttl": "1h"}
            ])
        );
        assert_eq!(
            value["egress"]["direct"],
            serde_json::json!([{"hostport": "192.0.2.7:22", "ttl": "1h"}])
        );
        assert_eq!(value["limits"]["maxRequestBytes"], 1_048_576);
        assert_eq!(value["fronting"]["allowPrivateRanges"][0], "10.20.0.0/16");
        // Still a valid pack, with the entries in it.
        let report = lint_bytes(&edited.bytes, SystemTime::now()).unwrap();
        assert_eq!(report.policy.fronting.allowlist.len(), 2);
        assert_eq!(report.policy.egress.direct.len(), 1);
        assert_eq!(report.policy.version.as_str(), "2025-10-21.4");
        assert_eq!(report.policy.issued_at, None);
    }

    #[test]
    fn creates_missing_sections_and_leaves_empty_ones_alone() {
        let minimal = r#"{"schema":"ccp.policy.v1","version":"beta","ttlSeconds":60}"#;
        let edited = add_entries(minimal.as_bytes(), &[entry("a.test:443")], &[]).unwrap();
        assert!(!edited.removed_issued_at);
        assert_eq!(edited.new_version, "beta.1");
        let json: Json = serde_json::from_slice(&edited.bytes).unwrap();
        assert_eq!(keys(&json), ["schema", "version", "ttlSeconds", "fronting"]);
        lint_bytes(&edited.bytes, SystemTime::now()).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_pack() {
        let error =
            add_entries(b"{\"schema\":\"ccp.policy.v1\",\"frontingg\":{}}", &[], &[]).unwrap_err();
        assert!(matches!(error, EditError::Pack(_)), "{error}");
        assert!(error.to_string().contains("frontingg"), "{error}");
        let long = format!(
            r#"{{"schema":"ccp.policy.v1","version":"{}","ttlSeconds":60}}"#,
            "a".repeat(63)
        );
        let error = add_entries(long.as_bytes(), &[], &[]).unwrap_err();
        assert!(matches!(error, EditError::VersionTooLong { .. }), "{error}");
    }

    #[test]
    fn refuses_to_revive_entries_whose_ttl_counts_from_the_old_issued_at() {
        let timed = PACK.replace(
            r#"{"hostport": "pypi.org:443"}"#,
            r#"{"hostport": "pypi.org:443", "ttl": "7d"}"#,
        );
        let error = add_entries(timed.as_bytes(), &[entry("a.test:443")], &[]).unwrap_err();
        assert!(matches!(error, EditError::TimedEntries { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("fronting.allowlist: pypi.org:443 (7d)"),
            "{error}"
        );
        // Without an issuedAt the TTLs count from signing, before and after.
        let unstamped = timed.replace("  \"issuedAt\": \"2025-10-21T00:00:00Z\",\n", "");
        add_entries(unstamped.as_bytes(), &[entry("a.test:443")], &[]).unwrap();
        let bad = add_entries(
            br#"{"schema":"ccp.policy.v1","version":"not a version!","ttlSeconds":60}"#,
            &[],
            &[],
        );
        assert!(matches!(bad, Err(EditError::BadVersion { .. })), "{bad:?}");
    }

    #[test]
    fn numbers_and_nesting_survive_the_round_trip() {
        let text = r#"{"b":[1,-2,3.5,true,null,{"z":1,"a":2}],"a":"x"}"#;
        let json: Json = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), text);
    }
}
