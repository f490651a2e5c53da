//! Chat prompts: the checkpoint's own Jinja chat template (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`'s `chat_template`) rendered with `minijinja` the way transformers'
//! `apply_chat_template` renders it, with built-in ChatML and Llama 3 formats as fallbacks when
//! there is no template or it fails.
//!
//! The environment mirrors transformers': `trim_blocks` and `lstrip_blocks` on, loop controls,
//! `raise_exception(msg)`, `strftime_now(fmt)`, a `tojson` filter that writes JSON as Python's
//! `json.dumps` does (`", "` and `": "` separators, no HTML escaping, optional `indent` and
//! `sort_keys`), and Python string and dict methods (`.strip()`, `.startswith()`, `.items()` ...).
//! Templates see `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.

use std::time::{SystemTime, UNIX_EPOCH};

use cielr_core::{ChatMessage, Role};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};

use crate::error::PlannerError;
use crate::tokenizer::Tokenizer;

/// A built-in chat format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinFormat {
    /// `<|im_start|>role\ncontent<|im_end|>\n` turns (SmolLM, Qwen, many others).
    ChatMl,
    /// Llama 3: `<|begin_of_text|>` then `<|start_header_id|>role<|end_header_id|>\n\n` +
    /// trimmed content + `<|eot_id|>` turns.
    Llama3,
}

impl BuiltinFormat {
    /// The format a tokenizer's special tokens suggest: Llama 3 when it has
    /// `<|start_header_id|>` and `<|eot_id|>`, else ChatML.
    pub fn guess(tokenizer: &Tokenizer) -> BuiltinFormat {
        if tokenizer.token_to_id("<|start_header_id|>").is_some()
            && tokenizer.token_to_id("<|eot_id|>").is_some()
        {
            BuiltinFormat::Llama3
        } else {
            BuiltinFormat::ChatMl
        }
    }
}

/// What produced a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFormatUsed {
    /// The checkpoint's own template.
    Template,
    /// A built-in format.
    Builtin(BuiltinFormat),
}

/// A rendered chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The prompt text.
    pub text: String,
    /// What produced it.
    pub used: ChatFormatUsed,
    /// Why the built-in format was used instead of the checkpoint's template, if it was.
    pub fallback_reason: Option<String>,
}

/// A checkpoint's chat format: its template if it has one, and a built-in fallback.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    template: Option<String>,
    compile_error: Option<String>,
    fallback: BuiltinFormat,
    bos_token: String,
    eos_token: String,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl ChatTemplate {
    /// A chat format from an optional Jinja template, the BOS/EOS spellings the template may
    /// use, and the built-in fallback. A template that does not compile is remembered as
    /// failing: rendering then uses the fallback and says why.
    pub fn new(
        template: Option<&str>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
        fallback: BuiltinFormat,
    ) -> ChatTemplate {
        let template = template
            .filter(|t| !t.trim().is_empty())
            .map(str::to_string);
        let compile_error = template.as_ref().and_then(|t| {
            let mut env = environment();
            env.add_template_owned("chat", t.clone())
                .err()
                .map(|e| describe(&e))
        });
        ChatTemplate {
            template,
            compile_error,
            fallback,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        }
    }

    /// The chat format of a tokenizer's checkpoint: its template, its BOS/EOS spellings, and
    /// the built-in format its special tokens suggest.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> ChatTemplate {
        ChatTemplate::new(
            tokenizer.chat_template(),
            tokenizer.bos_token().unwrap_or_default(),
            tokenizer.eos_token().unwrap_or_default(),
            BuiltinFormat::guess(tokenizer),
        )
    }

    /// The checkpoint's template, if any.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// The built-in fallback.
    pub fn fallback(&self) -> BuiltinFormat {
        self.fallback
    }

    /// Renders messages with the checkpoint's template, or with the built-in fallback when
    /// there is no template or it fails (the result says which and why).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> RenderedChat {
        let reason = match (&self.template, &self.compile_error) {
            (None, _) => "the checkpoint has no chat template".to_string(),
            (Some(_), Some(e)) => format!("the chat template does not compile: {e}"),
            (Some(t), None) => match render_jinja(
                t,
                messages,
                add_generation_prompt,
                &self.bos_token,
                &self.eos_token,
            ) {
                Ok(text) => {
                    return RenderedChat {
                        text,
                        used: ChatFormatUsed::Template,
                        fallback_reason: None,
                    }
                }
                Err(e) => format!("the chat template failed: {e}"),
            },
        };
        RenderedChat {
            text: render_builtin(
                self.fallback,
                messages,
                add_generation_prompt,
                &self.bos_token,
            ),
            used: ChatFormatUsed::Builtin(self.fallback),
            fallback_reason: Some(reason),
        }
    }

    /// Renders with the checkpoint's template only: an error when there is none or it fails.
    pub fn render_strict(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, PlannerError> {
        let t = self
            .template
            .as_deref()
            .ok_or_else(|| PlannerError::ChatTemplate("the checkpoint has no template".into()))?;
        render_jinja(
            t,
            messages,
            add_generation_prompt,
            &self.bos_token,
            &self.eos_token,
        )
    }
}

/// Renders messages in a built-in format. `bos_token` is written at the start of Llama 3
/// prompts (ChatML has none); when empty, Llama 3 uses `<|begin_of_text|>`.
pub fn render_builtin(
    format: BuiltinFormat,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
) -> String {
    let mut s = String::new();
    match format {
        BuiltinFormat::ChatMl => {
            for m in messages {
                s.push_str("<|im_start|>");
                s.push_str(role_name(m.role));
                s.push('\n');
                s.push_str(&m.content);
                s.push_str("<|im_end|>\n");
            }
            if add_generation_prompt {
                s.push_str("<|im_start|>assistant\n");
            }
        }
        BuiltinFormat::Llama3 => {
            s.push_str(if bos_token.is_empty() {
                "<|begin_of_text|>"
            } else {
                bos_token
            });
            for m in messages {
                s.push_str("<|start_header_id|>");
                s.push_str(role_name(m.role));
                s.push_str("<|end_header_id|>\n\n");
                s.push_str(m.content.trim());
                s.push_str("<|eot_id|>");
            }
            if add_generation_prompt {
                s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
        }
    }
    s
}

/// Renders a Jinja chat template with `messages`, `add_generation_prompt`, `bos_token` and
/// `eos_token`, as transformers' `apply_chat_template` does.
pub fn render_jinja(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, PlannerError> {
    let mut env = environment();
    env.add_template_owned("chat", template.to_string())
        .map_err(|e| PlannerError::ChatTemplate(describe(&e)))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| PlannerError::ChatTemplate(describe(&e)))?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_iter([
                ("role", Value::from(role_name(m.role))),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    let ctx = Value::from_iter([
        ("messages", Value::from(msgs)),
        ("add_generation_prompt", Value::from(add_generation_prompt)),
        ("bos_token", Value::from(bos_token)),
        ("eos_token", Value::from(eos_token)),
    ]);
    tmpl.render(ctx)
        .map_err(|e| PlannerError::ChatTemplate(describe(&e)))
}

/// An error with its chain of causes, on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A minijinja environment set up like transformers' chat-template environment.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_recursion_limit(64);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        strftime(&fmt, secs)
    });
    env.add_filter("tojson", tojson);
    // Python prints booleans and None capitalised.
    env.set_formatter(|out, state, value| match value.kind() {
        minijinja::value::ValueKind::Bool => {
            out.write_str(if value.is_true() { "True" } else { "False" })?;
            Ok(())
        }
        minijinja::value::ValueKind::None => {
            out.write_str("None")?;
            Ok(())
        }
        _ => minijinja::escape_formatter(out, state, value),
    });
    env
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// A float as Python's `repr` writes it (`1.0`, `0.5`, `1e-05`, `Infinity` for JSON).
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// Writes a template value as JSON the way Python's `json.dumps` does with
/// `ensure_ascii=False`; maps keep their order unless `sort_keys`.
fn write_python_json(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    level: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    use minijinja::value::ValueKind as K;
    if level > 64 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: the value is nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    match v.kind() {
        K::Undefined | K::None => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else if let Ok(f) = f64::try_from(v.clone()) {
                out.push_str(&python_float(f));
            } else {
                out.push_str(&v.to_string());
            }
        }
        K::String => out.push_str(&quote(v.as_str().unwrap_or_default())),
        K::Seq | K::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_python_json(x, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        K::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&quote(&k.to_string()));
                out.push_str(": ");
                let x = v.get_item(k)?;
                write_python_json(&x, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => out.push_str(&quote(&v.to_string())),
    }
    Ok(())
}

/// Days since 1970-01-01 to a (year, month, day) civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A small `strftime` (UTC) for the directives chat templates use: `%Y %y %m %d %e %B %b %A
/// %a %H %M %S %j %%`; others are written as they are.
fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let doy = days - days_from_civil(y, 1, 1) + 1;
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{doy:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 12:34:56 UTC was a Friday, day 208.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e %H:%M:%S %j %y %%", t),
            "Friday July 26 12:34:56 208 24 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%j", 951_782_400), "060"); // 2000-02-29
    }

    #[test]
    fn tojson_writes_like_python() {
        let v = Value::from_iter([
            (
                "b",
                Value::from(vec![
                    Value::from(1),
                    Value::from("é\"x"),
                    Value::from(0.5),
                    Value::from(2.0),
                ]),
            ),
            ("a", Value::from_iter(Vec::<(&str, Value)>::new())),
            ("c", Value::from(())),
        ]);
        let mut s = String::new();
        write_python_json(&v, None, false, 0, &mut s).unwrap();
        assert_eq!(s, r#"{"b": [1, "é\"x", 0.5, 2.0], "a": {}, "c": null}"#);
        let v = Value::from_serialize(serde_json::json!({"b": [1, "é\"x"], "a": {}, "c": null}));
        let mut s = String::new();
        write_python_json(&v, Some(2), true, 0, &mut s).unwrap();
        assert_eq!(
            s,
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    \"é\\\"x\"\n  ],\n  \"c\": null\n}"
        );
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.25), "0.25");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1.5e20), "1.5e+20");
    }

    #[test]
    fn missing_and_broken_templates_fall_back() {
        let msgs = [ChatMessage::user("hi")];
        let t = ChatTemplate::new(None, "", "", BuiltinFormat::ChatMl);
        let r = t.render(&msgs, true);
        assert_eq!(
            r.text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r.used, ChatFormatUsed::Builtin(BuiltinFormat::ChatMl));
        let t = ChatTemplate::new(Some("{% for %}"), "", "", BuiltinFormat::Llama3);
        let r = t.render(&msgs, false);
        assert!(r.fallback_reason.unwrap().contains("does not compile"));
        assert!(r
            .text
            .starts_with("<|begin_of_text|><|start_header_id|>user"));
        let t = ChatTemplate::new(
            Some("{{ raise_exception('no system role') }}"),
            "",
            "",
            BuiltinFormat::ChatMl,
        );
        let r = t.render(&msgs, false);
        assert!(r.fallback_reason.unwrap().contains("no system role"));
        assert!(t.render_strict(&msgs, false).is_err());
    }
}
