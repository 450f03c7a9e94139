//! A minimal RESP (Redis protocol) client for CLIProxyAPI's usage interface: commands as arrays
//! of bulk strings, replies read with bounded sizes. Only what `AUTH`, `SUBSCRIBE` and `PING`
//! need; no `HELLO`, `CLIENT SETINFO` or anything else a full Redis client sends on connect,
//! since every command before `AUTH` counts toward CLIProxyAPI's IP ban.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Longest bulk string accepted (a usage record is a few KiB; the fail body is trimmed text).
const MAX_BULK: usize = 4 << 20;
/// Most elements of an array reply accepted.
const MAX_ARRAY: usize = 100_000;
/// Longest simple line (status, error, integer) accepted.
const MAX_LINE: usize = 64 << 10;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` (`None` for `$-1`).
    Bulk(Option<String>),
    /// `*n` (`None` for `*-1`).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a simple string or bulk string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Simple(s) | Self::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }
}

/// What went wrong talking RESP.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the connection was closed")]
    Closed,
    /// The peer sent something that is not RESP.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A RESP connection.
pub struct Connection {
    reader: Reader,
    writer: Writer,
}

/// The reading half of a connection.
pub struct Reader {
    reader: BufReader<OwnedReadHalf>,
}

/// The writing half of a connection.
pub struct Writer {
    writer: OwnedWriteHalf,
}

impl Connection {
    /// Connects to `host:port` within `timeout`.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Self, RespError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: Reader {
                reader: BufReader::with_capacity(64 << 10, read),
            },
            writer: Writer { writer },
        })
    }

    /// Sends one command.
    pub async fn send(&mut self, args: &[&str]) -> Result<(), RespError> {
        self.writer.send(args).await
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, args: &[&str]) -> Result<Reply, RespError> {
        self.writer.send(args).await?;
        self.reader.read().await
    }

    /// Reads one reply.
    pub async fn read(&mut self) -> Result<Reply, RespError> {
        self.reader.read().await
    }

    /// The two halves, to read in one task and write in another (a read is not cancel-safe:
    /// a reply half read would be lost, so it gets a task of its own).
    pub fn split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }
}

impl Writer {
    /// Sends one command.
    pub async fn send(&mut self, args: &[&str]) -> Result<(), RespError> {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.writer.write_all(out.as_bytes()).await?;
        Ok(())
    }
}

impl Reader {
    /// Reads one reply.
    pub async fn read(&mut self) -> Result<Reply, RespError> {
        let line = self.line().await?;
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => rest
                .parse()
                .map(Reply::Int)
                .map_err(|_| RespError::Protocol(format!("bad integer {rest:?}"))),
            "$" => self.bulk(rest).await,
            "*" => {
                let n: i64 = rest
                    .parse()
                    .map_err(|_| RespError::Protocol(format!("bad array length {rest:?}")))?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_ARRAY {
                    return Err(RespError::Protocol(format!("array of {n} elements")));
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(Box::pin(self.read()).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(RespError::Protocol(format!(
                "unexpected reply type {other:?}"
            ))),
        }
    }

    async fn bulk(&mut self, len: &str) -> Result<Reply, RespError> {
        let n: i64 = len
            .parse()
            .map_err(|_| RespError::Protocol(format!("bad bulk length {len:?}")))?;
        if n < 0 {
            return Ok(Reply::Bulk(None));
        }
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > MAX_BULK {
            return Err(RespError::Protocol(format!("bulk string of {n} bytes")));
        }
        let mut buf = vec![0; n + 2];
        self.reader.read_exact(&mut buf).await.map_err(eof)?;
        if &buf[n..] != b"\r\n" {
            return Err(RespError::Protocol("bulk string not ended by CRLF".into()));
        }
        buf.truncate(n);
        String::from_utf8(buf)
            .map(|s| Reply::Bulk(Some(s)))
            .map_err(|_| RespError::Protocol("bulk string is not UTF-8".into()))
    }

    async fn line(&mut self) -> Result<String, RespError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(RespError::Closed);
        }
        if !buf.ends_with(b"\r\n") || buf.len() < 3 {
            return Err(RespError::Protocol("line not ended by CRLF".into()));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|_| RespError::Protocol("line is not UTF-8".into()))
    }
}

fn eof(e: std::io::Error) -> RespError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        RespError::Closed
    } else {
        RespError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn replies_of_every_kind_are_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"*2\r\n$4\r\nAUTH\r\n$3\r\nk\xc3\xa9\r\n");
            s.write_all(b"+OK\r\n-ERR no\r\n:7\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$5\r\nusage\r\n$2\r\n{}\r\n*-1\r\n$3\r\nab")
                .await
                .unwrap();
        });
        let mut c = Connection::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            c.call(&["AUTH", "ké"]).await.unwrap(),
            Reply::Simple("OK".into())
        );
        assert_eq!(c.read().await.unwrap(), Reply::Error("ERR no".into()));
        assert_eq!(c.read().await.unwrap(), Reply::Int(7));
        assert_eq!(c.read().await.unwrap(), Reply::Bulk(None));
        let message = c.read().await.unwrap();
        assert_eq!(
            message,
            Reply::Array(Some(vec![
                Reply::Bulk(Some("message".into())),
                Reply::Bulk(Some("usage".into())),
                Reply::Bulk(Some("{}".into())),
            ]))
        );
        assert_eq!(c.read().await.unwrap(), Reply::Array(None));
        server.await.unwrap();
        assert!(matches!(c.read().await, Err(RespError::Closed)));
    }
}
