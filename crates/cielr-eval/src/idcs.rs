//! IDCS, CIEBench's instruction-consistency score: a vision-language model describes in one
//! sentence which objects were added, removed or replaced between the original and the
//! edited image; a language model then rates how consistent that sentence is with the
//! instruction, an integer from 1 to 5. The benchmark score is the mean.
//!
//! Stage 1 is a [`ChangeDescriber`]; stage 2 any [`LanguageModel`] with the answer
//! constrained to `1..5`. [`crate::idcs_vlm::VlmDescriber`] is a describer backed by a
//! served vision-language model (OpenAI-compatible API with image input); `cielr eval
//! --vlm <url> --vlm-model <name>` uses it.

use std::sync::Arc;

use async_trait::async_trait;
use cielr_core::{ChatMessage, Constraint, GenerationRequest, LanguageModel};
use image::RgbImage;

use crate::error::{EvalError, EvalResult};

/// What stage 1 asks the vision-language model, with the original and the edited image.
pub const DESCRIBE_PROMPT: &str = "The first image is the original, the second the edited \
version. In one sentence, say which objects were added, removed or replaced (and by what). \
If nothing changed, say so.";

/// Stage 1: describes the change between two images in one sentence.
#[async_trait]
pub trait ChangeDescriber: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> String;
    /// The one-sentence description of what changed from `original` to `edited`.
    async fn describe(&self, original: &RgbImage, edited: &RgbImage) -> cielr_core::Result<String>;
}

/// One judged sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IdcsJudgement {
    /// Stage 1's sentence.
    pub description: String,
    /// Stage 2's raw answer.
    pub answer: String,
    /// The score, 1..5.
    pub score: u8,
}

/// The two-stage judge.
#[derive(Clone)]
pub struct IdcsJudge {
    /// Stage 1.
    pub describer: Arc<dyn ChangeDescriber>,
    /// Stage 2.
    pub scorer: Arc<dyn LanguageModel>,
}

/// The request stage 2 sends: the instruction and the description, the answer one of 1..5.
pub fn scoring_request(instruction: &str, description: &str) -> GenerationRequest {
    let system = "You grade image edits. Given an editing instruction and a description of \
what an editor changed, rate how consistent the change is with the instruction: 5 = exactly \
what was asked, 4 = mostly, 3 = partly, 2 = barely, 1 = not at all or the wrong object. \
Answer with the digit only.";
    let user = format!("Instruction: {instruction}\nChange made: {description}\nScore (1-5):");
    let mut r = GenerationRequest::new(
        "idcs_score",
        vec![ChatMessage::system(system), ChatMessage::user(user)],
        Some(Constraint::Choices(
            ["1", "2", "3", "4", "5"].map(String::from).to_vec(),
        )),
    );
    r.max_tokens = 4;
    r
}

impl IdcsJudge {
    /// Judges one edit.
    pub async fn judge(
        &self,
        original: &RgbImage,
        edited: &RgbImage,
        instruction: &str,
    ) -> EvalResult<IdcsJudgement> {
        let description = self.describer.describe(original, edited).await?;
        let description = description.trim().to_string();
        if description.is_empty() {
            return Err(EvalError::Config(format!(
                "IDCS: the describer {} gave an empty description",
                self.describer.name()
            )));
        }
        let request = scoring_request(instruction, &description);
        let answer = self.scorer.complete(&request).await?;
        let constraint = request.constraint.as_ref().ok_or_else(|| {
            EvalError::Config("IDCS: the scoring request lost its constraint".into())
        })?;
        let score = constraint
            .parse(&answer)
            .ok()
            .and_then(|v| v.as_str().and_then(|s| s.parse::<u8>().ok()))
            .ok_or_else(|| {
                EvalError::Config(format!(
                    "IDCS: the scorer {} answered {answer:?}, not a score from 1 to 5",
                    self.scorer.name()
                ))
            })?;
        Ok(IdcsJudgement {
            description,
            answer,
            score,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cielr_core::ScriptedLanguageModel;

    struct Fixed(&'static str);

    #[async_trait]
    impl ChangeDescriber for Fixed {
        fn name(&self) -> String {
            "fixed".into()
        }
        async fn describe(&self, _o: &RgbImage, _e: &RgbImage) -> cielr_core::Result<String> {
            Ok(self.0.to_string())
        }
    }

    #[test]
    fn two_stage_judge_with_a_scripted_scorer() {
        let scorer = Arc::new(ScriptedLanguageModel::from_texts(["4.", "six"]));
        let judge = IdcsJudge {
            describer: Arc::new(Fixed(" The vase was replaced by a blue bottle. ")),
            scorer: scorer.clone(),
        };
        let img = RgbImage::new(4, 4);
        let j = pollster::block_on(judge.judge(&img, &img, "Replace the vase with a blue bottle."))
            .unwrap();
        assert_eq!(j.score, 4);
        assert_eq!(j.description, "The vase was replaced by a blue bottle.");
        let asked = &scorer.requests()[0];
        assert_eq!(asked.step, "idcs_score");
        assert!(
            asked.messages[1].content.contains("Replace the vase")
                && asked.messages[1].content.contains("blue bottle.")
        );
        // An answer outside 1..5 is an error, not a number.
        let e = pollster::block_on(judge.judge(&img, &img, "x")).unwrap_err();
        assert!(e.to_string().contains("not a score from 1 to 5"), "{e}");
    }
}
