//! Image files: format detected from the bytes (not the extension), with size limits against
//! decompression bombs.

use std::path::Path;

use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::{CoreError, Result};

/// Largest width or height accepted when decoding.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest decoder allocation accepted, in bytes.
pub const MAX_IMAGE_ALLOC: u64 = 1 << 30;
/// Largest ratio of decoded bytes to file bytes accepted for images that decode to more than
/// [`RATIO_CHECK_BYTES`]. Deflate cannot expand more than about 1032:1 and a flat-colour JPEG
/// stays under 200:1, so only decompression bombs and truncated files (which decoders pad
/// out) exceed it: a 263-byte progressive JPEG claiming 15112x13824 pixels made the decoder
/// allocate and fill 1.4 GB (found by fuzzing).
pub const MAX_DECODE_RATIO: u64 = 4096;
/// Decoded size above which [`MAX_DECODE_RATIO`] is checked.
pub const RATIO_CHECK_BYTES: u64 = 64 << 20;

fn decode(path: &Path) -> Result<DynamicImage> {
    let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| CoreError::io(path, e))?.len();
    // No format from the extension: datasets hold JPEG bytes in files named .png.
    let mut reader = ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| CoreError::io(path, e))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(CoreError::Image {
            context: format!("{}: not a PNG or JPEG file", path.display()),
            source: image::ImageError::Unsupported(
                image::error::UnsupportedError::from_format_and_kind(
                    image::error::ImageFormatHint::Unknown,
                    image::error::UnsupportedErrorKind::Format(
                        image::error::ImageFormatHint::Unknown,
                    ),
                ),
            ),
        });
    }
    let err = |e| CoreError::Image {
        context: format!("decoding {}", path.display()),
        source: e,
    };
    // The header is read (and the size limits applied) before any pixel is allocated.
    let decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    let decoded = decoder.total_bytes();
    if decoded > RATIO_CHECK_BYTES && decoded / file_len.max(1) > MAX_DECODE_RATIO {
        return Err(CoreError::Image {
            context: format!(
                "decoding {}: the header claims {w}x{h} pixels ({decoded} bytes decoded) from a \
                 {file_len}-byte file, more than {MAX_DECODE_RATIO} times its size (a \
                 decompression bomb or a truncated file)",
                path.display()
            ),
            source: image::ImageError::Limits(image::error::LimitError::from_kind(
                image::error::LimitErrorKind::InsufficientMemory,
            )),
        });
    }
    DynamicImage::from_decoder(decoder).map_err(err)
}

/// Reads a PNG or JPEG (whatever the extension says) as 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode(path)?.to_rgb8())
}

/// Reads a PNG or JPEG as 8-bit greyscale (for masks).
pub fn load_gray(path: &Path) -> Result<GrayImage> {
    Ok(decode(path)?.to_luma8())
}

/// Writes an image; the format follows the extension (PNG or JPEG).
pub fn save_rgb(image: &RgbImage, path: &Path) -> Result<()> {
    image.save(path).map_err(|e| CoreError::Image {
        context: format!("writing {}", path.display()),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_the_bytes() {
        let dir = std::env::temp_dir().join(format!("cielr-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        let jpeg_named_png = dir.join("a.png");
        img.save_with_format(&jpeg_named_png, image::ImageFormat::Jpeg)
            .unwrap();
        let back = load_rgb(&jpeg_named_png).unwrap();
        assert_eq!(back.dimensions(), (8, 6));
        let junk = dir.join("junk.png");
        std::fs::write(&junk, b"not an image at all").unwrap();
        assert!(load_rgb(&junk)
            .unwrap_err()
            .to_string()
            .contains("not a PNG or JPEG"));
        assert!(matches!(
            load_rgb(&dir.join("missing.png")),
            Err(CoreError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
