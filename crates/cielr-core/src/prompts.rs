//! Every prompt the CIELR reasoning steps send, in one place.

use crate::plan::EditOp;
use crate::scene::Scene;
use crate::spatial::Relation;

/// The system message of every reasoning question.
pub const SYSTEM: &str = "You plan edits for an image editor. You never see the image: you see a \
list of the objects found in it, one per line, with an id, a label, a box [x0, y0, x1, y1] in \
pixels, the centre, the share of the image it covers and, when known, a relative depth. \
Answer exactly in the format asked, with nothing else.";

fn scene_block(scene: &Scene, facts: &[String]) -> String {
    let mut s = format!("Objects in the image:\n{}", scene.describe());
    if !facts.is_empty() {
        s.push_str("Established facts:\n");
        for f in facts {
            s.push_str(&format!("- {f}\n"));
        }
    }
    s
}

/// Asks whether an instruction holds several edits.
pub fn is_multi_step(instruction: &str) -> String {
    format!(
        "Instruction: {instruction}\n\nDoes this instruction ask for two or more separate edits \
(for example \"remove the cup, then make the table white\")? A question followed by one action \
is a single edit. Answer yes or no."
    )
}

/// Asks to split an instruction that holds several edits.
pub fn split(instruction: &str) -> String {
    format!(
        "Instruction: {instruction}\n\nThis instruction asks for several edits. List them in order, \
each written as a complete instruction on its own. Answer as JSON: {{\"steps\": [\"...\"]}}"
    )
}

/// Asks which kind of edit an instruction is.
pub fn classify(instruction: &str) -> String {
    format!(
        "Instruction: {instruction}\n\nWhich kind of edit is this?\n\
- remove: take an object away\n\
- replace: turn an object into something else\n\
- recolor: change only the colour of an object\n\
- add: put a new object into the image\n\
Examples: \"What is used for cutting here? Get rid of it.\" is remove; \"Which animal barks? \
Turn it into a cat.\" is replace; \"Make the car on the left red.\" is recolor; \"Put a vase \
on the table.\" is add.\n\
Answer with one word: remove, replace, recolor or add."
    )
}

/// Asks whether the SSR is enough to pick the target (biased towards yes, as the method is).
pub fn judge(instruction: &str, scene: &Scene, facts: &[String]) -> String {
    format!(
        "{}\nInstruction: {instruction}\n\nUsing this list and common sense, can you tell which \
listed object(s) the instruction is about? Answer yes unless the object it needs is clearly \
missing from the list, or the choice depends on comparing positions, sizes or depths that the \
facts above do not settle. Answer yes or no.",
        scene_block(scene, facts)
    )
}

/// Asks which kind of information is missing.
pub fn missing(instruction: &str, scene: &Scene, facts: &[String]) -> String {
    format!(
        "{}\nInstruction: {instruction}\n\nThe list is not enough to pick the object. What is missing?\n\
- semantic: the object the instruction needs is not in the list and should be looked for under another name\n\
- spatial: the candidates are in the list, but the choice depends on their positions, sizes or depths\n\
Answer with one word: semantic or spatial.",
        scene_block(scene, facts)
    )
}

/// Asks for new detector labels (the chain of SSR updates).
pub fn new_labels(instruction: &str, scene: &Scene, max: usize) -> String {
    format!(
        "{}\nInstruction: {instruction}\n\nName up to {max} short object names (common nouns, as an \
object detector would call them) to look for in the image, that could be the object this \
instruction is about. Answer as JSON: {{\"labels\": [\"...\"]}}",
        scene_block(scene, &[])
    )
}

/// Asks for a typed spatial query.
pub fn spatial(instruction: &str, scene: &Scene, facts: &[String]) -> String {
    let names: Vec<&str> = Relation::ALL.iter().map(|r| r.as_str()).collect();
    format!(
        "{}\nInstruction: {instruction}\n\nChoose one comparison that settles which object is meant: \
relation is one of {} (nearest and farthest use depth), and among lists the candidate ids. \
Answer as JSON: {{\"relation\": \"...\", \"among\": [ids]}}",
        scene_block(scene, facts),
        names.join(", ")
    )
}

/// Asks for the target ids.
pub fn choose_targets(instruction: &str, op: EditOp, scene: &Scene, facts: &[String]) -> String {
    let what = match op {
        EditOp::Add => "Which object id marks the place where the new object should go?",
        _ => "Which object id(s) does the instruction mean to edit? Usually one.",
    };
    format!(
        "{}\nInstruction: {instruction}\n\n{what} Answer as JSON: {{\"targets\": [ids]}}",
        scene_block(scene, facts)
    )
}

/// Asks for one target object by name (a choice among `names`).
pub fn choose_target_name(
    instruction: &str,
    op: EditOp,
    scene: &Scene,
    facts: &[String],
    names: &[&str],
) -> String {
    let what = match op {
        EditOp::Add => "Which object marks the place where the new object should go?",
        _ => "Which object does the instruction mean to edit?",
    };
    format!(
        "{}\nInstruction: {instruction}\n\n{what} Answer with its name exactly as listed: {}.",
        scene_block(scene, facts),
        names.join(", ")
    )
}

/// Asks for the short prompt an editor draws.
pub fn edit_prompt(instruction: &str, op: EditOp, target_labels: &str) -> String {
    let what = match op {
        EditOp::Recolor => format!(
            "The {target_labels} will be recoloured. Which colour should it get? Answer with the colour name only"
        ),
        EditOp::Add => "Which object should be drawn? Answer with a short noun phrase, e.g. \"a red vase\"".to_string(),
        _ => format!(
            "The {target_labels} will be replaced. What should be drawn in its place? Answer with a short noun phrase, e.g. \"a floor lamp\""
        ),
    };
    format!("Instruction: {instruction}\n\n{what}. Answer as JSON: {{\"prompt\": \"...\"}}")
}

/// The follow-up message after an unusable answer.
pub fn retry(reason: &str) -> String {
    format!("That answer cannot be used: {reason}. Answer again, exactly in the format asked.")
}
