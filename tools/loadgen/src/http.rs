//! The HTTP side: one HTTP/1.1 keep-alive connection per worker (hyper's low-level client, no
//! pool of its own), and the request every worker sends, built once.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What every request of a run looks like.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// Path and query sent in the request line.
    pub path: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Target {
    /// Parses the URL and headers; a body makes it a POST of JSON, none a GET.
    pub fn new(
        url: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad --url {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url must be http://…, got {url}"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url has no host: {url}"))?
            .to_string();
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let mut parsed = Vec::with_capacity(headers.len() + 2);
        parsed.push((HOST, header_value(&authority)?));
        if body.is_some() {
            parsed.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| format!("bad header name {name:?}: {e}"))?;
            parsed.push((name, header_value(value)?));
        }
        Ok(Self {
            authority,
            path,
            method: if body.is_some() {
                Method::POST
            } else {
                Method::GET
            },
            headers: parsed,
            body: body.map(Bytes::from).unwrap_or_default(),
        })
    }

    /// A fresh copy of the request (the body is shared, not copied).
    pub fn request(&self) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Full::new(self.body.clone()))
    }

    /// Opens a keep-alive connection (TCP_NODELAY) and returns its sender; the connection is
    /// driven by a local task until either side closes it.
    pub async fn connect(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::task::spawn_local(async move {
            // A connection error surfaces on the sender as well; nothing more to do here.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|e| format!("bad header value {value:?}: {e}"))
}

/// The outcome of one non-streamed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, read to the end.
    Ok,
    /// Another status, read to the end.
    Status(u16),
    /// The connection failed (it must be reopened).
    Io,
}

/// Sends one request and reads the whole answer; returns the outcome and the body length.
pub async fn exchange(sender: &mut SendRequest<Full<Bytes>>, target: &Target) -> (Outcome, usize) {
    if sender.ready().await.is_err() {
        return (Outcome::Io, 0);
    }
    let Ok(request) = target.request() else {
        return (Outcome::Io, 0);
    };
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => return (Outcome::Io, 0),
    };
    let status = response.status().as_u16();
    // Read frame by frame, counting bytes: a large answer (an export) is never held whole.
    let mut body = response.into_body();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => len += frame.data_ref().map_or(0, Bytes::len),
            Err(_) => return (Outcome::Io, len),
        }
    }
    let outcome = if (200..300).contains(&status) {
        Outcome::Ok
    } else {
        Outcome::Status(status)
    };
    (outcome, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::new(
            "http://127.0.0.1:8080/v1/chat/completions?x=1",
            &[("authorization".into(), "Bearer k".into())],
            Some(b"{}".to_vec()),
        )
        .unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/v1/chat/completions?x=1");
        let r = t.request().unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers()["host"], "127.0.0.1:8080");
        assert_eq!(r.headers()["authorization"], "Bearer k");
        assert!(Target::new("https://x/", &[], None).is_err());
        assert_eq!(
            Target::new("http://x:1", &[], None)
                .unwrap()
                .request()
                .unwrap()
                .method(),
            Method::GET
        );
    }
}
