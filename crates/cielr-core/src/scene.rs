//! The structured semantic representation (SSR) of an image: objects with ids, labels,
//! boxes, masks and depth. The JSON form is documented in `docs/ssr-format.md`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::geometry::BBox;
use crate::mask::{CocoRle, Mask};

/// One object of the SSR.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    /// Unique id within the scene.
    pub id: u32,
    /// Class label ("vase", "Unknown", ...).
    pub label: String,
    /// Box in pixels (xyxy).
    pub bbox: BBox,
    /// Pixel mask; without one the box is the object's region.
    pub mask: Option<Mask>,
    /// Relative depth, larger = nearer (Depth Anything's convention).
    pub depth: Option<f64>,
    /// Detector confidence.
    pub score: Option<f64>,
    /// Free-form attributes (colour, provenance, ...).
    pub attributes: BTreeMap<String, String>,
}

impl SceneObject {
    /// An object with a label and box and nothing else.
    pub fn new(id: u32, label: impl Into<String>, bbox: BBox) -> Self {
        SceneObject {
            id,
            label: label.into(),
            bbox,
            mask: None,
            depth: None,
            score: None,
            attributes: BTreeMap::new(),
        }
    }

    /// The object's region in a `width x height` image: its mask, or its box when it has none.
    pub fn region(&self, width: u32, height: u32) -> Result<Mask> {
        match &self.mask {
            Some(m) if m.width() == width && m.height() == height => Ok(m.clone()),
            Some(m) => m.resize_nearest(width, height),
            None => Mask::from_box(width, height, &self.bbox),
        }
    }
}

/// Attributes that record how an object was made (its mask's method, its source, the query
/// word that found it): kept in the SSR file, left out of what the LLM reads.
pub const PROVENANCE_ATTRIBUTES: [&str; 3] = ["mask", "source", "query"];

/// The most mask pixels one SSR file may decode, over all its objects (2^30: 128 MiB of
/// bits; a thousand 1024 x 1024 masks, or one hundred 4K masks).
pub const MAX_SSR_MASK_PIXELS: u64 = 1 << 30;

/// An SSR: the image size, its objects and the detector queries that produced them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scene {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The objects, with unique ids.
    pub objects: Vec<SceneObject>,
    /// The labels the scene builder looked for (empty when the SSR came from a file without them).
    pub queries: Vec<String>,
    /// Where the depth values come from (e.g. "depth-anything-v2" or a cheap cue); `None` if unknown.
    pub depth_source: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SceneFile {
    width: u32,
    height: u32,
    #[serde(default)]
    objects: Vec<ObjectFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    queries: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depth_source: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ObjectFile {
    id: u32,
    label: String,
    bbox: BBox,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depth: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mask: Option<CocoRle>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
}

impl Scene {
    /// An empty scene of the given size.
    pub fn new(width: u32, height: u32) -> Self {
        Scene {
            width,
            height,
            ..Default::default()
        }
    }

    /// Parses and validates the SSR JSON format. The masks' decoded pixels, summed over the
    /// objects, may not exceed [`MAX_SSR_MASK_PIXELS`]: a few bytes of RLE can claim a
    /// 65536 x 65536 mask, and a file can hold thousands of them.
    pub fn from_json(text: &str) -> Result<Scene> {
        let file: SceneFile = serde_json::from_str(text).map_err(|e| CoreError::json("SSR", e))?;
        let mut objects = Vec::with_capacity(file.objects.len());
        let mut mask_pixels: u64 = 0;
        for o in file.objects {
            let mask = match &o.mask {
                None => None,
                Some(rle) => {
                    if rle.size != [file.height, file.width] {
                        return Err(CoreError::InvalidScene(format!(
                            "object {} ({}): mask size [{}, {}] differs from the scene's [{}, {}] (sizes are [H, W])",
                            o.id, o.label, rle.size[0], rle.size[1], file.height, file.width
                        )));
                    }
                    mask_pixels =
                        mask_pixels.saturating_add(file.width as u64 * file.height as u64);
                    if mask_pixels > MAX_SSR_MASK_PIXELS {
                        return Err(CoreError::InvalidScene(format!(
                            "object {} ({}): the masks of this {}x{} SSR add up to more than \
                             {MAX_SSR_MASK_PIXELS} pixels",
                            o.id, o.label, file.width, file.height
                        )));
                    }
                    Some(Mask::from_coco(rle).map_err(|e| {
                        CoreError::InvalidScene(format!("object {} ({}): {e}", o.id, o.label))
                    })?)
                }
            };
            objects.push(SceneObject {
                id: o.id,
                label: o.label,
                bbox: o.bbox,
                mask,
                depth: o.depth,
                score: o.score,
                attributes: o.attributes,
            });
        }
        let scene = Scene {
            width: file.width,
            height: file.height,
            objects,
            queries: file.queries,
            depth_source: file.depth_source,
        };
        scene.validate()?;
        Ok(scene)
    }

    /// Checks ids are unique, boxes are well formed and overlap the image, masks match the
    /// scene's size and numbers are finite. Errors name the object.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(CoreError::InvalidScene(format!(
                "scene size {}x{} is empty",
                self.width, self.height
            )));
        }
        let image = BBox::new(0.0, 0.0, self.width as f64, self.height as f64);
        let mut seen = HashSet::new();
        for o in &self.objects {
            let name = format!("object {} ({})", o.id, o.label);
            if !seen.insert(o.id) {
                return Err(CoreError::InvalidScene(format!(
                    "{name}: duplicate id {}",
                    o.id
                )));
            }
            if !o.bbox.is_valid() {
                return Err(CoreError::InvalidScene(format!(
                    "{name}: bad box {:?}; expected finite [x0, y0, x1, y1] with x0 < x1 and y0 < y1",
                    <[f64; 4]>::from(o.bbox)
                )));
            }
            if o.bbox.intersect(&image).is_none() {
                return Err(CoreError::InvalidScene(format!(
                    "{name}: box {:?} lies outside the {}x{} image",
                    <[f64; 4]>::from(o.bbox),
                    self.width,
                    self.height
                )));
            }
            if let Some(m) = &o.mask {
                if (m.width(), m.height()) != (self.width, self.height) {
                    return Err(CoreError::InvalidScene(format!(
                        "{name}: mask is {}x{} but the scene is {}x{}",
                        m.width(),
                        m.height(),
                        self.width,
                        self.height
                    )));
                }
            }
            for (what, v) in [("depth", o.depth), ("score", o.score)] {
                if let Some(v) = v {
                    if !v.is_finite() {
                        return Err(CoreError::InvalidScene(format!(
                            "{name}: {what} is not finite"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The SSR JSON form (masks as COCO compressed RLE).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_file()).expect("SSR serialisation cannot fail")
    }

    /// The SSR as a `serde_json::Value` (for embedding in reports).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.to_file()).expect("SSR serialisation cannot fail")
    }

    fn to_file(&self) -> SceneFile {
        SceneFile {
            width: self.width,
            height: self.height,
            objects: self
                .objects
                .iter()
                .map(|o| ObjectFile {
                    id: o.id,
                    label: o.label.clone(),
                    bbox: o.bbox,
                    depth: o.depth,
                    score: o.score,
                    mask: o.mask.as_ref().map(Mask::to_coco),
                    attributes: o.attributes.clone(),
                })
                .collect(),
            queries: self.queries.clone(),
            depth_source: self.depth_source.clone(),
        }
    }

    /// Reads an SSR file.
    pub fn load(path: &Path) -> Result<Scene> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        Scene::from_json(&text).map_err(|e| match e {
            CoreError::Json { source, .. } => CoreError::json(path.display().to_string(), source),
            CoreError::InvalidScene(m) => {
                CoreError::InvalidScene(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }

    /// Writes the SSR file.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()).map_err(|e| CoreError::io(path, e))
    }

    /// The object with this id.
    pub fn object(&self, id: u32) -> Option<&SceneObject> {
        self.objects.iter().find(|o| o.id == id)
    }

    /// The region of object `id` (mask, or box when it has no mask).
    pub fn region(&self, id: u32) -> Result<Mask> {
        let o = self
            .object(id)
            .ok_or_else(|| CoreError::InvalidPlan(format!("object id {id} is not in the scene")))?;
        o.region(self.width, self.height)
    }

    /// The union of the regions of `ids`.
    pub fn union_region(&self, ids: &[u32]) -> Result<Mask> {
        let mut m = Mask::new(self.width, self.height)?;
        for &id in ids {
            m = m.union(&self.region(id)?)?;
        }
        Ok(m)
    }

    /// The share of the image an object covers (mask area, or box area without a mask).
    pub fn area_fraction(&self, o: &SceneObject) -> f64 {
        let total = self.width as f64 * self.height as f64;
        let a = match &o.mask {
            Some(m) => m.area() as f64,
            None => o
                .bbox
                .intersect(&BBox::new(0.0, 0.0, self.width as f64, self.height as f64))
                .map_or(0.0, |b| b.area()),
        };
        a / total
    }

    /// The centre of an object: its mask centroid, or its box centre.
    pub fn center(&self, o: &SceneObject) -> (f64, f64) {
        o.mask
            .as_ref()
            .and_then(Mask::centroid)
            .unwrap_or_else(|| o.bbox.center())
    }

    /// The text the LLM sees: one line per object with id, label, box, centre, area share and depth.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "Image: {} x {} pixels (x grows to the right, y grows downwards).\n",
            self.width, self.height
        );
        if self.objects.is_empty() {
            s.push_str("No objects were detected.\n");
        }
        for o in &self.objects {
            let (cx, cy) = self.center(o);
            let b = o.bbox;
            s.push_str(&format!(
                "id {}: {} | box [{:.0}, {:.0}, {:.0}, {:.0}] | centre ({cx:.0}, {cy:.0}) | area {:.1}%",
                o.id,
                o.label,
                b.x0,
                b.y0,
                b.x1,
                b.y1,
                100.0 * self.area_fraction(o)
            ));
            if let Some(d) = o.depth {
                s.push_str(&format!(" | depth {d:.2}"));
            }
            for (k, v) in &o.attributes {
                if !PROVENANCE_ATTRIBUTES.contains(&k.as_str()) {
                    s.push_str(&format!(" | {k}: {v}"));
                }
            }
            s.push('\n');
        }
        if self.objects.iter().any(|o| o.depth.is_some()) {
            s.push_str("Depth is relative: larger means nearer to the camera.\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"width": 4, "height": 3, "extra": true, "objects": [
        {"id": 0, "label": "vase", "bbox": [0, 0, 2, 3], "depth": 0.31, "score": 0.9,
         "mask": {"size": [3, 4], "counts": [3, 3, 6]}, "colour": "ignored"},
        {"id": 7, "label": "table", "bbox": [1, 1, 4, 3], "attributes": {"material": "wood"}}]}"#;

    #[test]
    fn parses_validates_and_round_trips() {
        let s = Scene::from_json(SAMPLE).unwrap();
        assert_eq!(s.objects.len(), 2);
        let vase = s.object(0).unwrap();
        assert_eq!(vase.mask.as_ref().unwrap().area(), 3);
        assert!(vase.mask.as_ref().unwrap().get(1, 0) && !vase.mask.as_ref().unwrap().get(0, 0));
        assert_eq!(s.object(7).unwrap().attributes["material"], "wood");
        assert_eq!(s.region(7).unwrap().area(), 6);
        let back = Scene::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert!(
            s.to_json().contains("\"counts\": \"336\""),
            "{}",
            s.to_json()
        );
    }

    fn error_of(text: &str) -> String {
        Scene::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn malformed_files_name_the_object() {
        let dup = r#"{"width": 4, "height": 3, "objects": [
            {"id": 1, "label": "a", "bbox": [0,0,1,1]}, {"id": 1, "label": "b", "bbox": [0,0,1,1]}]}"#;
        assert!(error_of(dup).contains("object 1 (b): duplicate id"));
        let bad_box = r#"{"width": 4, "height": 3, "objects": [{"id": 2, "label": "cup", "bbox": [3,0,1,1]}]}"#;
        assert!(error_of(bad_box).contains("object 2 (cup): bad box"));
        let outside = r#"{"width": 4, "height": 3, "objects": [{"id": 2, "label": "cup", "bbox": [10,10,11,11]}]}"#;
        assert!(error_of(outside).contains("outside"));
        let mask_size = r#"{"width": 4, "height": 3, "objects": [{"id": 5, "label": "cup", "bbox": [0,0,1,1],
            "mask": {"size": [4, 3], "counts": [12]}}]}"#;
        assert!(error_of(mask_size).contains("object 5 (cup): mask size [4, 3]"));
        let bad_rle = r#"{"width": 4, "height": 3, "objects": [{"id": 6, "label": "cup", "bbox": [0,0,1,1],
            "mask": {"size": [3, 4], "counts": [5]}}]}"#;
        assert!(error_of(bad_rle).contains("object 6 (cup)"));
        assert!(error_of("{\"width\": 4}").contains("height"));
    }

    #[test]
    fn describe_lists_every_object() {
        let s = Scene::from_json(SAMPLE).unwrap();
        let d = s.describe();
        assert!(d.contains("id 0: vase | box [0, 0, 2, 3]"), "{d}");
        assert!(d.contains("depth 0.31"));
        assert!(d.contains("id 7: table"));
        assert!(d.contains("material: wood"));
        let mut s = s;
        s.objects[0]
            .attributes
            .insert("mask".into(), "grabcut".into());
        assert!(
            !s.describe().contains("grabcut"),
            "provenance stays out of the prompt"
        );
    }
}
