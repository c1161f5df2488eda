//! A minimal HTTP/1.1 client on one keep-alive TCP connection, for the `webhooks` load: the
//! requests are built (and signed) before the clock starts, so sending one is a single write
//! and reading its answer a few reads. Only what the daemon's answers need: a status line,
//! headers and a `Content-Length` body (no chunked bodies, no redirects).

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest an answer may take before the connection is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection to `addr` (`host:port`).
pub struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_string(),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends the complete request `raw` and reads its answer; (re)connects when needed. A
    /// connection the server closed before answering is retried once on a new one (an idle
    /// keep-alive connection may be closed at any time).
    pub async fn send(&mut self, raw: &[u8]) -> anyhow::Result<Answer> {
        let reused = self.stream.is_some();
        match self.try_send(raw).await {
            Ok(answer) => Ok(answer),
            Err(e) if reused => {
                self.stream = None;
                self.try_send(raw)
                    .await
                    .with_context(|| format!("after a reused connection failed: {e:#}"))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    async fn try_send(&mut self, raw: &[u8]) -> anyhow::Result<Answer> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().context("no connection")?;
        stream.write_all(raw).await.context("cannot send")?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_answer(stream, &mut self.buf))
            .await
            .context("no answer within 30 s")??;
        if answer.1 {
            self.stream = None;
        }
        Ok(answer.0)
    }
}

/// Reads one answer; the flag says the server closes the connection after it.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<(Answer, bool)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("answer head is not UTF-8")?;
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("bad status line {status_line:?}"))?;
            let mut length = None;
            let mut close = false;
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<usize>().context("bad Content-Length")?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked answers are not supported (status {status})");
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
            let length = length.unwrap_or(0);
            let start = end + 4;
            while buf.len() < start + length {
                read_more(stream, buf).await?;
            }
            let body = buf[start..start + length].to_vec();
            buf.drain(..start + length);
            return Ok((Answer { status, body }, close));
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.context("cannot read")?;
    ensure!(n > 0, "the server closed the connection");
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A complete request: `method path`, `headers`, `body`.
pub fn request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}
