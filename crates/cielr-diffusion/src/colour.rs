//! Colours: CIELAB conversion and reading a colour out of a prompt.

use crate::error::{DiffusionError, Result};

/// A colour in CIELAB (D65 white point): `l` in 0..=100, `a` green (-) to red (+), `b` blue (-)
/// to yellow (+).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lab {
    /// Lightness, 0 (black) to 100 (white).
    pub l: f32,
    /// Green (negative) to red (positive).
    pub a: f32,
    /// Blue (negative) to yellow (positive).
    pub b: f32,
}

fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(c: f32) -> f32 {
    if c <= 0.003_130_8 {
        12.92 * c
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

const WHITE: [f32; 3] = [0.950_47, 1.0, 1.088_83];
const DELTA: f32 = 6.0 / 29.0;

fn lab_f(t: f32) -> f32 {
    if t > DELTA * DELTA * DELTA {
        t.cbrt()
    } else {
        t / (3.0 * DELTA * DELTA) + 4.0 / 29.0
    }
}

fn lab_f_inv(t: f32) -> f32 {
    if t > DELTA {
        t * t * t
    } else {
        3.0 * DELTA * DELTA * (t - 4.0 / 29.0)
    }
}

impl Lab {
    /// Converts an 8-bit sRGB colour.
    pub fn from_rgb(rgb: [u8; 3]) -> Lab {
        let [r, g, b] = rgb.map(|c| srgb_to_linear(c as f32 / 255.0));
        let x = 0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b;
        let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
        let z = 0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b;
        let (fx, fy, fz) = (
            lab_f(x / WHITE[0]),
            lab_f(y / WHITE[1]),
            lab_f(z / WHITE[2]),
        );
        Lab {
            l: 116.0 * fy - 16.0,
            a: 500.0 * (fx - fy),
            b: 200.0 * (fy - fz),
        }
    }

    /// The sRGB colour in 0..=1 per channel, unclamped: values outside 0..=1 mean the colour is
    /// out of the sRGB gamut.
    pub fn to_rgb_unclamped(self) -> [f32; 3] {
        let fy = (self.l + 16.0) / 116.0;
        let fx = fy + self.a / 500.0;
        let fz = fy - self.b / 200.0;
        let (x, y, z) = (
            WHITE[0] * lab_f_inv(fx),
            WHITE[1] * lab_f_inv(fy),
            WHITE[2] * lab_f_inv(fz),
        );
        let r = 3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z;
        let g = -0.969_266 * x + 1.876_010_8 * y + 0.041_556 * z;
        let b = 0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z;
        [r, g, b].map(|c| {
            if c < 0.0 {
                -linear_to_srgb(-c)
            } else {
                linear_to_srgb(c)
            }
        })
    }

    /// Converts to 8-bit sRGB, clipping each channel.
    pub fn to_rgb(self) -> [u8; 3] {
        self.to_rgb_unclamped()
            .map(|c| (c * 255.0).round().clamp(0.0, 255.0) as u8)
    }

    /// Chroma: the distance from the grey axis, `sqrt(a^2 + b^2)`.
    pub fn chroma(self) -> f32 {
        self.a.hypot(self.b)
    }

    /// Hue angle in degrees, 0..360 (0 = red-ish +a, 90 = yellow +b).
    pub fn hue_degrees(self) -> f32 {
        self.b.atan2(self.a).to_degrees().rem_euclid(360.0)
    }

    /// Converts to 8-bit sRGB keeping lightness and hue: when the colour is outside the sRGB
    /// gamut its chroma is reduced (by bisection) until it fits, instead of clipping channels,
    /// which would shift the hue.
    pub fn to_rgb_in_gamut(self) -> [u8; 3] {
        let inside = |c: [f32; 3]| {
            c.iter()
                .all(|&v| (-0.5 / 255.0..=1.0 + 0.5 / 255.0).contains(&v))
        };
        if inside(self.to_rgb_unclamped()) {
            return self.to_rgb();
        }
        let (mut lo, mut hi) = (0f32, 1f32);
        for _ in 0..12 {
            let mid = 0.5 * (lo + hi);
            let c = Lab {
                l: self.l,
                a: self.a * mid,
                b: self.b * mid,
            };
            if inside(c.to_rgb_unclamped()) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Lab {
            l: self.l,
            a: self.a * lo,
            b: self.b * lo,
        }
        .to_rgb()
    }
}

/// A colour read from a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedColour {
    /// What was recognised, normalised: `"red"`, `"dark red"`, `"light blue"`, `"#1e90ff"`.
    pub name: String,
    /// The colour in 8-bit sRGB.
    pub rgb: [u8; 3],
}

/// The known colour names (lower case, no spaces) and their sRGB values: the 148 CSS Color
/// Level 4 named colours (the X11 set) except `darkgray`/`darkgrey`, which CSS defines lighter
/// than `gray` (so "dark grey" goes through the `dark` modifier instead), plus a few common
/// names CSS lacks (burgundy, charcoal, cream, mint, ...).
pub const COLOUR_NAMES: &[(&str, [u8; 3])] = &[
    ("aliceblue", [240, 248, 255]),
    ("amber", [255, 191, 0]),
    ("antiquewhite", [250, 235, 215]),
    ("aqua", [0, 255, 255]),
    ("aquamarine", [127, 255, 212]),
    ("azure", [240, 255, 255]),
    ("beige", [245, 245, 220]),
    ("bisque", [255, 228, 196]),
    ("black", [0, 0, 0]),
    ("blanchedalmond", [255, 235, 205]),
    ("blue", [0, 0, 255]),
    ("blueviolet", [138, 43, 226]),
    ("bronze", [205, 127, 50]),
    ("brown", [165, 42, 42]),
    ("burgundy", [128, 0, 32]),
    ("burlywood", [222, 184, 135]),
    ("cadetblue", [95, 158, 160]),
    ("charcoal", [54, 69, 79]),
    ("chartreuse", [127, 255, 0]),
    ("chocolate", [210, 105, 30]),
    ("copper", [184, 115, 51]),
    ("coral", [255, 127, 80]),
    ("cornflowerblue", [100, 149, 237]),
    ("cornsilk", [255, 248, 220]),
    ("cream", [255, 253, 208]),
    ("crimson", [220, 20, 60]),
    ("cyan", [0, 255, 255]),
    ("darkblue", [0, 0, 139]),
    ("darkcyan", [0, 139, 139]),
    ("darkgoldenrod", [184, 134, 11]),
    ("darkgreen", [0, 100, 0]),
    ("darkkhaki", [189, 183, 107]),
    ("darkmagenta", [139, 0, 139]),
    ("darkolivegreen", [85, 107, 47]),
    ("darkorange", [255, 140, 0]),
    ("darkorchid", [153, 50, 204]),
    ("darkred", [139, 0, 0]),
    ("darksalmon", [233, 150, 122]),
    ("darkseagreen", [143, 188, 143]),
    ("darkslateblue", [72, 61, 139]),
    ("darkslategray", [47, 79, 79]),
    ("darkslategrey", [47, 79, 79]),
    ("darkturquoise", [0, 206, 209]),
    ("darkviolet", [148, 0, 211]),
    ("deeppink", [255, 20, 147]),
    ("deepskyblue", [0, 191, 255]),
    ("dimgray", [105, 105, 105]),
    ("dimgrey", [105, 105, 105]),
    ("dodgerblue", [30, 144, 255]),
    ("emerald", [80, 200, 120]),
    ("firebrick", [178, 34, 34]),
    ("floralwhite", [255, 250, 240]),
    ("forestgreen", [34, 139, 34]),
    ("fuchsia", [255, 0, 255]),
    ("gainsboro", [220, 220, 220]),
    ("ghostwhite", [248, 248, 255]),
    ("gold", [255, 215, 0]),
    ("golden", [255, 215, 0]),
    ("goldenrod", [218, 165, 32]),
    ("gray", [128, 128, 128]),
    ("green", [0, 128, 0]),
    ("greenyellow", [173, 255, 47]),
    ("grey", [128, 128, 128]),
    ("honeydew", [240, 255, 240]),
    ("hotpink", [255, 105, 180]),
    ("indianred", [205, 92, 92]),
    ("indigo", [75, 0, 130]),
    ("ivory", [255, 255, 240]),
    ("khaki", [240, 230, 140]),
    ("lavender", [230, 230, 250]),
    ("lavenderblush", [255, 240, 245]),
    ("lawngreen", [124, 252, 0]),
    ("lemonchiffon", [255, 250, 205]),
    ("lightblue", [173, 216, 230]),
    ("lightcoral", [240, 128, 128]),
    ("lightcyan", [224, 255, 255]),
    ("lightgoldenrodyellow", [250, 250, 210]),
    ("lightgray", [211, 211, 211]),
    ("lightgreen", [144, 238, 144]),
    ("lightgrey", [211, 211, 211]),
    ("lightpink", [255, 182, 193]),
    ("lightsalmon", [255, 160, 122]),
    ("lightseagreen", [32, 178, 170]),
    ("lightskyblue", [135, 206, 250]),
    ("lightslategray", [119, 136, 153]),
    ("lightslategrey", [119, 136, 153]),
    ("lightsteelblue", [176, 196, 222]),
    ("lightyellow", [255, 255, 224]),
    ("lilac", [200, 162, 200]),
    ("lime", [0, 255, 0]),
    ("limegreen", [50, 205, 50]),
    ("linen", [250, 240, 230]),
    ("magenta", [255, 0, 255]),
    ("maroon", [128, 0, 0]),
    ("mediumaquamarine", [102, 205, 170]),
    ("mediumblue", [0, 0, 205]),
    ("mediumorchid", [186, 85, 211]),
    ("mediumpurple", [147, 112, 219]),
    ("mediumseagreen", [60, 179, 113]),
    ("mediumslateblue", [123, 104, 238]),
    ("mediumspringgreen", [0, 250, 154]),
    ("mediumturquoise", [72, 209, 204]),
    ("mediumvioletred", [199, 21, 133]),
    ("midnightblue", [25, 25, 112]),
    ("mint", [152, 255, 152]),
    ("mintcream", [245, 255, 250]),
    ("mistyrose", [255, 228, 225]),
    ("moccasin", [255, 228, 181]),
    ("mustard", [225, 173, 1]),
    ("navajowhite", [255, 222, 173]),
    ("navy", [0, 0, 128]),
    ("navyblue", [0, 0, 128]),
    ("ochre", [204, 119, 34]),
    ("oldlace", [253, 245, 230]),
    ("olive", [128, 128, 0]),
    ("olivedrab", [107, 142, 35]),
    ("olivegreen", [128, 128, 0]),
    ("orange", [255, 165, 0]),
    ("orangered", [255, 69, 0]),
    ("orchid", [218, 112, 214]),
    ("palegoldenrod", [238, 232, 170]),
    ("palegreen", [152, 251, 152]),
    ("paleturquoise", [175, 238, 238]),
    ("palevioletred", [219, 112, 147]),
    ("papayawhip", [255, 239, 213]),
    ("peach", [255, 229, 180]),
    ("peachpuff", [255, 218, 185]),
    ("peru", [205, 133, 63]),
    ("pink", [255, 192, 203]),
    ("plum", [221, 160, 221]),
    ("powderblue", [176, 224, 230]),
    ("purple", [128, 0, 128]),
    ("rebeccapurple", [102, 51, 153]),
    ("red", [255, 0, 0]),
    ("rose", [255, 0, 127]),
    ("rosybrown", [188, 143, 143]),
    ("royalblue", [65, 105, 225]),
    ("saddlebrown", [139, 69, 19]),
    ("salmon", [250, 128, 114]),
    ("sandybrown", [244, 164, 96]),
    ("scarlet", [255, 36, 0]),
    ("seagreen", [46, 139, 87]),
    ("seashell", [255, 245, 238]),
    ("sienna", [160, 82, 45]),
    ("silver", [192, 192, 192]),
    ("skyblue", [135, 206, 235]),
    ("slateblue", [106, 90, 205]),
    ("slategray", [112, 128, 144]),
    ("slategrey", [112, 128, 144]),
    ("snow", [255, 250, 250]),
    ("springgreen", [0, 255, 127]),
    ("steelblue", [70, 130, 180]),
    ("tan", [210, 180, 140]),
    ("teal", [0, 128, 128]),
    ("thistle", [216, 191, 216]),
    ("tomato", [255, 99, 71]),
    ("turquoise", [64, 224, 208]),
    ("violet", [238, 130, 238]),
    ("wheat", [245, 222, 179]),
    ("white", [255, 255, 255]),
    ("whitesmoke", [245, 245, 245]),
    ("yellow", [255, 255, 0]),
    ("yellowgreen", [154, 205, 50]),
];

/// Looks a single colour name up (case-insensitive; spaces, hyphens and underscores are
/// ignored, so "sky blue" finds `skyblue`).
pub fn lookup_colour(name: &str) -> Option<[u8; 3]> {
    let key: String = name
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    COLOUR_NAMES
        .binary_search_by(|(n, _)| n.cmp(&key.as_str()))
        .ok()
        .map(|i| COLOUR_NAMES[i].1)
}

/// Parses `#rgb` or `#rrggbb` (the `#` is required).
pub fn parse_hex_colour(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = hex.as_bytes();
    match b.len() {
        3 => {
            let mut out = [0u8; 3];
            for k in 0..3 {
                out[k] = digit(b[k])? * 17;
            }
            Some(out)
        }
        6 => {
            let mut out = [0u8; 3];
            for k in 0..3 {
                out[k] = digit(b[2 * k])? * 16 + digit(b[2 * k + 1])?;
            }
            Some(out)
        }
        _ => None,
    }
}

/// A word changing the colour that follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Modifier {
    Light,
    Pale,
    Dark,
    Bright,
}

impl Modifier {
    fn parse(word: &str) -> Option<Modifier> {
        match word {
            "light" | "lighter" => Some(Modifier::Light),
            "pale" | "pastel" | "soft" => Some(Modifier::Pale),
            "dark" | "darker" | "deep" => Some(Modifier::Dark),
            "bright" | "vivid" | "brilliant" => Some(Modifier::Bright),
            _ => None,
        }
    }

    fn apply(self, rgb: [u8; 3]) -> [u8; 3] {
        let c = Lab::from_rgb(rgb);
        let out = match self {
            Modifier::Light => Lab {
                l: c.l + (100.0 - c.l) * 0.45,
                a: c.a * 0.85,
                b: c.b * 0.85,
            },
            Modifier::Pale => Lab {
                l: c.l + (100.0 - c.l) * 0.55,
                a: c.a * 0.5,
                b: c.b * 0.5,
            },
            Modifier::Dark => Lab {
                l: c.l * 0.6,
                a: c.a * 0.9,
                b: c.b * 0.9,
            },
            Modifier::Bright => Lab {
                l: c.l + (100.0 - c.l) * 0.15,
                a: c.a * 1.25,
                b: c.b * 1.25,
            },
        };
        out.to_rgb_in_gamut()
    }

    fn as_str(self) -> &'static str {
        match self {
            Modifier::Light => "light",
            Modifier::Pale => "pale",
            Modifier::Dark => "dark",
            Modifier::Bright => "bright",
        }
    }
}

/// Finds the target colour in a recolour prompt: a hex code (`#1e90ff`, `#19f`) or a known
/// colour name ([`COLOUR_NAMES`]; two-word names such as "sky blue" or "navy blue" too),
/// optionally preceded by a modifier: light/lighter, pale/pastel/soft, dark/darker/deep,
/// bright/vivid. Other words are ignored, so "make it blue", "a dark red" and
/// "recolour the car to light green" all work. When several colours appear, the last one
/// wins ("make the red car blue" is blue).
///
/// Errors with [`DiffusionError::UnknownColour`] (naming the prompt and how to write a
/// colour) when none is found.
pub fn parse_colour(prompt: &str) -> Result<NamedColour> {
    let lower = prompt.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '#'))
        .filter(|w| !w.is_empty())
        .collect();
    // (start word, end word exclusive, name, rgb) of the last colour found.
    let mut found: Option<(usize, usize, String, [u8; 3])> = None;
    for i in 0..words.len() {
        if let Some(rgb) = parse_hex_colour(words[i]) {
            found = Some((i, i + 1, words[i].to_string(), rgb));
            continue;
        }
        // A two-word name ending at i + 1 takes precedence over its last word alone.
        if i + 1 < words.len() {
            let joined = format!("{}{}", words[i], words[i + 1]);
            if let Some(rgb) = lookup_colour(&joined) {
                found = Some((i, i + 2, format!("{} {}", words[i], words[i + 1]), rgb));
                continue;
            }
        }
        if let Some(rgb) = lookup_colour(words[i]) {
            let inside_previous = matches!(&found, Some((_, end, _, _)) if *end > i);
            if !inside_previous {
                found = Some((i, i + 1, words[i].to_string(), rgb));
            }
        }
    }
    let (start, _, name, rgb) = found.ok_or_else(|| DiffusionError::UnknownColour {
        prompt: prompt.to_string(),
    })?;
    if start > 0 && !name.starts_with('#') {
        if let Some(m) = Modifier::parse(words[start - 1]) {
            return Ok(NamedColour {
                name: format!("{} {}", m.as_str(), name),
                rgb: m.apply(rgb),
            });
        }
    }
    Ok(NamedColour { name, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_table_is_sorted_and_unique() {
        for pair in COLOUR_NAMES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} / {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn lab_round_trips_and_matches_reference_values() {
        // Reference values from the CIE formulas (D65), as scikit-image's rgb2lab gives them.
        let white = Lab::from_rgb([255, 255, 255]);
        assert!((white.l - 100.0).abs() < 0.01 && white.a.abs() < 0.01 && white.b.abs() < 0.01);
        let red = Lab::from_rgb([255, 0, 0]);
        assert!((red.l - 53.24).abs() < 0.05, "{red:?}");
        assert!((red.a - 80.09).abs() < 0.1, "{red:?}");
        assert!((red.b - 67.20).abs() < 0.1, "{red:?}");
        let blue = Lab::from_rgb([0, 0, 255]);
        assert!(
            (blue.l - 32.30).abs() < 0.05 && (blue.b + 107.86).abs() < 0.2,
            "{blue:?}"
        );
        for rgb in [
            [0, 0, 0],
            [12, 200, 99],
            [255, 128, 3],
            [77, 77, 77],
            [1, 2, 250],
        ] {
            assert_eq!(Lab::from_rgb(rgb).to_rgb(), rgb);
        }
    }

    #[test]
    fn out_of_gamut_colours_keep_their_hue() {
        let c = Lab {
            l: 30.0,
            a: 0.0,
            b: -140.0,
        };
        let rgb = c.to_rgb_in_gamut();
        let back = Lab::from_rgb(rgb);
        assert!((back.l - 30.0).abs() < 1.5, "{back:?}");
        assert!((back.hue_degrees() - 270.0).abs() < 8.0, "{back:?}");
    }
}
