//! End-to-end tests of the CONNECT proxy with real clients (curl, openssl
//! s_client, Python requests, rustls) against a loopback TLS upstream with
//! an rcgen CA. All traffic stays on 127.0.0.0/8; public-looking names are
//! pinned to loopback with `--resolve`-style pins or a loopback mock DNS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::hello::{add_extension, replace_sni, rustls_client_hello};
use common::mock_dns::MockDns;
use common::upstream::{
    PlainUpstream, RawUpstream, TestPki, TlsUpstream, raw_connect, read_head, read_until_closed,
};
use common::{Harness, allowlist, pack_json, run, stderr, stdout};
use proxy::net::addr_class::AddressClass;
use proxy::net::resolve::AddrSource;
use proxy::reason::{Decision, Reason};
use proxy::relay::TunnelEnd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const ALLOWED: &str = "api.allowed.test";

/// A TLS upstream for [`ALLOWED`] and `other.test`, and a proxy whose
/// allowlist holds `ALLOWED:<upstream port>` pinned to the upstream.
async fn setup(fronting_extra: &str, limits: &str) -> (TestPki, TlsUpstream, Harness) {
    let pki = TestPki::new(&[ALLOWED, "other.test"]);
    let upstream = TlsUpstream::start(&pki).await;
    let port = upstream.addr.port();
    let fronting =
        format!(r#"{{{fronting_extra}"allowlist":[{{"hostport":"{ALLOWED}:{port}"}}]}}"#);
    let harness = Harness::start(
        &pack_json(&fronting, limits),
        &[format!("{ALLOWED}:{port}:127.0.0.1")],
        None,
    )
    .await;
    (pki, upstream, harness)
}

fn ca(pki: &TestPki) -> String {
    pki.ca_file.to_string_lossy().into_owned()
}

#[tokio::test]
async fn curl_through_the_proxy_to_an_allowlisted_host() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let url = format!("https://{ALLOWED}:{}/", upstream.addr.port());
    let out = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--cacert",
            &ca(&pki),
            "-x",
            &harness.url(),
            &url,
        ],
    )
    .await;
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    assert_eq!(stdout(&out), format!("hello from upstream sni={ALLOWED}"));
    let event = harness.only_event().await;
    assert_eq!(event.verdict.decision, Decision::Allow);
    assert_eq!(event.verdict.reason, Reason::Allowlisted);
    assert_eq!(event.host.as_deref(), Some(ALLOWED));
    assert_eq!(event.sni, vec![ALLOWED.to_string()]);
    assert_eq!(event.upstream, Some(upstream.addr));
    assert_eq!(event.upstream_source, Some(AddrSource::Pinned));
    assert_eq!(event.end, Some(TunnelEnd::Closed));
    assert!(event.bytes_up > 0 && event.bytes_down > 0, "{event:?}");
    assert!(event.handshake <= event.total);
}

#[tokio::test]
async fn curl_to_a_host_not_on_the_allowlist_gets_403_with_the_reason() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let url = format!("https://other.test:{}/", upstream.addr.port());
    let out = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--cacert",
            &ca(&pki),
            "-x",
            &harness.url(),
            &url,
        ],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "403");
    let event = harness.only_event().await;
    assert_eq!(event.verdict.reason, Reason::NotAllowlisted);
    assert_eq!(event.host.as_deref(), Some("other.test"));
    assert!(upstream.seen_sni.lock().unwrap().is_empty());

    // The body names the reason and the command an operator would run.
    let target = format!("other.test:{}", upstream.addr.port());
    let (mut stream, head) = raw_connect(harness.addr, &target).await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(
        head.contains("X-Enforcer-Reason: not_allowlisted\r\n"),
        "{head}"
    );
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("not_allowlisted"), "{body}");
    assert!(
        body.contains(&format!("enforcer allow {target} --ttl 1h")),
        "{body}"
    );
}

#[tokio::test]
async fn ip_literals_in_every_spelling_get_403() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let port = upstream.addr.port();
    let spellings = ["127.0.0.3", "2130706691", "0x7f.0.0.3", "127.3"];
    for host in spellings {
        // curl may rewrite the numeric forms itself; the raw CONNECT below
        // sends each spelling exactly.
        let url = format!("https://{host}:{port}/");
        let out = run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_connect}",
                "--cacert",
                &ca(&pki),
                "-x",
                &harness.url(),
                &url,
            ],
        )
        .await;
        assert_eq!(stdout(&out), "403", "curl {host}: {}", stderr(&out));
        let (_stream, head) = raw_connect(harness.addr, &format!("{host}:{port}")).await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{host}: {head}");
        assert!(
            head.contains("X-Enforcer-Reason: ip_literal\r\n"),
            "{host}: {head}"
        );
    }
    let events = harness.events(2 * spellings.len()).await;
    assert_eq!(events.len(), 2 * spellings.len(), "{events:#?}");
    assert!(
        events.iter().all(|e| e.verdict.reason == Reason::IpLiteral),
        "{events:#?}"
    );
    assert!(upstream.seen_sni.lock().unwrap().is_empty());
}

#[tokio::test]
async fn openssl_with_a_mismatched_sni_is_closed() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let proxy = harness.addr.to_string();
    let connect = format!("{ALLOWED}:{}", upstream.addr.port());
    let out = run(
        "openssl",
        &[
            "s_client",
            "-proxy",
            &proxy,
            "-connect",
            &connect,
            "-servername",
            "other.test",
            "-CAfile",
            &ca(&pki),
            "-verify_return_error",
        ],
    )
    .await;
    assert!(
        !out.status.success(),
        "handshake should fail: {}",
        stdout(&out)
    );
    let event = harness.only_event().await;
    assert_eq!(event.verdict.reason, Reason::SniMismatch);
    assert_eq!(event.sni, vec!["other.test".to_string()]);
    assert!(
        upstream.seen_sni.lock().unwrap().is_empty(),
        "the upstream must never be reached"
    );

    // The same command with the matching name goes through.
    let out = run(
        "openssl",
        &[
            "s_client",
            "-proxy",
            &proxy,
            "-connect",
            &connect,
            "-servername",
            ALLOWED,
            "-CAfile",
            &ca(&pki),
            "-verify_return_error",
        ],
    )
    .await;
    assert!(
        stdout(&out).contains("Verify return code: 0 (ok)"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        upstream.seen_sni.lock().unwrap().as_slice(),
        &[Some(ALLOWED.to_string())]
    );
}

#[tokio::test]
async fn openssl_without_sni_is_closed() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let connect = format!("{ALLOWED}:{}", upstream.addr.port());
    let out = run(
        "openssl",
        &[
            "s_client",
            "-proxy",
            &harness.addr.to_string(),
            "-connect",
            &connect,
            "-noservername",
            "-CAfile",
            &ca(&pki),
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", stdout(&out));
    let event = harness.only_event().await;
    assert_eq!(event.verdict.reason, Reason::MissingSni);
    assert!(event.sni.is_empty());
    assert!(upstream.seen_sni.lock().unwrap().is_empty());
}

/// CONNECTs to the allowed host, sends `bytes` after the `200`, and
/// asserts the proxy closed the tunnel itself: within the limit, with no
/// byte sent back, and with nothing having reached the upstream (a proxy
/// that forwarded the bytes and relayed the upstream's hang-up fails here).
async fn assert_closed_before_upstream(harness: &Harness, upstream: &TlsUpstream, bytes: &[u8]) {
    let port = upstream.addr.port();
    let (mut stream, head) = raw_connect(harness.addr, &format!("{ALLOWED}:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    stream.write_all(bytes).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut stream))
        .await
        .expect("the proxy should close the tunnel");
    assert!(
        answered.is_empty(),
        "the proxy sent {} bytes back before closing",
        answered.len()
    );
    assert_eq!(
        (upstream.connections(), upstream.client_hellos()),
        (0, 0),
        "the upstream saw a connection or a ClientHello: {:?}",
        upstream.first_bytes.lock().unwrap()
    );
}

#[tokio::test]
async fn a_client_hello_with_two_server_names_is_closed() {
    let (_pki, upstream, harness) = setup("", "{}").await;
    let hello = replace_sni(
        &rustls_client_hello(Some(ALLOWED)),
        &[ALLOWED, "other.test"],
    );
    assert_closed_before_upstream(&harness, &upstream, &hello).await;
    let event = harness.only_event().await;
    assert_eq!(event.verdict.reason, Reason::MultipleSni);
    assert_eq!(
        event.sni,
        vec![ALLOWED.to_string(), "other.test".to_string()]
    );
}

#[tokio::test]
async fn non_tls_bytes_after_200_are_closed() {
    let (_pki, upstream, harness) = setup("", "{}").await;
    let bytes = format!("GET / HTTP/1.1\r\nHost: {ALLOWED}\r\n\r\n");
    assert_closed_before_upstream(&harness, &upstream, bytes.as_bytes()).await;
    assert_eq!(harness.only_event().await.verdict.reason, Reason::NotTls);
}

#[tokio::test]
async fn an_ech_extension_is_closed_unless_the_policy_allows_ech() {
    let (_pki, upstream, harness) = setup("", "{}").await;
    let hello = add_extension(
        &rustls_client_hello(Some(ALLOWED)),
        0xfe0d,
        &[0, 0, 1, 0, 1, 7, 0, 0, 0, 0],
    );
    assert_closed_before_upstream(&harness, &upstream, &hello).await;
    let event = harness.only_event().await;
    assert_eq!(event.verdict.reason, Reason::Ech);
    assert!(event.ech);

    // With fronting.allowECH the outer SNI alone decides: the tunnel opens
    // and the upstream receives the ClientHello byte for byte.
    let raw = RawUpstream::start().await;
    let port = raw.addr.port();
    let fronting =
        format!(r#"{{"allowECH":true,"allowlist":[{{"hostport":"{ALLOWED}:{port}"}}]}}"#);
    let allowing = Harness::start(
        &pack_json(&fronting, "{}"),
        &[format!("{ALLOWED}:{port}:127.0.0.1")],
        None,
    )
    .await;
    let (mut stream, head) = raw_connect(allowing.addr, &format!("{ALLOWED}:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    stream.write_all(&hello).await.unwrap();
    for _ in 0..500 {
        if raw
            .received
            .lock()
            .unwrap()
            .first()
            .is_some_and(|got| got.len() >= hello.len())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw.received.lock().unwrap()[0], hello);
    drop(stream);
    let event = allowing.only_event().await;
    assert_eq!(event.verdict.reason, Reason::AllowlistedEch);
}

/// A stream that writes at most one byte per write and yields to the
/// runtime between writes, so every byte leaves in its own segment.
struct OneByteWrites {
    inner: TcpStream,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for OneByteWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneByteWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(delay) = self.delay.as_mut() {
            if delay.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.delay = None;
        }
        let n =
            std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..buf.len().min(1)]))?;
        self.delay = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_client_hello_written_one_byte_at_a_time_is_allowed() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let (stream, head) =
        raw_connect(harness.addr, &format!("{ALLOWED}:{}", upstream.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let slow = OneByteWrites {
        inner: stream,
        delay: None,
    };
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = rustls::pki_types::ServerName::try_from(ALLOWED).unwrap();
    let mut tls = connector.connect(name, slow).await.unwrap();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {ALLOWED}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The one-byte writer returns Pending between bytes: flush pushes the rest.
    tls.flush().await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(
        response.ends_with(&format!("hello from upstream sni={ALLOWED}")),
        "{response}"
    );
    // The audit event comes when the tunnel ends: close our side too.
    drop(tls);
    let event = harness.only_event().await;
    assert_eq!(event.verdict.reason, Reason::Allowlisted);
}

#[tokio::test]
async fn slowloris_on_the_request_head_is_closed_at_the_header_timeout() {
    let (_pki, upstream, harness) = setup("", r#"{"headerReadTimeoutSeconds":1}"#).await;
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    let head = format!(
        "CONNECT {ALLOWED}:{} HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        upstream.addr.port()
    );
    let mut answer = Vec::new();
    // One byte every 100 ms: each byte arrives well within any per-read
    // timeout, so only a deadline on the whole head ends this.
    for byte in head.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert_eq!(
        harness.only_event().await.verdict.reason,
        Reason::RequestTimeout
    );
}

#[tokio::test]
async fn slowloris_on_the_client_hello_is_closed_at_the_hello_timeout() {
    let (_pki, upstream, harness) = setup("", r#"{"clientHelloTimeoutSeconds":1}"#).await;
    let (mut stream, head) =
        raw_connect(harness.addr, &format!("{ALLOWED}:{}", upstream.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let hello = rustls_client_hello(Some(ALLOWED));
    let mut closed = false;
    for byte in hello {
        if stream.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the tunnel stayed open for the whole slow hello");
    assert_eq!(
        harness.only_event().await.verdict.reason,
        Reason::ClientHelloTimeout
    );
    assert!(upstream.seen_sni.lock().unwrap().is_empty());
}

#[tokio::test]
async fn dns_rebinding_to_loopback_or_metadata_is_refused() {
    let pki = TestPki::new(&[ALLOWED]);
    let upstream = TlsUpstream::start(&pki).await;
    let port = upstream.addr.port();
    let dns = MockDns::start().await;
    let harness = Harness::start(
        &pack_json(
            &allowlist(&[
                format!("{ALLOWED}:{port}"),
                format!("meta.allowed.test:{port}"),
            ]),
            "{}",
        ),
        &[],
        Some(dns.addr()),
    )
    .await;
    dns.answer(ALLOWED, &["127.0.0.1"]);
    dns.answer("meta.allowed.test", &["169.254.169.254"]);
    for (name, class) in [
        (ALLOWED, AddressClass::Loopback),
        ("meta.allowed.test", AddressClass::Metadata),
    ] {
        let url = format!("https://{name}:{port}/");
        let out = run(
            "curl",
            &["-sS", "--cacert", &ca(&pki), "-x", &harness.url(), &url],
        )
        .await;
        assert!(
            !out.status.success(),
            "{name} must not be reachable: {}",
            stdout(&out)
        );
        let events = harness.sink.events();
        let event = events.last().unwrap();
        assert_eq!(event.verdict.reason, Reason::ForbiddenAddress, "{event:?}");
        assert_eq!(event.address_class, Some(class));
        assert_eq!(event.upstream_source, Some(AddrSource::Dns));
    }
    assert!(dns.udp_queries() >= 2, "the mock DNS server was asked");
    assert!(
        upstream.seen_sni.lock().unwrap().is_empty(),
        "nothing reached the loopback upstream"
    );
}

#[tokio::test]
async fn python_requests_through_the_proxy() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let url = format!("https://{ALLOWED}:{}/", upstream.addr.port());
    let script = "import sys, requests\n\
                  r = requests.get(sys.argv[1], proxies={'https': sys.argv[2]}, verify=sys.argv[3], timeout=30)\n\
                  print(r.status_code, r.text)";
    let out = run("python3", &["-c", script, &url, &harness.url(), &ca(&pki)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("200 hello from upstream sni={ALLOWED}")
    );
    assert_eq!(
        harness.only_event().await.verdict.reason,
        Reason::Allowlisted
    );
}

#[tokio::test]
async fn plain_http_only_where_the_entry_allows_it() {
    let plain = PlainUpstream::start().await;
    let port = plain.addr.port();
    let fronting = format!(
        r#"{{"allowlist":[{{"hostport":"plain.test:{port}","allowPlainHTTP":true}},{{"hostport":"tls-only.test:{port}"}}]}}"#
    );
    let harness = Harness::start(
        &pack_json(&fronting, "{}"),
        &[
            format!("plain.test:{port}:127.0.0.1"),
            format!("tls-only.test:{port}:127.0.0.1"),
        ],
        None,
    )
    .await;
    let out = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "-x",
            &harness.url(),
            "-H",
            "Proxy-Authorization: Basic c2VjcmV0",
            &format!("http://plain.test:{port}/path?q=1"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "plain hello");
    let head = plain.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("Host: plain.test:{port}\r\n")),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("proxy-authorization"),
        "{head}"
    );
    assert_eq!(
        harness.only_event().await.verdict.reason,
        Reason::PlainHttpAllowed
    );

    let out = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &harness.url(),
            &format!("http://tls-only.test:{port}/"),
        ],
    )
    .await;
    assert_eq!(stdout(&out), "403");
    let events = harness.events(2).await;
    assert_eq!(events[1].verdict.reason, Reason::PlainHttpDenied);
    assert_eq!(plain.heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_policy_reload_applies_to_new_connections() {
    let (pki, upstream, harness) = setup("", "{}").await;
    let port = upstream.addr.port();
    let url = format!("https://{ALLOWED}:{port}/");
    let args = |h: &Harness| {
        vec![
            "-sS".to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_connect}".into(),
            "--cacert".into(),
            ca(&pki),
            "-x".into(),
            h.url(),
            url.clone(),
        ]
    };
    let first = run(
        "curl",
        &args(&harness)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(stdout(&first), "200");
    harness
        .policy
        .send(common::snapshot(&pack_json(&allowlist(&[]), "{}")))
        .unwrap();
    let second = run(
        "curl",
        &args(&harness)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(stdout(&second), "403");
}

#[tokio::test]
async fn unix_socket_clients_get_the_same_proxy() {
    let (pki, upstream, harness) = setup("", "{}").await;
    drop(harness);
    let port = upstream.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mut pins = proxy::net::resolve::ResolveOverrides::new();
    pins.add_entry(&format!("{ALLOWED}:{port}:127.0.0.1"))
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(common::snapshot(&pack_json(
        &allowlist(&[format!("{ALLOWED}:{port}")]),
        "{}",
    )));
    let sink = Arc::new(proxy::audit::MemorySink::new(10));
    let proxy = proxy::server::ConnectProxy::new(
        proxy::server::ProxyConfig::default(),
        rx,
        proxy::net::resolve::Resolver::new(
            pins,
            proxy::net::resolve::Upstream::System {
                timeout: Duration::from_secs(5),
            },
        ),
        sink.clone(),
    );
    let server =
        tokio::spawn(async move { proxy.serve_unix(listener, std::future::pending()).await });

    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(format!("CONNECT {ALLOWED}:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200 "));
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = rustls::pki_types::ServerName::try_from(ALLOWED).unwrap();
    let mut tls = connector.connect(name, stream).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.ends_with(&format!("sni={ALLOWED}")), "{response}");
    // The audit event comes when the tunnel ends: close our side too.
    drop(tls);
    for _ in 0..500 {
        if !sink.events().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let event = sink.events().pop().unwrap();
    assert_eq!(event.verdict.reason, Reason::Allowlisted);
    assert!(
        matches!(event.client, proxy::audit::Peer::Unix { pid: Some(_), .. }),
        "{:?}",
        event.client
    );
    server.abort();
}

#[tokio::test]
async fn malformed_requests_get_400_and_oversized_heads_431() {
    let (_pki, _upstream, harness) = setup("", r#"{"maxHeaderBytes":1024}"#).await;
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    stream
        .write_all(b"CONNECT api.allowed.test HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    let big = format!(
        "CONNECT a.test:443 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let _ = stream.write_all(big.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    let events = harness.events(2).await;
    assert_eq!(events[0].verdict.reason, Reason::MalformedRequest);
    assert_eq!(events[1].verdict.reason, Reason::RequestTooLarge);
}
