//! The daemon's pack loader (`enforcer::policy_source`): loading, verification, refusal, caching, fallback, HTTPS refresh and hot
//! swap, over real files and a real HTTPS server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use enforcer::policy_source::loader::{CACHE_PACK, CACHE_SIG};
use enforcer::policy_source::{Loader, LoaderConfig, PackSource, RefreshOutcome};
use policy::signing::{KeyId, sha256_hex};
use policy::store::Candidate;
use policy::{Origin, PolicyStore, Refusal, Snapshot, ValidationMode, parse_pack};

fn file_config(
    path: &std::path::Path,
    keys: &[&policy::SigningKey],
    state: &std::path::Path,
) -> LoaderConfig {
    LoaderConfig {
        source: Some(PackSource::File(path.to_owned())),
        trusted_keys: keys.iter().map(|k| k.verifying_key()).collect(),
        state_dir: Some(state.to_owned()),
        ..LoaderConfig::default()
    }
}

fn version(s: &Snapshot) -> String {
    s.policy().version.to_string()
}

fn reasons(r: &[Refusal]) -> String {
    r.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test]
async fn signed_file_is_applied_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let bytes = pack("2025-10-21.1", now(), 3600, "one");
    let p = write_signed(dir.path(), "p.json", &bytes, &k);
    let state = dir.path().join("state");
    let (loader, report) = Loader::start(file_config(&p, &[&k], &state), now())
        .await
        .unwrap();
    assert!(report.refusals.is_empty(), "{}", reasons(&report.refusals));
    let snap = loader.store().current();
    assert_eq!(version(&snap), "2025-10-21.1");
    match snap.origin() {
        Origin::Signed { key_id, sha256, .. } => {
            assert_eq!(*key_id, KeyId::of(&k.verifying_key()));
            assert_eq!(*sha256, sha256_hex(&bytes));
        }
        o => panic!("{o:?}"),
    }
    assert!(snap.decide("one.example.com", 443, now()).allowed);
    assert_eq!(std::fs::read(state.join(CACHE_PACK)).unwrap(), bytes);
    assert!(state.join(CACHE_SIG).exists());
    // Same file again: unchanged.
    assert!(matches!(
        loader.refresh(now()).await,
        RefreshOutcome::Unchanged
    ));
}

#[tokio::test]
async fn a_tampered_byte_is_refused_and_the_fallback_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let bytes = pack("1", now(), 3600, "one");
    let p = write_signed(dir.path(), "p.json", &bytes, &k);
    let mut t = bytes.clone();
    let i = t.iter().position(|b| *b == b'7').unwrap(); // "P7D" -> "P8D"
    t[i] = b'8';
    std::fs::write(&p, &t).unwrap();
    let (loader, report) = Loader::start(file_config(&p, &[&k], dir.path()), now())
        .await
        .unwrap();
    let snap = loader.store().current();
    assert!(snap.is_fallback());
    let why = reasons(&report.refusals);
    assert!(why.contains("signature does not match"), "{why}");
    match snap.origin() {
        Origin::Fallback { reason } => assert!(reason.contains("signature does not match")),
        o => panic!("{o:?}"),
    }
    // The fallback is the Anthropic API only.
    assert!(snap.decide("api.anthropic.com", 443, now()).allowed);
    assert!(!snap.decide("one.example.com", 443, now()).allowed);
}

#[tokio::test]
async fn the_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, trusted) = (key(), key());
    let p = write_signed(
        dir.path(),
        "p.json",
        &pack("1", now(), 3600, "one"),
        &signer,
    );
    let (loader, report) = Loader::start(file_config(&p, &[&trusted], dir.path()), now())
        .await
        .unwrap();
    assert!(loader.store().current().is_fallback());
    let why = reasons(&report.refusals);
    assert!(why.contains("signature does not match"), "{why}");
    assert!(
        why.contains(&KeyId::of(&trusted.verifying_key()).to_string()),
        "{why}"
    );
}

#[tokio::test]
async fn two_trusted_keys_allow_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (key(), key());
    let p = write_signed(dir.path(), "p.json", &pack("1", now(), 3600, "one"), &old);
    let (loader, report) = Loader::start(file_config(&p, &[&old, &new], dir.path()), now())
        .await
        .unwrap();
    assert!(report.refusals.is_empty(), "{}", reasons(&report.refusals));
    write_signed(dir.path(), "p.json", &pack("2", now(), 3600, "two"), &new);
    let RefreshOutcome::Applied(snap) = loader.refresh(now()).await else {
        panic!()
    };
    assert_eq!(version(&snap), "2");
    assert!(
        matches!(snap.origin(), Origin::Signed { key_id, .. } if *key_id == KeyId::of(&new.verifying_key()))
    );
}

#[tokio::test]
async fn an_expired_pack_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let issued = now() - Duration::from_secs(7200);
    let p = write_signed(dir.path(), "p.json", &pack("1", issued, 3600, "one"), &k);
    let (loader, report) = Loader::start(file_config(&p, &[&k], dir.path()), now())
        .await
        .unwrap();
    assert!(loader.store().current().is_fallback());
    let why = reasons(&report.refusals);
    assert!(why.contains("expired at"), "{why}");
}

#[tokio::test]
async fn rollback_is_refused_and_the_active_pack_stays() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let state = dir.path().join("state");
    let p = write_signed(
        dir.path(),
        "p.json",
        &pack("2025-10-21.10", now(), 3600, "new"),
        &k,
    );
    let (loader, _) = Loader::start(file_config(&p, &[&k], &state), now())
        .await
        .unwrap();
    write_signed(
        dir.path(),
        "p.json",
        &pack("2025-10-21.9", now(), 3600, "old"),
        &k,
    );
    let RefreshOutcome::Refused(r) = loader.refresh(now()).await else {
        panic!()
    };
    assert!(r.to_string().contains("rollback refused"), "{r}");
    let snap = loader.store().current();
    assert_eq!(version(&snap), "2025-10-21.10");
    assert!(snap.decide("new.example.com", 443, now()).allowed);
    drop(loader);

    // After a restart the cached pack still sets the floor.
    let (loader, report) = Loader::start(file_config(&p, &[&k], &state), now())
        .await
        .unwrap();
    assert!(reasons(&report.refusals).contains("rollback refused"));
    let snap = loader.store().current();
    assert_eq!(version(&snap), "2025-10-21.10");
    assert!(matches!(snap.origin(), Origin::Signed { source, .. } if source.starts_with("cache:")));
}

#[tokio::test]
async fn same_version_with_other_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let p = write_signed(dir.path(), "p.json", &pack("3", now(), 3600, "a"), &k);
    let (loader, _) = Loader::start(file_config(&p, &[&k], dir.path()), now())
        .await
        .unwrap();
    write_signed(dir.path(), "p.json", &pack("3", now(), 3600, "b"), &k);
    let RefreshOutcome::Refused(r) = loader.refresh(now()).await else {
        panic!()
    };
    assert!(r.to_string().contains("bump version"), "{r}");
}

#[tokio::test]
async fn unsigned_and_unknown_field_packs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let p = dir.path().join("p.json");
    std::fs::write(&p, pack("1", now(), 3600, "one")).unwrap();
    let (loader, report) = Loader::start(file_config(&p, &[&k], dir.path()), now())
        .await
        .unwrap();
    assert!(loader.store().current().is_fallback());
    assert!(
        reasons(&report.refusals).contains("unsigned"),
        "{}",
        reasons(&report.refusals)
    );

    // A misspelt section, properly signed, is still refused, naming the field.
    let bad = String::from_utf8(pack("1", now(), 3600, "one"))
        .unwrap()
        .replace("\"fronting\"", "\"frontingg\"");
    write_signed(dir.path(), "p.json", bad.as_bytes(), &k);
    let RefreshOutcome::Refused(r) = loader.refresh(now()).await else {
        panic!()
    };
    let msg = r.to_string();
    assert!(msg.contains("unknown field `frontingg`"), "{msg}");
    assert!(loader.store().current().is_fallback());
}

#[tokio::test]
async fn a_pinned_sha256_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let bytes = pack("1", now(), 3600, "one");
    let p = write_signed(dir.path(), "p.json", &bytes, &k);
    let mut cfg = file_config(&p, &[&k], dir.path());
    cfg.pinned_sha256 = Some("0".repeat(64));
    let (loader, report) = Loader::start(cfg.clone(), now()).await.unwrap();
    assert!(loader.store().current().is_fallback());
    assert!(reasons(&report.refusals).contains("does not match the pinned"));
    cfg.pinned_sha256 = Some(sha256_hex(&bytes).to_uppercase());
    let state = tempfile::tempdir().unwrap();
    cfg.state_dir = Some(state.path().to_owned());
    let (loader, _) = Loader::start(cfg, now()).await.unwrap();
    assert!(!loader.store().current().is_fallback());
}

#[tokio::test]
async fn the_seed_example_lints_but_is_refused_as_expired() {
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/packs/examples/seed.json"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let p = write_signed(dir.path(), "seed.json", &seed, &k);
    let (loader, report) = Loader::start(file_config(&p, &[&k], dir.path()), now())
        .await
        .unwrap();
    assert!(loader.store().current().is_fallback());
    assert!(reasons(&report.refusals).contains("expired at 2025-10-21T01:00:00Z"));
}

#[tokio::test]
async fn unreachable_url_falls_back_to_cache_then_embedded_pack() {
    let url = format!("https://127.0.0.1:{}/policy.pack.json", closed_port());
    let k = key();
    let state = tempfile::tempdir().unwrap();
    let cfg = LoaderConfig {
        source: Some(PackSource::parse(&url).unwrap()),
        trusted_keys: vec![k.verifying_key()],
        state_dir: Some(state.path().to_owned()),
        ..LoaderConfig::default()
    };
    let (loader, report) = Loader::start(cfg.clone(), now()).await.unwrap();
    let snap = loader.store().current();
    assert!(snap.is_fallback());
    let why = reasons(&report.refusals);
    assert!(why.contains("cannot connect to 127.0.0.1"), "{why}");
    assert!(snap.decide("api.anthropic.com", 443, now()).allowed);

    // With a good cached pack, the cache is used instead.
    write_signed(
        state.path(),
        CACHE_PACK,
        &pack("7", now(), 3600, "cached"),
        &k,
    );
    let (loader, report) = Loader::start(cfg, now()).await.unwrap();
    let snap = loader.store().current();
    assert_eq!(version(&snap), "7", "{}", reasons(&report.refusals));
    assert!(snap.decide("cached.example.com", 443, now()).allowed);
}

#[tokio::test]
async fn https_refresh_picks_up_a_newly_signed_pack() {
    let pki = pki();
    let site = Site::start(&pki).await;
    let k = key();
    site.publish("/p/policy.pack.json", &pack("1", now(), 3600, "first"), &k);
    let state = tempfile::tempdir().unwrap();
    let cfg = LoaderConfig {
        source: Some(PackSource::parse(&site.url("/p/policy.pack.json")).unwrap()),
        trusted_keys: vec![k.verifying_key()],
        state_dir: Some(state.path().to_owned()),
        fetch: site.fetch_config(&pki),
        ..LoaderConfig::default()
    };
    let (loader, report) = Loader::start(cfg, now()).await.unwrap();
    assert!(report.refusals.is_empty(), "{}", reasons(&report.refusals));
    assert_eq!(version(&loader.store().current()), "1");
    let mut rx = loader.store().subscribe();
    rx.borrow_and_update();

    // Unchanged on the server: a conditional request answered 304.
    assert!(matches!(
        loader.refresh(now()).await,
        RefreshOutcome::Unchanged
    ));
    let last = site.hits().last().cloned().unwrap();
    assert_eq!(
        (last.status, last.if_none_match.is_some()),
        (304, true),
        "{last:?}"
    );
    assert!(!rx.has_changed().unwrap());

    // A new signed pack is picked up and announced.
    site.publish("/p/policy.pack.json", &pack("2", now(), 3600, "second"), &k);
    let RefreshOutcome::Applied(snap) = loader.refresh(now()).await else {
        panic!()
    };
    assert_eq!(version(&snap), "2");
    assert!(rx.has_changed().unwrap());
    assert_eq!(version(&rx.borrow_and_update()), "2");
    assert!(snap.decide("second.example.com", 443, now()).allowed);
    assert!(!snap.decide("first.example.com", 443, now()).allowed);

    // A badly signed update is refused; version 2 stays.
    let other = key();
    site.publish(
        "/p/policy.pack.json",
        &pack("3", now(), 3600, "third"),
        &other,
    );
    let RefreshOutcome::Refused(r) = loader.refresh(now()).await else {
        panic!()
    };
    assert!(r.to_string().contains("signature does not match"), "{r}");
    assert_eq!(version(&loader.store().current()), "2");
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_refused() {
    let pki = pki();
    let site = Site::start(&pki).await;
    let k = key();
    site.publish("/p.json", &pack("1", now(), 3600, "x"), &k);
    let fetch = site.pinned_config();
    let cfg = LoaderConfig {
        source: Some(PackSource::parse(&site.url("/p.json")).unwrap()),
        trusted_keys: vec![k.verifying_key()],
        fetch,
        ..LoaderConfig::default()
    };
    let (loader, report) = Loader::start(cfg, now()).await.unwrap();
    assert!(loader.store().current().is_fallback());
    assert!(reasons(&report.refusals).contains("TLS with policy.test failed"));
}

#[tokio::test]
async fn the_refresh_loop_applies_new_packs() {
    let pki = pki();
    let site = Site::start(&pki).await;
    let k = key();
    site.publish("/p.json", &pack("1", now(), 3600, "a"), &k);
    let cfg = LoaderConfig {
        source: Some(PackSource::parse(&site.url("/p.json")).unwrap()),
        trusted_keys: vec![k.verifying_key()],
        refresh: Some(Duration::from_millis(200)),
        fetch: site.fetch_config(&pki),
        ..LoaderConfig::default()
    };
    let (loader, _) = Loader::start(cfg, now()).await.unwrap();
    let loader = Arc::new(loader);
    let mut rx = loader.store().subscribe();
    rx.borrow_and_update();
    let l2 = loader.clone();
    let task = tokio::spawn(async move { l2.run().await });
    site.publish("/p.json", &pack("2", now(), 3600, "b"), &k);
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("the refresh loop did not pick up the new pack")
        .unwrap();
    assert_eq!(version(&rx.borrow()), "2");
    task.abort();
}

#[tokio::test]
async fn invalid_sources_and_pins_are_refused_up_front() {
    assert!(PackSource::parse("http://example.com/p.json").is_err());
    assert!(PackSource::parse("").is_err());
    let cfg = LoaderConfig {
        pinned_sha256: Some("xyz".into()),
        ..LoaderConfig::default()
    };
    assert!(Loader::start(cfg, now()).await.is_err());
    // No source and no cache: the fallback, with a reason.
    let (loader, _) = Loader::start(LoaderConfig::default(), now()).await.unwrap();
    match loader.store().current().origin() {
        Origin::Fallback { reason } => assert!(reason.contains("no --policy")),
        o => panic!("{o:?}"),
    }
}

#[test]
fn readers_never_see_a_half_applied_policy() {
    const PACKS: u32 = 300;
    let start = now();
    let store = Arc::new(PolicyStore::with_fallback("test", vec![]).unwrap());
    let candidates: Vec<Candidate> = (1..=PACKS)
        .map(|i| {
            let bytes = pack(&i.to_string(), start, 3600, &format!("v{i}"));
            Candidate {
                policy: Arc::new(parse_pack(&bytes, ValidationMode::Signed).unwrap()),
                sha256: sha256_hex(&bytes),
                bytes: bytes.into(),
                signature: Arc::from(&b""[..]),
                key_id: KeyId([0; 8]),
                source: "test".into(),
            }
        })
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut last_gen = 0;
                let mut versions = std::collections::BTreeSet::new();
                loop {
                    let snap = store.current();
                    assert!(snap.generation() >= last_gen, "generation went backwards");
                    last_gen = snap.generation();
                    if snap.is_fallback() {
                        std::thread::yield_now();
                        continue;
                    }
                    // Everything in one snapshot comes from one pack.
                    let v = version(&snap);
                    let marker = format!("v{v}");
                    assert!(snap.policy().providers.contains_key(&marker));
                    assert_eq!(snap.policy().route("claude-x").unwrap().0.lane, marker);
                    assert!(
                        snap.decide(&format!("{marker}.example.com"), 443, start)
                            .allowed
                    );
                    assert_eq!(snap.allow_rules().len(), 1);
                    assert_eq!(
                        snap.direct_rules()[0].target.to_string(),
                        format!("{marker}.example.net:22")
                    );
                    versions.insert(v.clone());
                    if v == PACKS.to_string() {
                        return versions.len();
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    for c in &candidates {
        store.offer(c, start).unwrap();
        std::thread::yield_now();
    }
    for r in readers {
        assert!(r.join().unwrap() >= 1);
    }
    assert_eq!(version(&store.current()), PACKS.to_string());
}
