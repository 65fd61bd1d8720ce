//! The bench's own load generator: CONNECT (or not) + TLS + one GET per
//! tunnel, bulk downloads over TLS, and streamed Messages API replies.
//! It prints one JSON line of what it measured, its own CPU time among
//! it, so the orchestrator can charge the client's share to the box.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

/// How a client reaches the upstream.
#[derive(Clone, Debug)]
pub enum Via {
    /// TCP to `--connect` (the upstream, or what the kernel redirects),
    /// then TLS.
    Direct,
    /// TCP to this proxy, `CONNECT name:443`, then TLS.
    Proxy(SocketAddr),
    /// Plain HTTP to `--connect` (a reverse proxy: the router, nginx).
    Plain,
}

impl std::str::FromStr for Via {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "direct" => Ok(Self::Direct),
            "plain" => Ok(Self::Plain),
            _ => match text.strip_prefix("proxy:") {
                Some(addr) => Ok(Self::Proxy(addr.parse().context("proxy address")?)),
                None => bail!("--via {text:?}: expected direct, plain or proxy:ADDR"),
            },
        }
    }
}

/// Where and how every connection of one run goes.
pub struct Target {
    pub via: Via,
    /// The TCP destination for `Direct` and `Plain`.
    pub connect: SocketAddr,
    /// The TLS server name and the CONNECT authority's host.
    pub name: String,
    tls: tokio_rustls::TlsConnector,
}

/// Anything a request can be written to.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Target {
    /// A target trusting only `ca`; TLS session resumption is off, so
    /// every tunnel pays a full handshake (as a new client process does).
    pub fn new(
        via: Via,
        connect: SocketAddr,
        name: String,
        ca: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            via,
            connect,
            name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// A fresh connection, through the proxy's tunnel and TLS as `via` says.
    async fn open(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = match &self.via {
            Via::Proxy(proxy) => {
                let mut tcp = TcpStream::connect(proxy)
                    .await
                    .context("connecting to the proxy")?;
                tcp.set_nodelay(true)?;
                let request = format!(
                    "CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n",
                    name = self.name
                );
                tcp.write_all(request.as_bytes()).await?;
                let mut head = Vec::with_capacity(256);
                read_until_head(&mut tcp, &mut head).await?;
                if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                    bail!("CONNECT refused: {:?}", String::from_utf8_lossy(&head));
                }
                tcp
            }
            Via::Direct | Via::Plain => {
                let tcp = TcpStream::connect(self.connect)
                    .await
                    .with_context(|| format!("connecting to {}", self.connect))?;
                tcp.set_nodelay(true)?;
                tcp
            }
        };
        if matches!(self.via, Via::Plain) {
            return Ok(Box::new(tcp));
        }
        let name = ServerName::try_from(self.name.clone())?;
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        Ok(Box::new(tls))
    }
}

/// Reads one byte at a time until `head` ends with a blank line (a
/// CONNECT reply: nothing of the tunnel may be read past it).
async fn read_until_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || stream.read(&mut byte).await? == 0 {
            bail!("the proxy closed before its reply ended");
        }
        head.push(byte[0]);
    }
    Ok(())
}

/// Reads one response with a content-length; returns its body length.
async fn read_response(stream: &mut (dyn Io + '_), buffer: &mut Vec<u8>) -> anyhow::Result<u64> {
    buffer.clear();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("the server closed before the response head ended");
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("response {:?}", head.lines().next().unwrap_or_default());
    }
    let length: u64 = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .context("a response without content-length")?
        .trim()
        .parse()?;
    let mut got = (buffer.len() - head_end) as u64;
    while got < length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("the server closed after {got} of {length} body bytes");
        }
        got += read as u64;
    }
    Ok(length)
}

/// What one load run measured.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Measured {
    /// Tunnels (or requests, or streams) that completed.
    pub done: u64,
    /// Those that failed; the first error's text.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Body bytes received.
    pub bytes: u64,
    pub seconds: f64,
    /// Per tunnel (or per SSE event), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// `clients` clients, each opening tunnels and getting `/small` in each,
/// until `duration` has passed or `limit` tunnels are done in all.
pub async fn tunnels(
    target: Arc<Target>,
    clients: usize,
    duration: Duration,
    limit: u64,
) -> Measured {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let target = Arc::clone(&target);
        let count = Arc::clone(&count);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = (0u64, None);
            let mut buffer = Vec::new();
            while Instant::now() < deadline
                && count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < limit
            {
                let begun = Instant::now();
                let outcome = async {
                    let mut stream = target.open().await?;
                    let request = format!(
                        "GET /small HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                        target.name
                    );
                    stream.write_all(request.as_bytes()).await?;
                    read_response(stream.as_mut(), &mut buffer).await
                }
                .await;
                match outcome {
                    Ok(_) => latencies.push(begun.elapsed()),
                    Err(error) => {
                        errors.0 += 1;
                        errors.1.get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut measured = Measured::default();
    for task in tasks {
        if let Ok((mut got, (errors, first))) = task.await {
            latencies.append(&mut got);
            measured.errors += errors;
            if measured.first_error.is_none() {
                measured.first_error = first;
            }
        }
    }
    measured.seconds = started.elapsed().as_secs_f64();
    measured.done = latencies.len() as u64;
    measured.bytes = measured.done * 2;
    set_percentiles(&mut measured, latencies);
    measured
}

/// `streams` tunnels at once, each downloading `bytes` over TLS.
pub async fn bulk(target: Arc<Target>, streams: usize, bytes: u64) -> Measured {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let target = Arc::clone(&target);
        tasks.push(tokio::spawn(async move {
            let mut stream = target.open().await?;
            let request = format!(
                "GET /bulk/{bytes} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.name
            );
            stream.write_all(request.as_bytes()).await?;
            let mut buffer = Vec::new();
            read_response(stream.as_mut(), &mut buffer).await
        }));
    }
    let mut measured = Measured::default();
    for task in tasks {
        match task.await {
            Ok(Ok(got)) => {
                measured.done += 1;
                measured.bytes += got;
            }
            Ok(Err(error)) => {
                measured.errors += 1;
                measured
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
            Err(error) => {
                measured.errors += 1;
                measured
                    .first_error
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
    measured.seconds = started.elapsed().as_secs_f64();
    measured
}

/// `requests` streamed Messages API requests one after another (keep-alive
/// off); the percentiles are each event's delay from the moment the
/// upstream stamped it to the moment it arrived here.
pub async fn events(target: Arc<Target>, requests: u64) -> Measured {
    let started = Instant::now();
    let mut delays = Vec::new();
    let mut measured = Measured::default();
    for _ in 0..requests {
        match stream_once(&target, None, &mut delays).await {
            Ok(()) => measured.done += 1,
            Err(error) => {
                // One failure fails the row: a peer that hung once would
                // otherwise cost STREAM_WITHIN per remaining request.
                measured.errors += 1;
                measured.first_error = Some(format!("{error:#}"));
                break;
            }
        }
    }
    measured.seconds = started.elapsed().as_secs_f64();
    set_percentiles(&mut measured, delays);
    measured
}

/// The model every router request names (each peer routes it upstream).
pub const MODEL: &str = "claude-bench";
/// The key every router request carries as `authorization: Bearer`
/// (claude-code-router asks for its `APIKEY`; the enforcer's default lane
/// passes a client's key through).
pub const CLIENT_KEY: &str = "bench-not-a-key";
/// `max_tokens` of a request that does not ask for a gap.
pub const MAX_TOKENS: u64 = 16;

/// A Messages API request body for [`MODEL`].
pub fn message_body(stream: bool, max_tokens: u64) -> String {
    format!(
        r#"{{"model":"{MODEL}","max_tokens":{max_tokens},"stream":{stream},"messages":[{{"role":"user","content":"ping"}}]}}"#
    )
}

/// `streams` streamed requests at once, each event `gap` apart, so that
/// all of them are open together for about `STREAM_EVENTS * gap` (the
/// router's memory with that many concurrent streams). Connections open at
/// most [`OPENING`] at a time, as a burst of a thousand SYNs would only
/// measure the listen backlog.
pub async fn held(target: Arc<Target>, streams: usize, gap: Duration) -> Measured {
    let started = Instant::now();
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let target = Arc::clone(&target);
        let opening = Arc::clone(&opening);
        tasks.spawn(async move {
            let mut delays = Vec::new();
            stream_once(&target, Some((gap, opening)), &mut delays).await
        });
    }
    let mut measured = Measured::default();
    while let Some(outcome) = tasks.join_next().await {
        match outcome.map_err(anyhow::Error::from).and_then(|done| done) {
            Ok(()) => measured.done += 1,
            Err(error) => {
                measured.errors += 1;
                measured
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    measured.seconds = started.elapsed().as_secs_f64();
    measured
}

/// Streams of [`held`] that may be opening (connect and send) at once.
const OPENING: usize = 64;

/// How long a streamed request may take beyond its events' own gaps (a
/// peer that stops answering fails the row instead of hanging the bench).
const STREAM_WITHIN: Duration = Duration::from_secs(10);

/// One streamed request; `held` asks for events `gap` apart and opens
/// under its semaphore. Bounded by [`STREAM_WITHIN`] plus the events' gaps.
async fn stream_once(
    target: &Target,
    held: Option<(Duration, Arc<tokio::sync::Semaphore>)>,
    delays: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let gap = held
        .as_ref()
        .map_or(crate::upstream::STREAM_GAP, |(gap, _)| *gap);
    let events = u32::try_from(crate::upstream::STREAM_EVENTS)?;
    let within = STREAM_WITHIN + gap * events;
    tokio::time::timeout(within, stream_unbounded(target, held, delays))
        .await
        .map_err(|_| anyhow::anyhow!("the stream did not end within {} s", within.as_secs()))?
}

async fn stream_unbounded(
    target: &Target,
    held: Option<(Duration, Arc<tokio::sync::Semaphore>)>,
    delays: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let max_tokens = held
        .as_ref()
        .map_or(MAX_TOKENS, |(gap, _)| gap.as_millis() as u64);
    let body = message_body(true, max_tokens);
    let opening = match &held {
        Some((_, semaphore)) => Some(semaphore.acquire().await?),
        None => None,
    };
    let mut stream = target.open().await?;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nConnection: close\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n{body}",
        target.name,
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    drop(opening);
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut seen = 0;
    loop {
        let read = stream.read(&mut chunk).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..read]);
        while let Some(at) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(rest) = line.split("\"sent_us\":").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let sent = Duration::from_micros(digits.parse()?);
                delays.push(now.saturating_sub(sent));
                seen += 1;
            }
        }
    }
    if seen != crate::upstream::STREAM_EVENTS {
        bail!(
            "{seen} of {} events arrived",
            crate::upstream::STREAM_EVENTS
        );
    }
    Ok(())
}

fn set_percentiles(measured: &mut Measured, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |fraction: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let index = ((samples.len() - 1) as f64 * fraction).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    measured.p50_us = at(0.5);
    measured.p99_us = at(0.99);
    measured.max_us = at(1.0);
}
