//! Pack files on disk: the seed example, the committed schema, the CLI
//! operations (keygen, sign with stamping, verify, lint, show) as library
//! calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use policy::signing::{public_key_path, read_public_key, signature_path};
use policy::tools::{self, ToolError};
use policy::{ValidationMode, parse_pack};

fn packs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packs")
}

#[test]
fn the_seed_example_parses_and_lints_unchanged() {
    let path = packs_dir().join("examples/seed.json");
    let report = tools::lint_pack(&path, now()).unwrap();
    let p = &report.policy;
    assert_eq!(p.version.as_str(), "2025-10-21.1");
    assert_eq!(p.route("claude-haiku-4-5").unwrap().0.lane, "zai");
    assert_eq!(p.route("claude-sonnet-4-5").unwrap().0.lane, "anth");
    assert!(p.route("claude-opus-4").is_none());
    assert_eq!(p.fronting.allowlist.len(), 2);
    assert_eq!(p.egress.direct[0].target.to_string(), "github.com:22");
    assert_eq!(p.limits.max_request_bytes, 33_554_432);
    // It is long expired: lint says so, as a warning.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.message.contains("expired"))
    );
}

#[test]
fn unknown_fields_name_their_path() {
    let seed = std::fs::read_to_string(packs_dir().join("examples/seed.json")).unwrap();
    let cases = [
        (
            "\"fronting\"",
            "\"frontingg\"",
            "frontingg",
            "unknown field `frontingg`",
        ),
        (
            "\"requireSNI\"",
            "\"requireSni\"",
            "fronting.requireSni",
            "unknown field `requireSni`",
        ),
        (
            "\"ttl\": \"PT8H\"",
            "\"tll\": \"PT8H\"",
            "egress.direct[0].tll",
            "unknown field `tll`",
        ),
        (
            "\"fallbackEnv\"",
            "\"fallbackenv\"",
            "providers.anth.authHeader.fallbackenv",
            "unknown field `fallbackenv`",
        ),
        (
            "\"roRoot\"",
            "\"readOnlyRoot\"",
            "sandboxLinux.bwrap.fs.readOnlyRoot",
            "unknown field `readOnlyRoot`",
        ),
        (
            "\"metadata\"",
            "\"verbose\"",
            "logging.mode",
            "unknown variant `verbose`",
        ),
        (
            "\"ttlSeconds\": 3600",
            "\"ttlSeconds\": \"1h\"",
            "ttlSeconds",
            "invalid type",
        ),
    ];
    for (from, to, path, msg) in cases {
        assert!(seed.contains(from), "{from}");
        let bad = seed.replacen(from, to, 1);
        let e = parse_pack(bad.as_bytes(), ValidationMode::Signed).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("{path}: ")), "{path}: {text}");
        assert!(text.contains(msg), "{text}");
        assert!(text.contains("line "), "{text}");
    }
}

#[test]
fn value_errors_are_all_listed_with_paths() {
    let seed = std::fs::read_to_string(packs_dir().join("examples/seed.json")).unwrap();
    let bad = seed
        .replace("\"lane\": \"anth\"", "\"lane\": \"anthropic\"")
        .replace("https://api.z.ai/api/anthropic", "http://api.z.ai")
        .replace("\"P7D\"", "\"P1M\"")
        .replace("api.anthropic.com:443", "127.0.0.1:443")
        .replace("\"exceptions\": []", "\"exceptions\": [\"ptrce\"]")
        .replace(
            "\"connectTimeoutSeconds\": 10",
            "\"connectTimeoutSeconds\": 0",
        );
    let e = parse_pack(bad.as_bytes(), ValidationMode::Signed).unwrap_err();
    let problems = e.problems();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "routing.matchers[1].lane",
        "providers.zai.baseURL",
        "fronting.allowlist[0].ttl",
        "fronting.allowlist[0].hostport",
        "fronting.allowlist[1].ttl",
        "limits.connectTimeoutSeconds",
        "sandboxLinux.seccomp.exceptions[0]",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    let text = e.to_string();
    assert!(
        text.contains("lane `anthropic` is not defined in providers (defined: anth, zai)"),
        "{text}"
    );
    assert!(text.contains("must start with https://"), "{text}");
    assert!(text.contains("years and months"), "{text}");
    assert!(text.contains("blockIPLiteral"), "{text}");
}

#[test]
fn duplicate_provider_names_are_refused() {
    let json = r#"{"schema":"ccp.policy.v1","version":"1","ttlSeconds":60,
      "providers":{"a":{"baseURL":"https://a.example","authHeader":{"mode":"none"}},
                   "a":{"baseURL":"https://b.example","authHeader":{"mode":"none"}}}}"#;
    let e = parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap_err();
    assert!(e.to_string().contains("duplicate key `a`"), "{e}");
    assert!(e.to_string().starts_with("providers"), "{e}");
}

#[test]
fn committed_schema_is_in_sync() {
    let path = packs_dir().join("schema.json");
    let generated = tools::schema_json();
    if std::env::var_os("POLICY_UPDATE_SCHEMA").is_some() {
        // Under CI the committed file is what is checked, never rewritten.
        assert!(
            std::env::var_os("CI").is_none(),
            "POLICY_UPDATE_SCHEMA is refused under CI: it would make this test pass by rewriting the file it checks"
        );
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "policy/packs/schema.json is out of date; regenerate it with \
         `POLICY_UPDATE_SCHEMA=1 cargo test -p policy --test packs committed_schema_is_in_sync`"
    );
}

#[test]
fn keygen_sign_verify_and_a_changed_byte() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    let id = tools::keygen(&k).unwrap();
    assert!(matches!(tools::keygen(&k), Err(ToolError::Signing(_))));

    // A pack without issuedAt: sign stamps it, rewriting the file, and signs what it wrote.
    let pack_path = dir.path().join("pack.json");
    let original = String::from_utf8(pack("1", now(), 86_400, "one"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("issuedAt"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&pack_path, &original).unwrap();
    let t = now();
    let r = tools::sign_pack(&pack_path, &k, t).unwrap();
    assert_eq!(r.key_id, id);
    assert_eq!(
        r.stamped.as_deref(),
        Some(policy::format_timestamp(t).as_str())
    );
    assert_eq!(r.sig_path, signature_path(&pack_path));
    let written = std::fs::read_to_string(&pack_path).unwrap();
    assert!(written.contains(&format!(
        "\"issuedAt\": \"{}\"",
        policy::format_timestamp(t)
    )));
    assert_eq!(
        written.replace(
            &format!("\n  \"issuedAt\": \"{}\",", policy::format_timestamp(t)),
            ""
        ),
        original
    );

    let public = read_public_key(&public_key_path(&k)).unwrap();
    let v = tools::verify_pack(&pack_path, &[public], None, t).unwrap();
    assert_eq!(v.key_id, id);
    assert_eq!(v.policy.issued_at, Some(t));

    // Signing again does not stamp again.
    let r2 = tools::sign_pack(&pack_path, &k, t + Duration::from_secs(5)).unwrap();
    assert!(r2.stamped.is_none());

    // One changed byte.
    let mut bytes = std::fs::read(&pack_path).unwrap();
    let i = bytes.iter().position(|b| *b == b'P').unwrap();
    bytes[i] = b'Q';
    std::fs::write(&pack_path, &bytes).unwrap();
    let e = tools::verify_pack(&pack_path, &[public], None, t).unwrap_err();
    assert!(e.to_string().contains("signature does not match"), "{e}");

    // --sig FILE elsewhere.
    let other = dir.path().join("elsewhere.sig");
    std::fs::write(&pack_path, &written).unwrap();
    std::fs::rename(signature_path(&pack_path), &other).unwrap();
    assert!(tools::verify_pack(&pack_path, &[public], None, t).is_err());
    tools::verify_pack(&pack_path, &[public], Some(&other), t).unwrap();
}

#[test]
fn sign_refuses_invalid_and_expired_packs_without_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    tools::keygen(&k).unwrap();
    let seed = packs_dir().join("examples/seed.json");
    let copy = dir.path().join("seed.json");
    std::fs::copy(&seed, &copy).unwrap();
    let e = tools::sign_pack(&copy, &k, now()).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(!signature_path(&copy).exists());
    let bad = std::fs::read_to_string(&seed)
        .unwrap()
        .replace("\"fronting\"", "\"frontingg\"");
    std::fs::write(&copy, &bad).unwrap();
    let e = tools::sign_pack(&copy, &k, now()).unwrap_err();
    assert!(e.to_string().contains("frontingg"), "{e}");
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), bad);
}

#[test]
fn show_lists_lanes_and_expiry_times() {
    let text = tools::show_pack(&packs_dir().join("examples/seed.json"), now()).unwrap();
    assert!(text.contains("claude-haiku-*"), "{text}");
    assert!(text.contains("https://api.z.ai/api/anthropic"), "{text}");
    assert!(text.contains("api.anthropic.com:443"), "{text}");
    assert!(text.contains("expired 2025-10-21T01:00:00Z"), "{text}");
    assert!(text.contains("github.com:22"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    std::fs::write(&p, pack("1", now(), 86_400, "x")).unwrap();
    let text = tools::show_pack(&p, now()).unwrap();
    assert!(
        text.contains("x.example.com:443") && text.contains("(in 1d)"),
        "{text}"
    );
    assert!(
        text.contains("x.example.net:22") && text.contains("(in 8h)"),
        "{text}"
    );
}

#[test]
fn the_fallback_pack_file_validates_as_embedded() {
    let bytes = std::fs::read(packs_dir().join("fallback.json")).unwrap();
    assert_eq!(bytes, policy::FALLBACK_JSON.as_bytes());
    parse_pack(&bytes, ValidationMode::Embedded).unwrap();
    // It is not a signable pack (no lifetime).
    assert!(parse_pack(&bytes, ValidationMode::Signed).is_err());
}

/// A public key, pack and signature made once (`enforcer policy keygen`,
/// `enforcer policy sign`, private key discarded) and committed with their
/// key id and digest as literals: a change to what is signed, how the key id
/// is derived or how the signature is encoded breaks this test instead of
/// every pack already published.
#[test]
fn a_pack_signed_once_verifies_with_its_committed_key() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/signed");
    let public = read_public_key(&dir.join("key.pub")).unwrap();
    assert_eq!(
        policy::signing::KeyId::of(&public).to_string(),
        "6d9e6bcde382a3ae"
    );
    let pack = dir.join("pack.json");
    assert_eq!(
        policy::signing::sha256_hex(&std::fs::read(&pack).unwrap()),
        "4ab32f8af2f1634d087fed3065f604fbb09920ad9b8d4981480d5d2f2b131ee1"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("pack.json.sig")).unwrap(),
        "MqfXQXgwtjbOjU3QOXuP3wgKdXdNXywmxYhxwcJhPegKxYNxxF4fas6STR35FxLJ/Mbvb8SbZGo1446h4yeRDQ==\n"
    );
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 3_600);
    let report = tools::verify_pack(&pack, &[public], None, at).unwrap();
    assert_eq!(report.key_id.to_string(), "6d9e6bcde382a3ae");
    assert_eq!(
        report.sha256,
        "4ab32f8af2f1634d087fed3065f604fbb09920ad9b8d4981480d5d2f2b131ee1"
    );
    assert_eq!(report.policy.version.to_string(), "fixture-1");
    // The same bytes with one changed no longer verify.
    let copy_dir = tempfile::tempdir().unwrap();
    let changed = copy_dir.path().join("pack.json");
    let text = std::fs::read_to_string(&pack).unwrap();
    std::fs::write(&changed, text.replace("fixture-1", "fixture-2")).unwrap();
    std::fs::copy(dir.join("pack.json.sig"), signature_path(&changed)).unwrap();
    let error = tools::verify_pack(&changed, &[public], None, at).unwrap_err();
    assert!(error.to_string().contains("signature"), "{error}");
}
