//! The language-model interface the reasoning runs on: chat messages in, text out, with an
//! optional constraint (one of a list of choices, or JSON of a given shape).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result};

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The speaker.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// The shape of a JSON answer: a small schema language that constrained decoders and
/// JSON-schema-aware servers can both honour.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonShape {
    /// Any string.
    String,
    /// An integer.
    Integer,
    /// One of these strings.
    Enum(Vec<String>),
    /// An array of elements of one shape, with `min_items..=max_items` elements.
    Array {
        /// Element shape.
        items: Box<JsonShape>,
        /// Lower bound on the length (0: the empty array is fine).
        min_items: usize,
        /// Upper bound on the length.
        max_items: usize,
    },
    /// An object with exactly these fields, in this order.
    Object(Vec<(String, JsonShape)>),
}

impl JsonShape {
    /// An array shape with at most `max_items` elements (possibly none).
    pub fn array(items: JsonShape, max_items: usize) -> Self {
        Self::array_between(items, 0, max_items)
    }

    /// An array shape with `min_items..=max_items` elements. A shape whose `min_items`
    /// exceeds `max_items` accepts no value ([`JsonShape::check`] says why, and constrained
    /// decoders refuse to compile it).
    pub fn array_between(items: JsonShape, min_items: usize, max_items: usize) -> Self {
        JsonShape::Array {
            items: Box::new(items),
            min_items,
            max_items,
        }
    }

    /// An object shape from `(name, shape)` pairs.
    pub fn object(fields: impl IntoIterator<Item = (&'static str, JsonShape)>) -> Self {
        JsonShape::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// The equivalent JSON Schema (for servers that take `response_format`).
    pub fn to_json_schema(&self) -> Value {
        match self {
            JsonShape::String => serde_json::json!({"type": "string"}),
            JsonShape::Integer => serde_json::json!({"type": "integer"}),
            JsonShape::Enum(v) => serde_json::json!({"type": "string", "enum": v}),
            JsonShape::Array {
                items,
                min_items,
                max_items,
            } => {
                serde_json::json!({"type": "array", "items": items.to_json_schema(), "minItems": min_items, "maxItems": max_items})
            }
            JsonShape::Object(fields) => {
                let props: serde_json::Map<String, Value> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json_schema()))
                    .collect();
                let req: Vec<&String> = fields.iter().map(|(k, _)| k).collect();
                serde_json::json!({"type": "object", "properties": props, "required": req, "additionalProperties": false})
            }
        }
    }

    /// Checks a value against the shape; the error says where it differs.
    pub fn check(&self, v: &Value) -> std::result::Result<(), String> {
        self.check_at(v, "$")
    }

    fn check_at(&self, v: &Value, path: &str) -> std::result::Result<(), String> {
        match (self, v) {
            (JsonShape::String, Value::String(_)) => Ok(()),
            (JsonShape::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
            (JsonShape::Enum(choices), Value::String(s)) if choices.contains(s) => Ok(()),
            (JsonShape::Enum(choices), _) => Err(format!("{path} must be one of {choices:?}")),
            (
                JsonShape::Array {
                    items,
                    min_items,
                    max_items,
                },
                Value::Array(a),
            ) => {
                if min_items > max_items {
                    return Err(format!(
                        "{path} cannot be satisfied: the shape asks for at least {min_items} \
                         and at most {max_items} items"
                    ));
                }
                if a.len() < *min_items {
                    return Err(format!(
                        "{path} has {} items, at least {min_items} required",
                        a.len()
                    ));
                }
                if a.len() > *max_items {
                    return Err(format!(
                        "{path} has {} items, at most {max_items} allowed",
                        a.len()
                    ));
                }
                a.iter()
                    .enumerate()
                    .try_for_each(|(i, x)| items.check_at(x, &format!("{path}[{i}]")))
            }
            (JsonShape::Object(fields), Value::Object(o)) => {
                for (k, shape) in fields {
                    let x = o
                        .get(k)
                        .ok_or_else(|| format!("{path} lacks the field {k:?}"))?;
                    shape.check_at(x, &format!("{path}.{k}"))?;
                }
                Ok(())
            }
            (shape, _) => Err(format!("{path} must be {}", shape.describe())),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            JsonShape::String => "a string",
            JsonShape::Integer => "an integer",
            JsonShape::Enum(_) => "one of the listed strings",
            JsonShape::Array { .. } => "an array",
            JsonShape::Object(_) => "an object",
        }
    }
}

/// A restriction on what the model may answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Exactly one of these strings.
    Choices(Vec<String>),
    /// A JSON value of this shape.
    Json(JsonShape),
}

impl Constraint {
    /// Parses an answer under this constraint, tolerating what small models add around it
    /// (case, punctuation, code fences, prose before the JSON). Returns the chosen string
    /// (for `Choices`) or the JSON value.
    pub fn parse(&self, answer: &str) -> std::result::Result<Value, String> {
        match self {
            Constraint::Choices(choices) => match_choice(choices, answer)
                .map(|c| Value::String(c.to_string()))
                .ok_or_else(|| format!("the answer must be one of {choices:?}")),
            Constraint::Json(shape) => {
                let v = extract_json(answer)
                    .ok_or_else(|| "the answer holds no JSON object".to_string())?;
                shape.check(&v)?;
                Ok(v)
            }
        }
    }
}

/// Finds which choice an answer names: an exact match after trimming case and punctuation,
/// else the only choice that the answer starts with.
pub fn match_choice<'a>(choices: &'a [String], answer: &str) -> Option<&'a str> {
    let norm = |s: &str| {
        s.trim()
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    let a = norm(answer);
    if let Some(c) = choices.iter().find(|c| norm(c) == a) {
        return Some(c);
    }
    let starts: Vec<&String> = choices
        .iter()
        .filter(|c| {
            let c = norm(c);
            a.starts_with(&c) && !a[c.len()..].starts_with(|ch: char| ch.is_alphanumeric())
        })
        .collect();
    (starts.len() == 1).then(|| starts[0].as_str())
}

/// The first complete JSON object in a text (skipping code fences and prose).
pub fn extract_json(text: &str) -> Option<Value> {
    for (start, _) in text.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(v @ Value::Object(_))) = stream.next() {
            return Some(v);
        }
    }
    None
}

/// A request to a language model.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Name of the reasoning step asking (for logs, traces and scripted models).
    pub step: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Optional restriction of the answer.
    pub constraint: Option<Constraint>,
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    pub temperature: f32,
}

impl GenerationRequest {
    /// A greedy request with a bound of 256 tokens.
    pub fn new(
        step: impl Into<String>,
        messages: Vec<ChatMessage>,
        constraint: Option<Constraint>,
    ) -> Self {
        GenerationRequest {
            step: step.into(),
            messages,
            constraint,
            max_tokens: 256,
            temperature: 0.0,
        }
    }
}

/// Chat messages in, text out. Local Burn models, served models and scripted models all
/// implement it.
#[async_trait]
pub trait LanguageModel: Send + Sync {
    /// A short name for reports ("smollm2-135m-instruct", "scripted", ...).
    fn name(&self) -> String;
    /// Generates the answer to the last message.
    async fn complete(&self, request: &GenerationRequest) -> Result<String>;
}

/// One answer of a [`ScriptedLanguageModel`]: the text, optionally bound to a reasoning step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScriptedAnswer {
    /// An answer for whatever step asks next.
    Text(String),
    /// An answer that must be asked for by this step; a different step is an error.
    ForStep {
        /// The step name.
        step: String,
        /// The answer.
        answer: String,
    },
}

/// A language model that replays answers from a script, in order: for tests, demonstrations
/// and reproducing a recorded run without a model. It fails clearly when the script runs out
/// or a step-bound answer meets another step.
#[derive(Debug, Default)]
pub struct ScriptedLanguageModel {
    answers: Mutex<VecDeque<ScriptedAnswer>>,
    requests: Mutex<Vec<GenerationRequest>>,
}

impl ScriptedLanguageModel {
    /// A script of answers.
    pub fn new(answers: impl IntoIterator<Item = ScriptedAnswer>) -> Self {
        ScriptedLanguageModel {
            answers: Mutex::new(answers.into_iter().collect()),
            requests: Mutex::default(),
        }
    }

    /// A script of plain answers.
    pub fn from_texts<S: Into<String>>(answers: impl IntoIterator<Item = S>) -> Self {
        Self::new(answers.into_iter().map(|s| ScriptedAnswer::Text(s.into())))
    }

    /// Reads a script file: a JSON array of strings or `{"step": ..., "answer": ...}` objects.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        let answers: Vec<ScriptedAnswer> = serde_json::from_str(&text).map_err(|e| {
            CoreError::json(format!("{} (a JSON array of answers)", path.display()), e)
        })?;
        Ok(Self::new(answers))
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<GenerationRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// How many answers are left.
    pub fn remaining(&self) -> usize {
        self.answers.lock().map(|a| a.len()).unwrap_or(0)
    }
}

#[async_trait]
impl LanguageModel for ScriptedLanguageModel {
    fn name(&self) -> String {
        "scripted".into()
    }

    async fn complete(&self, request: &GenerationRequest) -> Result<String> {
        let poisoned = || CoreError::LanguageModel("scripted model state is poisoned".into());
        self.requests
            .lock()
            .map_err(|_| poisoned())?
            .push(request.clone());
        let next = self.answers.lock().map_err(|_| poisoned())?.pop_front();
        match next {
            None => Err(CoreError::LanguageModel(format!(
                "the script has no answer left for step {:?}",
                request.step
            ))),
            Some(ScriptedAnswer::Text(t)) => Ok(t),
            Some(ScriptedAnswer::ForStep { step, answer }) if step == request.step => Ok(answer),
            Some(ScriptedAnswer::ForStep { step, .. }) => Err(CoreError::LanguageModel(format!(
                "the script's next answer is for step {step:?}, but step {:?} asked",
                request.step
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn choices_tolerate_case_and_trailing_words() {
        let c = choices(&["yes", "no"]);
        assert_eq!(match_choice(&c, " Yes."), Some("yes"));
        assert_eq!(
            match_choice(&c, "no, because the cup is missing"),
            Some("no")
        );
        assert_eq!(match_choice(&c, "nope"), None);
        assert_eq!(match_choice(&c, "maybe"), None);
    }

    #[test]
    fn json_is_extracted_and_checked() {
        let shape = JsonShape::object([("targets", JsonShape::array(JsonShape::Integer, 3))]);
        let c = Constraint::Json(shape);
        let v = c
            .parse("Sure! ```json\n{\"targets\": [2, 5]}\n```")
            .unwrap();
        assert_eq!(v["targets"][1], 5);
        assert!(c
            .parse("{\"targets\": [\"a\"]}")
            .unwrap_err()
            .contains("$.targets[0]"));
        assert!(c
            .parse("{\"targets\": [1,2,3,4]}")
            .unwrap_err()
            .contains("at most 3"));
        assert!(c.parse("{\"other\": 1}").unwrap_err().contains("lacks"));
        assert!(c.parse("no json").is_err());
        let e = Constraint::Json(JsonShape::object([("r", JsonShape::Enum(choices(&["a"])))]));
        assert!(e.parse("{\"r\": \"b\"}").is_err());
        let schema = e_schema();
        assert_eq!(schema["properties"]["r"]["enum"][0], "a");
    }

    #[test]
    fn arrays_have_a_lower_bound() {
        let shape = JsonShape::object([("t", JsonShape::array_between(JsonShape::Integer, 2, 3))]);
        let c = Constraint::Json(shape.clone());
        assert!(c
            .parse("{\"t\": [1]}")
            .unwrap_err()
            .contains("$.t has 1 items, at least 2 required"));
        assert!(c.parse("{\"t\": []}").unwrap_err().contains("at least 2"));
        assert!(c.parse("{\"t\": [1, 2]}").is_ok());
        assert!(c
            .parse("{\"t\": [1, 2, 3, 4]}")
            .unwrap_err()
            .contains("at most 3"));
        let schema = shape.to_json_schema();
        assert_eq!(schema["properties"]["t"]["minItems"], 2);
        assert_eq!(schema["properties"]["t"]["maxItems"], 3);
        // `array` keeps meaning "at most".
        assert_eq!(
            JsonShape::array(JsonShape::String, 4),
            JsonShape::Array {
                items: Box::new(JsonShape::String),
                min_items: 0,
                max_items: 4
            }
        );
        assert_eq!(
            JsonShape::array(JsonShape::String, 4).to_json_schema()["minItems"],
            0
        );
        // An impossible shape says so.
        let bad = JsonShape::array_between(JsonShape::Integer, 3, 1);
        assert!(bad
            .check(&serde_json::json!([1, 2]))
            .unwrap_err()
            .contains("cannot be satisfied"));
    }

    fn e_schema() -> Value {
        JsonShape::object([("r", JsonShape::Enum(choices(&["a"])))]).to_json_schema()
    }

    #[test]
    fn scripted_model_replays_and_checks_steps() {
        let m = ScriptedLanguageModel::new([
            ScriptedAnswer::Text("one".into()),
            ScriptedAnswer::ForStep {
                step: "judge".into(),
                answer: "yes".into(),
            },
        ]);
        let req = |s: &str| GenerationRequest::new(s, vec![ChatMessage::user("hi")], None);
        assert_eq!(pollster::block_on(m.complete(&req("x"))).unwrap(), "one");
        assert!(pollster::block_on(m.complete(&req("classify"))).is_err());
        assert!(pollster::block_on(m.complete(&req("judge")))
            .unwrap_err()
            .to_string()
            .contains("no answer left"));
        assert_eq!(m.requests().len(), 3);
    }
}
