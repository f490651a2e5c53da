//! `OpenAiCompatible` against a real HTTP server on 127.0.0.1 (an ephemeral port) started by
//! each test: a small HTTP/1.1 server over `std::net::TcpListener` that plays a script of
//! behaviours, one per connection. Its `Llm` behaviour answers `/v1/chat/completions` with
//! our own Burn `LocalLlm` (a tiny random Llama with the tiny byte-level BPE tokenizer),
//! decoding under the JSON Schema or `guided_choice` the client sent. Covers success, retries
//! on 500 and closed connections, 429 with `Retry-After`, a 400 that is not retried, a
//! time-out, garbage and oversized responses, and a server that is down.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cielr_core::backend::CpuBackend;
use cielr_core::{ChatMessage, Constraint, GenerationRequest, JsonShape, LanguageModel};
use cielr_planner::llama::LlamaConfig;
use cielr_planner::local::LocalLlm;
use cielr_planner::openai::{OpenAiCompatible, OpenAiConfig};
use cielr_planner::tokenizer::Tokenizer;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The model behind the server.
// ---------------------------------------------------------------------------------------

fn tiny_llm() -> Arc<LocalLlm> {
    static LLM: OnceLock<Arc<LocalLlm>> = OnceLock::new();
    LLM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let tokenizer = Tokenizer::from_json_file(&dir.join("tokenizer_tiny_bpe.json")).unwrap();
        let config = LlamaConfig::from_json_str(&format!(
            r#"{{"model_type": "llama", "vocab_size": {}, "hidden_size": 32,
                "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 1024}}"#,
            tokenizer.vocab_size()
        ))
        .unwrap();
        let model = config.init::<CpuBackend>(&Default::default()).unwrap();
        Arc::new(LocalLlm::from_parts("tiny", model, tokenizer).unwrap())
    })
    .clone()
}

/// A `JsonShape` from the JSON Schema that `JsonShape::to_json_schema` writes (fields in the
/// order of `required`).
fn shape_of(schema: &Value) -> Result<JsonShape, String> {
    match schema["type"].as_str() {
        Some("string") => match schema.get("enum") {
            Some(Value::Array(values)) => Ok(JsonShape::Enum(
                values
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or("a non-string enum"))
                    .collect::<Result<_, _>>()?,
            )),
            _ => Ok(JsonShape::String),
        },
        Some("integer") => Ok(JsonShape::Integer),
        Some("array") => Ok(JsonShape::array_between(
            shape_of(&schema["items"])?,
            schema["minItems"].as_u64().unwrap_or(0) as usize,
            schema["maxItems"].as_u64().unwrap_or(16) as usize,
        )),
        Some("object") => {
            let required = schema["required"].as_array().ok_or("no required list")?;
            let mut fields = Vec::new();
            for k in required {
                let k = k.as_str().ok_or("a non-string field name")?;
                fields.push((k.to_string(), shape_of(&schema["properties"][k])?));
            }
            Ok(JsonShape::Object(fields))
        }
        other => Err(format!("unsupported schema type {other:?}")),
    }
}

/// Answers a chat-completions body with the local model, as a served model would.
fn local_completion(body: &Value) -> Result<Value, String> {
    let messages = body["messages"]
        .as_array()
        .ok_or("no messages")?
        .iter()
        .map(|m| {
            let content = m["content"].as_str().unwrap_or_default();
            match m["role"].as_str() {
                Some("system") => Ok(ChatMessage::system(content)),
                Some("user") => Ok(ChatMessage::user(content)),
                Some("assistant") => Ok(ChatMessage::assistant(content)),
                other => Err(format!("unknown role {other:?}")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let constraint = if let Some(schema) = body.pointer("/response_format/json_schema/schema") {
        Some(Constraint::Json(shape_of(schema)?))
    } else {
        body.get("guided_choice")
            .and_then(Value::as_array)
            .map(|c| {
                Constraint::Choices(
                    c.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                )
            })
    };
    let request = GenerationRequest {
        max_tokens: body["max_tokens"].as_u64().unwrap_or(16) as usize,
        temperature: body["temperature"].as_f64().unwrap_or(0.0) as f32,
        ..GenerationRequest::new("served", messages, constraint)
    };
    let text = tiny_llm()
        .complete_blocking(&request)
        .map_err(|e| e.to_string())?;
    Ok(completion_json(&text))
}

fn completion_json(text: &str) -> Value {
    json!({
        "id": "cmpl-test",
        "object": "chat.completion",
        "model": "tiny",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
    })
}

// ---------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------

/// What the server does with one connection.
#[derive(Debug, Clone)]
enum Action {
    /// Answers with the local model.
    Llm,
    /// Answers 200 with this assistant text.
    Text(String),
    /// Answers with this status, extra headers and body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// Answers 200 with this body as it is.
    Raw(String),
    /// Reads the request and closes the connection without a word.
    Close,
    /// Waits, then acts.
    Sleep(Duration, Box<Action>),
}

/// One request the server read.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Server {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on 127.0.0.1 that plays `script`, one action per connection (a 503
    /// once the script is spent).
    fn start(script: Vec<Action>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let action = script.lock().unwrap().pop_front();
                        let r = r.clone();
                        std::thread::spawn(move || {
                            let _ = serve(stream, action, &r);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body).
fn read_request(stream: &TcpStream) -> std::io::Result<Received> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut reader = BufReader::new(stream.try_clone()?.take(1 << 20));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().ok_or_else(|| bad("no method"))?.to_string();
    let path = parts.next().ok_or_else(|| bad("no path"))?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(bad("the headers do not end"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or_else(|| bad("a bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Received {
        method,
        path,
        headers,
        body,
    })
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn serve(
    mut stream: TcpStream,
    action: Option<Action>,
    received: &Mutex<Vec<Received>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = read_request(&stream)?;
    received.lock().unwrap().push(request.clone());
    let mut action = action;
    while let Some(Action::Sleep(d, next)) = action {
        std::thread::sleep(d);
        action = Some(*next);
    }
    if request.method != "POST" || request.path != "/v1/chat/completions" {
        let body = json!({"error": {"message": format!("no route {}", request.path)}});
        return respond(&mut stream, 404, &[], &body.to_string());
    }
    match action {
        None => respond(
            &mut stream,
            503,
            &[],
            r#"{"error": {"message": "the test script is spent"}}"#,
        ),
        Some(Action::Llm) => match local_completion(&request.body) {
            Ok(v) => respond(&mut stream, 200, &[], &v.to_string()),
            Err(e) => respond(
                &mut stream,
                500,
                &[],
                &json!({"error": {"message": e}}).to_string(),
            ),
        },
        Some(Action::Text(t)) => respond(&mut stream, 200, &[], &completion_json(&t).to_string()),
        Some(Action::Status(code, headers, body)) => respond(&mut stream, code, &headers, &body),
        Some(Action::Raw(body)) => respond(&mut stream, 200, &[], &body),
        Some(Action::Close) => stream.shutdown(std::net::Shutdown::Both),
        Some(Action::Sleep(..)) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------------------

fn config(server: &Server) -> OpenAiConfig {
    OpenAiConfig {
        api_key_env: None,
        timeout: Duration::from_secs(5),
        max_retries: 2,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_secs(2),
        ..OpenAiConfig::new(server.url(), "tiny-served")
    }
}

fn targets_shape() -> JsonShape {
    JsonShape::object([
        (
            "targets",
            JsonShape::array_between(JsonShape::Integer, 1, 3),
        ),
        (
            "relation",
            JsonShape::Enum(vec!["left_of".into(), "above".into()]),
        ),
    ])
}

fn request(constraint: Option<Constraint>) -> GenerationRequest {
    GenerationRequest {
        max_tokens: 40,
        ..GenerationRequest::new(
            "test",
            vec![
                ChatMessage::system("Answer with JSON."),
                ChatMessage::user("Which objects are targets?"),
            ],
            constraint,
        )
    }
}

#[test]
fn openai_answers_come_from_the_local_model_over_http() {
    let server = Server::start(vec![Action::Llm, Action::Llm, Action::Llm, Action::Llm]);
    let mut cfg = config(&server);
    cfg.api_key = Some("sk-test-123".into());
    let client = OpenAiCompatible::new(cfg).unwrap();
    assert_eq!(client.name(), "tiny-served");

    // JSON: the schema travels, the local model decodes under it, the answer parses.
    let shape = targets_shape();
    let json_c = Constraint::Json(shape.clone());
    let answer = pollster::block_on(client.complete(&request(Some(json_c.clone())))).unwrap();
    let v = json_c.parse(&answer).unwrap();
    assert!(!v["targets"].as_array().unwrap().is_empty(), "{answer}");

    // Choices with vLLM's guided_choice: the local model picks by log-likelihood.
    let choices = Constraint::Choices(vec!["yes".into(), "no".into(), "not sure".into()]);
    let mut cfg = config(&server);
    cfg.guided_choice = true;
    let guided = OpenAiCompatible::new(cfg).unwrap();
    let answer = pollster::block_on(guided.complete(&request(Some(choices.clone())))).unwrap();
    assert!(
        ["yes", "no", "not sure"].contains(&answer.as_str()),
        "{answer}"
    );

    // Choices without server help: the noise model's free text is checked locally and,
    // unusable, handed back as it is (the reasoning layer asks again with the reason).
    let c = client.chat(&request(Some(choices.clone()))).unwrap();
    assert_eq!(c.attempts, 1);
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    match &c.checked {
        Ok(v) => assert_eq!(c.answer(Some(&choices)), v.as_str().unwrap()),
        Err(reason) => {
            assert!(reason.contains("must be one of"), "{reason}");
            assert_eq!(c.answer(Some(&choices)), c.raw);
        }
    }

    // No constraint: free text.
    let c = client.chat(&request(None)).unwrap();
    assert_eq!(c.checked, Ok(Value::Null));

    let got = server.received();
    assert_eq!(got.len(), 4);
    let first = &got[0];
    assert_eq!(first.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.body["model"], "tiny-served");
    assert_eq!(first.body["max_tokens"], 40);
    assert_eq!(first.body["temperature"], 0.0);
    assert_eq!(first.body["messages"][0]["role"], "system");
    assert_eq!(
        first.body["messages"][1]["content"],
        "Which objects are targets?"
    );
    assert_eq!(first.body["response_format"]["type"], "json_schema");
    assert_eq!(
        first.body["response_format"]["json_schema"]["schema"],
        shape.to_json_schema()
    );
    assert_eq!(
        got[1].body["guided_choice"],
        json!(["yes", "no", "not sure"])
    );
    assert!(got[1].header("authorization").is_none());
    assert!(got[2].body.get("guided_choice").is_none());
    assert!(got[3].body.get("response_format").is_none());
}

#[test]
fn openai_answers_are_checked_and_normalised_locally() {
    let server = Server::start(vec![
        Action::Text(" Yes.".into()),
        Action::Text("Sure! ```json\n{\"targets\": [2], \"relation\": \"above\"}\n```".into()),
        Action::Text("{\"targets\": [], \"relation\": \"above\"}".into()),
        Action::Text("{\"a\": 1}".into()),
    ]);
    let mut cfg = config(&server);
    cfg.json_schema = false;
    let client = OpenAiCompatible::new(cfg).unwrap();
    let yes_no = Constraint::Choices(vec!["yes".into(), "no".into()]);
    let answer = pollster::block_on(client.complete(&request(Some(yes_no)))).unwrap();
    assert_eq!(answer, "yes");
    let json_c = Constraint::Json(targets_shape());
    let c = client.chat(&request(Some(json_c.clone()))).unwrap();
    assert_eq!(c.checked.as_ref().unwrap()["targets"][0], 2);
    // Fewer items than min_items: unusable, handed back raw with the reason.
    let c = client.chat(&request(Some(json_c.clone()))).unwrap();
    let reason = c.checked.clone().unwrap_err();
    assert!(reason.contains("at least 1 required"), "{reason}");
    assert_eq!(c.answer(Some(&json_c)), c.raw);
    // Without `json_schema`, no response_format is sent.
    assert!(server
        .received()
        .iter()
        .all(|r| r.body.get("response_format").is_none()));
    // Free text passes unchecked.
    let answer = pollster::block_on(client.complete(&request(None))).unwrap();
    assert_eq!(answer, "{\"a\": 1}");
}

#[test]
fn openai_retries_a_500_then_succeeds() {
    let server = Server::start(vec![
        Action::Status(
            500,
            vec![],
            r#"{"error": {"message": "the GPU is on fire"}}"#.into(),
        ),
        Action::Status(503, vec![], "upstream busy".into()),
        Action::Text("no".into()),
    ]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let c = client
        .chat(&request(Some(Constraint::Choices(vec![
            "yes".into(),
            "no".into(),
        ]))))
        .unwrap();
    assert_eq!(c.attempts, 3);
    assert_eq!(c.checked, Ok(json!("no")));
    assert_eq!(server.received().len(), 3);

    // Retries run out: the last error is reported with the count.
    let server = Server::start(vec![
        Action::Status(500, vec![], r#"{"error": "boom 1"}"#.into()),
        Action::Status(502, vec![], r#"{"error": "boom 2"}"#.into()),
        Action::Status(
            500,
            vec![],
            r#"{"object": "error", "message": "boom 3"}"#.into(),
        ),
        Action::Text("never".into()),
    ]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let e = client.chat(&request(None)).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("HTTP 500") && e.contains("boom 3"), "{e}");
    assert!(e.contains("3 attempts"), "{e}");
    assert!(e.contains(&server.url()), "{e}");
    assert_eq!(server.received().len(), 3);
}

#[test]
fn openai_honours_retry_after_on_429() {
    let server = Server::start(vec![
        Action::Status(
            429,
            vec![("Retry-After", "1".into())],
            r#"{"error": {"message": "rate limited"}}"#.into(),
        ),
        Action::Text("yes".into()),
    ]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let t0 = Instant::now();
    let c = client.chat(&request(None)).unwrap();
    let took = t0.elapsed();
    assert_eq!(c.attempts, 2);
    assert_eq!(c.raw, "yes");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A wait longer than the client's limit fails at once, saying so.
    let server = Server::start(vec![Action::Status(
        429,
        vec![("Retry-After", "3600".into())],
        r#"{"error": {"message": "come back later"}}"#.into(),
    )]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let t0 = Instant::now();
    let e = client.chat(&request(None)).unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(
        e.contains("HTTP 429") && e.contains("come back later"),
        "{e}"
    );
    eprintln!("{e}");
    assert!(e.contains("3600 s"), "{e}");
    assert_eq!(server.received().len(), 1);
}

#[test]
fn openai_does_not_retry_a_400_and_reports_the_server_message() {
    let server = Server::start(vec![
        Action::Status(
            400,
            vec![],
            r#"{"error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}}"#
                .into(),
        ),
        Action::Text("never".into()),
    ]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let json_c = Constraint::Json(targets_shape());
    let e = pollster::block_on(client.complete(&request(Some(json_c)))).unwrap_err();
    let e = e.to_string();
    eprintln!("{e}");
    assert!(e.contains("HTTP 400 Bad Request"), "{e}");
    assert!(e.contains("json_schema is not supported"), "{e}");
    assert!(e.contains(client.endpoint()), "{e}");
    assert!(e.contains("1 attempt"), "{e}");
    assert_eq!(server.received().len(), 1);

    // A 404 with a plain-text body quotes the body.
    let server = Server::start(vec![Action::Status(404, vec![], "no such model".into())]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let e = client.chat(&request(None)).unwrap_err().to_string();
    assert!(e.contains("HTTP 404") && e.contains("no such model"), "{e}");
}

#[test]
fn openai_retries_closed_connections() {
    let server = Server::start(vec![
        Action::Close,
        Action::Close,
        Action::Text("ok".into()),
    ]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let c = client.chat(&request(None)).unwrap();
    assert_eq!((c.raw.as_str(), c.attempts), ("ok", 3));

    let server = Server::start(vec![Action::Close, Action::Close, Action::Close]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let e = client.chat(&request(None)).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("connection failed"), "{e}");
    assert!(e.contains("3 attempts"), "{e}");
    assert_eq!(server.received().len(), 3);
}

#[test]
fn openai_times_out_without_retrying() {
    let server = Server::start(vec![
        Action::Sleep(
            Duration::from_secs(3),
            Box::new(Action::Text("late".into())),
        ),
        Action::Text("never".into()),
    ]);
    let mut cfg = config(&server);
    cfg.timeout = Duration::from_millis(300);
    let client = OpenAiCompatible::new(cfg).unwrap();
    let t0 = Instant::now();
    let e = client.chat(&request(None)).unwrap_err().to_string();
    let took = t0.elapsed();
    eprintln!("{e}");
    assert!(e.contains("timed out"), "{e}");
    assert!(e.contains("1 attempt"), "{e}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(server.received().len(), 1);
}

#[test]
fn openai_rejects_garbage_and_oversized_responses() {
    let server = Server::start(vec![
        Action::Raw("this is {not JSON".into()),
        Action::Raw(r#"{"id": "x", "choices": []}"#.into()),
        Action::Raw(r#"{"choices": [{"message": {"role": "assistant", "content": null}}]}"#.into()),
        Action::Raw(r#"{"error": {"message": "sorry, 200 with an error"}}"#.into()),
        Action::Text("x".repeat(5000)),
    ]);
    let client = OpenAiCompatible::new(config(&server)).unwrap();
    let err = |c: &OpenAiCompatible| c.chat(&request(None)).unwrap_err().to_string();
    let e = err(&client);
    eprintln!("{e}");
    assert!(e.contains("HTTP 200") && e.contains("not JSON"), "{e}");
    assert!(e.contains("this is {not JSON"), "{e}");
    assert!(e.contains("1 attempt"), "{e}");
    assert!(err(&client).contains("no choices"));
    assert!(err(&client).contains("no message content"));
    assert!(err(&client).contains("sorry, 200 with an error"));
    let mut cfg = config(&server);
    cfg.max_response_bytes = 1000;
    let small = OpenAiCompatible::new(cfg).unwrap();
    let e = err(&small);
    assert!(e.contains("larger than 1000 bytes"), "{e}");
    // None of these were retried.
    assert_eq!(server.received().len(), 5);
}

#[test]
fn openai_reports_a_server_that_is_down_after_retrying() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = OpenAiConfig {
        api_key_env: None,
        max_retries: 2,
        backoff_base: Duration::from_millis(20),
        ..OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "m")
    };
    let client = OpenAiCompatible::new(cfg).unwrap();
    let t0 = Instant::now();
    let e = pollster::block_on(client.complete(&request(None)))
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("could not connect"), "{e}");
    assert!(e.contains("3 attempts"), "{e}");
    assert!(
        e.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions")),
        "{e}"
    );
    // Two backoffs: 10..20 ms, then 20..40 ms.
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn openai_reads_the_api_key_from_the_environment() {
    let server = Server::start(vec![Action::Text("a".into()), Action::Text("b".into())]);
    let var = "CIELR_TEST_OPENAI_SERVER_KEY";
    std::env::set_var(var, "sk-from-env");
    let client = OpenAiCompatible::new(OpenAiConfig {
        api_key_env: Some(var.into()),
        ..config(&server)
    })
    .unwrap();
    assert!(client.has_api_key());
    client.chat(&request(None)).unwrap();
    let unset = OpenAiCompatible::new(OpenAiConfig {
        api_key_env: Some("CIELR_TEST_OPENAI_SERVER_KEY_UNSET".into()),
        ..config(&server)
    })
    .unwrap();
    assert!(!unset.has_api_key());
    unset.chat(&request(None)).unwrap();
    let got = server.received();
    assert_eq!(got[0].header("authorization"), Some("Bearer sk-from-env"));
    assert_eq!(got[1].header("authorization"), None);
}
