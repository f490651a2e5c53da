//! The reasoning loop's branches, driven by scripted language models.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cielr_core::llm::ScriptedAnswer;
use cielr_core::pipeline::{plan, ProgressEvent, Refiner};
use cielr_core::*;
use image::{Rgb, RgbImage};

/// A scene builder over a fixed catalogue: it "detects" the catalogue objects whose label was
/// queried (all of them with no queries), numbering them in detection order.
struct CatalogueBuilder {
    catalogue: Vec<(String, BBox)>,
    refinements: Mutex<Vec<Vec<String>>>,
}

impl CatalogueBuilder {
    fn new(items: &[(&str, [f64; 4])]) -> Self {
        CatalogueBuilder {
            catalogue: items
                .iter()
                .map(|(l, b)| (l.to_string(), BBox::from(*b)))
                .collect(),
            refinements: Mutex::default(),
        }
    }

    fn scene_for(&self, queries: &[String]) -> Scene {
        let mut s = Scene::new(64, 48);
        s.queries = queries.to_vec();
        for (label, bbox) in &self.catalogue {
            if queries.contains(label) {
                let id = s.objects.len() as u32;
                s.objects.push(SceneObject::new(id, label.clone(), *bbox));
            }
        }
        s
    }
}

#[async_trait]
impl SceneBuilder for CatalogueBuilder {
    fn name(&self) -> String {
        "catalogue".into()
    }
    async fn build(&self, _image: &RgbImage, queries: &[String]) -> Result<Scene> {
        Ok(self.scene_for(queries))
    }
    async fn refine(&self, _image: &RgbImage, scene: &Scene, new: &[String]) -> Result<Scene> {
        self.refinements.lock().unwrap().push(new.to_vec());
        let mut q = scene.queries.clone();
        q.extend(new.iter().cloned());
        Ok(self.scene_for(&q))
    }
}

/// Paints the whole image one colour: the pipeline must keep everything outside the mask.
struct PaintEditor;

#[async_trait]
impl Editor for PaintEditor {
    fn name(&self) -> String {
        "paint".into()
    }
    fn supports(&self, op: EditOp) -> bool {
        op != EditOp::Add
    }
    async fn edit(&self, r: EditRequest<'_>) -> Result<RgbImage> {
        Ok(RgbImage::from_pixel(
            r.image.width(),
            r.image.height(),
            Rgb([255, 0, 0]),
        ))
    }
}

fn step(step: &str, answer: &str) -> ScriptedAnswer {
    ScriptedAnswer::ForStep {
        step: step.into(),
        answer: answer.into(),
    }
}

fn image() -> RgbImage {
    RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8, y as u8, 7]))
}

fn pipeline(
    builder: Arc<CatalogueBuilder>,
    script: Vec<ScriptedAnswer>,
    queries: &[&str],
    rounds: usize,
) -> (Pipeline, Arc<ScriptedLanguageModel>) {
    let model = Arc::new(ScriptedLanguageModel::new(script));
    let p = Pipeline {
        scene_builder: builder,
        planner: Arc::new(CielrPlanner::new(model.clone())),
        editor: Arc::new(PaintEditor),
        options: PipelineOptions {
            max_rounds: rounds,
            dilate_radius: 1.0,
            queries: queries.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    };
    (p, model)
}

fn quiet(_: ProgressEvent) {}

fn run(p: &Pipeline, instruction: &str) -> Result<PipelineOutput> {
    pollster::block_on(p.run(&image(), instruction, &quiet))
}

fn steps_asked(model: &ScriptedLanguageModel) -> Vec<String> {
    model.requests().into_iter().map(|r| r.step).collect()
}

fn room() -> Arc<CatalogueBuilder> {
    Arc::new(CatalogueBuilder::new(&[
        ("tv", [30.0, 5.0, 60.0, 25.0]),
        ("sofa", [0.0, 25.0, 40.0, 48.0]),
        ("speaker", [5.0, 5.0, 12.0, 20.0]),
        ("speaker", [50.0, 30.0, 58.0, 45.0]),
    ]))
}

#[test]
fn enough_information_chooses_in_the_first_round_and_keeps_outside_pixels() {
    let script = vec![
        step("multi_step", "No."),
        step("classify", "remove"),
        step("judge", "yes"),
        step("choose_targets", r#"{"targets": [1]}"#),
    ];
    let (p, model) = pipeline(room(), script, &["tv", "sofa"], 2);
    let out = run(&p, "What do people sit on here? Remove it.").unwrap();
    assert_eq!(
        out.plan.steps,
        vec![EditAction {
            op: EditOp::Remove,
            targets: vec![1],
            prompt: "remove the sofa".into()
        }]
    );
    assert_eq!(
        steps_asked(&model),
        ["multi_step", "classify", "judge", "choose_targets"]
    );
    assert_eq!(out.scenes.len(), 1);
    let mask = &out.masks[0];
    assert_eq!(
        mask.bbox(),
        Some(BBox::new(0.0, 24.0, 41.0, 48.0)),
        "box region dilated by 1 px"
    );
    let original = image();
    for (x, y, px) in out.image.enumerate_pixels() {
        if mask.get(x, y) {
            assert_eq!(px.0, [255, 0, 0]);
        } else {
            assert_eq!(
                px,
                original.get_pixel(x, y),
                "pixel ({x}, {y}) outside the mask changed"
            );
        }
    }
    // A single edit keeps the user's words.
    let classify = &model.requests()[1];
    assert!(classify.messages[1]
        .content
        .contains("What do people sit on here?"));
}

#[test]
fn semantic_refinement_rebuilds_the_ssr() {
    let builder = room();
    let script = vec![
        step("multi_step", "no"),
        step("classify", "replace"),
        step("judge", "no"),
        step("missing", "semantic"),
        step("new_labels", r#"{"labels": ["Speaker", "tv", "speaker"]}"#),
        step("choose_targets", r#"{"targets": [2]}"#),
        step("edit_prompt", r#"{"prompt": " a floor lamp "}"#),
    ];
    let (p, model) = pipeline(builder.clone(), script, &["tv", "sofa"], 2);
    let out = run(
        &p,
        "What device here makes the TV louder? Replace it with a floor lamp",
    )
    .unwrap();
    assert_eq!(
        *builder.refinements.lock().unwrap(),
        vec![vec!["speaker".to_string()]],
        "known labels are not searched again"
    );
    assert_eq!(out.scenes.len(), 2);
    assert_eq!(out.scenes[1].objects.len(), 4);
    assert_eq!(out.scene_of_step, vec![1]);
    assert_eq!(
        out.plan.steps[0],
        EditAction {
            op: EditOp::Replace,
            targets: vec![2],
            prompt: "a floor lamp".into()
        }
    );
    assert!(out.plan.trace.iter().any(|t| matches!(
        t,
        TraceEntry::SceneUpdate {
            objects_before: 2,
            objects_after: 4,
            ..
        }
    )));
    // The last round chooses without judging again.
    assert_eq!(steps_asked(&model)[5..], ["choose_targets", "edit_prompt"]);
    // The refined SSR was shown to the model.
    let choose = &model.requests()[5];
    assert!(choose.messages[1].content.contains("id 3: speaker"));
}

#[test]
fn spatial_questions_are_answered_by_typed_operations() {
    let script = vec![
        step("multi_step", "no"),
        step("classify", "recolor"),
        step("judge", "no"),
        step("missing", "spatial"),
        step("spatial", r#"{"relation": "rightmost", "among": [2, 3]}"#),
        step("choose_targets", r#"{"targets": [3]}"#),
        step("edit_prompt", r#"{"prompt": "blue"}"#),
    ];
    let (p, model) = pipeline(room(), script, &["tv", "sofa", "speaker"], 2);
    let out = run(&p, "Make the speaker on the right blue.").unwrap();
    assert_eq!(out.plan.steps[0].targets, vec![3]);
    let fact = "Among objects 2 (speaker), 3 (speaker), the rightmost is 3 (speaker).";
    assert!(out
        .plan
        .trace
        .iter()
        .any(|t| matches!(t, TraceEntry::Spatial { result, .. } if result == fact)));
    assert!(
        model.requests()[5].messages[1].content.contains(fact),
        "the fact reaches the next round"
    );
}

#[test]
fn a_single_round_chooses_immediately() {
    let script = vec![
        step("multi_step", "no"),
        step("classify", "remove"),
        step("choose_targets", r#"{"targets": [0]}"#),
    ];
    let (p, model) = pipeline(room(), script, &["tv"], 1);
    let out = run(&p, "Remove the TV").unwrap();
    assert_eq!(out.plan.steps[0].targets, vec![0]);
    assert_eq!(model.remaining(), 0);
}

#[test]
fn multi_step_instructions_run_the_loop_per_step() {
    let script = vec![
        step("multi_step", "yes"),
        step(
            "split",
            r#"{"steps": ["Remove the TV.", "Make the sofa green."]}"#,
        ),
        step("classify", "remove"),
        step("judge", "yes"),
        step("choose_targets", r#"{"targets": [0]}"#),
        step("classify", "recolor"),
        step("judge", "yes"),
        step("choose_targets", r#"{"targets": [1]}"#),
        step("edit_prompt", r#"{"prompt": "green"}"#),
    ];
    let (p, _) = pipeline(room(), script, &["tv", "sofa"], 2);
    let out = run(&p, "Remove the TV, then make the sofa green.").unwrap();
    assert_eq!(out.plan.steps.len(), 2);
    assert_eq!(
        out.plan.steps[1],
        EditAction {
            op: EditOp::Recolor,
            targets: vec![1],
            prompt: "green".into()
        }
    );
    assert_eq!(out.masks.len(), 2);
}

#[test]
fn bad_answers_are_retried_with_the_reason_then_fail_clearly() {
    let script = vec![
        step("multi_step", "no"),
        step("classify", "Remove."),
        step("judge", "yes"),
        step("choose_targets", r#"{"targets": [9]}"#),
        step("choose_targets", r#"{"targets": [1]}"#),
    ];
    let (p, model) = pipeline(room(), script, &["tv", "sofa"], 2);
    let out = run(&p, "Remove the sofa").unwrap();
    assert_eq!(out.plan.steps[0].targets, vec![1]);
    let retry = &model.requests()[4];
    assert!(retry
        .messages
        .last()
        .unwrap()
        .content
        .contains("id 9 is not in the list"));

    let script = vec![
        step("multi_step", "no"),
        step("classify", "maybe"),
        step("classify", "perhaps"),
    ];
    let (p, _) = pipeline(room(), script, &["tv"], 2);
    let err = run(&p, "Remove the sofa").unwrap_err().to_string();
    assert!(
        err.contains("step classify: no usable answer after 2 tries"),
        "{err}"
    );
}

#[test]
fn unsupported_ops_and_empty_scenes_fail_with_a_reason() {
    let script = vec![
        step("multi_step", "no"),
        step("classify", "add"),
        step("judge", "yes"),
        step("choose_targets", r#"{"targets": [0]}"#),
        step("edit_prompt", r#"{"prompt": "a cat"}"#),
    ];
    let (p, _) = pipeline(room(), script, &["sofa"], 2);
    let err = run(&p, "Add a cat on the sofa").unwrap_err().to_string();
    assert!(err.contains("the paint editor cannot add"), "{err}");

    let script = vec![step("multi_step", "no"), step("classify", "remove")];
    let (p, _) = pipeline(room(), script, &["unicorn"], 1);
    let err = run(&p, "Remove the unicorn").unwrap_err().to_string();
    assert!(err.contains("no objects"), "{err}");
}

#[test]
fn planning_without_an_image_records_the_update_it_could_not_make() {
    let scene = room().scene_for(&["tv".to_string()]);
    let model = ScriptedLanguageModel::new(vec![
        step("multi_step", "no"),
        step("classify", "remove"),
        step("judge", "no"),
        step("missing", "semantic"),
        step("new_labels", r#"{"labels": ["speaker"]}"#),
        step("choose_targets", r#"{"targets": [0]}"#),
    ]);
    let planner = CielrPlanner::new(Arc::new(model));
    let out = pollster::block_on(plan(
        &planner,
        Refiner::None,
        scene,
        "remove the speaker",
        2,
        &quiet,
    ))
    .unwrap();
    assert_eq!(out.scenes.len(), 2);
    assert_eq!(out.scenes[1].queries, ["tv", "speaker"]);
    assert!(out.plan.trace.iter().any(
        |t| matches!(t, TraceEntry::Note { message } if message.contains("cannot be refined"))
    ));
}

#[test]
fn a_split_that_stays_unusable_degrades_to_one_step_in_the_users_words() {
    let script = vec![
        step("multi_step", "yes"),
        step("split", r#"{"steps": ["remove sofa"]}"#),
        step("split", r#"{"steps": ["remove sofa", " "]}"#),
        step("classify", "remove"),
        step("judge", "yes"),
        step("choose_targets", r#"{"targets": [1]}"#),
    ];
    let (p, model) = pipeline(room(), script, &["tv", "sofa"], 2);
    let out = run(&p, "Where do people sit? Remove it.").unwrap();
    assert_eq!(out.plan.steps.len(), 1);
    assert!(model.requests()[3].messages[1]
        .content
        .contains("Where do people sit? Remove it."));
    assert!(out.plan.trace.iter().any(
        |t| matches!(t, TraceEntry::Note { message } if message.contains("planning the instruction as one step"))
    ));
    let split = &model.requests()[1];
    assert!(
        matches!(&split.constraint, Some(Constraint::Json(JsonShape::Object(f))) if matches!(f[0].1, JsonShape::Array { min_items: 2, .. })),
        "the split asks for at least two steps"
    );
}

#[test]
fn targets_by_name_disambiguate_repeated_labels_with_ids() {
    let model = Arc::new(ScriptedLanguageModel::new(vec![
        step("multi_step", "no"),
        step("classify", "remove"),
        step("judge", "yes"),
        step("choose_target", "speaker 3"),
    ]));
    let options = ReasoningOptions {
        targets: TargetSelection::Name,
        ..Default::default()
    };
    let p = Pipeline {
        scene_builder: room(),
        planner: Arc::new(CielrPlanner::with_options(model.clone(), options)),
        editor: Arc::new(PaintEditor),
        options: PipelineOptions {
            queries: ["tv", "sofa", "speaker"].map(String::from).to_vec(),
            ..Default::default()
        },
    };
    let out = run(&p, "Remove the speaker on the right").unwrap();
    assert_eq!(out.plan.steps[0].targets, vec![3]);
    let req = &model.requests()[3];
    assert_eq!(
        req.constraint,
        Some(Constraint::Choices(
            ["tv", "sofa", "speaker 2", "speaker 3"]
                .map(String::from)
                .to_vec()
        ))
    );
}

#[test]
fn an_unusable_request_for_information_falls_back_to_choosing() {
    let script = vec![
        step("multi_step", "no"),
        step("classify", "remove"),
        step("judge", "no"),
        step("missing", "semantic"),
        step("new_labels", r#"{"labels": ["..."]}"#),
        step("new_labels", r#"{"labels": []}"#),
        step("choose_targets", r#"{"targets": [0]}"#),
    ];
    let (p, _) = pipeline(room(), script, &["tv"], 2);
    let out = run(&p, "Remove the TV").unwrap();
    assert_eq!(out.plan.steps[0].targets, vec![0]);
    assert_eq!(out.scenes.len(), 1, "no refinement happened");
    assert!(out.plan.trace.iter().any(|t| matches!(t, TraceEntry::Note { message }
        if message.contains("step new_labels: no usable answer") && message.contains("choosing from the current SSR"))));
}
