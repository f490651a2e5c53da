//! Tokenizers: built from a GGUF file's `tokenizer.ggml.*` metadata or loaded from a Hugging
//! Face `tokenizer.json`, wrapped with what generation needs (end tokens, the raw bytes of
//! every token for constrained decoding, the checkpoint's chat template).
//!
//! From GGUF, two tokenizer models are supported:
//! - `gpt2`: byte-level BPE (SmolLM, Llama 3, Qwen2, GPT-2 ...). The pre-tokenizer is chosen
//!   from `tokenizer.ggml.pre` to match llama.cpp's split for that name (e.g. `smollm` splits
//!   digits one by one before the GPT-2 pattern; `llama-bpe` uses the Llama 3 pattern and
//!   matches whole words before merging; `qwen2` the Qwen2 pattern).
//! - `llama`: SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral v0.1),
//!   matching sentencepiece and llama.cpp: with `add_space_prefix` one `▁` goes before the
//!   text (transformers' `LlamaTokenizer` omits it when the text already starts with a space);
//!   merges are taken from the file or derived from the token scores.
//!
//! Tokens marked as control (type 3) become special tokens, user-defined ones (type 4) plain
//! added tokens, so both are matched whole in the input text.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::PlannerError;
use crate::gguf::GgufFile;

/// GGUF token type of a control (special) token.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined added token.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// GGUF token type of an unknown token.
const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// GGUF token type of a byte token (`<0x0A>`).
const TOKEN_TYPE_BYTE: i32 = 6;

/// Names of tokens that end a turn or a document in common chat models; those present as
/// special tokens count as end tokens besides the declared end-of-sequence token.
pub const END_TOKEN_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
    "<|END_OF_TURN_TOKEN|>",
];

/// The Llama 3 split pattern (llama.cpp `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen2 split pattern: like Llama 3's, but digits one by one.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GPT-4o / Llama 4 split pattern: case-aware words with attached contractions.
const GPT4O_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// How the text pieces of tokens map to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEncoding {
    /// GPT-2 byte-level: each character of a token stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space and `<0xAB>` tokens are single bytes.
    SentencePiece,
    /// Tokens are plain text.
    Plain,
}

/// A tokenizer with the ids and tables that generation needs.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    encoding: TokenEncoding,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    eos_ids: Vec<u32>,
    /// Token to prepend when encoding with special tokens, when the post-processor does not.
    manual_bos: Option<u32>,
    special: HashSet<u32>,
    chat_template: Option<String>,
    token_bytes: OnceLock<Vec<Vec<u8>>>,
    token_trie: OnceLock<crate::constrained::TokenTrie>,
}

fn tok_err(e: impl std::fmt::Display) -> PlannerError {
    PlannerError::Tokenizer(e.to_string())
}

/// The 256 characters that GPT-2's byte-level encoding uses for the bytes 0..=255.
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// Maps a byte-level character back to its byte.
fn byte_level_inverse() -> HashMap<char, u8> {
    byte_level_alphabet()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// The pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` name, and whether whole words found
/// in the vocabulary skip merging (`ignore_merges`).
fn byte_level_pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool), PlannerError> {
    let byte_level_regex = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let split_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper, PlannerError> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])))
    };
    Ok(match pre {
        "gpt2" | "gpt-2" | "default" | "mpt" | "olmo" | "jais" | "trillion" | "gpt3-finnish" => {
            (byte_level_regex(), false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Digits(Digits::new(true)),
                    byte_level_regex(),
                ])),
                false,
            )
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "dbrx"
        | "smaug-bpe" | "lfm2" | "midm-2.0" => (split_then_bytes(LLAMA3_PATTERN)?, true),
        "qwen2" | "qwen2.5" | "qwen-2.5" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => {
            (split_then_bytes(QWEN2_PATTERN)?, false)
        }
        "gpt-4o" | "llama4" | "minimax-m2" => (split_then_bytes(GPT4O_PATTERN)?, false),
        other => {
            return Err(PlannerError::Tokenizer(format!(
            "unsupported pre-tokenizer {other:?} (tokenizer.ggml.pre); supported: gpt2, smollm, \
                 starcoder, llama-bpe/llama3, qwen2, gpt-4o and their aliases"
        )))
        }
    })
}

/// Splits a merge line `"a b"` at the first space after its first character (as llama.cpp).
fn split_merge(line: &str) -> Option<(String, String)> {
    let first = line.chars().next()?;
    let at = line[first.len_utf8()..].find(' ')? + first.len_utf8();
    Some((line[..at].to_string(), line[at + 1..].to_string()))
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, PlannerError> {
        let where_ = || gguf.path().display().to_string();
        let model = gguf.get_str("tokenizer.ggml.model").ok_or_else(|| {
            PlannerError::Tokenizer(format!("{}: no tokenizer.ggml.model", where_()))
        })?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens").ok_or_else(|| {
            PlannerError::Tokenizer(format!(
                "{}: no string array tokenizer.ggml.tokens",
                where_()
            ))
        })?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(PlannerError::Tokenizer(format!(
                "{}: the vocabulary has {} tokens",
                where_(),
                tokens.len()
            )));
        }
        let n = tokens.len();
        let types = match gguf.get_i32_array("tokenizer.ggml.token_type") {
            Some(t) if t.len() == n => t,
            Some(t) => {
                return Err(PlannerError::Tokenizer(format!(
                    "{}: {} token types for {n} tokens",
                    where_(),
                    t.len()
                )))
            }
            None => vec![1; n],
        };
        let id = |key: &str| -> Result<Option<u32>, PlannerError> {
            match gguf.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                    _ => Err(PlannerError::Tokenizer(format!(
                        "{}: {key} = {v:?} is not a token id below {n}",
                        where_()
                    ))),
                },
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let unk_id = id("tokenizer.ggml.unknown_token_id")?;
        let pad_id = id("tokenizer.ggml.padding_token_id")?;
        let eot_id = id("tokenizer.ggml.eot_token_id")?;
        let eom_id = id("tokenizer.ggml.eom_token_id")?;
        let merges: Option<Vec<(String, String)>> = gguf
            .get_str_array("tokenizer.ggml.merges")
            .map(|m| m.iter().filter_map(|l| split_merge(l)).collect());

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();

        let (inner, encoding, default_bos) = match model {
            "gpt2" => {
                let merges = merges.ok_or_else(|| {
                    PlannerError::Tokenizer(format!(
                        "{}: a gpt2 tokenizer without tokenizer.ggml.merges",
                        where_()
                    ))
                })?;
                let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("gpt2");
                let (pre_tok, ignore_merges) = byte_level_pre_tokenizer(pre)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(|e| tok_err(format!("{}: {e}", where_())))?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(pre_tok));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                (t, TokenEncoding::ByteLevel, false)
            }
            "llama" => {
                let scores = gguf
                    .get_f32_array("tokenizer.ggml.scores")
                    .filter(|s| s.len() == n);
                let merges = match merges {
                    Some(m) => m,
                    None => {
                        let scores = scores.ok_or_else(|| {
                            PlannerError::Tokenizer(format!(
                                "{}: a llama tokenizer needs tokenizer.ggml.merges or .scores",
                                where_()
                            ))
                        })?;
                        merges_from_scores(&tokens, &types, &scores)
                    }
                };
                let add_space_prefix = gguf
                    .get_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true);
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(u) = unk_id {
                    builder = builder.unk_token(tokens[u as usize].to_string());
                }
                let bpe = builder
                    .build()
                    .map_err(|e| tok_err(format!("{}: {e}", where_())))?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                // As sentencepiece and llama.cpp: spaces become `▁`, and with
                // add_space_prefix one `▁` goes before every text segment.
                let replace = Replace::new(" ", "\u{2581}").map_err(tok_err)?;
                let normalizer = if add_space_prefix {
                    NormalizerWrapper::Sequence(tokenizers::normalizers::Sequence::new(vec![
                        NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())),
                        NormalizerWrapper::Replace(replace),
                    ]))
                } else {
                    NormalizerWrapper::Replace(replace)
                };
                t.with_normalizer(Some(normalizer)).map_err(tok_err)?;
                let mut decoders = vec![
                    DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tok_err)?),
                    DecoderWrapper::ByteFallback(ByteFallback::new()),
                    DecoderWrapper::Fuse(Fuse::new()),
                ];
                if add_space_prefix {
                    decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
                }
                t.with_decoder(Some(DecoderSequence::new(decoders)));
                (t, TokenEncoding::SentencePiece, true)
            }
            other => {
                return Err(PlannerError::Tokenizer(format!(
                    "{}: unsupported tokenizer model {other:?} (supported: gpt2, llama)",
                    where_()
                )))
            }
        };
        let mut inner = inner;
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL)
            .map(|(t, _)| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        inner.add_special_tokens(control).map_err(tok_err)?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, _)| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        inner.add_tokens(user).map_err(tok_err)?;

        let add_bos = gguf
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_bos);
        let special: HashSet<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_UNKNOWN)
            .map(|(i, _)| i as u32)
            .chain(bos_id)
            .chain(eos_id)
            .collect();
        let mut declared: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();
        for name in END_TOKEN_NAMES {
            if let Some(i) = inner.token_to_id(name) {
                if special.contains(&i) {
                    declared.push(i);
                }
            }
        }
        let mut t = Tokenizer {
            inner,
            encoding,
            bos_id,
            eos_id,
            pad_id,
            eos_ids: Vec::new(),
            manual_bos: if add_bos { bos_id } else { None },
            special,
            chat_template: gguf.get_str("tokenizer.chat_template").map(str::to_string),
            token_bytes: OnceLock::new(),
            token_trie: OnceLock::new(),
        };
        t.set_eos_ids(declared);
        if t.vocab_size() != n {
            return Err(PlannerError::Tokenizer(format!(
                "{}: the tokenizer has {} tokens, the file lists {n}",
                where_(),
                t.vocab_size()
            )));
        }
        Ok(t)
    }

    /// Opens a GGUF file and builds its tokenizer.
    pub fn from_gguf_path(path: &Path) -> Result<Tokenizer, PlannerError> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Loads a Hugging Face `tokenizer.json`. End tokens, BOS and the chat template are taken
    /// from `tokenizer_config.json` and `generation_config.json` beside it when present.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer, PlannerError> {
        let bytes = std::fs::read(path).map_err(|e| PlannerError::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| PlannerError::Tokenizer(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, PlannerError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => serde_json::from_str(&s)
                    .map(Some)
                    .map_err(|source| PlannerError::Json {
                        context: p.display().to_string(),
                        source,
                    }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(PlannerError::io(p, e)),
            }
        };
        let config = read_json("tokenizer_config.json")?;
        let generation = read_json("generation_config.json")?;
        Ok(Self::from_tokenizers(
            inner,
            config.as_ref(),
            generation.as_ref(),
        ))
    }

    /// Wraps a `tokenizers::Tokenizer`, with the optional `tokenizer_config.json` and
    /// `generation_config.json` contents naming BOS/EOS tokens and the chat template.
    pub fn from_tokenizers(
        inner: tokenizers::Tokenizer,
        tokenizer_config: Option<&serde_json::Value>,
        generation_config: Option<&serde_json::Value>,
    ) -> Tokenizer {
        let token_name = |v: &serde_json::Value| -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let named = |key: &str| -> Option<u32> {
            tokenizer_config
                .and_then(|c| c.get(key))
                .and_then(token_name)
                .and_then(|n| inner.token_to_id(&n))
        };
        let bos_id = named("bos_token");
        let pad_id = named("pad_token");
        let mut eos_id = named("eos_token");
        let mut declared: Vec<u32> = eos_id.into_iter().collect();
        if let Some(g) = generation_config.and_then(|g| g.get("eos_token_id")) {
            let ids: Vec<u32> = match g {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                other => other.as_u64().map(|x| x as u32).into_iter().collect(),
            };
            eos_id = eos_id.or_else(|| ids.first().copied());
            declared.extend(ids);
        }
        let special: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(i, _)| i)
            .collect();
        for name in END_TOKEN_NAMES {
            if let Some(i) = inner.token_to_id(name) {
                if special.contains(&i) {
                    declared.push(i);
                }
            }
        }
        let chat_template = tokenizer_config
            .and_then(|c| c.get("chat_template"))
            .and_then(|t| match t {
                serde_json::Value::String(s) => Some(s.clone()),
                // A list of named templates: take "default", else the first.
                serde_json::Value::Array(a) => a
                    .iter()
                    .find(|x| x.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| a.first())
                    .and_then(|x| x.get("template"))
                    .and_then(|s| s.as_str())
                    .map(str::to_string),
                _ => None,
            });
        let encoding = detect_encoding(inner.get_decoder());
        let mut t = Tokenizer {
            inner,
            encoding,
            bos_id,
            eos_id,
            pad_id,
            eos_ids: Vec::new(),
            manual_bos: None,
            special,
            chat_template,
            token_bytes: OnceLock::new(),
            token_trie: OnceLock::new(),
        };
        t.set_eos_ids(declared);
        t
    }

    fn set_eos_ids(&mut self, ids: Vec<u32>) {
        let mut seen = HashSet::new();
        self.eos_ids = ids.into_iter().filter(|i| seen.insert(*i)).collect();
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes text. Special-token strings in the text (such as `<|im_start|>`) become their
    /// ids; with `add_special`, the tokenizer's BOS (or post-processor template) is added.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, PlannerError> {
        let enc = self.inner.encode_fast(text, add_special).map_err(tok_err)?;
        let ids = enc.get_ids();
        match self.manual_bos {
            Some(bos) if add_special && ids.first() != Some(&bos) => {
                let mut v = Vec::with_capacity(ids.len() + 1);
                v.push(bos);
                v.extend_from_slice(ids);
                Ok(v)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// Decodes ids to text; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, PlannerError> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The id of a token (as spelled in the vocabulary, or a special token's content).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of a token.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The number of token ids (vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every token id that ends generation: the end-of-sequence token, end-of-turn tokens
    /// (`<|im_end|>`, `<|eot_id|>`, ...) present as special tokens, and those named by
    /// `generation_config.json`.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The declared end-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The padding token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The spelling of the BOS token, for chat templates.
    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.and_then(|i| self.id_to_token(i))
    }

    /// The spelling of the EOS token, for chat templates.
    pub fn eos_token(&self) -> Option<String> {
        self.eos_id.and_then(|i| self.id_to_token(i))
    }

    /// Whether a token is special (control tokens, BOS, EOS).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The chat template the checkpoint carries (GGUF `tokenizer.chat_template` or
    /// `tokenizer_config.json`'s `chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// How token spellings map to bytes.
    pub fn token_encoding(&self) -> TokenEncoding {
        self.encoding
    }

    /// The bytes every token id stands for when it follows other text (special tokens: their
    /// content), computed once and cached. Indexed by token id; ids without a token map to an
    /// empty vector.
    pub fn token_bytes(&self) -> &[Vec<u8>] {
        self.token_bytes.get_or_init(|| self.compute_token_bytes())
    }

    /// The byte trie of all ordinary tokens used by constrained decoding, built once and
    /// cached.
    pub fn token_trie(&self) -> &crate::constrained::TokenTrie {
        self.token_trie
            .get_or_init(|| crate::constrained::TokenTrie::new(self))
    }

    fn compute_token_bytes(&self) -> Vec<Vec<u8>> {
        let n = self.vocab_size();
        let inverse = byte_level_inverse();
        let mut out = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let Some(tok) = self.inner.id_to_token(id) else {
                out.push(Vec::new());
                continue;
            };
            if self.special.contains(&id) {
                out.push(tok.into_bytes());
                continue;
            }
            let bytes = match self.encoding {
                TokenEncoding::ByteLevel => {
                    let mapped: Option<Vec<u8>> =
                        tok.chars().map(|c| inverse.get(&c).copied()).collect();
                    // Added tokens are spelled as plain text.
                    mapped.unwrap_or_else(|| tok.clone().into_bytes())
                }
                TokenEncoding::SentencePiece => sentencepiece_bytes(&tok),
                TokenEncoding::Plain => self
                    .inner
                    .decode(&[id], false)
                    .map(String::into_bytes)
                    .unwrap_or_else(|_| tok.into_bytes()),
            };
            out.push(bytes);
        }
        out
    }
}

/// The bytes of a SentencePiece token: `<0xAB>` is one byte, `▁` a space.
fn sentencepiece_bytes(tok: &str) -> Vec<u8> {
    if tok.len() == 6 && tok.starts_with("<0x") && tok.ends_with('>') {
        if let Ok(b) = u8::from_str_radix(&tok[3..5], 16) {
            return vec![b];
        }
    }
    tok.replace('\u{2581}', " ").into_bytes()
}

/// Guesses the token spelling from a tokenizer's decoder.
fn detect_encoding(decoder: Option<&DecoderWrapper>) -> TokenEncoding {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => TokenEncoding::ByteLevel,
        Some(DecoderWrapper::Metaspace(_)) | Some(DecoderWrapper::ByteFallback(_)) => {
            TokenEncoding::SentencePiece
        }
        Some(d @ DecoderWrapper::Sequence(_)) => {
            let json = serde_json::to_string(d).unwrap_or_default();
            if json.contains("\"ByteLevel\"") {
                TokenEncoding::ByteLevel
            } else if json.contains("\"ByteFallback\"")
                || json.contains("\"Metaspace\"")
                || json.contains('\u{2581}')
            {
                TokenEncoding::SentencePiece
            } else {
                TokenEncoding::Plain
            }
        }
        _ => TokenEncoding::Plain,
    }
}

/// Derives BPE merges from a SentencePiece vocabulary: every split of a token into two
/// vocabulary tokens is a merge, ranked by the merged token's score (best first).
fn merges_from_scores(tokens: &[&str], types: &[i32], scores: &[f32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        if matches!(
            types[i],
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_BYTE | TOKEN_TYPE_UNKNOWN
        ) {
            continue;
        }
        for (at, _) in tok.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (index.get(&tok[..at]), index.get(&tok[at..])) {
                merges.push((scores[i], i, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l].to_string(), tokens[r].to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_is_gpt2s() {
        let a = byte_level_alphabet();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'a' as usize], 'a');
        assert_eq!(a[0xAD], 'Ń');
        let inv = byte_level_inverse();
        assert_eq!(inv.len(), 256);
    }

    #[test]
    fn merges_split_at_the_first_inner_space() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  x"), Some((" ".into(), "x".into())));
        assert_eq!(split_merge("nospace"), None);
    }

    #[test]
    fn sentencepiece_bytes_decode_byte_tokens() {
        assert_eq!(sentencepiece_bytes("<0x0A>"), vec![b'\n']);
        assert_eq!(sentencepiece_bytes("\u{2581}the"), b" the".to_vec());
    }

    #[test]
    fn all_pre_tokenizer_patterns_compile() {
        for pre in ["gpt2", "smollm", "llama-bpe", "qwen2", "gpt-4o"] {
            byte_level_pre_tokenizer(pre).unwrap();
        }
        assert!(byte_level_pre_tokenizer("nonsense").is_err());
    }
}
