//! Typed spatial operations over an SSR. The LLM picks an operation and candidate ids; cielr
//! evaluates it here. No generated code is ever run.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::scene::{Scene, SceneObject};

/// A superlative over the candidates' positions, sizes or depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// Smallest centre x.
    Leftmost,
    /// Largest centre x.
    Rightmost,
    /// Smallest centre y.
    Topmost,
    /// Largest centre y.
    Bottommost,
    /// Largest area.
    Largest,
    /// Smallest area.
    Smallest,
    /// Largest depth (nearest to the camera).
    Nearest,
    /// Smallest depth (farthest from the camera).
    Farthest,
}

impl Relation {
    /// Every relation, as offered to the model.
    pub const ALL: [Relation; 8] = [
        Relation::Leftmost,
        Relation::Rightmost,
        Relation::Topmost,
        Relation::Bottommost,
        Relation::Largest,
        Relation::Smallest,
        Relation::Nearest,
        Relation::Farthest,
    ];

    /// The lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Relation::Leftmost => "leftmost",
            Relation::Rightmost => "rightmost",
            Relation::Topmost => "topmost",
            Relation::Bottommost => "bottommost",
            Relation::Largest => "largest",
            Relation::Smallest => "smallest",
            Relation::Nearest => "nearest",
            Relation::Farthest => "farthest",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Relation> {
        Relation::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim().to_lowercase())
    }

    /// The key to maximise for this relation.
    fn key(&self, scene: &Scene, o: &SceneObject) -> Option<f64> {
        let (cx, cy) = scene.center(o);
        Some(match self {
            Relation::Leftmost => -cx,
            Relation::Rightmost => cx,
            Relation::Topmost => -cy,
            Relation::Bottommost => cy,
            Relation::Largest => scene.area_fraction(o),
            Relation::Smallest => -scene.area_fraction(o),
            Relation::Nearest => o.depth?,
            Relation::Farthest => -o.depth?,
        })
    }
}

/// "Which of these objects is the `relation` one?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpatialQuery {
    /// The superlative.
    pub relation: Relation,
    /// Candidate ids; empty means every object.
    pub among: Vec<u32>,
}

/// The answer to a [`SpatialQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpatialFact {
    /// The object that satisfies the relation.
    pub id: u32,
    /// A sentence for the model: "Among objects 1 (cup), 3 (cup), the leftmost is 3 (cup)."
    pub sentence: String,
}

impl SpatialQuery {
    /// Evaluates the query on a scene.
    pub fn evaluate(&self, scene: &Scene) -> Result<SpatialFact> {
        let candidates: Vec<&SceneObject> = if self.among.is_empty() {
            scene.objects.iter().collect()
        } else {
            self.among
                .iter()
                .map(|id| {
                    scene.object(*id).ok_or_else(|| {
                        CoreError::Planning(format!(
                            "spatial query names id {id}, which is not in the scene"
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        let mut best: Option<(&SceneObject, f64)> = None;
        for o in &candidates {
            let Some(k) = self.relation.key(scene, o) else {
                return Err(CoreError::Planning(format!(
                    "object {} ({}) has no depth, so {} cannot be decided",
                    o.id,
                    o.label,
                    self.relation.as_str()
                )));
            };
            if best.is_none_or(|(_, b)| k > b) {
                best = Some((o, k));
            }
        }
        let (o, _) =
            best.ok_or_else(|| CoreError::Planning("spatial query over an empty scene".into()))?;
        let names: Vec<String> = candidates
            .iter()
            .map(|c| format!("{} ({})", c.id, c.label))
            .collect();
        Ok(SpatialFact {
            id: o.id,
            sentence: format!(
                "Among objects {}, the {} is {} ({}).",
                names.join(", "),
                self.relation.as_str(),
                o.id,
                o.label
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::BBox;

    fn scene() -> Scene {
        let mut s = Scene::new(100, 100);
        let mut a = SceneObject::new(1, "cup", BBox::new(0.0, 0.0, 10.0, 10.0));
        a.depth = Some(0.2);
        let mut b = SceneObject::new(2, "cup", BBox::new(50.0, 60.0, 90.0, 90.0));
        b.depth = Some(0.8);
        let c = SceneObject::new(3, "table", BBox::new(20.0, 20.0, 30.0, 30.0));
        s.objects = vec![a, b, c];
        s
    }

    #[test]
    fn superlatives_pick_the_right_object() {
        let s = scene();
        let q = |r, among: &[u32]| {
            SpatialQuery {
                relation: r,
                among: among.to_vec(),
            }
            .evaluate(&s)
        };
        assert_eq!(q(Relation::Leftmost, &[1, 2]).unwrap().id, 1);
        assert_eq!(q(Relation::Rightmost, &[]).unwrap().id, 2);
        assert_eq!(q(Relation::Bottommost, &[1, 3]).unwrap().id, 3);
        assert_eq!(q(Relation::Largest, &[]).unwrap().id, 2);
        assert_eq!(q(Relation::Smallest, &[]).unwrap().id, 1);
        assert_eq!(q(Relation::Nearest, &[1, 2]).unwrap().id, 2);
        assert_eq!(q(Relation::Farthest, &[1, 2]).unwrap().id, 1);
        assert!(q(Relation::Nearest, &[])
            .unwrap_err()
            .to_string()
            .contains("no depth"));
        assert!(q(Relation::Leftmost, &[7]).is_err());
        let f = q(Relation::Leftmost, &[1, 2]).unwrap();
        assert_eq!(
            f.sentence,
            "Among objects 1 (cup), 2 (cup), the leftmost is 1 (cup)."
        );
    }
}
