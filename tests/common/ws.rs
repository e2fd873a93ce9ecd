//! A browser's side of the browser endpoint for tests: HTTP requests on fresh connections and a WebSocket of
//! `WsFrame`s (tungstenite over a blocking socket).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use prost::Message as _;
use realm::proto::{control_message::Body, ws_frame, ControlMessage, LoginOk, WsFrame};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A test's WebSocket.
pub type Ws = WebSocket<TcpStream>;

/// One HTTP request on a fresh connection; returns (status, headers, body).
pub fn http(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

pub fn post(addr: SocketAddr, path: &str, json: &str) -> (u16, serde_json::Value) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    let (status, _, body) = http(addr, req.as_bytes());
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

pub fn token(addr: SocketAddr, path: &str, name: &str) -> String {
    let (status, body) = post(addr, path, &format!(r#"{{"username":"{name}","password":"password123"}}"#));
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

pub fn open(addr: SocketAddr, query: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (ws, response) = tungstenite::client::client(format!("ws://{addr}/ws{query}"), stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    ws
}

pub fn send(ws: &mut Ws, body: ws_frame::Body) {
    ws.send(Message::Binary(WsFrame { body: Some(body) }.encode_to_vec().into())).unwrap();
}

/// The next frame, or the close (as Err with its code).
pub fn next(ws: &mut Ws) -> Result<WsFrame, Option<CloseCode>> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return Ok(WsFrame::decode(b.as_ref()).expect("server frames decode")),
            Ok(Message::Close(f)) => return Err(f.map(|f| f.code)),
            Ok(_) => {}
            Err(_) => return Err(None),
        }
    }
}

pub fn login_ok(ws: &mut Ws) -> LoginOk {
    match next(ws) {
        Ok(WsFrame { body: Some(ws_frame::Body::Control(ControlMessage { body: Some(Body::LoginOk(ok)) })) }) => ok,
        other => panic!("expected LoginOk, got {other:?}"),
    }
}
