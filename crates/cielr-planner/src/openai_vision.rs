//! [`OpenAiVision`]: asks a vision-language model served behind an OpenAI-compatible
//! chat-completions endpoint (vLLM or SGLang serving Qwen2-VL, the llama.cpp server with a
//! multimodal projector, hosted APIs) about one or more images.
//!
//! The user message is sent as content parts: one `{"type": "text"}` part with the prompt,
//! then one `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` part
//! per image, in order. Transport, API key, time-outs, retries with backoff and error
//! messages are those of [`OpenAiCompatible`] (see [`crate::openai`]); this module only builds
//! the multimodal body and checks the answer (not empty, not longer than
//! [`OpenAiVision::max_answer_chars`]).
//!
//! Images arrive already encoded (PNG bytes): resizing and encoding are the caller's (the
//! planner crate does not decode images).

use serde_json::{json, Value};

use crate::error::PlannerError;
use crate::openai::{OpenAiCompatible, OpenAiConfig};

/// The largest encoded image accepted, in bytes (a 2048x2048 RGB PNG is at most ~12 MiB).
pub const MAX_IMAGE_BYTES: usize = 16 << 20;

/// A vision-language model behind an OpenAI-compatible endpoint. See the module
/// documentation.
#[derive(Debug)]
pub struct OpenAiVision {
    client: OpenAiCompatible,
    /// The most tokens the model may answer with. Default: 128.
    pub max_tokens: usize,
    /// The longest answer accepted, in characters; a longer one is an error (a one-sentence
    /// description that runs on is not one). Default: 2000.
    pub max_answer_chars: usize,
}

impl OpenAiVision {
    /// A client for the model `config.model` at `config.base_url` (checked as for
    /// [`OpenAiCompatible::new`]).
    pub fn new(config: OpenAiConfig) -> Result<Self, PlannerError> {
        Ok(OpenAiVision {
            client: OpenAiCompatible::new(config)?,
            max_tokens: 128,
            max_answer_chars: 2000,
        })
    }

    /// The underlying text client (its endpoint and settings).
    pub fn client(&self) -> &OpenAiCompatible {
        &self.client
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.client.config().model
    }

    /// The chat-completions body asking `prompt` about the PNG-encoded `images`.
    pub fn request_body(&self, system: Option<&str>, prompt: &str, images: &[&[u8]]) -> Value {
        let mut parts = vec![json!({"type": "text", "text": prompt})];
        for png in images {
            parts.push(json!({
                "type": "image_url",
                "image_url": {"url": png_data_url(png)},
            }));
        }
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": parts}));
        json!({
            "model": self.client.config().model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "stream": false,
        })
    }

    /// Asks `prompt` about the PNG-encoded `images` and returns the trimmed answer. Errors:
    /// no image or an image over [`MAX_IMAGE_BYTES`], the server's (after retries), an empty
    /// answer or one longer than [`Self::max_answer_chars`].
    pub fn ask(
        &self,
        system: Option<&str>,
        prompt: &str,
        images: &[&[u8]],
    ) -> Result<String, PlannerError> {
        let err = |m: String| PlannerError::Server {
            url: self.client.endpoint().to_string(),
            message: m,
        };
        if images.is_empty() {
            return Err(err("no image to send to the vision model".into()));
        }
        if let Some((i, png)) = images
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() > MAX_IMAGE_BYTES)
        {
            return Err(err(format!(
                "image {i} is {} bytes encoded, more than the {MAX_IMAGE_BYTES} sent to a \
                 vision model (downscale it first)",
                png.len()
            )));
        }
        let body = self.request_body(system, prompt, images);
        let (raw, _finish, attempts) = self.client.send_body(&body)?;
        let answer = raw.trim();
        if answer.is_empty() {
            return Err(err(format!(
                "the vision model {} gave an empty answer ({attempts} attempt(s))",
                self.model()
            )));
        }
        let chars = answer.chars().count();
        if chars > self.max_answer_chars {
            let start: String = answer.chars().take(80).collect();
            return Err(err(format!(
                "the vision model {} answered {chars} characters, more than the {} accepted: \
                 {start:?}...",
                self.model(),
                self.max_answer_chars
            )));
        }
        Ok(answer.to_string())
    }
}

/// `data:image/png;base64,...` for PNG bytes.
pub fn png_data_url(png: &[u8]) -> String {
    let mut s = String::with_capacity(22 + png.len().div_ceil(3) * 4);
    s.push_str("data:image/png;base64,");
    base64_into(png, &mut s);
    s
}

/// Standard base64 (RFC 4648, with padding) of `bytes`, appended to `out`.
pub fn base64_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |k: u32| ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char;
        out.push(sextet(0));
        out.push(sextet(1));
        out.push(if chunk.len() > 1 { sextet(2) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(3) } else { '=' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        let mut s = String::new();
        base64_into(b, &mut s);
        s
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(b64(&[0xff, 0xfe, 0xfd]), "//79");
        assert_eq!(png_data_url(b"foo"), "data:image/png;base64,Zm9v");
    }

    #[test]
    fn body_has_text_then_image_parts() {
        let v = OpenAiVision::new(OpenAiConfig::new("http://h:1", "qwen2-vl")).unwrap();
        let body = v.request_body(Some("sys"), "what changed?", &[b"a", b"bc"]);
        assert_eq!(body["model"], "qwen2-vl");
        assert_eq!(body["messages"][0]["role"], "system");
        let parts = body["messages"][1]["content"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(parts[0]["text"], "what changed?");
        assert_eq!(parts[1]["type"], "image_url");
        assert_eq!(parts[1]["image_url"]["url"], "data:image/png;base64,YQ==");
        assert_eq!(parts[2]["image_url"]["url"], "data:image/png;base64,YmM=");
        // Without images nothing is sent.
        let e = v.ask(None, "x", &[]).unwrap_err();
        assert!(e.to_string().contains("no image"), "{e}");
    }
}
