//! The official `anthropic` Python SDK against the lane router: with only
//! `ANTHROPIC_BASE_URL` pointing at the router it makes a plain and a
//! streaming `messages` call and gets exactly what it gets when it calls
//! the (mock) provider directly over HTTPS.
//!
//! Needs `python3` with `anthropic` installed (`pip install
//! anthropic==1.13.0`; `cargo xtask setup` installs it). A missing SDK is a
//! failure with that instruction, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "router_support/mod.rs"]
mod router_support;

use std::path::Path;

use bytes::Bytes;
use http::Response;
use router_support::*;

const LANE_KEY: &str = "sk-lane-key-for-the-sdk-test";
const CLIENT_KEY: &str = "sk-client-key-of-the-agent";

/// A small Anthropic Messages API: echoes the first user message back, as
/// one JSON message or as an SSE stream of text deltas.
fn anthropic_mock() -> Handler {
    handler(|r| {
        if r.method != "POST" || !r.target.starts_with("/v1/messages") {
            return json_response(
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"no such endpoint"}}"#,
            );
        }
        let req: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let model = req["model"].as_str().unwrap().to_owned();
        let prompt = req["messages"][0]["content"].as_str().unwrap().to_owned();
        let words: Vec<String> = format!("echo: {prompt}")
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        let text: String = words.concat();
        let input_tokens = prompt.split(' ').count();
        if req["stream"] != true {
            let body = serde_json::json!({
                "id": "msg_mock_plain_01", "type": "message", "role": "assistant",
                "model": model, "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": words.len()},
            });
            return json_response(200, &body.to_string());
        }
        let mut events: Vec<(String, serde_json::Value)> = vec![
            (
                "message_start".into(),
                serde_json::json!({"type": "message_start", "message": {
                "id": "msg_mock_stream_01", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
            ),
            (
                "content_block_start".into(),
                serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping".into(), serde_json::json!({"type": "ping"})),
        ];
        for w in &words {
            events.push((
                "content_block_delta".into(),
                serde_json::json!({"type": "content_block_delta",
                "index": 0, "delta": {"type": "text_delta", "text": w}}),
            ));
        }
        events.push((
            "content_block_stop".into(),
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push((
            "message_delta".into(),
            serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": words.len()}}),
        ));
        events.push((
            "message_stop".into(),
            serde_json::json!({"type": "message_stop"}),
        ));
        let (body, tx, _dropped) = MockBody::channel();
        tokio::spawn(async move {
            for (name, data) in events {
                let frame = format!("event: {name}\ndata: {data}\n\n");
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache")
            .header("request-id", "req_mock_stream")
            .body(body)
            .unwrap()
    })
}

async fn run_sdk(mode: &str, envs: &[(&str, String)]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/router_support/sdk_client.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script).arg(mode).kill_on_drop(true);
    for var in [
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "SSL_CERT_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = within("the anthropic SDK", cmd.output())
        .await
        .unwrap_or_else(|e| panic!("python3 could not be started: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!("{stderr}");
    }
    assert!(out.status.success(), "SDK ({mode}) failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "SDK output is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn anthropic_python_sdk_gets_the_same_answers_through_the_router() {
    let pki = Pki::new(&["lane-a.test", "127.0.0.2"]);
    let mock = MockProvider::start("127.0.0.2", &pki, ALPN_H2, anthropic_mock()).await;
    let providers = format!(
        r#"{{"a":{{"baseURL":"https://lane-a.test:{}","authHeader":{{"mode":"x-api-key","env":"LANE_KEY"}}}}}}"#,
        mock.port()
    );
    let h = Harness::start(
        &pack(r#"[{"pattern":"claude-*","lane":"a"}]"#, &providers, ""),
        Options {
            pins: vec![pin("lane-a.test", &mock)],
            extra_ca: vec![pki.ca_der.clone()],
            env: vec![("LANE_KEY".into(), LANE_KEY.into())],
            credentials_dir: None,
        },
    )
    .await;

    let via_router = run_sdk(
        "via-router",
        &[
            ("ANTHROPIC_BASE_URL", format!("http://{}", h.addr)),
            ("ANTHROPIC_API_KEY", CLIENT_KEY.to_owned()),
        ],
    )
    .await;
    let seen_via_router = mock.recorded();
    let direct = run_sdk(
        "direct",
        &[
            (
                "DIRECT_BASE_URL",
                format!("https://127.0.0.2:{}", mock.port()),
            ),
            ("TEST_CA_FILE", pki.ca_file.display().to_string()),
            ("ANTHROPIC_API_KEY", CLIENT_KEY.to_owned()),
        ],
    )
    .await;

    assert_eq!(via_router, direct, "the SDK saw different answers");
    let expected = "echo: hello through the lane router";
    assert_eq!(via_router["plain"]["text"][0], expected);
    assert_eq!(via_router["stream"]["text"][0], expected);
    assert_eq!(via_router["stream"]["chunks"].as_array().unwrap().len(), 6);
    assert_eq!(via_router["stream"]["stop_reason"], "end_turn");

    // Through the router the provider saw the lane's key, never the agent's.
    assert_eq!(seen_via_router.len(), 2);
    for r in &seen_via_router {
        assert_eq!(r.header("x-api-key"), Some(LANE_KEY));
        assert!(r.header("anthropic-version").is_some());
        assert_eq!(r.target, "/v1/messages");
    }
    let direct_seen = &mock.recorded()[2..];
    assert!(
        !direct_seen.is_empty(),
        "the direct requests reached the mock"
    );
    assert!(
        direct_seen
            .iter()
            .all(|r| r.header("x-api-key") == Some(CLIENT_KEY))
    );

    let events = h.wait_events(2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.reason == proxy::reason::Reason::Completed)
    );
}
