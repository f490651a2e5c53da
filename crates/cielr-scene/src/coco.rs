//! The 80 COCO detection labels (in the contiguous 0..80 order detectors output) and the
//! matching of free-form queries ("mug", "people", "cups") to them.

/// The COCO labels, indexed by the contiguous class id detectors output.
pub const COCO_LABELS: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// Everyday names for COCO classes: (synonym, COCO label).
const SYNONYMS: &[(&str, &str)] = &[
    ("people", "person"),
    ("man", "person"),
    ("men", "person"),
    ("woman", "person"),
    ("women", "person"),
    ("boy", "person"),
    ("girl", "person"),
    ("child", "person"),
    ("children", "person"),
    ("kid", "person"),
    ("human", "person"),
    ("pedestrian", "person"),
    ("bike", "bicycle"),
    ("motorbike", "motorcycle"),
    ("aeroplane", "airplane"),
    ("plane", "airplane"),
    ("aircraft", "airplane"),
    ("automobile", "car"),
    ("kitten", "cat"),
    ("puppy", "dog"),
    ("purse", "handbag"),
    ("bag", "handbag"),
    ("rucksack", "backpack"),
    ("necktie", "tie"),
    ("ball", "sports ball"),
    ("racket", "tennis racket"),
    ("glass", "wine glass"),
    ("mug", "cup"),
    ("coffee cup", "cup"),
    ("teacup", "cup"),
    ("doughnut", "donut"),
    ("sofa", "couch"),
    ("plant", "potted plant"),
    ("houseplant", "potted plant"),
    ("table", "dining table"),
    ("television", "tv"),
    ("tv monitor", "tv"),
    ("monitor", "tv"),
    ("computer mouse", "mouse"),
    ("remote control", "remote"),
    ("phone", "cell phone"),
    ("cellphone", "cell phone"),
    ("mobile phone", "cell phone"),
    ("smartphone", "cell phone"),
    ("fridge", "refrigerator"),
    ("teddy", "teddy bear"),
    ("hair dryer", "hair drier"),
    ("hairdryer", "hair drier"),
];

fn normalise(query: &str) -> String {
    let lowered = query.to_lowercase().replace(['_', '-'], " ");
    let words: Vec<&str> = lowered.split_whitespace().collect();
    let words = match words.first() {
        Some(&("a" | "an" | "the")) if words.len() > 1 => &words[1..],
        _ => &words[..],
    };
    words.join(" ")
}

fn exact(name: &str) -> Option<usize> {
    COCO_LABELS.iter().position(|&l| l == name).or_else(|| {
        SYNONYMS
            .iter()
            .find(|(s, _)| *s == name)
            .and_then(|(_, l)| COCO_LABELS.iter().position(|c| c == l))
    })
}

/// The COCO class a query names, if any: the label itself, a listed synonym ("mug" is
/// `cup`, "people" is `person`), or a plural of either ("cups", "knives", "benches").
/// Matching ignores case, `_`/`-` and a leading article.
pub fn coco_class(query: &str) -> Option<usize> {
    let q = normalise(query);
    if q.is_empty() {
        return None;
    }
    if let Some(c) = exact(&q) {
        return Some(c);
    }
    let mut singulars = Vec::new();
    if let Some(stem) = q.strip_suffix("ies") {
        singulars.push(format!("{stem}y"));
    }
    if let Some(stem) = q.strip_suffix("ves") {
        singulars.push(format!("{stem}f"));
        singulars.push(format!("{stem}fe"));
    }
    if let Some(stem) = q.strip_suffix("es") {
        singulars.push(stem.to_string());
    }
    if let Some(stem) = q.strip_suffix('s') {
        singulars.push(stem.to_string());
    }
    singulars.iter().find_map(|s| exact(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_map_to_coco_classes() {
        let label = |q: &str| coco_class(q).map(|c| COCO_LABELS[c]);
        assert_eq!(label("cup"), Some("cup"));
        assert_eq!(label("Mug"), Some("cup"));
        assert_eq!(label("the cups"), Some("cup"));
        assert_eq!(label("people"), Some("person"));
        assert_eq!(label("knives"), Some("knife"));
        assert_eq!(label("benches"), Some("bench"));
        assert_eq!(label("wine_glasses"), Some("wine glass"));
        assert_eq!(label("teddy-bear"), Some("teddy bear"));
        assert_eq!(label("skis"), Some("skis"));
        assert_eq!(label("dining table"), Some("dining table"));
        assert_eq!(label("spaceship"), None);
        assert_eq!(label(""), None);
        assert_eq!(label("  "), None);
        // Every synonym points at a real label.
        for (s, l) in SYNONYMS {
            assert!(COCO_LABELS.contains(l), "{s} -> {l}");
        }
    }
}
