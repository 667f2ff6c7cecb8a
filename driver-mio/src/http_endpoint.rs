//! A tiny HTTP/1.1 server on its own thread for read-only operator pages:
//! the Prometheus text endpoint (`--metrics-addr`) of the rendezvous and
//! the daemon, and the rendezvous dashboard (`--http-addr`).
//!
//! It answers `GET` only, one request per connection (`Connection:
//! close`), one connection at a time, with short socket timeouts so a slow
//! or silent client cannot hold it for long. Request heads are capped at
//! [`MAX_HEAD`] bytes; anything else gets a 4xx. It never touches the
//! event loops it reports on: handlers read shared, thread-safe state.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most bytes of a request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// Read and write timeout of one connection.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A response: status code, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Page {
    /// A `200 OK` page.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Page {
        Page {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text error page.
    pub fn error(status: u16, text: &str) -> Page {
        Page {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n").into_bytes(),
        }
    }
}

/// Maps a request path (without the query string) to a page; `None` is a
/// 404.
pub type Handler = dyn Fn(&str) -> Option<Page> + Send + Sync;

/// A running endpoint; dropping it stops the thread.
#[derive(Debug)]
pub struct HttpEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpEndpoint {
    /// Binds `addr` and serves `handler` on a new thread named `name`.
    pub fn start(addr: SocketAddr, name: &str, handler: Arc<Handler>) -> io::Result<HttpEndpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = conn {
                        if let Err(e) = serve(stream, &*handler) {
                            tracing::debug!(error = %e, "http request failed");
                        }
                    }
                }
            })?;
        Ok(HttpEndpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head, answers it and closes.
fn serve(mut stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let page = loop {
        if let Some(end) = find_head_end(&head) {
            break route(&head[..end], handler);
        }
        if head.len() > MAX_HEAD {
            break Page::error(431, "request head too large");
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let reason = match page.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let header = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        page.status,
        page.content_type,
        page.body.len()
    );
    stream.write_all(header.as_bytes())?;
    stream.write_all(&page.body)?;
    stream.flush()
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses the request line and dispatches.
fn route(head: &[u8], handler: &Handler) -> Page {
    let Ok(text) = std::str::from_utf8(head) else {
        return Page::error(400, "bad request");
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Page::error(400, "bad request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Page::error(400, "HTTP/1.x only");
    }
    if method != "GET" && method != "HEAD" {
        return Page::error(405, "GET only");
    }
    let path = target.split('?').next().unwrap_or_default();
    handler(path).unwrap_or_else(|| Page::error(404, "not found"))
}

/// Fetches `path` from `addr` with a plain `GET` and returns the status and
/// body. For tests and the `--metrics-addr` examples.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> HttpEndpoint {
        let h: Arc<Handler> =
            Arc::new(|p: &str| (p == "/x").then(|| Page::ok("text/plain; charset=utf-8", "hello")));
        HttpEndpoint::start("127.0.0.1:0".parse().unwrap(), "http-test", h).unwrap()
    }

    #[test]
    fn serves_known_paths_and_refuses_the_rest() {
        let e = endpoint();
        assert_eq!(get(e.local_addr(), "/x").unwrap(), (200, "hello".into()));
        assert_eq!(get(e.local_addr(), "/x?a=1").unwrap().0, 200);
        assert_eq!(get(e.local_addr(), "/y").unwrap().0, 404);
        let mut s = TcpStream::connect(e.local_addr()).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    }

    #[test]
    fn oversized_head_is_refused() {
        let e = endpoint();
        let mut s = TcpStream::connect(e.local_addr()).unwrap();
        let big = format!("GET /x HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD + 10));
        let _ = s.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    }
}
