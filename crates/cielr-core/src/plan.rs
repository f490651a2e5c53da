//! Edit actions, plans and the reasoning trace.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::scene::Scene;

/// The kind of edit an action performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditOp {
    /// Take the target objects away and fill in the background.
    Remove,
    /// Draw something else in place of the target objects.
    Replace,
    /// Draw a new object in the target region.
    Add,
    /// Change the colour of the target objects, keeping their shading and texture.
    Recolor,
}

impl EditOp {
    /// Every op, in the order prompts list them.
    pub const ALL: [EditOp; 4] = [
        EditOp::Remove,
        EditOp::Replace,
        EditOp::Recolor,
        EditOp::Add,
    ];

    /// The lower-case name used in JSON and prompts.
    pub fn as_str(&self) -> &'static str {
        match self {
            EditOp::Remove => "remove",
            EditOp::Replace => "replace",
            EditOp::Add => "add",
            EditOp::Recolor => "recolor",
        }
    }

    /// Parses a name; accepts "recolour" and "change" as aliases.
    pub fn parse(s: &str) -> Option<EditOp> {
        match s.trim().to_ascii_lowercase().as_str() {
            "remove" => Some(EditOp::Remove),
            "replace" | "change" => Some(EditOp::Replace),
            "add" => Some(EditOp::Add),
            "recolor" | "recolour" => Some(EditOp::Recolor),
            _ => None,
        }
    }
}

impl std::fmt::Display for EditOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One explicit edit: an op on scene object ids with a short prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditAction {
    /// What to do.
    pub op: EditOp,
    /// The scene object ids whose merged region is edited (for `add`: where the new object goes).
    pub targets: Vec<u32>,
    /// A short prompt: "remove the speaker", "a floor lamp", "blue".
    pub prompt: String,
}

impl EditAction {
    /// Checks the targets are non-empty, unique and present in `scene`.
    pub fn validate(&self, scene: &Scene) -> Result<()> {
        if self.targets.is_empty() {
            return Err(CoreError::InvalidPlan(format!(
                "{} action has no target ids",
                self.op
            )));
        }
        for (i, id) in self.targets.iter().enumerate() {
            if scene.object(*id).is_none() {
                return Err(CoreError::InvalidPlan(format!(
                    "{} action targets id {id}, which is not in the scene (ids: {:?})",
                    self.op,
                    scene.objects.iter().map(|o| o.id).collect::<Vec<_>>()
                )));
            }
            if self.targets[..i].contains(id) {
                return Err(CoreError::InvalidPlan(format!(
                    "{} action lists id {id} twice",
                    self.op
                )));
            }
        }
        Ok(())
    }
}

/// One entry of the reasoning trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceEntry {
    /// A question put to the language model and its raw answer.
    Question {
        /// The reasoning step ("classify", "judge", ...).
        step: String,
        /// The prompt text.
        question: String,
        /// The model's answer, verbatim.
        answer: String,
    },
    /// The SSR was rebuilt with new queries (the chain of SSR updates).
    SceneUpdate {
        /// Reasoning round that asked for it.
        round: usize,
        /// Labels added to the queries.
        added_labels: Vec<String>,
        /// Object count before the update.
        objects_before: usize,
        /// Object count after the update.
        objects_after: usize,
    },
    /// A typed spatial query and its result.
    Spatial {
        /// The query, as the model asked it.
        query: serde_json::Value,
        /// The fact it produced.
        result: String,
    },
    /// Anything else worth recording (a repaired answer, a skipped step).
    Note {
        /// The message.
        message: String,
    },
}

/// The result of planning: the actions to run in order and the trace that led to them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// The actions, in execution order.
    pub steps: Vec<EditAction>,
    /// Every question, answer and SSR update.
    pub trace: Vec<TraceEntry>,
}

impl Plan {
    /// The plan JSON: `{"steps": [...], "trace": [...]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plan serialisation cannot fail")
    }

    /// Parses the plan JSON.
    pub fn from_json(text: &str) -> Result<Plan> {
        serde_json::from_str(text).map_err(|e| CoreError::json("plan", e))
    }

    /// Human-readable summary, one line per step.
    pub fn summary(&self, scene: Option<&Scene>) -> String {
        let mut s = String::new();
        for (i, a) in self.steps.iter().enumerate() {
            let targets: Vec<String> = a
                .targets
                .iter()
                .map(|id| match scene.and_then(|sc| sc.object(*id)) {
                    Some(o) => format!("{id} ({})", o.label),
                    None => id.to_string(),
                })
                .collect();
            s.push_str(&format!(
                "step {}: {} [{}] prompt {:?}\n",
                i + 1,
                a.op,
                targets.join(", "),
                a.prompt
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BBox;
    use crate::scene::SceneObject;

    #[test]
    fn plan_json_round_trip_has_the_documented_shape() {
        let plan = Plan {
            steps: vec![EditAction {
                op: EditOp::Replace,
                targets: vec![3, 1],
                prompt: "a floor lamp".into(),
            }],
            trace: vec![
                TraceEntry::Question {
                    step: "classify".into(),
                    question: "q".into(),
                    answer: "replace".into(),
                },
                TraceEntry::SceneUpdate {
                    round: 0,
                    added_labels: vec!["speaker".into()],
                    objects_before: 2,
                    objects_after: 3,
                },
            ],
        };
        let v: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
        assert_eq!(
            v["steps"][0],
            serde_json::json!({"op": "replace", "targets": [3, 1], "prompt": "a floor lamp"})
        );
        assert_eq!(v["trace"][1]["kind"], "scene_update");
        assert_eq!(Plan::from_json(&plan.to_json()).unwrap(), plan);
    }

    #[test]
    fn actions_are_checked_against_the_scene() {
        let mut scene = Scene::new(10, 10);
        scene
            .objects
            .push(SceneObject::new(4, "cup", BBox::new(0.0, 0.0, 5.0, 5.0)));
        let ok = EditAction {
            op: EditOp::Remove,
            targets: vec![4],
            prompt: String::new(),
        };
        assert!(ok.validate(&scene).is_ok());
        let missing = EditAction {
            targets: vec![4, 9],
            ..ok.clone()
        };
        assert!(missing
            .validate(&scene)
            .unwrap_err()
            .to_string()
            .contains("id 9"));
        let empty = EditAction {
            targets: vec![],
            ..ok.clone()
        };
        assert!(empty.validate(&scene).is_err());
        let twice = EditAction {
            targets: vec![4, 4],
            ..ok
        };
        assert!(twice
            .validate(&scene)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(EditOp::parse(" Recolour"), Some(EditOp::Recolor));
    }
}
