//! [`CocoDetectorSceneBuilder`]: an SSR from a COCO detector (CenterNet-MobileNetV3).
//!
//! Each detection becomes a [`SceneObject`] with its COCO label, box and score, and a
//! class-agnostic mask made from the box as [`MaskMode`] says (see [`crate::grabcut`]): by
//! default GrabCut inside the box, falling back to the inscribed ellipse when the
//! segmentation fails. The object's `"mask"` attribute records how its mask was made
//! (`"grabcut"`, `"ellipse-fallback"`, `"box-fallback"`, `"ellipse"`); with [`MaskMode::Box`]
//! the object has no mask and no such attribute, and its region is the box. The object's
//! `bbox` stays the detector's box, not the mask's tight box: refining matches detections to
//! existing objects by box IoU, the depth cue and the spatial operations read the box, and a
//! fallback mask says nothing new about the extent. Depth is a cheap monocular cue,
//! labelled as such in `Scene::depth_source` (`"vertical-position-cue"`): the lower the
//! bottom edge of the box in the frame, the nearer the object (`depth = y1 / height`, larger
//! = nearer, as the SSR format wants). It holds for objects standing on a common ground
//! plane seen from above the horizon, which is most photos of tables, rooms and streets.
//!
//! Queries restrict the SSR to the COCO classes they name (synonyms and plurals are
//! understood: "mug" finds cups, "people" persons); labels outside COCO find nothing. The
//! detections of the last few images are cached by a SHA-256 of the pixels, so `refine` with
//! new labels re-filters them instead of running the network again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use burn::tensor::backend::Backend;
use cielr_core::backend::CpuBackend;
use cielr_core::{BBox, CoreError, Mask, Scene, SceneBuilder, SceneObject};
use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::centernet::{CenterNet, DetectOptions, Detection};
use crate::coco::{coco_class, COCO_LABELS};
use crate::error::Result;
use crate::grabcut::{object_mask, GrabCutOptions, MaskMode, MaskSource};
use crate::model_cache::ModelCache;

/// The `depth_source` of scenes whose depth is the vertical-position cue.
pub const VERTICAL_POSITION_CUE: &str = "vertical-position-cue";
/// How many images' detections are kept for `refine`.
const CACHED_IMAGES: usize = 8;
/// A detection and an existing object with the same label and at least this IoU are the
/// same object when refining.
const SAME_OBJECT_IOU: f64 = 0.9;

type ImageKey = [u8; 32];
/// A box's coordinates, bit for bit.
type BoxKey = [u64; 4];
/// The masks made for the boxes of one image.
type MaskCache = Vec<(ImageKey, HashMap<BoxKey, (Mask, MaskSource)>)>;

/// A [`SceneBuilder`] over CenterNet's COCO detections.
pub struct CocoDetectorSceneBuilder<B: Backend = CpuBackend> {
    detector: CenterNet<B>,
    options: DetectOptions,
    mask_mode: MaskMode,
    grabcut: GrabCutOptions,
    cache: Mutex<Vec<(ImageKey, Arc<Vec<Detection>>)>>,
    masks: Mutex<MaskCache>,
}

impl<B: Backend> std::fmt::Debug for CocoDetectorSceneBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CocoDetectorSceneBuilder")
            .field("options", &self.options)
            .field("mask_mode", &self.mask_mode)
            .field("grabcut", &self.grabcut)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> CocoDetectorSceneBuilder<B> {
    /// Wraps a loaded detector; objects get GrabCut masks with the default options (see
    /// [`CocoDetectorSceneBuilder::with_masks`]).
    pub fn new(detector: CenterNet<B>, options: DetectOptions) -> Self {
        CocoDetectorSceneBuilder {
            detector,
            options,
            mask_mode: MaskMode::default(),
            grabcut: GrabCutOptions::default(),
            cache: Mutex::new(Vec::new()),
            masks: Mutex::new(Vec::new()),
        }
    }

    /// Chooses how objects' masks are made from their boxes (and GrabCut's settings).
    /// Fails when the GrabCut settings are out of range.
    pub fn with_masks(mut self, mode: MaskMode, grabcut: GrabCutOptions) -> Result<Self> {
        grabcut.validate()?;
        self.mask_mode = mode;
        self.grabcut = grabcut;
        self.masks = Mutex::new(Vec::new());
        Ok(self)
    }

    /// How objects' masks are made.
    pub fn mask_mode(&self) -> MaskMode {
        self.mask_mode
    }

    /// GrabCut's settings.
    pub fn grabcut_options(&self) -> &GrabCutOptions {
        &self.grabcut
    }

    /// Gives each object a mask made from its box as [`CocoDetectorSceneBuilder::mask_mode`]
    /// says and records how in its `"mask"` attribute; with [`MaskMode::Box`] nothing
    /// changes. Masks of the last few images are cached by box, so `refine` does not
    /// segment an object twice; new ones are spread over the available cores.
    pub fn attach_masks(&self, image: &RgbImage, objects: &mut [SceneObject]) -> Result<()> {
        if self.mask_mode == MaskMode::Box || objects.is_empty() {
            return Ok(());
        }
        let key = image_key(image);
        let known = self.cached_masks(&key, objects.iter().map(|o| &o.bbox));
        let todo: Vec<BBox> = objects
            .iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|(o, _)| o.bbox)
            .collect();
        let made = self.make_masks(image, &todo)?;
        {
            let mut cache = self.masks.lock().unwrap_or_else(|e| e.into_inner());
            let i = match cache.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    if cache.len() >= CACHED_IMAGES {
                        cache.remove(0);
                    }
                    cache.push((key, HashMap::new()));
                    cache.len() - 1
                }
            };
            for (b, m) in todo.iter().zip(&made) {
                cache[i].1.insert(box_key(b), m.clone());
            }
        }
        let mut made = made.into_iter();
        for (o, k) in objects.iter_mut().zip(known) {
            if let Some((mask, source)) = k.or_else(|| made.next()) {
                o.attributes
                    .insert("mask".into(), source.as_str().to_string());
                o.mask = Some(mask);
            }
        }
        Ok(())
    }

    fn cached_masks<'a>(
        &self,
        key: &ImageKey,
        boxes: impl Iterator<Item = &'a BBox>,
    ) -> Vec<Option<(Mask, MaskSource)>> {
        let cache = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.iter().find(|(k, _)| k == key).map(|(_, m)| m);
        boxes
            .map(|b| entry.and_then(|m| m.get(&box_key(b)).cloned()))
            .collect()
    }

    /// Masks for `boxes`, computed on as many threads as there are cores.
    fn make_masks(&self, image: &RgbImage, boxes: &[BBox]) -> Result<Vec<(Mask, MaskSource)>> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, boxes.len());
        let chunk = boxes.len().div_ceil(threads);
        let (mode, options) = (self.mask_mode, &self.grabcut);
        std::thread::scope(|scope| {
            let workers: Vec<_> = boxes
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || -> Result<Vec<(Mask, MaskSource)>> {
                        part.iter()
                            .map(|b| {
                                object_mask(image, b, mode, options).map(|m| (m.mask, m.source))
                            })
                            .collect()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(boxes.len());
            for w in workers {
                let part = w.join().unwrap_or_else(|_| {
                    Err(crate::error::SceneError::InvalidInput(
                        "a mask worker panicked".into(),
                    ))
                })?;
                out.extend(part);
            }
            Ok(out)
        })
    }

    /// Loads CenterNet from the model cache (see [`ModelCache::centernet_json`]).
    pub fn from_cache(
        cache: &ModelCache,
        options: DetectOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let json = cache.centernet_json()?;
        Ok(Self::new(CenterNet::load(json, device)?, options))
    }

    /// The post-processing settings.
    pub fn options(&self) -> &DetectOptions {
        &self.options
    }

    /// The detector.
    pub fn detector(&self) -> &CenterNet<B> {
        &self.detector
    }

    /// All detections of `image` (every class), from the cache when the same pixels were
    /// seen recently.
    pub fn detections(&self, image: &RgbImage) -> Result<Arc<Vec<Detection>>> {
        let key = image_key(image);
        if let Some(d) = self.cached(&key) {
            return Ok(d);
        }
        let d = Arc::new(self.detector.detect(image, &self.options)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(k, _)| *k != key);
        if cache.len() >= CACHED_IMAGES {
            cache.remove(0);
        }
        cache.push((key, d.clone()));
        Ok(d)
    }

    fn cached(&self, key: &ImageKey) -> Option<Arc<Vec<Detection>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let i = cache.iter().position(|(k, _)| k == key)?;
        let entry = cache.remove(i);
        let d = entry.1.clone();
        cache.push(entry);
        Some(d)
    }
}

fn box_key(b: &BBox) -> BoxKey {
    [
        b.x0.to_bits(),
        b.y0.to_bits(),
        b.x1.to_bits(),
        b.y1.to_bits(),
    ]
}

fn image_key(image: &RgbImage) -> ImageKey {
    let mut h = Sha256::new();
    h.update(image.width().to_le_bytes());
    h.update(image.height().to_le_bytes());
    h.update(image.as_raw());
    h.finalize().into()
}

/// Which COCO classes the queries name, with the query that named each (all classes for no
/// queries). Queries outside COCO name nothing.
fn wanted_classes(queries: &[String]) -> BTreeMap<usize, Option<String>> {
    if queries.is_empty() {
        return (0..COCO_LABELS.len()).map(|c| (c, None)).collect();
    }
    let mut out = BTreeMap::new();
    for q in queries {
        if let Some(c) = coco_class(q) {
            out.entry(c).or_insert_with(|| Some(q.trim().to_string()));
        }
    }
    out
}

fn vertical_cue(d: &Detection, height: u32) -> f64 {
    (d.bbox.y1 / height as f64).clamp(0.0, 1.0)
}

fn object(id: u32, d: &Detection, query: Option<&String>, height: u32, depth: bool) -> SceneObject {
    let mut o = SceneObject::new(id, d.label, d.bbox);
    o.score = Some(d.score as f64);
    if depth {
        o.depth = Some(vertical_cue(d, height));
    }
    if let Some(q) = query.filter(|q| !q.eq_ignore_ascii_case(d.label)) {
        o.attributes.insert("query".into(), q.clone());
    }
    o
}

fn core_error(e: crate::error::SceneError) -> CoreError {
    CoreError::SceneBuilder(e.to_string())
}

#[async_trait]
impl<B: Backend> SceneBuilder for CocoDetectorSceneBuilder<B>
where
    CenterNet<B>: Send + Sync,
{
    fn name(&self) -> String {
        "centernet-mobilenetv3-coco".into()
    }

    async fn build(&self, image: &RgbImage, queries: &[String]) -> cielr_core::Result<Scene> {
        let detections = self.detections(image).map_err(core_error)?;
        let wanted = wanted_classes(queries);
        let mut scene = Scene::new(image.width(), image.height());
        // Detections come sorted by descending score.
        for d in detections.iter() {
            if let Some(q) = wanted.get(&d.class) {
                let id = scene.objects.len() as u32;
                scene
                    .objects
                    .push(object(id, d, q.as_ref(), image.height(), true));
            }
        }
        self.attach_masks(image, &mut scene.objects)
            .map_err(core_error)?;
        scene.queries = queries.to_vec();
        scene.depth_source = Some(VERTICAL_POSITION_CUE.into());
        Ok(scene)
    }

    async fn refine(
        &self,
        image: &RgbImage,
        scene: &Scene,
        new_queries: &[String],
    ) -> cielr_core::Result<Scene> {
        if (image.width(), image.height()) != (scene.width, scene.height) {
            return Err(CoreError::SizeMismatch(format!(
                "the SSR describes a {}x{} image but the image is {}x{}",
                scene.width,
                scene.height,
                image.width(),
                image.height()
            )));
        }
        let mut out = scene.clone();
        let mut seen: BTreeSet<String> = out
            .queries
            .iter()
            .map(|q| q.trim().to_lowercase())
            .collect();
        for q in new_queries {
            if seen.insert(q.trim().to_lowercase()) {
                out.queries.push(q.clone());
            }
        }
        if new_queries.is_empty() {
            return Ok(out);
        }
        let ours = match &scene.depth_source {
            Some(s) => s == VERTICAL_POSITION_CUE,
            None => scene.objects.iter().all(|o| o.depth.is_none()),
        };
        if ours {
            out.depth_source = Some(VERTICAL_POSITION_CUE.into());
        }
        let detections = self.detections(image).map_err(core_error)?;
        let wanted = wanted_classes(new_queries);
        let mut next_id = scene.objects.iter().map(|o| o.id + 1).max().unwrap_or(0);
        let known = out.objects.len();
        for d in detections.iter() {
            let Some(q) = wanted.get(&d.class) else {
                continue;
            };
            let present = out
                .objects
                .iter()
                .any(|o| o.label == d.label && o.bbox.iou(&d.bbox) >= SAME_OBJECT_IOU);
            if present {
                continue;
            }
            out.objects
                .push(object(next_id, d, q.as_ref(), image.height(), ours));
            next_id += 1;
        }
        self.attach_masks(image, &mut out.objects[known..])
            .map_err(core_error)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cielr_core::BBox;

    #[test]
    fn queries_select_classes_and_remember_the_words() {
        let w = wanted_classes(&["Mug".into(), "spaceship".into(), "people".into()]);
        assert_eq!(w.len(), 2);
        assert_eq!(w[&41].as_deref(), Some("Mug"));
        assert_eq!(w[&0].as_deref(), Some("people"));
        assert_eq!(wanted_classes(&[]).len(), 80);
        let d = Detection {
            class: 41,
            label: "cup",
            score: 0.5,
            bbox: BBox::new(10.0, 20.0, 30.0, 300.0),
        };
        let o = object(3, &d, Some(&"Mug".to_string()), 400, true);
        assert_eq!(o.attributes["query"], "Mug");
        assert_eq!(o.depth, Some(0.75));
        let o = object(3, &d, Some(&"CUP".to_string()), 400, false);
        assert!(o.attributes.is_empty() && o.depth.is_none());
    }
}
