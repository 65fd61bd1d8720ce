//! The control socket: one JSON request per line, one JSON response per
//! line (or a stream of event lines for `events --follow`).
//!
//! The socket is created mode 0600 (root only): whoever can talk to it can
//! open the allowlist.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::audit::{AuditRecord, Decision};

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/control.sock";

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// What the daemon enforces.
    Status,
    /// Open `target` (`HOST[:PORT]`) for `ttl_seconds`.
    Allow {
        /// `HOST[:PORT]`, `*.domain[:PORT]` for the proxy scope.
        target: String,
        /// Lifetime in seconds from now.
        ttl_seconds: u64,
        /// Operator's note.
        reason: Option<String>,
        /// A direct kernel entry instead of a proxy allowlist entry.
        direct: bool,
    },
    /// Remove every grant for `target`.
    Revoke {
        /// As given to `allow`.
        target: String,
    },
    /// Fetch and verify the policy source again.
    Reload,
    /// Stream audit records as they are stored.
    Events,
    /// Prometheus text.
    Metrics,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// True on success.
    pub ok: bool,
    /// What went wrong, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    /// A success.
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            result: Some(result),
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            result: None,
        }
    }
}

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
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
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
    if request == Request::Events {
        let mut records = handler.subscribe();
        send(&mut write, &Response::ok(serde_json::json!("streaming"))).await?;
        loop {
            match records.recv().await {
                Ok(record) => {
                    let mut text = serde_json::to_string(&record).unwrap_or_default();
                    text.push('\n');
                    write.write_all(text.as_bytes()).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    let mut text = serde_json::json!({ "lagged": missed }).to_string();
                    text.push('\n');
                    write.write_all(text.as_bytes()).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
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

    /// Follows the live event stream, calling `each` per record until it returns false.
    pub fn follow(&self, mut each: impl FnMut(AuditRecord) -> bool) -> Result<(), ClientError> {
        use std::io::BufRead as _;
        let mut reader = self.connect(&Request::Events)?;
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

/// Whether `decision` filters `record`.
pub fn matches(record: &AuditRecord, decision: Option<Decision>) -> bool {
    decision.is_none_or(|wanted| record.decision == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let request = Request::Allow {
            target: "example.com:443".into(),
            ttl_seconds: 3600,
            reason: Some("ticket 42".into()),
            direct: false,
        };
        let text = serde_json::to_string(&request).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"command":"allow","target":"example.com:443","ttl_seconds":3600,"reason":"ticket 42","direct":false}"#
        );
        let misspelt =
            r#"{"command":"allow","targett":"x","ttl_seconds":1,"reason":null,"direct":false}"#;
        assert!(serde_json::from_str::<Request>(misspelt).is_err());
    }
}
