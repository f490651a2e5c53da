//! Image decoding with limits (`io::load_rgb`, `io::load_gray`): any bytes give an image
//! within the size limits or an error.
#![no_main]
use cielr_core::io::{load_gray, load_rgb, MAX_IMAGE_SIDE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = cielr_fuzz::scratch_file("image.png", data);
    if let Ok(img) = load_rgb(&path) {
        assert!(img.width() <= MAX_IMAGE_SIDE && img.height() <= MAX_IMAGE_SIDE);
        let gray = load_gray(&path).expect("an image that decodes as RGB decodes as grey");
        assert_eq!(gray.dimensions(), img.dimensions());
    }
});
