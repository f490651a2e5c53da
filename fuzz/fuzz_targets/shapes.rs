//! The answer constraints the reasoning steps use (kept in step with `reasoning.rs`), shared
//! by the answer-parser and constrained-decoding targets through `#[path]`.
use cielr_core::llm::{Constraint, JsonShape};
use cielr_core::{EditOp, Relation};

/// One of the planner's constraints, picked by `k`.
pub fn constraint(k: u8) -> Constraint {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match k % 8 {
        0 => Constraint::Choices(strings(&["yes", "no"])),
        1 => Constraint::Choices(EditOp::ALL.iter().map(|o| o.as_str().to_string()).collect()),
        2 => Constraint::Choices(strings(&["cup", "cup 2", "saucer", "spoon", "table"])),
        3 => Constraint::Json(JsonShape::object([(
            "targets",
            JsonShape::array(JsonShape::Integer, 8),
        )])),
        4 => Constraint::Json(JsonShape::object([("prompt", JsonShape::String)])),
        5 => Constraint::Json(JsonShape::object([(
            "labels",
            JsonShape::array(JsonShape::String, 5),
        )])),
        6 => Constraint::Json(JsonShape::object([
            (
                "relation",
                JsonShape::Enum(
                    Relation::ALL
                        .iter()
                        .map(|r| r.as_str().to_string())
                        .collect(),
                ),
            ),
            ("among", JsonShape::array(JsonShape::Integer, 64)),
        ])),
        _ => Constraint::Json(JsonShape::object([(
            "steps",
            JsonShape::array_between(JsonShape::String, 2, 4),
        )])),
    }
}
