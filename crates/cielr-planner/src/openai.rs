//! [`OpenAiCompatible`]: a [`LanguageModel`] served over HTTP by anything that speaks the
//! OpenAI chat-completions API (`POST {base_url}/v1/chat/completions`): vLLM, SGLang, the
//! llama.cpp server, Ollama, hosted APIs.
//!
//! - **Requests** carry the messages, `max_tokens` and `temperature`. For a
//!   [`Constraint::Json`] the shape's JSON Schema goes along as
//!   `response_format: {"type": "json_schema", ...}` (turn it off with
//!   [`OpenAiConfig::json_schema`] for servers that reject it). For [`Constraint::Choices`]
//!   there is no portable way to ask the server for one of several strings; vLLM's
//!   `guided_choice` can be sent with [`OpenAiConfig::guided_choice`].
//! - **Answers are always checked locally** with [`Constraint::parse`], whatever the server
//!   promised: a usable answer comes back normalised (the choice exactly as listed, or the
//!   answer text trimmed for JSON); an unusable one comes back as the server wrote it, so
//!   that the reasoning layer, which parses every answer, asks again with the reason.
//! - **Failures**: connection errors (refused, reset, closed before a response), `429` and
//!   `5xx` answers are retried up to [`OpenAiConfig::max_retries`] times with exponential
//!   backoff and jitter, honouring a `Retry-After` header given in seconds. Other `4xx`
//!   answers, time-outs, oversized or malformed responses fail at once. Every error names
//!   the URL, the HTTP status where there is one, and the server's own error message.
//! - **Blocking I/O**: the request runs on the calling thread inside the `async fn` (no
//!   executor is needed; cielr drives models with `pollster`). Under a multi-threaded
//!   async runtime, call it from a blocking-capable context (e.g. `spawn_blocking`).
//! - **Transport**: [`ureq`] 2 without TLS by default (`http://` only, enough for a local
//!   server); the `tls` cargo feature adds `https://` with rustls and the Mozilla roots.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cielr_core::{Constraint, CoreError, GenerationRequest, LanguageModel, Role};
use serde_json::{json, Value};

use crate::error::PlannerError;
use crate::generate::SplitMix64;

/// The default environment variable holding the API key.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// How much of an error response's body is read to find the server's message.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// How much of a body is quoted in an error message, in characters.
const QUOTE_CHARS: usize = 300;

/// Settings of an [`OpenAiCompatible`] client.
#[derive(Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` or `/` is
    /// accepted: the endpoint is always `.../v1/chat/completions`).
    pub base_url: String,
    /// The model name the server knows the model by.
    pub model: String,
    /// The environment variable holding the API key (sent as `Authorization: Bearer ...`),
    /// read when the client is built; `None`, or a variable that is unset or empty, sends
    /// no key. Default: [`DEFAULT_API_KEY_ENV`].
    pub api_key_env: Option<String>,
    /// An API key given directly; it takes precedence over `api_key_env`.
    pub api_key: Option<String>,
    /// The most time one attempt may take, from connecting to the last byte of the answer.
    /// Default: 120 s.
    pub timeout: Duration,
    /// The most time connecting may take. Default: 10 s.
    pub connect_timeout: Duration,
    /// How many times a failed attempt is retried (connection errors, 429, 5xx). Default: 3.
    pub max_retries: u32,
    /// The first backoff delay; it doubles with each retry. Default: 500 ms.
    pub backoff_base: Duration,
    /// The longest backoff delay, and the longest `Retry-After` that is waited for (a server
    /// asking for a longer wait fails the request). Default: 30 s.
    pub backoff_max: Duration,
    /// The largest response body accepted, in bytes. Default: 8 MiB.
    pub max_response_bytes: usize,
    /// Whether JSON constraints are sent as `response_format` with a JSON Schema.
    /// Default: true.
    pub json_schema: bool,
    /// Whether choice constraints are sent as vLLM's `guided_choice` (other servers may
    /// ignore or reject the field). Default: false.
    pub guided_choice: bool,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("json_schema", &self.json_schema)
            .field("guided_choice", &self.guided_choice)
            .finish()
    }
}

impl OpenAiConfig {
    /// Settings for `model` at `base_url`, with the defaults listed on each field.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: Some(DEFAULT_API_KEY_ENV.to_string()),
            api_key: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_response_bytes: 8 << 20,
            json_schema: true,
            guided_choice: false,
        }
    }
}

/// The outcome of one chat completion ([`OpenAiCompatible::chat`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    /// The answer as the server wrote it.
    pub raw: String,
    /// The local check of the answer against the request's constraint: the parsed value, or
    /// why it is unusable (`Value::Null` without a constraint).
    pub checked: Result<Value, String>,
    /// The server's `finish_reason`, if it gave one.
    pub finish_reason: Option<String>,
    /// How many HTTP attempts it took (1 without retries).
    pub attempts: u32,
}

impl ChatCompletion {
    /// The answer handed to the reasoning layer: for a usable constrained answer, the choice
    /// exactly as listed or the trimmed JSON answer; otherwise the raw text.
    pub fn answer(&self, constraint: Option<&Constraint>) -> String {
        match (constraint, &self.checked) {
            (Some(Constraint::Choices(_)), Ok(Value::String(choice))) => choice.clone(),
            (Some(Constraint::Json(_)), Ok(_)) => self.raw.trim().to_string(),
            _ => self.raw.clone(),
        }
    }
}

/// A language model behind an OpenAI-compatible chat-completions endpoint. See the module
/// documentation.
pub struct OpenAiCompatible {
    config: OpenAiConfig,
    endpoint: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &self.endpoint)
            .field("model", &self.config.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
    /// The server's `Retry-After`, in seconds.
    retry_after: Option<Duration>,
}

impl OpenAiCompatible {
    /// A client. Errors: a base URL that is not `http://` or `https://` (or `https://`
    /// without the `tls` feature), an empty model name, a zero timeout or response limit.
    pub fn new(config: OpenAiConfig) -> Result<Self, PlannerError> {
        let err = |m: String| PlannerError::Server {
            url: config.base_url.clone(),
            message: m,
        };
        let base = config.base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let host = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            return Err(err(
                "the base URL must start with http:// or https:// and name a host".into(),
            ));
        }
        if base.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(err(
                "https:// needs cielr-planner's `tls` cargo feature (built without it)".into(),
            ));
        }
        if config.model.trim().is_empty() {
            return Err(err("the model name is empty".into()));
        }
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(err("the timeouts must be positive".into()));
        }
        if config.max_response_bytes == 0 {
            return Err(err("max_response_bytes must be positive".into()));
        }
        let endpoint = format!("{base}/v1/chat/completions");
        let api_key = config
            .api_key
            .clone()
            .filter(|k| !k.is_empty())
            .or_else(|| {
                config
                    .api_key_env
                    .as_deref()
                    .and_then(|name| std::env::var(name).ok())
                    .filter(|k| !k.trim().is_empty())
            });
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout(config.timeout)
            .redirects(0)
            .user_agent(concat!("cielr-planner/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(OpenAiCompatible {
            config,
            endpoint,
            api_key,
            agent,
        })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The settings.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// Whether an API key will be sent.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The JSON body of the chat-completions request for `request`.
    pub fn request_body(&self, request: &GenerationRequest) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": m.content})
            })
            .collect();
        let temperature = if request.temperature.is_finite() && request.temperature > 0.0 {
            request.temperature
        } else {
            0.0
        };
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": temperature,
            "stream": false,
        });
        match &request.constraint {
            Some(Constraint::Json(shape)) if self.config.json_schema => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "strict": true,
                        "schema": shape.to_json_schema(),
                    },
                });
            }
            Some(Constraint::Choices(choices)) if self.config.guided_choice => {
                body["guided_choice"] = json!(choices);
            }
            _ => {}
        }
        body
    }

    /// Sends a request (with retries) and checks the answer: see the module documentation.
    pub fn chat(&self, request: &GenerationRequest) -> Result<ChatCompletion, PlannerError> {
        let (raw, finish_reason, attempts) = self.send_with_retries(&self.request_body(request))?;
        let checked = match &request.constraint {
            Some(c) => c.parse(&raw),
            None => Ok(Value::Null),
        };
        Ok(ChatCompletion {
            raw,
            checked,
            finish_reason,
            attempts,
        })
    }

    /// Sends a chat-completions body built by the caller (e.g. with image parts, see
    /// [`crate::openai_vision`]) with this client's retries, backoff, limits and errors; the
    /// model name is set to the configured one. Returns the answer text, the server's
    /// `finish_reason` and the number of HTTP attempts.
    pub fn send_body(&self, body: &Value) -> Result<(String, Option<String>, u32), PlannerError> {
        let mut body = body.clone();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("model".into(), json!(self.config.model));
        }
        self.send_with_retries(&body)
    }

    /// The retry loop shared by [`Self::chat`] and [`Self::send_body`].
    fn send_with_retries(
        &self,
        body: &Value,
    ) -> Result<(String, Option<String>, u32), PlannerError> {
        let body = body.to_string();
        let mut rng = SplitMix64::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let failure = match self.attempt(&body) {
                Ok((raw, finish_reason)) => return Ok((raw, finish_reason, attempt)),
                Err(f) => f,
            };
            let tries = if attempt == 1 {
                "1 attempt".to_string()
            } else {
                format!("{attempt} attempts")
            };
            if !failure.retry || attempt > self.config.max_retries {
                return Err(self.error(format!("{} ({tries})", failure.message)));
            }
            let backoff = backoff(
                self.config.backoff_base,
                self.config.backoff_max,
                attempt - 1,
                &mut rng,
            );
            let wait = match failure.retry_after {
                Some(asked) if asked > self.config.backoff_max => {
                    return Err(self.error(format!(
                        "{}; the server asks to retry after {} s, longer than the {} s this \
                         client waits ({tries})",
                        failure.message,
                        asked.as_secs(),
                        self.config.backoff_max.as_secs_f64()
                    )));
                }
                Some(asked) => asked.max(backoff),
                None => backoff,
            };
            std::thread::sleep(wait);
        }
    }

    fn error(&self, message: String) -> PlannerError {
        PlannerError::Server {
            url: self.endpoint.clone(),
            message,
        }
    }

    /// One HTTP exchange: the answer text and finish reason, or why not.
    fn attempt(&self, body: &str) -> Result<(String, Option<String>), Failure> {
        let mut req = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "application/json")
            .set("Accept", "application/json");
        if let Some(key) = &self.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match req.send_string(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(status, response)) => {
                return Err(status_failure(status, response));
            }
            Err(ureq::Error::Transport(t)) => return Err(transport_failure(&t)),
        };
        let status = response.status();
        let limit = self.config.max_response_bytes;
        let mut bytes = Vec::new();
        let read = response
            .into_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes);
        if let Err(e) = read {
            let timed_out = is_timeout(&e);
            return Err(Failure {
                message: if timed_out {
                    format!("HTTP {status}: timed out reading the response: {e}")
                } else {
                    format!("HTTP {status}: the connection failed while reading the response: {e}")
                },
                retry: !timed_out,
                retry_after: None,
            });
        }
        if bytes.len() > limit {
            return Err(Failure {
                message: format!("HTTP {status}: the response is larger than {limit} bytes"),
                retry: false,
                retry_after: None,
            });
        }
        let fail = |m: String| Failure {
            message: format!("HTTP {status}: {m}"),
            retry: false,
            retry_after: None,
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "the response is not JSON ({e}): {}",
                quote(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        if let Some(message) = error_message(&v) {
            return Err(fail(format!("the server reports an error: {message}")));
        }
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .ok_or_else(|| {
                fail(format!(
                    "the response has no choices: {}",
                    quote(&v.to_string())
                ))
            })?;
        let text = choice
            .pointer("/message/content")
            .and_then(Value::as_str)
            .or_else(|| choice.get("text").and_then(Value::as_str))
            .ok_or_else(|| {
                fail(format!(
                    "the first choice has no message content: {}",
                    quote(&choice.to_string())
                ))
            })?;
        let finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok((text.to_string(), finish_reason))
    }
}

/// The delay before retry number `retry + 1`: `base * 2^retry`, at most `max`, with "equal
/// jitter" (between half and all of it).
fn backoff(base: Duration, max: Duration, retry: u32, rng: &mut SplitMix64) -> Duration {
    let full = base
        .checked_mul(1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = full / 2;
    half + half.mul_f64(rng.next_f64())
}

/// A failure from an HTTP error status: retried for 429 and 5xx.
fn status_failure(status: u16, response: ureq::Response) -> Failure {
    let retry_after = response
        .header("Retry-After")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let reason = response.status_text().to_string();
    let mut bytes = Vec::new();
    let _ = response
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut bytes);
    let body = String::from_utf8_lossy(&bytes);
    let detail = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| error_message(&v))
        .unwrap_or_else(|| quote(&body));
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    Failure {
        message: format!("HTTP {status} {reason}{detail}"),
        retry: status == 429 || (500..600).contains(&status),
        retry_after,
    }
}

/// A failure without a response: retried unless it is a time-out or a bad URL.
fn transport_failure(t: &ureq::Transport) -> Failure {
    use ureq::ErrorKind;
    let timed_out =
        source_chain(t).any(|e| e.downcast_ref::<std::io::Error>().is_some_and(is_timeout));
    let retry = !timed_out
        && matches!(
            t.kind(),
            ErrorKind::ConnectionFailed | ErrorKind::Dns | ErrorKind::Io | ErrorKind::BadStatus
        );
    let what = if timed_out {
        "timed out"
    } else {
        match t.kind() {
            ErrorKind::ConnectionFailed => "could not connect",
            ErrorKind::Dns => "could not resolve the host",
            ErrorKind::Io | ErrorKind::BadStatus => "the connection failed",
            _ => "the request failed",
        }
    };
    // The kind, ureq's message and the causes, each once (the URL is in the error already).
    let mut detail = t.kind().to_string();
    let parts = t
        .message()
        .map(str::to_string)
        .into_iter()
        .chain(source_chain(t).map(|e| e.to_string()));
    for part in parts {
        if part.contains(&detail) {
            detail = part;
        } else if !detail.contains(&part) {
            detail.push_str(": ");
            detail.push_str(&part);
        }
    }
    Failure {
        message: format!("{what} ({detail})"),
        retry,
        retry_after: None,
    }
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |e| e.source())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// The server's error message in an error body: OpenAI's `{"error": {"message": ...}}`,
/// `{"error": "..."}`, vLLM's `{"object": "error", "message": ...}` or FastAPI's
/// `{"detail": ...}`.
fn error_message(v: &Value) -> Option<String> {
    let text = |x: &Value| match x {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    if let Some(e) = v.get("error") {
        return e.get("message").and_then(text).or_else(|| text(e));
    }
    if v.get("object").and_then(Value::as_str) == Some("error") {
        return v.get("message").and_then(text);
    }
    if v.get("choices").is_none() {
        return v.get("detail").and_then(text);
    }
    None
}

/// The start of a text, for error messages.
fn quote(s: &str) -> String {
    let s = s.trim();
    let mut q: String = s.chars().take(QUOTE_CHARS).collect();
    if q.len() < s.len() {
        q.push_str("...");
    }
    format!("{q:?}")
}

#[async_trait]
impl LanguageModel for OpenAiCompatible {
    fn name(&self) -> String {
        self.config.model.clone()
    }

    /// Blocks the calling thread for the HTTP exchange (see the module documentation).
    async fn complete(&self, request: &GenerationRequest) -> Result<String, CoreError> {
        let c = self.chat(request)?;
        Ok(c.answer(request.constraint.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds() {
        let mut rng = SplitMix64::new(1);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for retry in 0..40 {
            let d = backoff(base, max, retry, &mut rng);
            let full = (base * 2u32.saturating_pow(retry.min(20))).min(max);
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
    }

    #[test]
    fn error_messages_are_found() {
        let m = |s: &str| error_message(&serde_json::from_str(s).unwrap());
        assert_eq!(
            m(r#"{"error": {"message": "bad model", "type": "x"}}"#).as_deref(),
            Some("bad model")
        );
        assert_eq!(m(r#"{"error": "nope"}"#).as_deref(), Some("nope"));
        assert_eq!(
            m(r#"{"object": "error", "message": "too long"}"#).as_deref(),
            Some("too long")
        );
        assert_eq!(
            m(r#"{"detail": "Not Found"}"#).as_deref(),
            Some("Not Found")
        );
        assert_eq!(m(r#"{"choices": []}"#), None);
        assert!(quote(&"x".repeat(1000)).ends_with("...\""));
    }

    #[test]
    fn configs_are_checked() {
        let bad = |url: &str| OpenAiCompatible::new(OpenAiConfig::new(url, "m")).is_err();
        assert!(bad("ftp://x"));
        assert!(bad("http://"));
        assert!(bad("http:///v1"));
        assert!(!bad("http://x"));
        assert!(bad("127.0.0.1:8000"));
        assert!(OpenAiCompatible::new(OpenAiConfig::new("http://h:1", " ")).is_err());
        #[cfg(not(feature = "tls"))]
        assert!(bad("https://example.invalid"));
        for url in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
        ] {
            let c = OpenAiCompatible::new(OpenAiConfig::new(url, "m")).unwrap();
            assert_eq!(c.endpoint(), "http://h:1/v1/chat/completions");
        }
        let mut config = OpenAiConfig::new("http://h:1", "m");
        config.api_key = Some("secret".into());
        let c = OpenAiCompatible::new(config).unwrap();
        assert!(c.has_api_key());
        assert!(!format!("{c:?} {:?}", c.config()).contains("secret"));
    }
}
