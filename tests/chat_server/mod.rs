//! A small OpenAI-compatible chat-completions server for the end-to-end tests: std::net on
//! 127.0.0.1, one connection at a time, `Connection: close`. The test decides each answer
//! from the request's JSON body; the server can be stopped (its port closes, in-flight
//! connections are dropped) and started again on the same port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

/// What the server does with one request.
pub enum Reply {
    /// An OpenAI chat-completions answer with this message content.
    Answer(String),
    /// An HTTP status with a body, as written.
    Raw(u16, String),
    /// Close the connection without answering (a server dying mid-request).
    Drop,
}

/// Decides the reply to a request body.
pub type Handler = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// A running server.
pub struct ChatServer {
    /// The port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every request body received (including ones answered with errors or dropped).
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// How many requests were received.
    pub count: Arc<AtomicUsize>,
}

impl ChatServer {
    /// Starts a server on `port` (0: any free port).
    pub fn start(port: u16, handler: Handler) -> ChatServer {
        Self::start_logging(port, handler, Arc::default(), Arc::default())
    }

    /// Starts a server that appends to an existing request log and counter (for a restart).
    pub fn start_logging(
        port: u16,
        handler: Handler,
        requests: Arc<Mutex<Vec<Value>>>,
        count: Arc<AtomicUsize>,
    ) -> ChatServer {
        let listener = bind(port);
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, requests2, count2) = (stop.clone(), requests.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &handler, &requests2, &count2, &stop2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener is dropped here: the port stops accepting.
        });
        ChatServer {
            port,
            stop,
            thread: Some(thread),
            requests,
            count,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server and closes its port.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds 127.0.0.1:port, retrying for a few seconds (a restart on the same port).
fn bind(port: u16) -> TcpListener {
    let mut last = None;
    for _ in 0..200 {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    panic!("cannot bind 127.0.0.1:{port}: {last:?}");
}

fn serve(
    stream: TcpStream,
    handler: &Handler,
    requests: &Mutex<Vec<Value>>,
    count: &AtomicUsize,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    requests.lock().unwrap().push(v.clone());
    count.fetch_add(1, Ordering::SeqCst);
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (status, text) = match handler(&v) {
        Reply::Answer(content) => (
            200,
            json!({
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": v["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
            })
            .to_string(),
        ),
        Reply::Raw(status, text) => (status, text),
        Reply::Drop => return Ok(()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

/// The text of every user message part of a request, concatenated.
pub fn user_text(body: &Value) -> String {
    let mut s = String::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        if m["role"] != "user" {
            continue;
        }
        match &m["content"] {
            Value::String(t) => s.push_str(t),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(t) = p["text"].as_str() {
                        s.push_str(t);
                    }
                }
            }
            _ => {}
        }
        s.push('\n');
    }
    s
}

/// The image data URLs of a request's user messages.
pub fn image_urls(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|p| p["type"] == "image_url")
        .filter_map(|p| p["image_url"]["url"].as_str().map(str::to_string))
        .collect()
}

/// Decodes standard base64 (test helper; panics on bad input).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
