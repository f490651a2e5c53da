//! COCO RLE: the compressed-string decoder, masks from strings and from plain counts (the
//! first 4 bytes give the mask's height and width, 2 bytes each), and the round trip.
#![no_main]
use cielr_core::mask::decode_rle_string;
use cielr_core::Mask;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let h = u16::from_le_bytes([data[0], data[1]]) as u32;
    let w = u16::from_le_bytes([data[2], data[3]]) as u32;
    let Ok(text) = std::str::from_utf8(&data[4..]) else {
        return;
    };
    if let Ok(counts) = decode_rle_string(text) {
        let _ = Mask::from_coco_counts(w, h, &counts);
    }
    if let Ok(mask) = Mask::from_coco_string(w, h, text) {
        let back = Mask::from_coco_string(w, h, &mask.to_coco_string()).expect("round trip");
        assert_eq!(mask, back);
        let _ = mask.bbox();
        let _ = mask.centroid();
    }
});
