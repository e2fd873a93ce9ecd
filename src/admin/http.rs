//! The admin listener's HTTP/1.1 subset, sans-IO: [`parse_head`] turns the bytes received so far into a decision,
//! [`Response`] renders one answer. No sockets here, so every limit is unit-tested on plain byte strings.
//!
//! Invariant: nothing here trusts the peer — every outcome for any input is `NeedMore` or a decision; there is no
//! panic path and no allocation proportional to anything but [`MAX_HEAD_BYTES`].

/// Largest request head (request line + headers) accepted; more is answered 431 (or 414 for a request line alone).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header fields accepted; more is answered 431.
pub const MAX_HEADERS: usize = 32;

/// The endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`
    Metrics,
    /// `GET /health`
    Health,
    /// `GET /ready`
    Ready,
}

/// What the bytes received so far mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head is not complete yet and still within limits.
    NeedMore,
    /// A valid request for a route; `head_only` for `HEAD` (headers without body).
    Request {
        /// Which endpoint.
        route: Route,
        /// `HEAD` rather than `GET`.
        head_only: bool,
    },
    /// Answer with this status and close.
    Reject(Status),
}

/// The statuses the listener sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200
    Ok,
    /// 400: malformed request, or a request with a body.
    BadRequest,
    /// 404: unknown path.
    NotFound,
    /// 405: a method other than GET or HEAD.
    MethodNotAllowed,
    /// 408: the head did not arrive in time.
    RequestTimeout,
    /// 414: the request line alone exceeds [`MAX_HEAD_BYTES`].
    UriTooLong,
    /// 431: the head exceeds [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    HeadersTooLarge,
    /// 503: not ready, unhealthy, or too many admin connections.
    Unavailable,
}

impl Status {
    /// Numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::UriTooLong => 414,
            Status::HeadersTooLarge => 431,
            Status::Unavailable => 503,
        }
    }

    /// Reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::UriTooLong => "URI Too Long",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }
}

/// Decides what to do with the request head received so far (`buf` holds every byte read, at most
/// [`MAX_HEAD_BYTES`] + the last read).
pub fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Head::Reject(Status::HeadersTooLarge),
        Ok(httparse::Status::Complete(_)) => decide(&req),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            // Still no end of head: a request line alone this long is a URI problem, otherwise headers are.
            if buf[..MAX_HEAD_BYTES].contains(&b'\n') {
                Head::Reject(Status::HeadersTooLarge)
            } else {
                Head::Reject(Status::UriTooLong)
            }
        }
        Ok(httparse::Status::Partial) => Head::NeedMore,
        Err(httparse::Error::TooManyHeaders) => Head::Reject(Status::HeadersTooLarge),
        Err(_) => Head::Reject(Status::BadRequest),
    }
}

fn decide(req: &httparse::Request<'_, '_>) -> Head {
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Head::Reject(Status::BadRequest);
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Head::Reject(Status::MethodNotAllowed),
    };
    // No request body is accepted: a GET with one is malformed for us (and unread body bytes would turn the close
    // into a reset that can destroy our answer in flight).
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Head::Reject(Status::BadRequest);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            if len != Some(0) {
                return Head::Reject(Status::BadRequest);
            }
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        "/ready" => Route::Ready,
        _ => return Head::Reject(Status::NotFound),
    };
    Head::Request { route, head_only }
}

/// One response; always `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status.
    pub status: Status,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body (omitted on the wire for `HEAD`, its length still announced).
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: Status, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    /// The short plain-text answer to a rejected request.
    pub fn error(status: Status) -> Response {
        Response::text(status, format!("{}\n", status.reason()))
    }

    /// Status line, headers and (unless `head_only`) body.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status.code(),
            self.status.reason(),
            self.content_type,
            self.body.len()
        );
        out.push_str("Cache-Control: no-store\r\nConnection: close\r\n");
        if self.status == Status::MethodNotAllowed {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Head {
        parse_head(s.as_bytes())
    }

    #[test]
    fn known_paths_route_and_query_strings_are_ignored() {
        assert_eq!(
            req("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Request { route: Route::Metrics, head_only: false }
        );
        assert_eq!(
            req("GET /health?verbose=1 HTTP/1.0\r\n\r\n"),
            Head::Request { route: Route::Health, head_only: false }
        );
        assert_eq!(req("HEAD /ready HTTP/1.1\r\n\r\n"), Head::Request { route: Route::Ready, head_only: true });
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert_eq!(req("GET /metrics HTTP/1.1\r\nHost: x\r\n"), Head::NeedMore);
        assert_eq!(req(""), Head::NeedMore);
    }

    #[test]
    fn unknown_path_is_404_and_other_methods_405() {
        assert_eq!(req("GET /admin HTTP/1.1\r\n\r\n"), Head::Reject(Status::NotFound));
        assert_eq!(
            req("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Head::Reject(Status::MethodNotAllowed)
        );
        assert_eq!(req("DELETE /health HTTP/1.1\r\n\r\n"), Head::Reject(Status::MethodNotAllowed));
    }

    #[test]
    fn garbage_and_bodies_are_400() {
        // A TLS ClientHello sent to the plain-HTTP port.
        assert_eq!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            Head::Reject(Status::BadRequest)
        );
        assert_eq!(req("GET /metrics HTTP/9.9\r\n\r\n"), Head::Reject(Status::BadRequest));
        assert_eq!(req("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"), Head::Reject(Status::BadRequest));
        assert_eq!(req("GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Head::Reject(Status::BadRequest));
        assert_eq!(
            req("GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Head::Reject(Status::BadRequest)
        );
        assert_eq!(
            req("GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Head::Request { route: Route::Metrics, head_only: false }
        );
    }

    #[test]
    fn oversized_heads_are_431_and_a_huge_request_line_414() {
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(req(&format!("GET /metrics HTTP/1.1\r\n{many}\r\n")), Head::Reject(Status::HeadersTooLarge));
        let big = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(req(&big), Head::Reject(Status::HeadersTooLarge));
        let complete_but_big = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(req(&complete_but_big), Head::Reject(Status::HeadersTooLarge));
        let long_uri = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(req(&long_uri), Head::Reject(Status::UriTooLong));
    }

    #[test]
    fn responses_announce_length_and_close_and_head_omits_the_body() {
        let r = Response::text(Status::Ok, "ready\n");
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 6\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\nready\n"));
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 6\r\n"));
        let not_allowed = String::from_utf8(Response::error(Status::MethodNotAllowed).to_bytes(false)).unwrap();
        assert!(not_allowed.contains("Allow: GET, HEAD\r\n"));
    }
}
