//! No credential reaches the logs: every log line the process writes at
//! TRACE level (the router's own, hyper's, rustls' via `log`) is captured
//! while requests carry client secrets, injected lane keys, a passthrough
//! bearer and a missing credential, and none of the secrets appear.
//! A separate test binary, because it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "router_support/mod.rs"]
mod router_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use router_support::*;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const LANE_KEY: &str = "sk-lane-injected-SECRET-1111";
const FALLBACK: &str = "sk-fallback-SECRET-2222";
const CLIENT_BEARER_TOKEN: &str = "client-bearer-SECRET-3333";
const CLIENT_API_KEY: &str = "client-apikey-SECRET-4444";
const CLIENT_COOKIE: &str = "client-cookie-SECRET-5555";
const FILE_KEY: &str = "sk-from-file-SECRET-6666";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_in_logs_at_debug_and_trace_level() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish()
        .try_init()
        .unwrap();

    let pki = Pki::new(&["lane-a.test", "lane-b.test", "lane-c.test"]);
    let mock = MockProvider::start("127.0.0.2", &pki, ALPN_H2, echo("x")).await;
    let mock_h1 = MockProvider::start("127.0.0.3", &pki, ALPN_H1, echo("y")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FILE_KEY"), FILE_KEY).unwrap();
    let providers = format!(
        r#"{{"a":{{"baseURL":"https://lane-a.test:{pa}","authHeader":{{"mode":"x-api-key","env":"LANE_KEY"}}}},
            "b":{{"baseURL":"https://lane-b.test:{pb}","authHeader":{{"mode":"bearer","passthrough":true,"fallbackEnv":"FALLBACK"}}}},
            "c":{{"baseURL":"https://lane-c.test:{pa}","authHeader":{{"mode":"bearer","env":"FILE_KEY"}}}},
            "d":{{"baseURL":"https://lane-c.test:{pa}","authHeader":{{"mode":"bearer","env":"MISSING_KEY"}}}}}}"#,
        pa = mock.port(),
        pb = mock_h1.port()
    );
    let matchers = r#"[{"pattern":"claude-haiku-*","lane":"a"},{"pattern":"claude-sonnet-*","lane":"b"},
        {"pattern":"claude-opus-*","lane":"c"},{"pattern":"other-*","lane":"d"}]"#;
    let h = Harness::start(
        &pack(matchers, &providers, ""),
        Options {
            pins: vec![
                pin("lane-a.test", &mock),
                pin("lane-b.test", &mock_h1),
                pin("lane-c.test", &mock),
            ],
            extra_ca: vec![pki.ca_der.clone()],
            env: vec![
                ("LANE_KEY".into(), LANE_KEY.into()),
                ("FALLBACK".into(), FALLBACK.into()),
            ],
            credentials_dir: Some(dir.path().into()),
        },
    )
    .await;
    let c = client();
    let bearer = format!("Bearer {CLIENT_BEARER_TOKEN}");
    let cookie = format!("s={CLIENT_COOKIE}");
    let with_secrets = [
        ("authorization", bearer.as_str()),
        ("x-api-key", CLIENT_API_KEY),
        ("cookie", cookie.as_str()),
    ];
    let mut statuses = Vec::new();
    for (model, headers) in [
        ("claude-haiku-4-5", &with_secrets[..]),
        ("claude-sonnet-4-5", &with_secrets[..]),
        ("claude-sonnet-4-5", &with_secrets[2..]),
        ("claude-opus-4-1", &with_secrets[..]),
        ("other-model", &with_secrets[..]),
        ("unknown-model", &with_secrets[..]),
    ] {
        let (parts, _) = send(
            &c,
            post(&h.url("/v1/messages"), messages_body(model), headers),
        )
        .await;
        statuses.push(parts.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 502, 400]);
    // The secrets did travel where they should (so their absence from the
    // logs means something).
    let recs = mock.recorded();
    assert_eq!(recs[0].header("x-api-key"), Some(LANE_KEY));
    assert_eq!(
        recs[1].header("authorization"),
        Some(format!("Bearer {FILE_KEY}").as_str())
    );
    let recs = mock_h1.recorded();
    assert_eq!(recs[0].header("authorization"), Some(bearer.as_str()));
    assert_eq!(
        recs[1].header("authorization"),
        Some(format!("Bearer {FALLBACK}").as_str())
    );

    let events = h.wait_events(6).await;
    drop(h);
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture works and holds router lines at debug level.
    assert!(
        logs.contains("routing request"),
        "no debug routing line captured:\n{logs}"
    );
    assert!(
        logs.contains("router request"),
        "no audit line captured:\n{logs}"
    );
    assert!(logs.contains("claude-haiku-4-5"));
    assert!(
        logs.contains("MISSING_KEY"),
        "the missing credential's name should be logged"
    );
    for secret in [
        LANE_KEY,
        FALLBACK,
        CLIENT_BEARER_TOKEN,
        CLIENT_API_KEY,
        CLIENT_COOKIE,
        FILE_KEY,
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
        for e in &events {
            let json = serde_json::to_string(e).unwrap();
            assert!(!json.contains(secret), "{secret} appears in an audit event");
        }
    }
}
