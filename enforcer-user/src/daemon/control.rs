//! The control socket: one JSON request per line, one JSON response per
//! line (or a stream of event lines for `events --follow`); the wire
//! types are in [`super::protocol`].
//!
//! The socket is created mode 0600 (root only): whoever can talk to it can
//! open the allowlist.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::stat::{Mode, umask};
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

pub use super::protocol::{Request, Response};
use super::protocol::{STREAMING, StreamItem};
use crate::audit::{AuditRecord, EventFilter};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// What serves requests (the daemon).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request (never `Events`, which the server streams).
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
    /// Records as they are stored.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AuditRecord>;
}

/// Binds the socket at `path` (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another enforcer daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Created with a tight umask so there is no moment it is group/world accessible.
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves clients until `shutdown` resolves.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: std::sync::Arc<H>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(error) = client(stream, handler).await {
                        tracing::debug!(error = %error, "control client");
                    }
                });
            }
        }
    }
}

async fn client<H: Handler>(stream: UnixStream, handler: std::sync::Arc<H>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(request) => request,
        Err(error) => {
            return send(
                &mut write,
                &Response::error(format!("bad request: {error}")),
            )
            .await;
        }
    };
    if request == (Request::Events {}) {
        let mut records = handler.subscribe();
        send(&mut write, &Response::ok(&STREAMING)).await?;
        loop {
            let item = match records.recv().await {
                Ok(record) => StreamItem::Record(Box::new(record)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(lagged)) => {
                    StreamItem::Lagged { lagged }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            };
            let mut text = serde_json::to_string(&item).unwrap_or_default();
            text.push('\n');
            write.write_all(text.as_bytes()).await?;
        }
    }
    let response = handler.handle(request).await;
    send(&mut write, &response).await
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

// === client side ===

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there.
    #[error("cannot reach the enforcer daemon at {} (is `enforcer attach` running, and are you root?)", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The conversation failed.
    #[error("talking to the enforcer daemon at {}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon said no.
    #[error("{0}")]
    Refused(String),
}

/// A blocking client for the CLI.
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    /// A client for the socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn connect(
        &self,
        request: &Request,
    ) -> Result<std::io::BufReader<std::os::unix::net::UnixStream>, ClientError> {
        use std::io::Write as _;
        let mut stream = std::os::unix::net::UnixStream::connect(&self.path).map_err(|source| {
            ClientError::Connect {
                path: self.path.clone(),
                source,
            }
        })?;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_string(request).map_err(|e| io(std::io::Error::other(e)))?;
        text.push('\n');
        stream.write_all(text.as_bytes()).map_err(io)?;
        Ok(std::io::BufReader::new(stream))
    }

    /// Sends one request and returns the result value.
    pub fn call(&self, request: &Request) -> Result<serde_json::Value, ClientError> {
        use std::io::BufRead as _;
        let mut reader = self.connect(request)?;
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        let response: Response = serde_json::from_str(&line).map_err(|e| ClientError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("unreadable answer: {e}")),
        })?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(ClientError::Refused(
                response.error.unwrap_or_else(|| "refused".into()),
            ))
        }
    }

    /// Sends one request and reads its result as `T` (the command's result type).
    pub fn call_as<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        let value = self.call(request)?;
        serde_json::from_value(value).map_err(|e| ClientError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("unreadable answer: {e}")),
        })
    }

    /// Follows the live event stream, calling `each` per record until it returns false.
    pub fn follow(&self, mut each: impl FnMut(AuditRecord) -> bool) -> Result<(), ClientError> {
        use std::io::BufRead as _;
        let mut reader = self.connect(&Request::Events {})?;
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|source| ClientError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                return Ok(());
            }
            if let Ok(record) = serde_json::from_str::<AuditRecord>(&line)
                && !each(record)
            {
                return Ok(());
            }
        }
    }
}

/// Whether `record` passes `filter` (decision, pid, comm, cgroup).
pub fn matches(record: &AuditRecord, filter: &EventFilter) -> bool {
    filter.matches(record)
}
