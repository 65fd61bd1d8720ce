//! The upstream every target reaches: HTTPS with the bench's test CA,
//! HTTP/1.1 with keep-alive, `TCP_NODELAY`. `GET /small` answers two
//! bytes, `GET /bulk/N` answers N bytes, `POST /v1/messages` answers a
//! short Messages API reply (or, with `"stream":true`, its SSE events).

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// Longest request head the upstream reads.
const HEAD_LIMIT: usize = 16 * 1024;

/// One block of bulk bytes, written again and again.
const BULK_BLOCK: usize = 64 * 1024;

/// The non-streamed Messages API reply.
const MESSAGE: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench","content":[{"type":"text","text":"pong"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}"#;

/// Serves on `listen` until killed; prints `ready` once listening.
pub fn serve(listen: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        println!("ready");
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await
                    && connection(&mut tls).await.is_ok()
                {
                    let _ = tls.shutdown().await;
                }
            });
        }
    })
}

/// Answers requests on one connection until the client closes it.
async fn connection<S>(stream: &mut S) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buffer = Vec::with_capacity(4096);
    let bulk = vec![b'x'; BULK_BLOCK];
    loop {
        let Some(head_end) = read_head(stream, &mut buffer).await? else {
            return Ok(());
        };
        let head = std::str::from_utf8(&buffer[..head_end]).context("request head")?;
        let request = Request::parse(head)?;
        let (method, path) = (request.method.to_owned(), request.path.to_owned());
        let (content_length, close) = (request.content_length, request.close);
        let body_end = head_end + content_length;
        while buffer.len() < body_end {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("the client closed inside a request body");
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        let asked = Asked::of(&buffer[head_end..body_end]);
        buffer.drain(..body_end);
        match (method.as_str(), path.as_str()) {
            ("GET", "/small") => respond(stream, "text/plain", b"ok").await?,
            ("GET", path) if path.starts_with("/bulk/") => {
                let total: u64 = path["/bulk/".len()..].parse().context("bulk length")?;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {total}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                let mut left = total;
                while left > 0 {
                    let take = usize::try_from(left.min(BULK_BLOCK as u64))?;
                    stream.write_all(&bulk[..take]).await?;
                    left -= take as u64;
                }
            }
            ("POST", "/v1/messages") if asked.stream => stream_events(stream, asked.gap()).await?,
            ("POST", "/v1/messages") => {
                respond(stream, "application/json", MESSAGE.as_bytes()).await?;
            }
            _ => {
                stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await?;
            }
        }
        stream.flush().await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads until `buffer` holds a whole head; its length, or `None` when
/// the client closed between requests.
async fn read_head<S>(stream: &mut S, buffer: &mut Vec<u8>) -> anyhow::Result<Option<usize>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            return Ok(Some(at + 4));
        }
        if buffer.len() > HEAD_LIMIT {
            bail!("request head over {HEAD_LIMIT} bytes");
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// What the upstream reads of a Messages API body. Parsed as JSON, since
/// peers re-serialise bodies (LiteLLM writes `"stream": true`).
#[derive(Debug, Default, serde::Deserialize)]
struct Asked {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: u64,
}

/// `max_tokens` above this asks for events that many milliseconds apart:
/// long-lived streams (the router's held-streams row). The body's
/// `max_tokens` reaches the upstream through every peer, where a header of
/// the bench's own might not.
pub const GAP_FROM_MAX_TOKENS: u64 = 100;

impl Asked {
    /// The body's fields, or nothing asked for when it is not such JSON.
    fn of(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The wait before each streamed event.
    fn gap(&self) -> std::time::Duration {
        if self.max_tokens > GAP_FROM_MAX_TOKENS {
            std::time::Duration::from_millis(self.max_tokens)
        } else {
            STREAM_GAP
        }
    }
}

/// What the upstream reads of a request head.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    content_length: usize,
    close: bool,
}

impl<'a> Request<'a> {
    fn parse(head: &'a str) -> anyhow::Result<Self> {
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (Some(method), Some(path)) = (first.next(), first.next()) else {
            bail!("request line {head:?}");
        };
        let mut request = Self {
            method,
            path,
            content_length: 0,
            close: false,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                request.content_length = value.parse().context("content-length")?;
            } else if name.eq_ignore_ascii_case("connection") {
                request.close = value.eq_ignore_ascii_case("close");
            }
        }
        Ok(request)
    }
}

async fn respond<S>(stream: &mut S, content_type: &str, body: &[u8]) -> anyhow::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut message = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    message.extend_from_slice(body);
    stream.write_all(&message).await?;
    Ok(())
}

/// Events of one streamed reply, and how long the upstream waits before
/// each (so per-event delay is measured on events apart in time).
pub const STREAM_EVENTS: usize = 20;
/// The wait before each streamed event.
pub const STREAM_GAP: std::time::Duration = std::time::Duration::from_millis(5);

/// A streamed reply: chunked SSE, each event stamped with the moment
/// (microseconds since the Unix epoch) the upstream wrote it.
async fn stream_events<S>(stream: &mut S, gap: std::time::Duration) -> anyhow::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    for index in 0..STREAM_EVENTS {
        tokio::time::sleep(gap).await;
        let sent = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros();
        let event = format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\"sent_us\":{sent}}}\n\n"
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        stream.write_all(chunk.as_bytes()).await?;
        stream.flush().await?;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    Ok(())
}
