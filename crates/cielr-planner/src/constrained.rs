//! Constrained decoding over any model that gives next-token logits ([`LogitsModel`]).
//!
//! Two tools:
//! - [`score_choices`] / [`pick_choice`]: rank a closed list of answers by the model's
//!   log-probability of each answer's tokens followed by an end token.
//! - [`generate_constrained`]: sample an answer token by token, where at each step only the
//!   tokens whose bytes keep the output a valid prefix of an allowed answer are possible. The
//!   allowed answers are given by a [`Constraint`]: one of a list of strings, or JSON of a
//!   [`JsonShape`] (objects with exactly the listed fields in order, arrays of
//!   `min_items..=max_items` elements, strings with escapes, integers, enums). Generation
//!   stops as soon as the answer is complete and cannot go on; when the token budget would
//!   not suffice to finish otherwise, the shortest completion (with the items an array still
//!   needs) is forced, so the answer always parses with [`Constraint::parse`].
//!
//! JSON is compact: the only insignificant whitespace allowed is one optional space after a
//! `:` or a `,` (so `{"capital": "Paris"}` and `{"capital":"Paris"}`, but no newlines,
//! indentation or space before the opening `{`). Free whitespace lets small models spend the
//! budget on blank lines and derails them. With SentencePiece-style tokenizers, whose words
//! carry their leading space (`▁yes`), one optional space is also allowed before the answer
//! ([`CompiledConstraint::with_leading_space`]); [`generate_constrained`] turns it on for
//! them and leaves the space out of the returned text.
//!
//! The automaton works on bytes ([`ConstraintState`]); the tokens' bytes are computed once
//! per tokenizer and arranged in a byte trie, so masking a step walks only the branches whose
//! first bytes are allowed.

use std::collections::HashSet;

use cielr_core::{Constraint, JsonShape};

use crate::error::PlannerError;
use crate::generate::Sampler;
use crate::tokenizer::{TokenEncoding, Tokenizer};

/// A language model seen as a function from a growing token sequence to next-token logits.
pub trait LogitsModel {
    /// The number of logits `feed` returns.
    fn vocab_size(&self) -> usize;
    /// Clears the cache: the next `feed` starts a new sequence.
    fn reset(&mut self);
    /// Appends tokens to the sequence and returns the logits for the next token.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, PlannerError>;
}

/// `log_softmax(logits)[i]` for several `i`, in f64.
fn log_probs(logits: &[f32], ids: &[u32]) -> Result<Vec<f64>, PlannerError> {
    if logits.iter().any(|l| l.is_nan()) {
        return Err(PlannerError::Model("the logits contain NaN".into()));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return Err(PlannerError::Model(
            "the logits have no finite maximum".into(),
        ));
    }
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    Ok(ids
        .iter()
        .map(|&i| {
            logits
                .get(i as usize)
                .map(|&l| l as f64 - lse)
                .unwrap_or(f64::NEG_INFINITY)
        })
        .collect())
}

/// `ln(sum(exp(x)))`.
fn log_sum_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// Scores each choice by the log-probability that the model, after `prompt_ids`, writes the
/// choice's tokens and then ends (any of the tokenizer's end tokens). With
/// `length_normalized`, the sum is divided by the number of scored tokens (choice tokens + 1).
pub fn score_choices(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    choices: &[String],
    length_normalized: bool,
) -> Result<Vec<f64>, PlannerError> {
    if prompt_ids.is_empty() {
        return Err(PlannerError::Constraint("the prompt is empty".into()));
    }
    let ends = tokenizer.eos_ids();
    if ends.is_empty() {
        return Err(PlannerError::Constraint(
            "the tokenizer has no end token to score choices with".into(),
        ));
    }
    let mut scores = Vec::with_capacity(choices.len());
    for choice in choices {
        let ids = tokenizer.encode(choice, false)?;
        model.reset();
        let mut logits = model.feed(prompt_ids)?;
        let mut total = 0.0;
        for &id in &ids {
            total += log_probs(&logits, &[id])?[0];
            logits = model.feed(&[id])?;
        }
        total += log_sum_exp(&log_probs(&logits, ends)?);
        scores.push(if length_normalized {
            total / (ids.len() + 1) as f64
        } else {
            total
        });
    }
    Ok(scores)
}

/// The index of the best choice by [`score_choices`] (the first among equals), with all
/// scores.
pub fn pick_choice(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    choices: &[String],
    length_normalized: bool,
) -> Result<(usize, Vec<f64>), PlannerError> {
    if choices.is_empty() {
        return Err(PlannerError::Constraint("no choices to pick from".into()));
    }
    let scores = score_choices(model, tokenizer, prompt_ids, choices, length_normalized)?;
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    Ok((best, scores))
}

// ---------------------------------------------------------------------------------------
// The byte automaton.
// ---------------------------------------------------------------------------------------

/// Deepest supported stack of the JSON automaton (two frames per nesting level).
const MAX_DEPTH: usize = 24;
/// Longest shortest answer of a JSON shape, in bytes (large `min_items`, nested, add up).
const MAX_MINIMAL_LEN: usize = 1 << 16;
/// Most digits in an integer (so that it fits in an `i64`).
const MAX_INT_DIGITS: u8 = 18;

/// One node of a compiled JSON shape.
#[derive(Debug, Clone)]
enum Node {
    String,
    Integer,
    /// Options (JSON-encoded, quotes included) at `options[first..first + count]`, sorted.
    Enum {
        first: u32,
        count: u32,
    },
    Array {
        item: u32,
        min: u32,
        max: u32,
    },
    /// Fields at `fields[first..first + count]`, in order.
    Object {
        first: u32,
        count: u32,
    },
}

/// A compiled constraint: the tables the automaton states index into.
#[derive(Debug, Clone)]
pub struct CompiledConstraint {
    kind: CompiledKind,
    /// Whether one space may come before the answer.
    leading_space: bool,
}

#[derive(Debug, Clone)]
enum CompiledKind {
    /// Sorted, deduplicated choice bytes.
    Choices(Vec<Vec<u8>>),
    Json {
        nodes: Vec<Node>,
        /// Encoded enum options.
        options: Vec<Vec<u8>>,
        /// (encoded key, value node).
        fields: Vec<(Vec<u8>, u32)>,
        /// The shortest valid text of each node.
        minimal: Vec<Vec<u8>>,
    },
}

fn encode_json_string(s: &str) -> Vec<u8> {
    serde_json::Value::String(s.to_string())
        .to_string()
        .into_bytes()
}

impl CompiledConstraint {
    /// Compiles a constraint. Errors: no choices, an enum without options, or a shape nested
    /// too deeply.
    pub fn new(constraint: &Constraint) -> Result<CompiledConstraint, PlannerError> {
        match constraint {
            Constraint::Choices(c) => {
                if c.is_empty() {
                    return Err(PlannerError::Constraint("no choices".into()));
                }
                let mut v: Vec<Vec<u8>> = c.iter().map(|s| s.as_bytes().to_vec()).collect();
                v.sort();
                v.dedup();
                Ok(CompiledConstraint {
                    kind: CompiledKind::Choices(v),
                    leading_space: false,
                })
            }
            Constraint::Json(shape) => {
                let mut nodes = Vec::new();
                let mut options = Vec::new();
                let mut fields = Vec::new();
                compile_shape(shape, &mut nodes, &mut options, &mut fields, 0)?;
                let mut minimal: Vec<Vec<u8>> = vec![Vec::new(); nodes.len()];
                // Children come after their parents: fill from the back.
                for i in (0..nodes.len()).rev() {
                    let len = minimal_len(&nodes[i], &options, &fields, &minimal);
                    if len > MAX_MINIMAL_LEN {
                        return Err(PlannerError::Constraint(format!(
                            "the shortest answer of this JSON shape is longer than \
                             {MAX_MINIMAL_LEN} bytes (are some min_items too large?)"
                        )));
                    }
                    minimal[i] = match &nodes[i] {
                        Node::String => b"\"\"".to_vec(),
                        Node::Integer => b"0".to_vec(),
                        Node::Enum { first, count } => options
                            [*first as usize..(*first + *count) as usize]
                            .iter()
                            .min_by_key(|o| o.len())
                            .cloned()
                            .unwrap_or_default(),
                        Node::Array { item, min, .. } => {
                            let mut s = b"[".to_vec();
                            for k in 0..*min {
                                if k > 0 {
                                    s.push(b',');
                                }
                                s.extend_from_slice(&minimal[*item as usize]);
                            }
                            s.push(b']');
                            s
                        }
                        Node::Object { first, count } => {
                            let mut s = b"{".to_vec();
                            for f in *first..*first + *count {
                                if f > *first {
                                    s.push(b',');
                                }
                                let (key, node) = &fields[f as usize];
                                s.extend_from_slice(key);
                                s.push(b':');
                                s.extend_from_slice(&minimal[*node as usize]);
                            }
                            s.push(b'}');
                            s
                        }
                    };
                }
                Ok(CompiledConstraint {
                    kind: CompiledKind::Json {
                        nodes,
                        options,
                        fields,
                        minimal,
                    },
                    leading_space: false,
                })
            }
        }
    }

    /// Allows (`true`) or forbids one space before the answer: the natural start of an
    /// answer for SentencePiece-style tokenizers, whose word tokens begin with `▁`. For
    /// choices it stays off when a choice itself starts with a space (which would make the
    /// space ambiguous).
    pub fn with_leading_space(mut self, allow: bool) -> Self {
        self.leading_space = match &self.kind {
            CompiledKind::Choices(c) => allow && !c.iter().any(|x| x.first() == Some(&b' ')),
            CompiledKind::Json { .. } => allow,
        };
        self
    }

    /// Whether one space may come before the answer ([`Self::with_leading_space`]).
    pub fn leading_space(&self) -> bool {
        self.leading_space
    }

    /// The state before any output.
    pub fn start(&self) -> ConstraintState {
        let mut s = ConstraintState {
            stack: [Frame::Empty; MAX_DEPTH],
            len: 0,
            space_ok: self.leading_space,
        };
        match &self.kind {
            CompiledKind::Choices(c) => {
                s.stack[0] = Frame::Choice {
                    lo: 0,
                    hi: c.len() as u32,
                    pos: 0,
                };
                s.len = 1;
            }
            CompiledKind::Json { .. } => {
                s.stack[0] = Frame::Value { node: 0 };
                s.len = 1;
            }
        }
        s
    }
}

/// The length of a node's shortest text, given its children's (saturating).
fn minimal_len(
    node: &Node,
    options: &[Vec<u8>],
    fields: &[(Vec<u8>, u32)],
    minimal: &[Vec<u8>],
) -> usize {
    match node {
        Node::String => 2,
        Node::Integer => 1,
        Node::Enum { first, count } => options[*first as usize..(*first + *count) as usize]
            .iter()
            .map(Vec::len)
            .min()
            .unwrap_or(0),
        Node::Array { item, min, .. } => {
            let n = *min as usize;
            (minimal[*item as usize].len().saturating_add(1))
                .saturating_mul(n)
                .saturating_add(2)
        }
        Node::Object { first, count } => fields[*first as usize..(*first + *count) as usize]
            .iter()
            .fold(2usize, |acc, (k, v)| {
                acc.saturating_add(k.len() + 2)
                    .saturating_add(minimal[*v as usize].len())
            }),
    }
}

fn compile_shape(
    shape: &JsonShape,
    nodes: &mut Vec<Node>,
    options: &mut Vec<Vec<u8>>,
    fields: &mut Vec<(Vec<u8>, u32)>,
    depth: usize,
) -> Result<u32, PlannerError> {
    if 2 * depth + 2 > MAX_DEPTH {
        return Err(PlannerError::Constraint(format!(
            "the JSON shape is nested deeper than {} levels",
            MAX_DEPTH / 2 - 1
        )));
    }
    let id = nodes.len() as u32;
    nodes.push(Node::String);
    let node = match shape {
        JsonShape::String => Node::String,
        JsonShape::Integer => Node::Integer,
        JsonShape::Enum(values) => {
            if values.is_empty() {
                return Err(PlannerError::Constraint("an enum without values".into()));
            }
            let mut enc: Vec<Vec<u8>> = values.iter().map(|v| encode_json_string(v)).collect();
            enc.sort();
            enc.dedup();
            let first = options.len() as u32;
            let count = enc.len() as u32;
            options.extend(enc);
            Node::Enum { first, count }
        }
        JsonShape::Array {
            items,
            min_items,
            max_items,
        } => {
            if min_items > max_items {
                return Err(PlannerError::Constraint(format!(
                    "an array shape asks for at least {min_items} and at most {max_items} items"
                )));
            }
            let min = u32::try_from(*min_items).map_err(|_| {
                PlannerError::Constraint(format!("min_items = {min_items} is too large"))
            })?;
            let item = compile_shape(items, nodes, options, fields, depth + 1)?;
            Node::Array {
                item,
                min,
                max: u32::try_from(*max_items).unwrap_or(u32::MAX),
            }
        }
        JsonShape::Object(fs) => {
            // Reserve the field slots first so they are contiguous.
            let first = fields.len() as u32;
            for (k, _) in fs {
                fields.push((encode_json_string(k), 0));
            }
            for (i, (_, s)) in fs.iter().enumerate() {
                let child = compile_shape(s, nodes, options, fields, depth + 1)?;
                fields[first as usize + i].1 = child;
            }
            Node::Object {
                first,
                count: fs.len() as u32,
            }
        }
    };
    nodes[id as usize] = node;
    Ok(id)
}

/// One frame of the automaton's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Empty,
    /// Matching choices `[lo, hi)` (sorted), `pos` bytes matched.
    Choice {
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// Expecting a value of `node` (whitespace first is fine).
    Value {
        node: u32,
    },
    /// Inside a string. `esc`: 0 plain, 1 after `\`, 2..=5 hex digits of `\u` still due
    /// (5 = the first, which may not be `d`/`D`). `utf8`: continuation bytes due, the next
    /// one in `lo..=hi`.
    Str {
        esc: u8,
        utf8: u8,
        lo: u8,
        hi: u8,
    },
    /// An integer: `digits` so far, whether it started with `0`.
    Int {
        digits: u8,
        zero: bool,
    },
    /// Matching enum options `[lo, hi)`, `pos` bytes matched.
    Enum {
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// An array of `node`: `count` items started; `st` 0 after `[`, 1 after an item (or
    /// while one is in progress above this frame), 2 after `,`.
    Array {
        node: u32,
        count: u32,
        st: u8,
    },
    /// An object of `node`: `field` is the next field to complete; `st` 0 after `{`, 1 after
    /// a key (expecting `:`), 2 after `:` or a value, 3 after `,`.
    Object {
        node: u32,
        field: u32,
        st: u8,
    },
    /// Matching the key of field `field`, `pos` bytes matched.
    Key {
        field: u32,
        pos: u32,
    },
}

/// Where the automaton is: a small fixed-size stack, cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstraintState {
    stack: [Frame; MAX_DEPTH],
    len: u8,
    /// Whether the next byte may be the one optional space (after `:`, `,` or at the start
    /// with a leading space allowed).
    space_ok: bool,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a whitespace byte is the allowed optional space.
fn optional_space(b: u8, space_ok: bool) -> bool {
    b == b' ' && space_ok
}

/// Narrows a sorted range of byte strings to those with `b` at `pos`.
fn narrow(items: &[Vec<u8>], lo: u32, hi: u32, pos: u32, b: u8) -> Option<(u32, u32)> {
    let p = pos as usize;
    let slice = &items[lo as usize..hi as usize];
    let start = slice.partition_point(|s| s.get(p).is_none_or(|&c| c < b));
    let end = slice.partition_point(|s| s.get(p).is_none_or(|&c| c <= b));
    (start < end).then(|| (lo + start as u32, lo + end as u32))
}

impl ConstraintState {
    fn top(&self) -> Option<Frame> {
        (self.len > 0).then(|| self.stack[self.len as usize - 1])
    }

    fn set_top(&mut self, f: Frame) {
        self.stack[self.len as usize - 1] = f;
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.len as usize >= MAX_DEPTH {
            return false;
        }
        self.stack[self.len as usize] = f;
        self.len += 1;
        true
    }

    /// Pops a finished value and tells its parent.
    fn finish_value(&mut self) {
        self.len -= 1;
        if let Some(Frame::Object { node, field, st }) = self.top() {
            self.set_top(Frame::Object {
                node,
                field: field + 1,
                st,
            });
        }
    }

    /// Feeds one byte; false (and the state is then meaningless) when it cannot follow.
    pub fn step(&mut self, c: &CompiledConstraint, b: u8) -> bool {
        // The optional space may only come right after what allowed it.
        let space_ok = std::mem::replace(&mut self.space_ok, false);
        match &c.kind {
            CompiledKind::Choices(choices) => self.step_choice(choices, b, space_ok),
            CompiledKind::Json {
                nodes,
                options,
                fields,
                ..
            } => self.step_json(nodes, options, fields, b, space_ok),
        }
    }

    /// Feeds bytes; false when one cannot follow.
    pub fn step_bytes(&mut self, c: &CompiledConstraint, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(c, b))
    }

    fn step_choice(&mut self, choices: &[Vec<u8>], b: u8, space_ok: bool) -> bool {
        let Some(Frame::Choice { lo, hi, pos }) = self.top() else {
            return false;
        };
        if pos == 0 && optional_space(b, space_ok) {
            return true;
        }
        match narrow(choices, lo, hi, pos, b) {
            Some((lo, hi)) => {
                self.set_top(Frame::Choice {
                    lo,
                    hi,
                    pos: pos + 1,
                });
                true
            }
            None => false,
        }
    }

    fn step_json(
        &mut self,
        nodes: &[Node],
        options: &[Vec<u8>],
        fields: &[(Vec<u8>, u32)],
        b: u8,
        space_ok: bool,
    ) -> bool {
        // A loop because a byte that ends an integer is then read by the parent.
        loop {
            let Some(top) = self.top() else {
                return false;
            };
            match top {
                Frame::Empty | Frame::Choice { .. } => return false,
                Frame::Value { node } => {
                    if is_ws(b) {
                        return optional_space(b, space_ok);
                    }
                    let f = match (&nodes[node as usize], b) {
                        (Node::String, b'"') => Frame::Str {
                            esc: 0,
                            utf8: 0,
                            lo: 0,
                            hi: 0,
                        },
                        (Node::Integer, b'-') => Frame::Int {
                            digits: 0,
                            zero: false,
                        },
                        (Node::Integer, b'0'..=b'9') => Frame::Int {
                            digits: 1,
                            zero: b == b'0',
                        },
                        (Node::Enum { first, count }, b'"') => Frame::Enum {
                            lo: *first,
                            hi: *first + *count,
                            pos: 1,
                        },
                        (Node::Array { .. }, b'[') => Frame::Array {
                            node,
                            count: 0,
                            st: 0,
                        },
                        (Node::Object { .. }, b'{') => Frame::Object {
                            node,
                            field: 0,
                            st: 0,
                        },
                        _ => return false,
                    };
                    self.set_top(f);
                    return true;
                }
                Frame::Str { esc, utf8, lo, hi } => {
                    let next = if utf8 > 0 {
                        if b < lo || b > hi {
                            return false;
                        }
                        Frame::Str {
                            esc: 0,
                            utf8: utf8 - 1,
                            lo: 0x80,
                            hi: 0xBF,
                        }
                    } else if esc == 1 {
                        match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Frame::Str {
                                esc: 0,
                                utf8: 0,
                                lo: 0,
                                hi: 0,
                            },
                            b'u' => Frame::Str {
                                esc: 5,
                                utf8: 0,
                                lo: 0,
                                hi: 0,
                            },
                            _ => return false,
                        }
                    } else if esc >= 2 {
                        // No `d`/`D` first: that keeps surrogates (lone or paired) out.
                        if !b.is_ascii_hexdigit() || (esc == 5 && (b == b'd' || b == b'D')) {
                            return false;
                        }
                        Frame::Str {
                            esc: if esc == 2 { 0 } else { esc - 1 },
                            utf8: 0,
                            lo: 0,
                            hi: 0,
                        }
                    } else {
                        match b {
                            b'"' => {
                                self.finish_value();
                                return true;
                            }
                            b'\\' => Frame::Str {
                                esc: 1,
                                utf8: 0,
                                lo: 0,
                                hi: 0,
                            },
                            0x00..=0x1F | 0x7F => return false,
                            0x20..=0x7E => top,
                            0xC2..=0xDF => Frame::Str {
                                esc: 0,
                                utf8: 1,
                                lo: 0x80,
                                hi: 0xBF,
                            },
                            0xE0 => Frame::Str {
                                esc: 0,
                                utf8: 2,
                                lo: 0xA0,
                                hi: 0xBF,
                            },
                            0xED => Frame::Str {
                                esc: 0,
                                utf8: 2,
                                lo: 0x80,
                                hi: 0x9F,
                            },
                            0xE1..=0xEF => Frame::Str {
                                esc: 0,
                                utf8: 2,
                                lo: 0x80,
                                hi: 0xBF,
                            },
                            0xF0 => Frame::Str {
                                esc: 0,
                                utf8: 3,
                                lo: 0x90,
                                hi: 0xBF,
                            },
                            0xF4 => Frame::Str {
                                esc: 0,
                                utf8: 3,
                                lo: 0x80,
                                hi: 0x8F,
                            },
                            0xF1..=0xF3 => Frame::Str {
                                esc: 0,
                                utf8: 3,
                                lo: 0x80,
                                hi: 0xBF,
                            },
                            _ => return false,
                        }
                    };
                    self.set_top(next);
                    return true;
                }
                Frame::Int { digits, zero } => {
                    if b.is_ascii_digit() {
                        // No digits after a leading zero, no "-0", at most MAX_INT_DIGITS.
                        if zero || digits >= MAX_INT_DIGITS || (digits == 0 && b == b'0') {
                            return false;
                        }
                        self.set_top(Frame::Int {
                            digits: digits + 1,
                            zero: false,
                        });
                        return true;
                    }
                    if digits == 0 {
                        return false;
                    }
                    self.finish_value();
                    // The byte goes to the parent.
                    continue;
                }
                Frame::Enum { lo, hi, pos } => {
                    return match narrow(options, lo, hi, pos, b) {
                        Some((lo, hi)) => {
                            let pos = pos + 1;
                            // Complete when an option ends here (the shortest sorts first).
                            if options[lo as usize].len() == pos as usize {
                                // Options are JSON strings: one that ends is a closed
                                // string, and no other option can extend it.
                                self.finish_value();
                            } else {
                                self.set_top(Frame::Enum { lo, hi, pos });
                            }
                            true
                        }
                        None => false,
                    };
                }
                Frame::Array { node, count, st } => {
                    let Node::Array { item, min, max } = nodes[node as usize] else {
                        return false;
                    };
                    if is_ws(b) {
                        return optional_space(b, space_ok);
                    }
                    match (st, b) {
                        // `count` items are complete here (st 0: none).
                        (0 | 1, b']') => {
                            if count < min {
                                return false;
                            }
                            self.finish_value();
                            return true;
                        }
                        (1, b',') => {
                            if count >= max {
                                return false;
                            }
                            self.set_top(Frame::Array { node, count, st: 2 });
                            self.space_ok = true;
                            return true;
                        }
                        (0 | 2, _) => {
                            if count >= max {
                                return false;
                            }
                            self.set_top(Frame::Array {
                                node,
                                count: count + 1,
                                st: 1,
                            });
                            if !self.push(Frame::Value { node: item }) {
                                return false;
                            }
                            // The byte starts the item.
                            continue;
                        }
                        _ => return false,
                    }
                }
                Frame::Object { node, field, st } => {
                    let Node::Object { first, count } = nodes[node as usize] else {
                        return false;
                    };
                    if is_ws(b) {
                        return optional_space(b, space_ok);
                    }
                    match (st, b) {
                        (0, b'}') if count == 0 => {
                            self.finish_value();
                            return true;
                        }
                        (0 | 3, b'"') if field < count => {
                            self.set_top(Frame::Object { node, field, st: 1 });
                            return self.push(Frame::Key {
                                field: first + field,
                                pos: 1,
                            });
                        }
                        (1, b':') => {
                            self.set_top(Frame::Object { node, field, st: 2 });
                            let value = fields[(first + field) as usize].1;
                            self.space_ok = true;
                            return self.push(Frame::Value { node: value });
                        }
                        (2, b',') if field < count => {
                            self.set_top(Frame::Object { node, field, st: 3 });
                            self.space_ok = true;
                            return true;
                        }
                        (2, b'}') if field == count => {
                            self.finish_value();
                            return true;
                        }
                        _ => return false,
                    }
                }
                Frame::Key { field, pos } => {
                    let key = &fields[field as usize].0;
                    if key.get(pos as usize) != Some(&b) {
                        return false;
                    }
                    if pos as usize + 1 == key.len() {
                        self.len -= 1;
                    } else {
                        self.set_top(Frame::Key {
                            field,
                            pos: pos + 1,
                        });
                    }
                    return true;
                }
            }
        }
    }

    /// Whether the automaton is inside a JSON string with no escape or character pending.
    pub fn in_plain_string(&self) -> bool {
        matches!(
            self.top(),
            Some(Frame::Str {
                esc: 0,
                utf8: 0,
                ..
            })
        )
    }

    /// Whether the output so far is a complete answer.
    pub fn is_complete(&self, c: &CompiledConstraint) -> bool {
        match &c.kind {
            CompiledKind::Choices(choices) => match self.top() {
                Some(Frame::Choice { lo, hi, pos }) => {
                    lo < hi && choices[lo as usize].len() == pos as usize
                }
                _ => false,
            },
            CompiledKind::Json { .. } => {
                self.len == 0
                    || (self.len == 1
                        && matches!(self.stack[0], Frame::Int { digits, .. } if digits > 0))
            }
        }
    }

    /// Whether any byte can still follow.
    pub fn can_continue(&self, c: &CompiledConstraint) -> bool {
        (0..=255u8).any(|b| {
            let mut s = *self;
            s.step(c, b)
        })
    }

    /// The shortest bytes that complete the answer from here (empty when complete).
    pub fn completion(&self, c: &CompiledConstraint) -> Vec<u8> {
        let mut out = Vec::new();
        match &c.kind {
            CompiledKind::Choices(choices) => {
                if let Some(Frame::Choice { lo, hi, pos }) = self.top() {
                    if let Some(best) = choices[lo as usize..hi as usize]
                        .iter()
                        .min_by_key(|x| x.len())
                    {
                        out.extend_from_slice(&best[pos as usize..]);
                    }
                }
            }
            CompiledKind::Json {
                nodes,
                options,
                fields,
                minimal,
            } => {
                for i in (0..self.len as usize).rev() {
                    match self.stack[i] {
                        Frame::Empty | Frame::Choice { .. } => {}
                        Frame::Value { node } => out.extend_from_slice(&minimal[node as usize]),
                        Frame::Str { esc, utf8, lo, .. } => {
                            if utf8 > 0 {
                                out.push(lo);
                                out.extend(std::iter::repeat_n(0x80, utf8 as usize - 1));
                            } else if esc == 1 {
                                out.push(b'n');
                            } else if esc >= 2 {
                                out.extend(std::iter::repeat_n(b'0', esc as usize - 1));
                            }
                            out.push(b'"');
                        }
                        Frame::Int { digits, .. } => {
                            if digits == 0 {
                                out.push(b'1');
                            }
                        }
                        Frame::Enum { lo, hi, pos } => {
                            if let Some(best) = options[lo as usize..hi as usize]
                                .iter()
                                .min_by_key(|x| x.len())
                            {
                                out.extend_from_slice(&best[pos as usize..]);
                            }
                        }
                        Frame::Array { node, count, st } => {
                            if let Node::Array { item, min, .. } = nodes[node as usize] {
                                let item = &minimal[item as usize];
                                // Items still due after the ones started: with st 1 the
                                // last one is complete (or completed above), so `,item`
                                // each; after `,` one item first, then `,item` each.
                                let (first, more) = match st {
                                    0 => (min > 0, min.saturating_sub(1)),
                                    1 => (false, min.saturating_sub(count)),
                                    _ => (true, min.saturating_sub(count + 1)),
                                };
                                if first {
                                    out.extend_from_slice(item);
                                }
                                for _ in 0..more {
                                    out.push(b',');
                                    out.extend_from_slice(item);
                                }
                            }
                            out.push(b']');
                        }
                        Frame::Object { node, field, st } => {
                            let Node::Object { first, count } = nodes[node as usize] else {
                                continue;
                            };
                            let pair = |out: &mut Vec<u8>, f: u32| {
                                let (key, v) = &fields[(first + f) as usize];
                                out.extend_from_slice(key);
                                out.push(b':');
                                out.extend_from_slice(&minimal[*v as usize]);
                            };
                            match st {
                                0 | 3 => {
                                    for f in field..count {
                                        if f > field {
                                            out.push(b',');
                                        }
                                        pair(&mut out, f);
                                    }
                                }
                                1 => {
                                    out.push(b':');
                                    let v = fields[(first + field) as usize].1;
                                    out.extend_from_slice(&minimal[v as usize]);
                                    for f in field + 1..count {
                                        out.push(b',');
                                        pair(&mut out, f);
                                    }
                                }
                                _ => {
                                    // Below the top, the value of `field` is in progress.
                                    let from = if i + 1 < self.len as usize {
                                        field + 1
                                    } else {
                                        field
                                    };
                                    for f in from..count {
                                        out.push(b',');
                                        pair(&mut out, f);
                                    }
                                }
                            }
                            out.push(b'}');
                        }
                        Frame::Key { field, pos } => {
                            out.extend_from_slice(&fields[field as usize].0[pos as usize..]);
                        }
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The token trie and masking.
// ---------------------------------------------------------------------------------------

/// A byte trie over a set of tokens, flattened.
#[derive(Debug, Clone, Default)]
struct Trie {
    /// Per node: the range of its children in `edges`.
    child_start: Vec<u32>,
    child_end: Vec<u32>,
    /// (byte, child node), grouped by parent.
    edges: Vec<(u8, u32)>,
    /// Per node: the range of the tokens ending there in `ends`.
    end_start: Vec<u32>,
    end_end: Vec<u32>,
    ends: Vec<u32>,
}

impl Trie {
    fn build<'a>(tokens: impl Iterator<Item = (u32, &'a [u8])>) -> Trie {
        // Build with per-node sorted child lists, then flatten.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        for (id, tok) in tokens {
            let mut node = 0usize;
            for &b in tok {
                node = match children[node].binary_search_by_key(&b, |e| e.0) {
                    Ok(i) => children[node][i].1 as usize,
                    Err(i) => {
                        let n = children.len();
                        children.push(Vec::new());
                        ends.push(Vec::new());
                        children[node].insert(i, (b, n as u32));
                        n
                    }
                };
            }
            ends[node].push(id);
        }
        let mut t = Trie::default();
        for (c, e) in children.into_iter().zip(ends) {
            t.child_start.push(t.edges.len() as u32);
            t.edges.extend(c);
            t.child_end.push(t.edges.len() as u32);
            t.end_start.push(t.ends.len() as u32);
            t.ends.extend(e);
            t.end_end.push(t.ends.len() as u32);
        }
        t
    }

    /// Pushes every token of the trie whose bytes can follow `state` onto `out`.
    fn walk(&self, c: &CompiledConstraint, state: &ConstraintState, out: &mut Vec<u32>) {
        if self.child_start.is_empty() {
            return;
        }
        // An explicit stack of (node, state) keeps long tokens off the call stack.
        let mut stack: Vec<(u32, ConstraintState)> = vec![(0, *state)];
        while let Some((node, s)) = stack.pop() {
            let (a, z) = (
                self.child_start[node as usize],
                self.child_end[node as usize],
            );
            for &(b, child) in &self.edges[a as usize..z as usize] {
                let mut next = s;
                if next.step(c, b) {
                    let (ea, ez) = (self.end_start[child as usize], self.end_end[child as usize]);
                    out.extend_from_slice(&self.ends[ea as usize..ez as usize]);
                    if self.child_start[child as usize] < self.child_end[child as usize] {
                        stack.push((child, next));
                    }
                }
            }
        }
    }
}

/// Whether a token, read inside a JSON string, keeps it an open string with nothing pending:
/// printable ASCII other than `"` and `\`, and whole valid UTF-8 characters.
fn string_safe(tok: &[u8]) -> bool {
    if tok
        .iter()
        .any(|&b| b < 0x20 || b == 0x7F || b == b'"' || b == b'\\')
    {
        return false;
    }
    std::str::from_utf8(tok).is_ok()
}

/// The bytes of every ordinary token arranged for fast masking, built once per tokenizer
/// ([`Tokenizer::token_trie`]): a byte trie of all tokens, and, for the common case of being
/// inside a JSON string, the list of tokens that keep any open string open (allowed there
/// without a walk) with a second trie of the rest.
#[derive(Debug, Clone, Default)]
pub struct TokenTrie {
    all: Trie,
    string_safe: Vec<u32>,
    string_unsafe: Trie,
    /// For each byte value, a token that is exactly that byte, if any.
    single_byte: Vec<Option<u32>>,
}

impl TokenTrie {
    /// Builds the tables from all non-special tokens with at least one byte.
    pub fn new(tokenizer: &Tokenizer) -> TokenTrie {
        let bytes = tokenizer.token_bytes();
        let ordinary = || {
            bytes
                .iter()
                .enumerate()
                .map(|(id, b)| (id as u32, b.as_slice()))
                .filter(|(id, b)| !b.is_empty() && !tokenizer.is_special(*id))
        };
        let mut single_byte = vec![None; 256];
        for (id, b) in ordinary() {
            if b.len() == 1 && single_byte[b[0] as usize].is_none() {
                single_byte[b[0] as usize] = Some(id);
            }
        }
        TokenTrie {
            all: Trie::build(ordinary()),
            string_safe: ordinary()
                .filter(|(_, b)| string_safe(b))
                .map(|(id, _)| id)
                .collect(),
            string_unsafe: Trie::build(ordinary().filter(|(_, b)| !string_safe(b))),
            single_byte,
        }
    }

    /// The number of nodes of the trie of all tokens.
    pub fn len(&self) -> usize {
        self.all.child_start.len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.all.ends.is_empty()
    }

    /// Pushes every token whose bytes can follow `state` onto `out`.
    pub fn allowed(&self, c: &CompiledConstraint, state: &ConstraintState, out: &mut Vec<u32>) {
        if state.in_plain_string() {
            out.extend_from_slice(&self.string_safe);
            self.string_unsafe.walk(c, state, out);
        } else {
            self.all.walk(c, state, out);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Generation.
// ---------------------------------------------------------------------------------------

/// Why constrained generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstrainedStop {
    /// The answer was complete and nothing could follow it.
    Complete,
    /// The model chose an end token after a complete answer.
    EndToken,
    /// The token budget was nearly spent: the shortest completion was appended.
    Forced,
}

/// The result of [`generate_constrained_detailed`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConstrainedGeneration {
    /// The answer text (without the optional leading space of SentencePiece-style
    /// tokenizers, which `tokens` may include).
    pub text: String,
    /// The answer's tokens (never more than `max_tokens`; the end token not included).
    pub tokens: Vec<u32>,
    /// How many of the tokens were forced to complete the answer.
    pub forced_tokens: usize,
    /// Why generation stopped.
    pub stop: ConstrainedStop,
}

/// How many times a sampled token that would leave too little budget is redrawn before the
/// answer is completed by force.
const MAX_REDRAWS: usize = 32;

/// Tokens that spell `bytes` exactly with ordinary tokens: the tokenizer's own encoding when
/// it round-trips, else one token per byte.
fn spell(tokenizer: &Tokenizer, trie: &TokenTrie, bytes: &[u8]) -> Result<Vec<u32>, PlannerError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let table = tokenizer.token_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(ids) = tokenizer.encode(text, false) {
            let ok = ids.iter().all(|&i| !tokenizer.is_special(i))
                && ids
                    .iter()
                    .flat_map(|&i| table.get(i as usize).into_iter().flatten())
                    .copied()
                    .eq(bytes.iter().copied());
            if ok {
                return Ok(ids);
            }
        }
    }
    bytes
        .iter()
        .map(|&b| {
            trie.single_byte[b as usize].ok_or_else(|| {
                PlannerError::Constraint(format!(
                    "the vocabulary has no token for the byte 0x{b:02x}, needed to finish the answer"
                ))
            })
        })
        .collect()
}

/// Generates an answer that satisfies `constraint`: see the module documentation. The
/// returned text always parses with [`Constraint::parse`].
pub fn generate_constrained(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    constraint: &Constraint,
    max_tokens: usize,
    sampler: &mut Sampler,
) -> Result<String, PlannerError> {
    generate_constrained_detailed(
        model, tokenizer, prompt_ids, constraint, max_tokens, sampler,
    )
    .map(|g| g.text)
}

/// [`generate_constrained`], with the tokens and how generation stopped.
pub fn generate_constrained_detailed(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    constraint: &Constraint,
    max_tokens: usize,
    sampler: &mut Sampler,
) -> Result<ConstrainedGeneration, PlannerError> {
    if let Constraint::Json(shape) = constraint {
        if !matches!(shape, JsonShape::Object(_)) {
            return Err(PlannerError::Constraint(
                "a JSON answer must be an object at the top level (Constraint::parse reads the \
                 first JSON object of the answer); wrap the shape in an object"
                    .into(),
            ));
        }
    }
    if prompt_ids.is_empty() {
        return Err(PlannerError::Constraint("the prompt is empty".into()));
    }
    let compiled = CompiledConstraint::new(constraint)?
        .with_leading_space(tokenizer.token_encoding() == TokenEncoding::SentencePiece);
    let trie = tokenizer.token_trie();
    let table = tokenizer.token_bytes();
    let ends: Vec<u32> = tokenizer.eos_ids().to_vec();
    let mut state = compiled.start();

    let cost = |s: &ConstraintState| -> Result<(Vec<u32>, usize), PlannerError> {
        let ids = spell(tokenizer, trie, &s.completion(&compiled))?;
        let n = ids.len();
        Ok((ids, n))
    };
    let (_, initial) = cost(&state)?;
    if initial > max_tokens {
        return Err(PlannerError::Constraint(format!(
            "max_tokens = {max_tokens} is too small: the shortest valid answer takes {initial} tokens"
        )));
    }

    model.reset();
    let mut logits = model.feed(prompt_ids)?;
    let mut tokens: Vec<u32> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut allowed: Vec<u32> = Vec::new();
    let mut forced_tokens = 0;
    let stop;
    loop {
        let complete = state.is_complete(&compiled);
        if complete && !state.can_continue(&compiled) {
            stop = ConstrainedStop::Complete;
            break;
        }
        let remaining = max_tokens.saturating_sub(tokens.len());
        let (forced, n_forced) = cost(&state)?;
        if n_forced >= remaining {
            forced_tokens = forced.len();
            for &t in &forced {
                out.extend_from_slice(&table[t as usize]);
            }
            tokens.extend(forced);
            stop = ConstrainedStop::Forced;
            break;
        }
        allowed.clear();
        trie.allowed(&compiled, &state, &mut allowed);
        if complete {
            allowed.extend(ends.iter().copied());
        }
        let mut masked = vec![f32::NEG_INFINITY; logits.len()];
        let mut any = false;
        for &t in &allowed {
            if let Some(&l) = logits.get(t as usize) {
                masked[t as usize] = if l.is_nan() { f32::NEG_INFINITY } else { l };
                any = true;
            }
        }
        let mut chosen = None;
        if any {
            for _ in 0..MAX_REDRAWS {
                let t = match sampler.sample(&masked) {
                    Ok(t) => t,
                    // Every allowed token has -inf logit: complete by force below.
                    Err(_) => break,
                };
                if complete && ends.contains(&t) {
                    chosen = Some((t, None));
                    break;
                }
                let mut next = state;
                let ok = table
                    .get(t as usize)
                    .is_some_and(|b| next.step_bytes(&compiled, b));
                if ok && cost(&next)?.1 < remaining {
                    chosen = Some((t, Some(next)));
                    break;
                }
                masked[t as usize] = f32::NEG_INFINITY;
            }
        }
        match chosen {
            Some((_, None)) => {
                stop = ConstrainedStop::EndToken;
                break;
            }
            Some((t, Some(next))) => {
                state = next;
                tokens.push(t);
                out.extend_from_slice(&table[t as usize]);
                logits = model.feed(&[t])?;
            }
            None => {
                // Nothing the model likes fits: finish with the shortest completion, which
                // fits the budget (checked when the state was reached).
                forced_tokens = forced.len();
                for &t in &forced {
                    out.extend_from_slice(&table[t as usize]);
                }
                tokens.extend(forced);
                stop = ConstrainedStop::Forced;
                break;
            }
        }
    }
    // The optional leading space is the tokenizer's word prefix, not part of the answer.
    let skip = usize::from(compiled.leading_space() && out.first() == Some(&b' '));
    let text = String::from_utf8(out.split_off(skip)).map_err(|e| {
        PlannerError::Constraint(format!("the answer is not valid UTF-8 (a bug): {e}"))
    })?;
    constraint.parse(&text).map_err(|e| {
        PlannerError::Constraint(format!(
            "the constrained answer {text:?} does not parse (a bug): {e}"
        ))
    })?;
    Ok(ConstrainedGeneration {
        text,
        tokens,
        forced_tokens,
        stop,
    })
}

/// The set of token ids that can follow `state`, for callers that mask logits themselves.
pub fn allowed_tokens(
    tokenizer: &Tokenizer,
    compiled: &CompiledConstraint,
    state: &ConstraintState,
) -> HashSet<u32> {
    let mut v = Vec::new();
    tokenizer.token_trie().allowed(compiled, state, &mut v);
    if state.is_complete(compiled) {
        v.extend(tokenizer.eos_ids().iter().copied());
    }
    v.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(c: &Constraint, text: &str) -> (bool, bool) {
        let cc = CompiledConstraint::new(c).unwrap();
        let mut s = cc.start();
        let ok = s.step_bytes(&cc, text.as_bytes());
        (ok, ok && s.is_complete(&cc))
    }

    fn obj(fields: Vec<(&'static str, JsonShape)>) -> Constraint {
        Constraint::Json(JsonShape::object(fields))
    }

    #[test]
    fn json_prefixes_are_accepted_and_others_refused() {
        let c = obj(vec![
            ("name", JsonShape::String),
            ("n", JsonShape::Integer),
            (
                "tags",
                JsonShape::array(JsonShape::Enum(vec!["a".into(), "bc".into()]), 2),
            ),
        ]);
        let good = r#"{"name": "x\"y\u00e9 é", "n": -12,"tags":["bc", "a"]}"#;
        for i in 0..=good.len() {
            if !good.is_char_boundary(i) {
                continue;
            }
            assert!(accepts(&c, &good[..i]).0, "prefix {:?}", &good[..i]);
        }
        assert_eq!(accepts(&c, good), (true, true));
        for bad in [
            r#"{"n": 1"#,
            r#"{"name": 1"#,
            r#"{"name": "x", "n": 01"#,
            r#"{"name": "x", "n": -0"#,
            r#"{"name": "x", "n": 1, "tags": ["a", "a", "#,
            r#"{"name": "x", "n": 1, "tags": ["c"#,
            r#"{"name": "x", "n": 1, "tags": []}}"#,
            "{\"name\": \"a\nb\"",
            r#"{"name": "\ud800"#,
            r#"{"name": "\x"#,
            r#"{"name": "x",}"#,
            r#"{"name": "x" , "n": 1, "tags": [] ,}"#,
            r#"[]"#,
            // Whitespace only as one space after `:` and `,`.
            r#" {"#,
            r#"{ "#,
            r#"{"name" :"#,
            r#"{"name":  "#,
            "{\"name\":\n",
            "{\"name\":\t",
            r#"{"name": "x" ,"#,
            r#"{"name": "x",  "#,
            r#"{"name": "x", "n": 1 ,"#,
            r#"{"name": "x", "n": 1, "tags": [ "#,
            r#"{"name": "x", "n": 1, "tags": ["a" "#,
            r#"{"name": "x", "n": 1, "tags": ["a"] "#,
        ] {
            assert!(!accepts(&c, bad).0, "{bad:?}");
        }
        // Invalid UTF-8 inside strings is refused.
        let cc = CompiledConstraint::new(&c).unwrap();
        for bytes in [
            &b"{\"name\": \"\xC0\x80"[..],
            b"{\"name\": \"\xED\xA0\x80",
            b"{\"name\": \"\xE2\x28",
        ] {
            let mut s = cc.start();
            assert!(!s.step_bytes(&cc, bytes), "{bytes:?}");
        }
    }

    #[test]
    fn completions_complete_every_prefix() {
        let c = obj(vec![
            (
                "a",
                JsonShape::object([("b", JsonShape::array(JsonShape::Integer, 3))]),
            ),
            ("e", JsonShape::Enum(vec!["long one".into(), "s".into()])),
            ("s", JsonShape::String),
        ]);
        let cc = CompiledConstraint::new(&c).unwrap();
        let good = r#"{"a": {"b": [1, -23,4]}, "e": "long one", "s": "q\\\u00e9é😀"}"#;
        for i in 0..=good.len() {
            let mut s = cc.start();
            assert!(s.step_bytes(&cc, &good.as_bytes()[..i]), "prefix {i}");
            let completion = s.completion(&cc);
            let mut s2 = s;
            assert!(s2.step_bytes(&cc, &completion), "prefix {i}");
            assert!(s2.is_complete(&cc), "prefix {i}");
            let mut full = good.as_bytes()[..i].to_vec();
            full.extend(&completion);
            let text = String::from_utf8(full).unwrap();
            c.parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
        assert_eq!(
            cc.start().completion(&cc),
            br#"{"a":{"b":[]},"e":"s","s":""}"#.to_vec()
        );
    }

    #[test]
    fn arrays_honour_min_items() {
        let c = obj(vec![
            ("t", JsonShape::array_between(JsonShape::Integer, 2, 3)),
            (
                "o",
                JsonShape::array_between(JsonShape::object([("k", JsonShape::String)]), 1, 1),
            ),
        ]);
        let cc = CompiledConstraint::new(&c).unwrap();
        assert_eq!(
            cc.start().completion(&cc),
            br#"{"t":[0,0],"o":[{"k":""}]}"#.to_vec()
        );
        for (prefix, completion) in [
            (r#"{"t":["#, r#"0,0],"o":[{"k":""}]}"#),
            (r#"{"t":[5"#, r#",0],"o":[{"k":""}]}"#),
            (r#"{"t":[-"#, r#"1,0],"o":[{"k":""}]}"#),
            (r#"{"t":[5,"#, r#"0],"o":[{"k":""}]}"#),
            (r#"{"t":[5, "#, r#"0],"o":[{"k":""}]}"#),
            (r#"{"t":[5,6"#, r#"],"o":[{"k":""}]}"#),
            (r#"{"t":[5,6,7"#, r#"],"o":[{"k":""}]}"#),
            (r#"{"t":[5,6],"o":["#, r#"{"k":""}]}"#),
            (r#"{"t":[5,6],"o":[{"k":"a"#, r#""}]}"#),
        ] {
            let mut s = cc.start();
            assert!(s.step_bytes(&cc, prefix.as_bytes()), "{prefix}");
            assert_eq!(
                String::from_utf8(s.completion(&cc)).unwrap(),
                completion,
                "{prefix}"
            );
            assert!(s.step_bytes(&cc, completion.as_bytes()) && s.is_complete(&cc));
        }
        for bad in [
            r#"{"t":[]"#,
            r#"{"t":[1]"#,
            r#"{"t":[1,2,3,"#,
            r#"{"t":[1,2],"o":[]"#,
            r#"{"t":[1,2],"o":[{"k":""},"#,
        ] {
            assert!(!accepts(&c, bad).0, "{bad}");
        }
        assert!(accepts(&c, r#"{"t":[1,2,3],"o":[{"k":"x"}]}"#).1);
        // Impossible or enormous shapes are refused when compiled.
        let e = CompiledConstraint::new(&obj(vec![(
            "t",
            JsonShape::array_between(JsonShape::Integer, 3, 2),
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("at least 3 and at most 2"), "{e}");
        let huge = JsonShape::array_between(JsonShape::String, 1000, 1000);
        let e = CompiledConstraint::new(&obj(vec![(
            "t",
            JsonShape::array_between(huge, 1000, 1000),
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let e = CompiledConstraint::new(&obj(vec![(
            "t",
            JsonShape::array_between(JsonShape::Integer, usize::MAX, usize::MAX),
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn leading_space_is_optional_and_single() {
        let c = obj(vec![("a", JsonShape::Integer)]);
        let cc = CompiledConstraint::new(&c).unwrap();
        assert!(!cc.leading_space());
        let mut s = cc.start();
        assert!(!s.step(&cc, b' '));
        let cc = cc.with_leading_space(true);
        for (text, ok) in [(" {\"a\": 1}", true), ("{\"a\":1}", true), ("  {", false)] {
            let mut s = cc.start();
            assert_eq!(s.step_bytes(&cc, text.as_bytes()), ok, "{text:?}");
        }
        let c = Constraint::Choices(vec!["yes".into(), "no".into()]);
        let cc = CompiledConstraint::new(&c)
            .unwrap()
            .with_leading_space(true);
        assert_eq!(cc.start().completion(&cc), b"no".to_vec());
        for (text, ok) in [
            (" yes", true),
            ("yes", true),
            ("  no", false),
            ("n o", false),
        ] {
            let mut s = cc.start();
            assert_eq!(s.step_bytes(&cc, text.as_bytes()), ok, "{text:?}");
        }
        // A choice that starts with a space turns the option off.
        let c = Constraint::Choices(vec![" yes".into(), "no".into()]);
        let cc = CompiledConstraint::new(&c)
            .unwrap()
            .with_leading_space(true);
        assert!(!cc.leading_space());
    }

    #[test]
    fn choices_are_prefixes() {
        let c = Constraint::Choices(vec!["yes".into(), "no".into(), "yes please".into()]);
        assert_eq!(accepts(&c, "ye"), (true, false));
        assert_eq!(accepts(&c, "yes"), (true, true));
        assert_eq!(accepts(&c, "yes p"), (true, false));
        assert_eq!(accepts(&c, "nope"), (false, false));
        let cc = CompiledConstraint::new(&c).unwrap();
        let mut s = cc.start();
        s.step_bytes(&cc, b"yes");
        assert!(s.can_continue(&cc));
        assert_eq!(cc.start().completion(&cc), b"no".to_vec());
        assert!(CompiledConstraint::new(&Constraint::Choices(vec![])).is_err());
        assert!(CompiledConstraint::new(&Constraint::Json(JsonShape::Enum(vec![]))).is_err());
    }

    #[test]
    fn log_probs_are_normalised() {
        let lp = log_probs(&[0.0, 0.0, f32::NEG_INFINITY], &[0, 2]).unwrap();
        assert!((lp[0] - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(lp[1], f64::NEG_INFINITY);
        assert!(log_probs(&[f32::NAN], &[0]).is_err());
        assert!((log_sum_exp(&[0.5f64.ln(), 0.25f64.ln()]) - 0.75f64.ln()).abs() < 1e-12);
    }
}
