//! The CIELR reasoning steps, implemented once over any [`LanguageModel`]: split, classify,
//! judge sufficiency, ask what is missing, new labels, spatial queries, choose targets and
//! write the simplified prompt. Every answer is constrained, checked and retried once with
//! the reason before the step fails.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::llm::{ChatMessage, Constraint, GenerationRequest, JsonShape, LanguageModel};
use crate::plan::{EditAction, EditOp, TraceEntry};
use crate::prompts;
use crate::scene::Scene;
use crate::spatial::{Relation, SpatialQuery};
use crate::traits::{Planner, RoundInput, RoundOutcome};

/// The longest answer read, in bytes: a longer one (a server ignoring `max_tokens`, a
/// runaway generation) is rejected without being parsed, and only this much of it is kept in
/// the trace and sent back with the retry.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Options of the [`CielrPlanner`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReasoningOptions {
    /// How many times an unusable answer is asked again (with the reason) before the step fails.
    pub retries: usize,
    /// Most labels one SSR update may add.
    pub max_new_labels: usize,
    /// Most steps a split may produce.
    pub max_steps: usize,
    /// Most targets one action may name.
    pub max_targets: usize,
    /// Token bound for each answer.
    pub max_tokens: usize,
    /// How targets are chosen.
    pub targets: TargetSelection,
}

/// How the planner asks for the target objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSelection {
    /// JSON `{"targets": [ids]}`: one or several objects (the paper's form).
    #[default]
    Ids,
    /// One object, picked by name from the listed objects (a choice, which small local
    /// models answer far more reliably than ids; duplicated labels carry their id).
    Name,
}

impl Default for ReasoningOptions {
    fn default() -> Self {
        ReasoningOptions {
            retries: 1,
            max_new_labels: 5,
            max_steps: 4,
            max_targets: 8,
            max_tokens: 128,
            targets: TargetSelection::Ids,
        }
    }
}

/// The paper's zero-shot planner over a text-only language model.
#[derive(Clone)]
pub struct CielrPlanner {
    model: Arc<dyn LanguageModel>,
    options: ReasoningOptions,
}

impl CielrPlanner {
    /// A planner over `model` with default options.
    pub fn new(model: Arc<dyn LanguageModel>) -> Self {
        Self::with_options(model, ReasoningOptions::default())
    }

    /// A planner with explicit options.
    pub fn with_options(model: Arc<dyn LanguageModel>, options: ReasoningOptions) -> Self {
        CielrPlanner { model, options }
    }

    /// Asks one question under a constraint; `check` may reject a well-formed answer (for
    /// example an id that is not in the scene), which is then asked again with the reason.
    async fn ask(
        &self,
        step: &str,
        question: String,
        constraint: Constraint,
        check: &(dyn Fn(&Value) -> std::result::Result<(), String> + Sync),
        trace: &mut Vec<TraceEntry>,
    ) -> Result<Value> {
        let mut messages = vec![
            ChatMessage::system(prompts::SYSTEM),
            ChatMessage::user(question.clone()),
        ];
        let mut last_reason = String::new();
        for attempt in 0..=self.options.retries {
            let mut request =
                GenerationRequest::new(step, messages.clone(), Some(constraint.clone()));
            request.max_tokens = self.options.max_tokens;
            let full = self.model.complete(&request).await?;
            let answer = truncated(&full, MAX_ANSWER_BYTES).to_string();
            trace.push(TraceEntry::Question {
                step: step.to_string(),
                question: messages
                    .last()
                    .map(|m| m.content.clone())
                    .unwrap_or_default(),
                answer: answer.clone(),
            });
            let parsed = if full.len() > MAX_ANSWER_BYTES {
                Err(format!(
                    "the answer is {} bytes long; at most {MAX_ANSWER_BYTES} are read",
                    full.len()
                ))
            } else {
                constraint.parse(&answer).and_then(|v| check(&v).map(|_| v))
            };
            match parsed {
                Ok(v) => return Ok(v),
                Err(reason) => {
                    trace.push(TraceEntry::Note {
                        message: format!("step {step}: answer {} rejected: {reason}", attempt + 1),
                    });
                    messages.push(ChatMessage::assistant(answer));
                    messages.push(ChatMessage::user(prompts::retry(&reason)));
                    last_reason = reason;
                }
            }
        }
        Err(CoreError::LanguageModel(format!(
            "step {step}: no usable answer after {} tries ({last_reason})",
            self.options.retries + 1
        )))
    }

    async fn choose(
        &self,
        step: &str,
        question: String,
        choices: &[&str],
        trace: &mut Vec<TraceEntry>,
    ) -> Result<String> {
        let c = Constraint::Choices(choices.iter().map(|s| s.to_string()).collect());
        let v = self.ask(step, question, c, &|_| Ok(()), trace).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    async fn targets(
        &self,
        input: &RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<Vec<u32>> {
        let scene = input.scene;
        if scene.objects.is_empty() {
            return Err(CoreError::Planning(
                "the SSR has no objects, so there is nothing to choose; check the scene builder's queries".into(),
            ));
        }
        if self.options.targets == TargetSelection::Name {
            return self.target_by_name(input, trace).await;
        }
        let shape = JsonShape::object([(
            "targets",
            JsonShape::array(JsonShape::Integer, self.options.max_targets),
        )]);
        let check = |v: &Value| -> std::result::Result<(), String> {
            let ids = ids_at(v, "targets");
            if ids.is_empty() {
                return Err("targets must list at least one id".into());
            }
            for id in &ids {
                if scene.object(*id).is_none() {
                    let valid: Vec<u32> = scene.objects.iter().map(|o| o.id).collect();
                    return Err(format!("id {id} is not in the list (valid ids: {valid:?})"));
                }
            }
            Ok(())
        };
        let question = prompts::choose_targets(input.instruction, input.op, scene, input.facts);
        let v = self
            .ask(
                "choose_targets",
                question,
                Constraint::Json(shape),
                &check,
                trace,
            )
            .await?;
        let mut ids = ids_at(&v, "targets");
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(*id));
        Ok(ids)
    }

    async fn target_by_name(
        &self,
        input: &RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<Vec<u32>> {
        let names = object_names(input.scene);
        let choices: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
        let question = prompts::choose_target_name(
            input.instruction,
            input.op,
            input.scene,
            input.facts,
            &choices,
        );
        let answer = self
            .choose("choose_target", question, &choices, trace)
            .await?;
        let id = names
            .iter()
            .find(|(_, n)| *n == answer)
            .map(|(id, _)| *id)
            .ok_or_else(|| CoreError::LanguageModel(format!("unknown object name {answer:?}")))?;
        Ok(vec![id])
    }

    async fn prompt_for(
        &self,
        input: &RoundInput<'_>,
        targets: &[u32],
        trace: &mut Vec<TraceEntry>,
    ) -> Result<String> {
        let labels: Vec<&str> = targets
            .iter()
            .filter_map(|id| input.scene.object(*id).map(|o| o.label.as_str()))
            .collect();
        let labels = labels.join(" and ");
        if input.op == EditOp::Remove {
            return Ok(format!("remove the {labels}"));
        }
        let shape = JsonShape::object([("prompt", JsonShape::String)]);
        let check = |v: &Value| -> std::result::Result<(), String> {
            let p = v["prompt"].as_str().unwrap_or_default().trim();
            if p.is_empty() {
                Err("the prompt is empty".into())
            } else if p.chars().count() > 200 {
                Err("the prompt is longer than 200 characters".into())
            } else {
                Ok(())
            }
        };
        let question = prompts::edit_prompt(input.instruction, input.op, &labels);
        let v = self
            .ask(
                "edit_prompt",
                question,
                Constraint::Json(shape),
                &check,
                trace,
            )
            .await?;
        Ok(v["prompt"].as_str().unwrap_or_default().trim().to_string())
    }

    async fn decide(
        &self,
        input: &RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<RoundOutcome> {
        let targets = self.targets(input, trace).await?;
        let prompt = self.prompt_for(input, &targets, trace).await?;
        Ok(RoundOutcome::Action(EditAction {
            op: input.op,
            targets,
            prompt,
        }))
    }

    async fn new_labels(
        &self,
        input: &RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<Vec<String>> {
        let max = self.options.max_new_labels;
        let shape = JsonShape::object([("labels", JsonShape::array(JsonShape::String, max))]);
        let check = |v: &Value| -> std::result::Result<(), String> {
            if labels_of(v).is_empty() {
                Err("labels must list at least one name".into())
            } else {
                Ok(())
            }
        };
        let question = prompts::new_labels(input.instruction, input.scene, max);
        let v = self
            .ask(
                "new_labels",
                question,
                Constraint::Json(shape),
                &check,
                trace,
            )
            .await?;
        Ok(labels_of(&v))
    }

    async fn spatial(
        &self,
        input: &RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<SpatialQuery> {
        let scene = input.scene;
        let relations: Vec<String> = Relation::ALL
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        let shape = JsonShape::object([
            ("relation", JsonShape::Enum(relations)),
            ("among", JsonShape::array(JsonShape::Integer, 64)),
        ]);
        let check = |v: &Value| -> std::result::Result<(), String> {
            query_of(v)
                .evaluate(scene)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let question = prompts::spatial(input.instruction, scene, input.facts);
        let v = self
            .ask("spatial", question, Constraint::Json(shape), &check, trace)
            .await?;
        Ok(query_of(&v))
    }
}

/// A distinct name per object: its label, with the id added when the label repeats.
fn object_names(scene: &Scene) -> Vec<(u32, String)> {
    scene
        .objects
        .iter()
        .map(|o| {
            let repeated = scene.objects.iter().filter(|p| p.label == o.label).count() > 1;
            let name = if repeated {
                format!("{} {}", o.label, o.id)
            } else {
                o.label.clone()
            };
            (o.id, name)
        })
        .collect()
}

/// The ids listed under `key` (non-integers and values beyond `u32` are dropped).
fn ids_at(v: &Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .filter_map(|x| u32::try_from(x).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn labels_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in v["labels"].as_array().into_iter().flatten() {
        let l = l.as_str().unwrap_or_default().trim().to_lowercase();
        let wordy = l.chars().any(char::is_alphabetic);
        if wordy && l.chars().count() <= 40 && !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

fn steps_of(v: &Value) -> Vec<String> {
    v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn query_of(v: &Value) -> SpatialQuery {
    SpatialQuery {
        relation: Relation::parse(v["relation"].as_str().unwrap_or_default())
            .unwrap_or(Relation::Leftmost),
        among: ids_at(v, "among"),
    }
}

fn known_label(scene: &Scene, label: &str) -> bool {
    scene.queries.iter().any(|q| q.eq_ignore_ascii_case(label))
        || scene
            .objects
            .iter()
            .any(|o| o.label.eq_ignore_ascii_case(label))
}

#[async_trait]
impl Planner for CielrPlanner {
    fn name(&self) -> String {
        format!("cielr({})", self.model.name())
    }

    async fn split(&self, instruction: &str, trace: &mut Vec<TraceEntry>) -> Result<Vec<String>> {
        // Asking yes/no first keeps small models from mangling single-edit instructions.
        let multi = self
            .choose(
                "multi_step",
                prompts::is_multi_step(instruction),
                &["no", "yes"],
                trace,
            )
            .await?;
        if multi == "no" {
            return Ok(vec![instruction.to_string()]);
        }
        let max = self.options.max_steps;
        let shape = JsonShape::object([(
            "steps",
            JsonShape::array_between(JsonShape::String, 2, max.max(2)),
        )]);
        let check = |v: &Value| -> std::result::Result<(), String> {
            if steps_of(v).len() < 2 {
                Err("steps must list at least two non-empty instructions".into())
            } else {
                Ok(())
            }
        };
        let answer = self
            .ask(
                "split",
                prompts::split(instruction),
                Constraint::Json(shape),
                &check,
                trace,
            )
            .await;
        let v = match answer {
            Ok(v) => v,
            Err(CoreError::LanguageModel(reason)) => {
                // Degrade to one step rather than failing the whole plan; the trace says so.
                trace.push(TraceEntry::Note {
                    message: format!(
                        "the split failed ({reason}); planning the instruction as one step"
                    ),
                });
                return Ok(vec![instruction.to_string()]);
            }
            Err(e) => return Err(e),
        };
        let steps = steps_of(&v);
        if steps.len() == 1 {
            // One edit after all: keep the user's own words rather than the model's paraphrase.
            return Ok(vec![instruction.to_string()]);
        }
        Ok(steps)
    }

    async fn classify(&self, instruction: &str, trace: &mut Vec<TraceEntry>) -> Result<EditOp> {
        let names: Vec<&str> = EditOp::ALL.iter().map(|o| o.as_str()).collect();
        let answer = self
            .choose("classify", prompts::classify(instruction), &names, trace)
            .await?;
        EditOp::parse(&answer)
            .ok_or_else(|| CoreError::LanguageModel(format!("unknown edit kind {answer:?}")))
    }

    async fn round(
        &self,
        input: RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<RoundOutcome> {
        if input.last_round {
            return self.decide(&input, trace).await;
        }
        match self.gather(&input, trace).await {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => self.decide(&input, trace).await,
            // Asking for more information is optional: when the model cannot say what is
            // missing, decide from the current SSR rather than failing the step.
            Err(CoreError::LanguageModel(reason)) => {
                trace.push(TraceEntry::Note {
                    message: format!("{reason}; choosing from the current SSR"),
                });
                self.decide(&input, trace).await
            }
            Err(e) => Err(e),
        }
    }
}

impl CielrPlanner {
    /// The information-gathering half of a round: `None` when the SSR is enough.
    async fn gather(
        &self,
        input: &RoundInput<'_>,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<Option<RoundOutcome>> {
        let enough = self
            .choose(
                "judge",
                prompts::judge(input.instruction, input.scene, input.facts),
                &["yes", "no"],
                trace,
            )
            .await?;
        if enough == "yes" {
            return Ok(None);
        }
        let missing = self
            .choose(
                "missing",
                prompts::missing(input.instruction, input.scene, input.facts),
                &["semantic", "spatial"],
                trace,
            )
            .await?;
        if missing == "spatial" {
            return Ok(Some(RoundOutcome::NeedSpatial(
                self.spatial(input, trace).await?,
            )));
        }
        let labels = self.new_labels(input, trace).await?;
        let fresh: Vec<String> = labels
            .into_iter()
            .filter(|l| !known_label(input.scene, l))
            .collect();
        if fresh.is_empty() {
            trace.push(TraceEntry::Note {
                message:
                    "every suggested label was already searched for; choosing from the current SSR"
                        .into(),
            });
            return Ok(None);
        }
        Ok(Some(RoundOutcome::NeedLabels(fresh)))
    }
}
