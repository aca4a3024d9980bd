//! Minimal HTTP/1.1 server plumbing for the mock vendor: request-head parsing with
//! `httparse`, `Content-Length` and chunked request bodies, `Expect: 100-continue`,
//! and response-head formatting. No hyper, no allocation-heavy abstractions.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request body accepted (64 MiB); larger ones get 413 and the connection closes.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunked-body trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;
const MAX_HEADERS: usize = 128;

/// A parsed request head with owned data.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The query string (after `?`), empty when none.
    pub query: String,
    /// HTTP minor version (0 or 1).
    pub version: u8,
    /// Header names lowercased, values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection may be reused after this request.
    pub fn keep_alive(&self) -> bool {
        if self.version >= 1 {
            !self.has_token("connection", "close")
        } else {
            self.has_token("connection", "keep-alive")
        }
    }
}

/// Why reading a request failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// Socket error or EOF in the middle of a request: just close.
    Io,
    /// Malformed or unacceptable request: answer this status with the message, then close.
    Status(u16, &'static str),
}

impl From<io::Error> for HttpError {
    fn from(_: io::Error) -> Self {
        HttpError::Io
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// One accepted connection plus its read buffer (bytes read but not yet consumed).
pub(crate) struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Reads more bytes into the buffer; errors on EOF.
    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(HttpError::Io);
        }
        Ok(())
    }

    /// Reads the next request head. `Ok(None)` means the peer closed cleanly between requests.
    pub async fn read_head(&mut self) -> Result<Option<Head>, HttpError> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let target = req.path.unwrap_or("/");
                        // Absolute-form targets (`http://host/path`) are reduced to the path.
                        let target = match target
                            .strip_prefix("http://")
                            .or_else(|| target.strip_prefix("https://"))
                        {
                            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
                            None => target,
                        };
                        let (path, query) = target.split_once('?').unwrap_or((target, ""));
                        let head = Head {
                            method: req.method.unwrap_or("").to_string(),
                            path: path.to_string(),
                            query: query.to_string(),
                            version: req.version.unwrap_or(1),
                            headers: req
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_ascii_lowercase(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                        };
                        self.buf.advance(len);
                        return Ok(Some(head));
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_HEAD {
                            return Err(HttpError::Status(431, "Request header fields too large"));
                        }
                    }
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(HttpError::Status(431, "Too many request header fields"));
                    }
                    Err(_) => return Err(HttpError::Status(400, "Malformed HTTP request")),
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(HttpError::Io)
                };
            }
        }
    }

    fn framing(head: &Head) -> Result<Framing, HttpError> {
        let te: Vec<&str> = head
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(last) = te.last() {
            return if last.eq_ignore_ascii_case("chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(HttpError::Status(400, "Unsupported Transfer-Encoding"))
            };
        }
        let mut length: Option<u64> = None;
        for (_, v) in head.headers.iter().filter(|(n, _)| n == "content-length") {
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::Status(400, "Invalid Content-Length"));
                }
                let n: u64 = part
                    .parse()
                    .map_err(|_| HttpError::Status(400, "Invalid Content-Length"))?;
                match length {
                    Some(prev) if prev != n => {
                        return Err(HttpError::Status(400, "Conflicting Content-Length"))
                    }
                    _ => length = Some(n),
                }
            }
        }
        match length {
            None | Some(0) => Ok(Framing::None),
            Some(n) if n > MAX_BODY as u64 => Err(HttpError::Status(413, "Request body too large")),
            Some(n) => Ok(Framing::Length(n as usize)),
        }
    }

    async fn send_continue(&mut self, head: &Head) -> Result<(), HttpError> {
        if head.version >= 1 && head.has_token("expect", "100-continue") {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        Ok(())
    }

    /// Reads the request body according to its framing (answering `100 Continue` first when
    /// the client asked for it and the body has not arrived yet).
    pub async fn read_body(&mut self, head: &Head) -> Result<Bytes, HttpError> {
        match Self::framing(head)? {
            Framing::None => Ok(Bytes::new()),
            Framing::Length(n) => {
                if self.buf.len() < n {
                    self.send_continue(head).await?;
                    self.buf.reserve(n - self.buf.len());
                    while self.buf.len() < n {
                        self.fill().await?;
                    }
                }
                Ok(self.buf.split_to(n).freeze())
            }
            Framing::Chunked => {
                if self.buf.is_empty() {
                    self.send_continue(head).await?;
                }
                self.read_chunked().await
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Bytes, HttpError> {
        let mut body = BytesMut::new();
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(v)) => break v,
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > 4096 {
                            return Err(HttpError::Status(400, "Invalid chunk size line"));
                        }
                        self.fill().await?;
                    }
                    Err(_) => return Err(HttpError::Status(400, "Invalid chunk size")),
                }
            };
            self.buf.advance(consumed);
            if size == 0 {
                break;
            }
            if size > (MAX_BODY - body.len()) as u64 {
                return Err(HttpError::Status(413, "Request body too large"));
            }
            let size = size as usize;
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(HttpError::Status(400, "Chunk data not followed by CRLF"));
            }
            self.buf.advance(size + 2);
        }
        // Trailer section: header lines until an empty line.
        let mut trailer_bytes = 0usize;
        loop {
            match self.buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(body.freeze());
                }
                Some(pos) => {
                    trailer_bytes += pos + 2;
                    self.buf.advance(pos + 2);
                }
                None => {
                    if self.buf.len() + trailer_bytes > MAX_TRAILERS {
                        return Err(HttpError::Status(400, "Trailer section too large"));
                    }
                    self.fill().await?;
                }
            }
        }
    }
}

/// Standard reason phrase for a status code.
pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        529 => "Overloaded",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Formats a response head. `content_length: None` means `Transfer-Encoding: chunked`.
pub(crate) fn response_head(
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    extra: &[(&str, String)],
    keep_alive: bool,
) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "HTTP/1.1 {status} {}\r\nserver: tollgate-mock\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    match content_length {
        Some(n) => {
            let _ = write!(s, "content-length: {n}\r\n");
        }
        None => s.push_str("transfer-encoding: chunked\r\n"),
    }
    for (name, value) in extra {
        let _ = write!(s, "{name}: {value}\r\n");
    }
    s.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    s.into_bytes()
}

/// Appends one HTTP/1.1 chunk frame (`<hex len>\r\n<data>\r\n`) to `out`. Empty data is skipped
/// (a zero-length frame would terminate the body).
pub(crate) fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The chunked-body terminator (last chunk, no trailers).
pub(crate) const CHUNKED_END: &[u8] = b"0\r\n\r\n";
