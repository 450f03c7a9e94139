//! Helpers of the fault tests (`tests/faults.rs`): the server's process figures read from `/proc`
//! (open file descriptors, resident memory, threads), raw HTTP/1.1 over a `TcpStream` for clients
//! that misbehave on purpose, the open-files limit, a fake upstream that answers one canned
//! response, and a small tmpfs "disk" that can be filled up.

pub mod soak;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{wait_until, Server, DEADLINE};

/// A running process observed through `/proc/PID`.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    /// Its process id.
    pub pid: u32,
}

/// What a process holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Open file descriptors (`/proc/PID/fd`).
    pub fds: usize,
    /// Resident memory in KiB (`VmRSS`).
    pub rss_kb: u64,
    /// OS threads (`Threads`): the runtime's workers plus the blocking pool and the recorder.
    pub threads: u64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fds {} · rss {:.1} MiB · threads {}",
            self.fds,
            self.rss_kb as f64 / 1024.0,
            self.threads
        )
    }
}

impl Proc {
    /// The token-console process of `server`: the one whose working directory is the server's
    /// own temporary directory (the harness starts it there), so tests running in parallel
    /// never confuse their servers.
    pub fn of(server: &Server) -> Self {
        let want = std::fs::canonicalize(&server.dir).unwrap();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let cwd = std::fs::read_link(entry.path().join("cwd"));
            let exe = std::fs::read_link(entry.path().join("exe"));
            let is_gateway = exe.ok().is_some_and(|exe| {
                exe.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("token-console"))
            });
            if is_gateway && cwd.ok().as_deref() == Some(want.as_path()) {
                return Self { pid };
            }
        }
        panic!("no token-console process runs in {}", want.display());
    }

    /// The process's figures now.
    pub fn figures(&self) -> Figures {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count();
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{}/status", self.pid))
        };
        Figures {
            fds,
            rss_kb: field("VmRSS:"),
            threads: field("Threads:"),
        }
    }

    /// Waits until the open descriptors are back within `slack` of `baseline` (connections the
    /// server closes after the client has gone take a moment, pooled upstream connections until
    /// their idle timeout) and returns the figures then; fails after the deadline.
    pub async fn fds_settle(&self, baseline: Figures, slack: usize) -> Figures {
        let what = format!(
            "open file descriptors back within {slack} of the {} before",
            baseline.fds
        );
        wait_until(&what, || async {
            let now = self.figures();
            if now.fds <= baseline.fds + slack {
                Ok(now)
            } else {
                Err(format!("{} open (a leak?)", now.fds))
            }
        })
        .await
    }
}

/// Raises this process's soft limit of open files to at least `want` (up to the hard limit) so
/// that the servers it starts, which inherit it, can hold thousands of connections. Returns the
/// soft limit in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    limit.rlim_cur
}

/// `host:port` of an `http://host:port` URL.
pub fn authority(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// The head of a gateway POST written by hand: `Connection: close`, so the answer ends with the
/// connection; `length` gives `Content-Length`, `None` means `Transfer-Encoding: chunked`.
pub fn post_head(url: &str, path: &str, key: &str, length: Option<usize>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n{framing}\r\n\r\n",
        authority(url)
    )
}

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Where the head of a response ends (just after the blank line).
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Parses a whole response (as read until the server closed the connection).
pub fn parse_response(bytes: &[u8]) -> RawResponse {
    let end = head_end(bytes).unwrap_or_else(|| {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let head = std::str::from_utf8(&bytes[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw = &bytes[end..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    RawResponse { status, body }
}

/// Decodes a complete `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Reads until the server closes the connection, then parses the response.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes))
        .await
        .expect("the answer ends within the deadline")
        .unwrap();
    parse_response(&bytes)
}

/// Opens a connection to the gateway of `url`.
pub async fn connect(url: &str) -> TcpStream {
    TcpStream::connect(authority(url)).await.unwrap()
}

/// Sends `head`, then the body in `parts` with `pause` between them (a slow client), and reads
/// the answer.
pub async fn send_slowly(url: &str, head: &str, parts: &[Vec<u8>], pause: Duration) -> RawResponse {
    let mut stream = connect(url).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
    }
    read_response(&mut stream).await
}

/// `bytes` cut into `n` nearly equal parts.
pub fn split(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    let size = bytes.len().div_ceil(n);
    bytes.chunks(size).map(<[u8]>::to_vec).collect()
}

/// `bytes` cut into `n` parts, each framed as one HTTP chunk, the last followed by the
/// terminating zero-size chunk.
pub fn chunked_parts(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = split(bytes, n)
        .into_iter()
        .map(|part| {
            let mut framed = format!("{:x}\r\n", part.len()).into_bytes();
            framed.extend_from_slice(&part);
            framed.extend_from_slice(b"\r\n");
            framed
        })
        .collect();
    if let Some(last) = parts.last_mut() {
        last.extend_from_slice(b"0\r\n\r\n");
    }
    parts
}

/// A fake upstream that answers every connection with the same canned `response` bytes and
/// closes: for answers the mock cannot give (an HTML error page from a proxy in front of the
/// provider). Returns its base URL; it runs until the test's runtime ends.
pub async fn canned_upstream(response: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let response: std::sync::Arc<[u8]> = response.into();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the request head and its Content-Length body before answering.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = head_end(&seen) {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

/// A small tmpfs mounted for one test (root only): the "disk" of a database that fills up.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`) at `path`; `None` when this machine does not
    /// allow it (not root, or no mount namespace rights).
    pub fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Self {
            path: path.to_owned(),
        })
    }

    /// Fills the disk: writes a file until the disk refuses more. Returns the file.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0xA5u8; 4096];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
