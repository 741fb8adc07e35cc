//! Sending to `tally ingest` over HTTP: [`post_orders`], the load
//! generator's client (on reqwest), and [`request`], a wire-level HTTP/1.1
//! exchange for the benchmark and the tests: one request per connection,
//! the body written while the answer is read, so that an answer sent before
//! the body was read (a 413) is seen even when the server then resets.

use std::time::Duration;

use schemas::config::ConfigError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::ApiError;
use crate::orders::Outcome;

/// Where to send requests: `host:port` and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, for the TCP connection and the `Host` header.
    pub addr: String,
    /// The request path, `/v1/orders` when the URL names none.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]`; the port defaults to 80 and the
    /// path to `/v1/orders`. `field` names the flag in the error.
    pub fn parse(field: &str, url: &str) -> Result<Endpoint, ConfigError> {
        let Some(rest) = url.strip_prefix("http://") else {
            let reason = if url.starts_with("https://") {
                "https is not supported: point it at the ingest listener, or at a TLS proxy's plain-HTTP side"
            } else {
                "must start with http://"
            };
            return Err(ConfigError::new(field, url, reason));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(ConfigError::new(field, url, "names no host"));
        }
        let addr = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                authority.to_owned()
            }
            Some(_) => {
                return Err(ConfigError::new(
                    field,
                    url,
                    "has a port that is not a number from 0 to 65535",
                ))
            }
            None => format!("{authority}:80"),
        };
        let path = if path.is_empty() || path == "/" {
            "/v1/orders".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Endpoint { addr, path })
    }
}

/// A response: status, headers (names in lower case) and the whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in seconds, when the server sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")?
            .trim()
            .parse()
            .ok()
            .map(Duration::from_secs)
    }
}

/// Sends one request over a fresh connection and reads the whole response.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let (mut reader, mut writer) = tokio::net::TcpStream::connect(addr).await?.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // Write while reading: a server may answer (413) and close before it has
    // read a large body, and the reset must not hide its answer.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        writer
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            // A reset after the answer arrived still leaves a usable answer.
            Err(error) if response.is_empty() => return Err(error),
            Err(_) => break,
        }
    }
    writing.abort();
    parse(&response).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1.1 response")
    })
}

/// Posts one NDJSON batch of events to `endpoint` and returns the service's
/// outcome (200, 207 or 422), over reqwest's pooled keep-alive connections.
/// A 503 or a failed connection is retried after `Retry-After` (one second
/// when absent) until `give_up_after` has passed; retrying is safe, since
/// workers count a repeated `event_id` once. Any other status is an error
/// that carries the service's message.
pub async fn post_orders(
    endpoint: &Endpoint,
    token: &str,
    ndjson: &[u8],
    give_up_after: Duration,
) -> Result<Outcome, String> {
    static CLIENT: std::sync::LazyLock<reqwest::Client> =
        std::sync::LazyLock::new(reqwest::Client::new);
    let url = format!("http://{}{}", endpoint.addr, endpoint.path);
    let deadline = tokio::time::Instant::now() + give_up_after;
    loop {
        let sent = CLIENT
            .post(&url)
            .header("Content-Type", "application/x-ndjson")
            .bearer_auth(token)
            .body(ndjson.to_vec())
            .send()
            .await;
        let answered = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                    .map(Duration::from_secs);
                match response.bytes().await {
                    Ok(body) => Ok((status, retry_after, body)),
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        let (wait, why) = match answered {
            Ok((200 | 207 | 422, _, body)) => {
                return serde_json::from_slice(&body).map_err(|e| {
                    format!(
                        "{} answered with a body that is not an outcome: {e}",
                        endpoint.addr
                    )
                });
            }
            Ok((503, retry_after, body)) => (
                retry_after.unwrap_or(Duration::from_secs(1)),
                format!("503: {}", message(&body)),
            ),
            Ok((status, _, body)) => {
                return Err(format!(
                    "{} answered {status}: {}",
                    endpoint.addr,
                    message(&body)
                ))
            }
            Err(error) => (Duration::from_secs(1), error.to_string()),
        };
        if tokio::time::Instant::now() + wait > deadline {
            return Err(format!(
                "{} still refused after {give_up_after:?}: {why}",
                endpoint.addr
            ));
        }
        tracing::warn!(addr = %endpoint.addr, "retrying a batch in {wait:?}: {why}");
        tokio::time::sleep(wait).await;
    }
}

/// The `error` of a refusal's body, or the body itself.
fn message(body: &[u8]) -> String {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(refusal) => refusal.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}

fn parse(response: &[u8]) -> Option<Reply> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: response[split + 4..].to_vec(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(&reply.body)?;
    }
    Some(reply)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(line_end + 2..line_end + 2 + size)?);
        data = data.get(line_end + 2 + size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_clear_errors() {
        let e = Endpoint::parse("--url", "http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (e.addr.as_str(), e.path.as_str()),
            ("127.0.0.1:8080", "/v1/orders")
        );
        let e = Endpoint::parse("--url", "http://ingest/custom/path").unwrap();
        assert_eq!(
            (e.addr.as_str(), e.path.as_str()),
            ("ingest:80", "/custom/path")
        );
        for (url, reason) in [
            ("https://x", "https"),
            ("x:80", "http://"),
            ("http://", "no host"),
            ("http://h:99999", "port"),
        ] {
            let error = Endpoint::parse("--url", url).unwrap_err().to_string();
            assert!(
                error.contains("`--url`") && error.contains(reason),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = parse(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\ncontent-length: 2\r\n\r\nno",
        )
        .unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (503, &b"no"[..]));
        assert_eq!(plain.retry_after(), Some(Duration::from_secs(2)));
        let chunked = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(chunked.body, b"abcde");
        assert!(parse(b"garbage").is_none());
    }
}
