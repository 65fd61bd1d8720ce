//! End-to-end tests of the lane router: real sockets on loopback, HTTPS
//! mock providers on 127.0.0.2-4 with a test CA (rcgen), provider names
//! pinned with `--resolve`-style overrides, hyper and curl as clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "router_support/mod.rs"]
mod router_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use proxy::reason::Reason;
use router_support::*;
use tokio::sync::mpsc;

const KEY_A: &str = "lane-a-secret-key-AAAA";
const KEY_B: &str = "lane-b-secret-key-BBBB";
const FALLBACK_C: &str = "lane-c-fallback-token-CCCC";
const CLIENT_BEARER: &str = "Bearer client-own-token-XXXX";
const CLIENT_KEY: &str = "client-own-api-key-YYYY";

const SANS: &[&str] = &[
    "lane-a.test",
    "lane-b.test",
    "lane-c.test",
    "lane-d.test",
    "lane-e.test",
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
];

const MATCHERS: &str = r#"[{"pattern":"claude-haiku-*","lane":"a"},
    {"pattern":"claude-sonnet-*","lane":"b"},
    {"pattern":"claude-opus-*","lane":"c"}]"#;

/// Lane A (HTTP/2 offered, x-api-key injected, path prefix), lane B
/// (HTTP/1.1 only, bearer injected), lane C (passthrough bearer with a
/// fallback).
struct Lanes {
    pki: Pki,
    a: MockProvider,
    b: MockProvider,
    c: MockProvider,
}

impl Lanes {
    async fn start(a: Handler, b: Handler, c: Handler) -> Self {
        let pki = Pki::new(SANS);
        let a = MockProvider::start("127.0.0.2", &pki, ALPN_H2, a).await;
        let b = MockProvider::start("127.0.0.3", &pki, ALPN_H1, b).await;
        let c = MockProvider::start("127.0.0.4", &pki, ALPN_H2, c).await;
        Self { pki, a, b, c }
    }

    async fn echo() -> Self {
        Self::start(echo("a"), echo("b"), echo("c")).await
    }

    fn providers(&self) -> String {
        format!(
            r#"{{"a":{{"baseURL":"https://lane-a.test:{}/api/anthropic","authHeader":{{"mode":"x-api-key","env":"LANE_A_KEY"}},"paths":["POST /v1/other"]}},
                "b":{{"baseURL":"https://lane-b.test:{}","authHeader":{{"mode":"bearer","env":"LANE_B_KEY"}}}},
                "c":{{"baseURL":"https://lane-c.test:{}","authHeader":{{"mode":"bearer","passthrough":true,"fallbackEnv":"LANE_C_FALLBACK"}}}}}}"#,
            self.a.port(),
            self.b.port(),
            self.c.port()
        )
    }

    fn options(&self) -> Options {
        Options {
            pins: vec![
                pin("lane-a.test", &self.a),
                pin("lane-b.test", &self.b),
                pin("lane-c.test", &self.c),
            ],
            extra_ca: vec![self.pki.ca_der.clone()],
            env: vec![
                ("LANE_A_KEY".into(), KEY_A.into()),
                ("LANE_B_KEY".into(), KEY_B.into()),
                ("LANE_C_FALLBACK".into(), FALLBACK_C.into()),
            ],
            credentials_dir: None,
        }
    }

    async fn router(&self) -> Harness {
        Harness::start(&pack(MATCHERS, &self.providers(), ""), self.options()).await
    }

    async fn router_with_limits(&self, limits: &str) -> Harness {
        Harness::start(
            &pack_with_limits(MATCHERS, &self.providers(), limits),
            self.options(),
        )
        .await
    }
}

fn served_by(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    v["served_by"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn routes_each_model_to_the_first_matching_lane() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c = client();

    for (model, lane) in [
        ("claude-haiku-4-5", "a"),
        ("claude-sonnet-4-5", "b"),
        ("claude-opus-4-1", "c"),
    ] {
        let (parts, body) = send(
            &c,
            post(
                &h.url("/v1/messages?beta=true"),
                messages_body(model),
                &[("authorization", CLIENT_BEARER)],
            ),
        )
        .await;
        assert_eq!(
            parts.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(served_by(&body), lane, "{model}");
    }
    assert_eq!(
        (lanes.a.count(), lanes.b.count(), lanes.c.count()),
        (1, 1, 1)
    );
    // baseURL + path + query; the lane's host as Host/:authority.
    let a = lanes.a.last();
    assert_eq!(a.method, "POST");
    assert_eq!(a.target, "/api/anthropic/v1/messages?beta=true");
    assert_eq!(a.authority, format!("lane-a.test:{}", lanes.a.port()));
    let b = lanes.b.last();
    assert_eq!(b.target, "/v1/messages?beta=true");
    assert_eq!(b.authority, format!("lane-b.test:{}", lanes.b.port()));
    // ALPN decides the upstream protocol.
    assert_eq!(a.version, Version::HTTP_2);
    assert_eq!(b.version, Version::HTTP_11);

    // Unknown model: an Anthropic-style 400 naming it; no provider sees it.
    let (parts, body) = send(
        &c,
        post(&h.url("/v1/messages"), messages_body("gpt-5-turbo"), &[]),
    )
    .await;
    assert_eq!(parts.status, 400);
    assert_eq!(parts.headers["x-enforcer-error"], "unknown_model");
    let (ty, msg) = anthropic_error(&body);
    assert_eq!(ty, "invalid_request_error");
    assert!(msg.contains("gpt-5-turbo"), "{msg}");
    assert_eq!(
        (lanes.a.count(), lanes.b.count(), lanes.c.count()),
        (1, 1, 1)
    );

    // No body: the default lane (no catch-all matcher: the first matcher's lane).
    let req = Request::get(h.url("/v1/models?limit=5"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = send(&c, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(served_by(&body), "a");
    let a = lanes.a.last();
    assert_eq!(a.method, "GET");
    assert_eq!(a.target, "/api/anthropic/v1/models?limit=5");
    assert!(a.body.is_empty());

    // A body without a model goes to the default lane too.
    let (_, body) = send(&c, post(&h.url("/v1/other"), r#"{"x":1}"#, &[])).await;
    assert_eq!(served_by(&body), "a");

    // A model the scanner cannot pin down safely is refused.
    let (parts, body) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            r#"{"model":"claude-haiku-4-5","model":"claude-opus-4-1"}"#,
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 400);
    assert!(
        anthropic_error(&body).1.contains("more than one"),
        "{body:?}"
    );

    // Audit: one event per request with the lane, model, host and status.
    let events = h.wait_events(7).await;
    let haiku = events
        .iter()
        .find(|e| e.model.as_deref() == Some("claude-haiku-4-5") && e.reason == Reason::Completed)
        .unwrap();
    assert_eq!(haiku.lane.as_deref(), Some("a"));
    assert_eq!(
        haiku.provider_host.as_deref(),
        Some(format!("lane-a.test:{}", lanes.a.port()).as_str())
    );
    assert_eq!(haiku.status, Some(200));
    assert_eq!(haiku.path, "/v1/messages");
    assert_eq!(haiku.upstream_version, Some("HTTP/2"));
    assert_eq!(
        haiku.bytes_up,
        messages_body("claude-haiku-4-5").len() as u64
    );
    assert!(haiku.bytes_down > 0);
    assert!(haiku.ttfb.is_some());
    let unknown = events
        .iter()
        .find(|e| e.reason == Reason::UnknownModel)
        .unwrap();
    assert_eq!(unknown.model.as_deref(), Some("gpt-5-turbo"));
    assert_eq!(unknown.status, Some(400));
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c = client();
    for _ in 0..3 {
        for model in ["claude-haiku-4-5", "claude-sonnet-4-5"] {
            let (parts, _) =
                send(&c, post(&h.url("/v1/messages"), messages_body(model), &[])).await;
            assert_eq!(parts.status, 200);
        }
    }
    assert_eq!(lanes.a.count(), 3);
    assert_eq!(lanes.b.count(), 3);
    assert_eq!(
        lanes
            .a
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "HTTP/2 lane"
    );
    assert_eq!(
        lanes
            .b
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "HTTP/1.1 lane"
    );
}

#[tokio::test]
async fn lanes_receive_only_their_own_credential() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c = client();
    let client_headers = [
        ("authorization", CLIENT_BEARER),
        ("x-api-key", CLIENT_KEY),
        ("cookie", "session=client-cookie"),
        ("proxy-authorization", "Basic Y2xpZW50OnB3"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ("x-stainless-lang", "python"),
    ];
    for model in ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"] {
        let (parts, _) = send(
            &c,
            post(
                &h.url("/v1/messages"),
                messages_body(model),
                &client_headers,
            ),
        )
        .await;
        assert_eq!(parts.status, 200);
    }
    let a = lanes.a.last();
    let b = lanes.b.last();
    let p = lanes.c.last();
    // Lane A: its own x-api-key only.
    assert_eq!(a.header("x-api-key"), Some(KEY_A));
    assert_eq!(a.headers.get_all("x-api-key").iter().count(), 1);
    assert_eq!(a.header("authorization"), None);
    // Lane B: its own bearer only.
    assert_eq!(
        b.header("authorization"),
        Some(format!("Bearer {KEY_B}").as_str())
    );
    assert_eq!(b.header("x-api-key"), None);
    // The passthrough lane gets the client's bearer, and only that.
    assert_eq!(p.header("authorization"), Some(CLIENT_BEARER));
    assert_eq!(p.header("x-api-key"), None);
    for r in [&a, &b, &p] {
        for never in ["cookie", "proxy-authorization"] {
            assert_eq!(
                r.header(never),
                None,
                "{never} forwarded to {}",
                r.authority
            );
        }
        for kept in ["anthropic-version", "anthropic-beta", "x-stainless-lang"] {
            let sent = client_headers.iter().find(|(k, _)| *k == kept).unwrap().1;
            assert_eq!(r.header(kept), Some(sent), "{kept} at {}", r.authority);
        }
    }
    // No header of any lane carries a credential that is not that lane's.
    for (r, own) in [(&a, KEY_A), (&b, KEY_B), (&p, "client-own-token")] {
        let all: Vec<String> = r
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        for secret in [
            KEY_A,
            KEY_B,
            FALLBACK_C,
            "client-own-token",
            CLIENT_KEY,
            "client-cookie",
        ] {
            if secret != own {
                assert!(
                    all.iter().all(|h| !h.contains(secret)),
                    "{} received {secret}: {all:?}",
                    r.authority
                );
            }
        }
    }

    // Passthrough lane, client logged in with an API key: its x-api-key
    // goes through as is (and still only to this lane).
    let (parts, _) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-opus-4-1"),
            &[
                ("x-api-key", CLIENT_KEY),
                ("cookie", "session=client-cookie"),
            ],
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    let p = lanes.c.last();
    assert_eq!(p.header("x-api-key"), Some(CLIENT_KEY));
    assert_eq!(p.header("authorization"), None);
    assert_eq!(p.header("cookie"), None);

    // Passthrough lane, client sent no credential: the fallback credential.
    let (parts, _) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-opus-4-1"),
            &[("cookie", "session=client-cookie")],
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    let p = lanes.c.last();
    assert_eq!(
        p.header("authorization"),
        Some(format!("Bearer {FALLBACK_C}").as_str())
    );
    assert_eq!(p.header("x-api-key"), None);
    assert_eq!(p.header("cookie"), None);
}

#[tokio::test]
async fn policy_strip_list_and_hop_by_hop_headers_are_dropped() {
    let lanes = Lanes::echo().await;
    let json = pack(
        MATCHERS,
        &lanes.providers(),
        r#","stripHeaders":["X-Internal-Token"]"#,
    );
    let h = Harness::start(&json, lanes.options()).await;
    let c = client();
    let (parts, _) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-sonnet-4-5"),
            &[
                ("x-internal-token", "internal-secret"),
                ("connection", "x-hop-only"),
                ("x-hop-only", "1"),
                ("x-kept", "yes"),
            ],
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    let b = lanes.b.last();
    assert_eq!(b.header("x-internal-token"), None);
    assert_eq!(b.header("x-hop-only"), None);
    assert_eq!(b.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn missing_credential_is_a_clear_error_and_never_an_unauthenticated_request() {
    let pki = Pki::new(SANS);
    let mock = MockProvider::start("127.0.0.2", &pki, ALPN_H2, echo("d")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FILE_KEY"), "key-from-credentials-dir\n").unwrap();
    let providers = format!(
        r#"{{"d":{{"baseURL":"https://lane-d.test:{p}","authHeader":{{"mode":"x-api-key","env":"FILE_KEY"}}}},
            "e":{{"baseURL":"https://lane-e.test:{p}","authHeader":{{"mode":"bearer","env":"NOT_CONFIGURED_KEY"}}}},
            "f":{{"baseURL":"https://lane-e.test:{p}","authHeader":{{"mode":"bearer","passthrough":true}}}}}}"#,
        p = mock.port()
    );
    let matchers = r#"[{"pattern":"claude-haiku-*","lane":"d"},{"pattern":"claude-sonnet-*","lane":"e"},{"pattern":"claude-opus-*","lane":"f"}]"#;
    let h = Harness::start(
        &pack(matchers, &providers, ""),
        Options {
            pins: vec![pin("lane-d.test", &mock), pin("lane-e.test", &mock)],
            extra_ca: vec![pki.ca_der.clone()],
            env: vec![("FILE_KEY".into(), "env-value-must-lose".into())],
            credentials_dir: Some(dir.path().into()),
        },
    )
    .await;
    let c = client();

    // $CREDENTIALS_DIRECTORY/<NAME> is read (and wins over the environment).
    let (parts, _) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        mock.last().header("x-api-key"),
        Some("key-from-credentials-dir")
    );

    // Missing: a 502 naming the variable; the provider sees nothing.
    let before = mock.count();
    let (parts, body) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-sonnet-4-5"),
            &[("authorization", CLIENT_BEARER)],
        ),
    )
    .await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-enforcer-error"], "missing_credential");
    let (ty, msg) = anthropic_error(&body);
    assert_eq!(ty, "api_error");
    assert!(msg.contains("NOT_CONFIGURED_KEY"), "{msg}");
    assert!(msg.contains("lane `e`"), "{msg}");
    assert!(!msg.contains("client-own-token"), "{msg}");

    // Passthrough without fallback and no client credential: 401, not a bare request.
    let (parts, body) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-opus-4-1"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 401);
    assert_eq!(anthropic_error(&body).0, "authentication_error");
    assert_eq!(mock.count(), before);
}

#[tokio::test]
async fn provider_errors_pass_through_unchanged() {
    let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_42"}"#;
    let lanes = Lanes::start(
        echo("a"),
        handler(move |_| {
            Response::builder()
                .status(429)
                .header("content-type", "application/json")
                .header("retry-after", "7")
                .header("request-id", "req_42")
                .header("anthropic-ratelimit-requests-remaining", "0")
                .header("x-provider-odd", "  a\tb  ")
                .body(MockBody::full(body))
                .unwrap()
        }),
        echo("c"),
    )
    .await;
    let h = lanes.router().await;
    let (parts, got) = send(
        &client(),
        post(
            &h.url("/v1/messages"),
            messages_body("claude-sonnet-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 429);
    assert_eq!(got, body.as_bytes());
    assert_eq!(parts.headers["retry-after"], "7");
    assert_eq!(parts.headers["request-id"], "req_42");
    assert_eq!(parts.headers["anthropic-ratelimit-requests-remaining"], "0");
    assert_eq!(parts.headers["x-provider-odd"].as_bytes(), b"a\tb");
    assert!(parts.headers.get("x-enforcer-error").is_none());
    let events = h.wait_events(1).await;
    assert_eq!(events[0].status, Some(429));
    assert_eq!(events[0].reason, Reason::Completed);
}

/// Hash of the named headers' values in order (name, value bytes).
fn header_digest(headers: &http::HeaderMap, names: &[&str]) -> String {
    let mut all = Vec::new();
    for n in names {
        for v in headers.get_all(*n) {
            all.extend_from_slice(n.as_bytes());
            all.push(0);
            all.extend_from_slice(v.as_bytes());
            all.push(0);
        }
    }
    sha256_hex(&all)
}

#[tokio::test]
async fn unknown_json_fields_and_headers_arrive_byte_identical() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c = client();
    let names = [
        "x-unknown-a",
        "x-unknown-b",
        "x-multi",
        "anthropic-beta",
        "anthropic-version",
    ];
    for model in ["claude-haiku-4-5", "claude-sonnet-4-5"] {
        let body = format!(
            "  {{ \"unknown_first\" : {{\"n\": [1, 2.50, -0.0, 1e400, \"\\u00e9\\ud83d\\ude00\", null]}},\n\t\"model\" : \"{model}\" ,\"max_tokens\":1,\"z\":\"  spaces  \" , \"a\":{{}}}}  \n"
        );
        let mut req = post(&h.url("/v1/messages"), body.clone(), &[]);
        let hm = req.headers_mut();
        hm.insert(
            "x-unknown-a",
            HeaderValue::from_static("value  with   inner\tspaces"),
        );
        hm.insert(
            "x-unknown-b",
            HeaderValue::from_bytes(b"caf\xc3\xa9 \xff obs-text").unwrap(),
        );
        hm.append("x-multi", HeaderValue::from_static("one"));
        hm.append("x-multi", HeaderValue::from_static("two"));
        hm.insert(
            "anthropic-beta",
            HeaderValue::from_static("prompt-caching-2024-07-31,tools-2024-04-04"),
        );
        hm.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        let sent_headers = header_digest(req.headers(), &names);
        let (parts, resp) = send(&c, req).await;
        assert_eq!(parts.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(
            v["sha256"],
            sha256_hex(body.as_bytes()),
            "{model}: body changed"
        );
        let rec = if model.contains("haiku") {
            lanes.a.last()
        } else {
            lanes.b.last()
        };
        assert_eq!(sha256_hex(&rec.body), sha256_hex(body.as_bytes()));
        assert_eq!(
            header_digest(&rec.headers, &names),
            sent_headers,
            "{model}: headers changed"
        );
    }
}

fn sse_event(k: usize) -> String {
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"t{k}\"}}}}\n\n"
    )
}

/// The mock sends event k+1 only after the test client has received event
/// k (acknowledged out of band). A router that buffers any part of the
/// stream deadlocks here and the test fails at its timeout.
async fn lockstep_sse(model: &str) {
    const N: usize = 20;
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<usize>();
    let ack_rx = Arc::new(tokio::sync::Mutex::new(ack_rx));
    let sse = handler(move |_| {
        let (body, tx, _dropped) = MockBody::channel();
        let ack = ack_rx.clone();
        tokio::spawn(async move {
            let mut ack = ack.lock().await;
            for k in 0..N {
                if tx.send(Bytes::from(sse_event(k))).await.is_err() {
                    return;
                }
                // Longer than the client's wait, so a buffering router
                // fails the client first rather than seeing the stream end.
                match tokio::time::timeout(STEP * 2, ack.recv()).await {
                    Ok(Some(got)) if got == k => {}
                    _ => return,
                }
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body)
            .unwrap()
    });
    let lanes = Lanes::start(sse.clone(), sse.clone(), sse).await;
    let h = lanes.router().await;
    let c = client();
    let req = post(
        &h.url("/v1/messages"),
        format!(r#"{{"model":"{model}","stream":true,"max_tokens":8,"messages":[]}}"#),
        &[],
    );
    let received = within(
        "lockstep SSE through the router (a buffering router deadlocks here)",
        async {
            let resp = c.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            let mut body = resp.into_body();
            let mut all = Vec::new();
            let mut acked = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap();
                if let Some(d) = frame.data_ref() {
                    all.extend_from_slice(d);
                }
                let complete = String::from_utf8_lossy(&all).matches("\n\n").count();
                assert!(
                    complete <= acked + 1,
                    "event {} arrived before event {acked} was acknowledged",
                    acked + 1
                );
                while acked < complete {
                    ack_tx.send(acked).unwrap();
                    acked += 1;
                }
            }
            all
        },
    )
    .await;
    let expected: String = (0..N).map(sse_event).collect();
    assert_eq!(String::from_utf8(received).unwrap(), expected);
}

#[tokio::test]
async fn sse_is_relayed_unbuffered_over_http2_upstream() {
    lockstep_sse("claude-haiku-4-5").await;
}

#[tokio::test]
async fn sse_is_relayed_unbuffered_over_http11_upstream() {
    lockstep_sse("claude-sonnet-4-5").await;
}

/// Runs curl against the router; returns (status, body).
async fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}"])
        .args(args)
        .kill_on_drop(true);
    let output = within("curl", cmd.output())
        .await
        .unwrap_or_else(|e| panic!("curl could not be started: {e} (is it installed?)"));
    let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let status = code.parse().unwrap_or_else(|_| {
        panic!(
            "curl failed: {code} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (status, std::fs::read(&out).unwrap_or_default())
}

fn padded_body(model: &str, total: usize) -> Vec<u8> {
    let head = format!(r#"{{"model":"{model}","max_tokens":1,"pad":""#);
    let tail = "\"}";
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(head.as_bytes());
    b.resize(total - tail.len(), b'x');
    b.extend_from_slice(tail.as_bytes());
    assert_eq!(b.len(), total);
    b
}

#[tokio::test]
async fn a_32_mib_body_is_accepted_and_one_byte_more_is_refused_with_413() {
    const MIB32: usize = 32 * 1024 * 1024;
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.json");
    let big = dir.path().join("big.json");
    let ok_body = padded_body("claude-haiku-4-5", MIB32);
    std::fs::write(&ok, &ok_body).unwrap();
    std::fs::write(&big, padded_body("claude-haiku-4-5", MIB32 + 1)).unwrap();
    let url = h.url("/v1/messages");
    let data = |p: &std::path::Path| format!("@{}", p.display());

    let (status, body) = curl(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        &data(&ok),
        &url,
    ])
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["len"], MIB32);
    assert_eq!(v["sha256"], sha256_hex(&ok_body));

    // Over the limit: with Expect: 100-continue (the body is never sent),
    // without it (the router drains, then answers), and chunked.
    for extra in [
        ["-H", "Expect: 100-continue"],
        ["-H", "Expect:"],
        ["-H", "Transfer-Encoding: chunked"],
    ] {
        let (status, body) = curl(&[
            "-H",
            "content-type: application/json",
            extra[0],
            extra[1],
            "--data-binary",
            &data(&big),
            &url,
        ])
        .await;
        assert_eq!(status, 413, "{extra:?}: {}", String::from_utf8_lossy(&body));
        let (ty, msg) = anthropic_error(&body);
        assert_eq!(ty, "request_too_large");
        assert!(msg.contains("33554432"), "{msg}");
    }
    assert_eq!(
        lanes.a.count(),
        1,
        "an over-limit body reached the provider"
    );
}

#[tokio::test]
async fn response_larger_than_the_limit_is_cut() {
    const CHUNK: usize = 16 * 1024;
    let big = handler(|_| {
        let (body, tx, _dropped) = MockBody::channel();
        tokio::spawn(async move {
            for _ in 0..16 {
                if tx.send(Bytes::from(vec![b'z'; CHUNK])).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap()
    });
    let lanes = Lanes::start(big.clone(), big.clone(), big).await;
    let h = lanes
        .router_with_limits(r#"{"maxResponseBytes":65536}"#)
        .await;
    let c = client();
    for model in ["claude-haiku-4-5", "claude-sonnet-4-5"] {
        let (received, failed) = within("cut response", async {
            let resp = c
                .request(post(&h.url("/v1/messages"), messages_body(model), &[]))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let mut n = 0usize;
            loop {
                match body.frame().await {
                    None => return (n, false),
                    Some(Err(_)) => return (n, true),
                    Some(Ok(f)) => n += f.data_ref().map_or(0, |d| d.len()),
                }
            }
        })
        .await;
        assert!(
            failed,
            "{model}: the stream ended normally after {received} bytes"
        );
        assert!(received <= 65536, "{model}: {received} bytes relayed");
    }
    let events = h.wait_events(2).await;
    for e in &events {
        assert_eq!(e.reason, Reason::ResponseTooLarge);
        assert!(e.bytes_down <= 65536);
    }
}

/// A handler that streams one event, then stalls; reports on `seen` when
/// its stream is dropped by the router.
fn stall_after_one_event(seen: mpsc::UnboundedSender<&'static str>) -> Handler {
    handler(move |_| {
        let (body, tx, dropped) = MockBody::channel();
        let seen = seen.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from(sse_event(0))).await;
            // Hold the stream open (tx alive) until the router drops it.
            let _ = tokio::time::timeout(STEP * 2, dropped).await;
            let _ = seen.send("dropped");
            drop(tx);
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    })
}

#[tokio::test]
async fn idle_stream_is_cut_after_the_idle_timeout() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let stall = stall_after_one_event(seen_tx);
    let lanes = Lanes::start(stall.clone(), stall.clone(), stall).await;
    let h = lanes
        .router_with_limits(r#"{"idleTimeoutSeconds":1}"#)
        .await;
    let c = client();
    let (first, failed) = within("idle cut", async {
        let resp = c
            .request(post(
                &h.url("/v1/messages"),
                messages_body("claude-haiku-4-5"),
                &[],
            ))
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let rest = body.frame().await;
        (first, matches!(rest, Some(Err(_))))
    })
    .await;
    assert_eq!(first, sse_event(0).as_bytes());
    assert!(failed, "the stalled stream was not cut");
    assert_eq!(
        within("upstream dropped", seen_rx.recv()).await,
        Some("dropped")
    );
    let events = h.wait_events(1).await;
    assert_eq!(events[0].reason, Reason::IdleTimeout);
}

#[tokio::test]
async fn no_response_head_within_the_first_byte_timeout_is_a_504() {
    let never: Handler = Arc::new(|_| {
        Box::pin(async {
            tokio::time::sleep(STEP * 2).await;
            json_response(200, "{}")
        })
    });
    let lanes = Lanes::start(never.clone(), never.clone(), never).await;
    let h = lanes
        .router_with_limits(r#"{"firstByteTimeoutSeconds":1}"#)
        .await;
    let (parts, body) = send(
        &client(),
        post(
            &h.url("/v1/messages"),
            messages_body("claude-sonnet-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 504);
    let (ty, msg) = anthropic_error(&body);
    assert_eq!(ty, "timeout_error");
    assert!(msg.contains("firstByteTimeoutSeconds"), "{msg}");
    assert!(msg.contains("lane `b`"), "{msg}");
}

#[tokio::test]
async fn client_abort_cancels_the_upstream_request() {
    for model in ["claude-haiku-4-5", "claude-sonnet-4-5"] {
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<&'static str>();
        let endless = handler(move |_| {
            let (body, tx, mut dropped) = MockBody::channel();
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + STEP * 2;
                let mut k = 0;
                while tokio::time::Instant::now() < deadline {
                    if tx.send(Bytes::from(sse_event(k))).await.is_err() {
                        break;
                    }
                    k += 1;
                    tokio::select! {
                        _ = &mut dropped => break,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                let _ = seen.send("cancelled");
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        });
        let lanes = Lanes::start(endless.clone(), endless.clone(), endless).await;
        let h = lanes.router().await;
        {
            let c = client();
            let resp = within(
                "stream start",
                c.request(post(&h.url("/v1/messages"), messages_body(model), &[])),
            )
            .await
            .unwrap();
            let mut body = resp.into_body();
            let first = within("first event", body.frame()).await.unwrap().unwrap();
            assert!(first.is_data());
            // Dropping the body and the client closes the connection.
        }
        assert_eq!(
            within("upstream cancelled after client abort", seen_rx.recv()).await,
            Some("cancelled"),
            "{model}"
        );
        let events = h.wait_events(1).await;
        assert_eq!(events[0].reason, Reason::ClientClosed, "{model}");
        assert!(events[0].bytes_down > 0);
        within("in-flight drops to zero", async {
            while h.router.in_flight() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn providers_are_trusted_only_with_the_extra_ca() {
    let lanes = Lanes::echo().await;
    let mut opts = lanes.options();
    opts.extra_ca.clear();
    let h = Harness::start(&pack(MATCHERS, &lanes.providers(), ""), opts).await;
    let (parts, body) = send(
        &client(),
        post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-enforcer-error"], "upstream_connect_failed");
    let (ty, msg) = anthropic_error(&body);
    assert_eq!(ty, "api_error");
    assert!(msg.contains("TLS handshake with lane-a.test"), "{msg}");
    assert_eq!(lanes.a.count(), 0);
}

#[tokio::test]
async fn a_policy_reload_reroutes_new_requests() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c = client();
    let (_, body) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(served_by(&body), "a");
    let swapped = r#"[{"pattern":"claude-haiku-*","lane":"b"}]"#;
    h.policy
        .send(snapshot(&pack(swapped, &lanes.providers(), "")))
        .unwrap();
    let (_, body) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(served_by(&body), "b");
    let (parts, _) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-sonnet-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status, 400);
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = h.router.clone();
    let task = tokio::spawn(async move {
        router
            .serve_unix(listener, async {
                let _ = stop_rx.await;
            })
            .await
    });
    let (status, body) = curl(&[
        "--unix-socket",
        path.to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "-H",
        "x-api-key: from-curl",
        "--data-binary",
        &messages_body("claude-sonnet-4-5"),
        "http://localhost/v1/messages",
    ])
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(served_by(&body), "b");
    let b = lanes.b.last();
    assert_eq!(b.authority, format!("lane-b.test:{}", lanes.b.port()));
    assert_eq!(b.header("x-api-key"), None);
    let events = h.wait_events(1).await;
    assert!(matches!(
        events[0].client,
        proxy::router::audit::Peer::Unix { .. }
    ));
    stop_tx.send(()).unwrap();
    within("unix listener stops", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut req = post(
        &h.url("/v1/messages"),
        messages_body("claude-haiku-4-5"),
        &[],
    );
    req.headers_mut().insert(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("client"),
    );
    let (parts, body) = send(&c, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(served_by(&body), "a");
    assert_eq!(lanes.a.last().header("x-api-key"), Some(KEY_A));
}

/// A handler that streams one event, then finishes when `release` fires.
fn one_event_then_wait(release: Arc<tokio::sync::Notify>) -> Handler {
    handler(move |_| {
        let (body, tx, _dropped) = MockBody::channel();
        let release = release.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from(sse_event(0))).await;
            let _ = tokio::time::timeout(STEP * 2, release.notified()).await;
            let _ = tx.send(Bytes::from(sse_event(1))).await;
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    })
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_get_529_overloaded() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = one_event_then_wait(release.clone());
    let lanes = Lanes::start(slow.clone(), slow.clone(), slow).await;
    let h = lanes
        .router_with_limits(r#"{"maxConcurrentRequests":1}"#)
        .await;
    let c = client();
    let first = within(
        "first request",
        c.request(post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        )),
    )
    .await
    .unwrap();
    let mut first_body = first.into_body();
    within("first event", first_body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.router.in_flight(), 1);

    let (parts, body) = send(
        &c,
        post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        ),
    )
    .await;
    assert_eq!(parts.status.as_u16(), 529);
    let (ty, msg) = anthropic_error(&body);
    assert_eq!(ty, "overloaded_error");
    assert!(msg.contains("maxConcurrentRequests"), "{msg}");

    release.notify_one();
    let rest = within("first response ends", first_body.collect())
        .await
        .unwrap();
    assert_eq!(rest.to_bytes(), sse_event(1).as_bytes());
    // The slot is free again (only the head is awaited: this mock's
    // stream waits for another release).
    let third = within(
        "third request",
        client().request(post(
            &h.url("/v1/messages"),
            messages_body("claude-sonnet-4-5"),
            &[],
        )),
    )
    .await
    .unwrap();
    let parts = third.into_parts().0;
    assert_eq!(parts.status, 200, "the slot was not freed");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_in_flight_streams() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = one_event_then_wait(release.clone());
    let lanes = Lanes::start(slow.clone(), slow.clone(), slow).await;
    let mut h = lanes.router().await;
    let c = client();
    let resp = within(
        "stream start",
        c.request(post(
            &h.url("/v1/messages"),
            messages_body("claude-haiku-4-5"),
            &[],
        )),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    within("first event", body.frame()).await.unwrap().unwrap();

    let served = h.shutdown();
    // The listener closes: new connections are refused.
    within("listener closed", async {
        while tokio::net::TcpStream::connect(h.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        !served.is_finished(),
        "serve returned with a stream in flight"
    );
    // The in-flight stream still completes.
    release.notify_one();
    let rest = within("stream completes", body.collect()).await.unwrap();
    assert_eq!(rest.to_bytes(), sse_event(1).as_bytes());
    within("serve returns", served).await.unwrap().unwrap();
    let events = h.wait_events(1).await;
    assert_eq!(events[0].reason, Reason::Completed);
}

/// Fires `tx` when dropped (the mock's handler future was abandoned).
struct DropSignal(Option<mpsc::UnboundedSender<&'static str>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send("abandoned");
        }
    }
}

#[tokio::test]
async fn client_abort_before_the_response_head_cancels_the_upstream_request() {
    for model in ["claude-haiku-4-5", "claude-sonnet-4-5"] {
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<&'static str>();
        let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<()>();
        let thinking: Handler = Arc::new(move |_| {
            let guard = DropSignal(Some(seen_tx.clone()));
            let arrived = arrived_tx.clone();
            Box::pin(async move {
                let _guard = guard;
                let _ = arrived.send(());
                tokio::time::sleep(STEP * 2).await;
                json_response(200, "{}")
            })
        });
        let lanes = Lanes::start(thinking.clone(), thinking.clone(), thinking).await;
        let h = lanes.router().await;
        {
            let c = client();
            let req = post(&h.url("/v1/messages"), messages_body(model), &[]);
            let pending = tokio::spawn(async move {
                let _ = c.request(req).await;
            });
            within("request reaches the provider", arrived_rx.recv()).await;
            pending.abort();
            let _ = pending.await;
        }
        assert_eq!(
            within(
                "upstream request dropped after the client went away",
                seen_rx.recv()
            )
            .await,
            Some("abandoned"),
            "{model}"
        );
        let events = h.wait_events(1).await;
        assert_eq!(events[0].reason, Reason::ClientClosed, "{model}");
    }
}

/// A request the router must refuse: method, path, extra headers, body,
/// expected status and reason.
type Refused = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test]
async fn only_the_api_surface_reaches_a_provider() {
    let lanes = Lanes::echo().await;
    let h = lanes.router().await;
    let c = client();
    let body = messages_body("claude-haiku-4-5");
    let refused: Vec<Refused> = vec![
        (
            "TRACE",
            "/v1/messages",
            vec![],
            body.clone().into_bytes(),
            400,
            "method_not_forwarded",
        ),
        (
            "PUT",
            "/v1/messages",
            vec![],
            body.clone().into_bytes(),
            404,
            "path_not_forwarded",
        ),
        (
            "GET",
            "/v1/messages",
            vec![],
            Vec::new(),
            404,
            "path_not_forwarded",
        ),
        (
            "POST",
            "/v1/complete",
            vec![],
            body.clone().into_bytes(),
            404,
            "path_not_forwarded",
        ),
        (
            "POST",
            "/v1/../v1/messages",
            vec![],
            body.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/%2e%2e/admin",
            vec![],
            body.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/messages",
            vec![("content-encoding", "gzip")],
            body.clone().into_bytes(),
            400,
            "content_encoding",
        ),
        (
            "POST",
            "/v1/messages",
            vec![],
            [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat(),
            400,
            "body_bom",
        ),
    ];
    for (method, path, headers, bytes, status, reason) in &refused {
        let mut req = Request::builder()
            .method(*method)
            .uri(h.url(path))
            .header("content-type", "application/json")
            .header("x-api-key", CLIENT_KEY);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(bytes.clone()))).unwrap();
        let (parts, answer) = send(&c, req).await;
        assert_eq!(
            parts.status,
            *status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(
            parts.headers["x-enforcer-error"], *reason,
            "{method} {path}"
        );
        let (ty, _) = anthropic_error(&answer);
        assert!(!ty.is_empty(), "{method} {path}: Anthropic-shaped error");
    }
    // None of them reached any provider.
    assert_eq!(
        (lanes.a.count(), lanes.b.count(), lanes.c.count()),
        (0, 0, 0)
    );
    // The defaults and a pack-widened path do.
    let (parts, _) = send(&c, post(&h.url("/v1/messages"), body.clone(), &[])).await;
    assert_eq!(parts.status, 200);
    let (parts, _) = send(
        &c,
        post(&h.url("/v1/messages/count_tokens"), body.clone(), &[]),
    )
    .await;
    assert_eq!(parts.status, 200);
    let req = Request::get(h.url("/v1/models/claude-haiku-4-5"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.0.status, 200);
    let (parts, _) = send(&c, post(&h.url("/v1/other"), r#"{"x":1}"#, &[])).await;
    assert_eq!(parts.status, 200);
    assert_eq!(lanes.a.count(), 4);
    // Each refusal is one audit event with its reason.
    let events = h.wait_events(refused.len() + 4).await;
    for (method, path, _, _, _, reason) in &refused {
        assert!(
            events
                .iter()
                .any(|e| e.reason.as_str() == *reason && e.method == *method),
            "{method} {path}: {events:?}"
        );
    }
}
