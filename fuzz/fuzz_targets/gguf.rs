//! GGUF reader: header, metadata, tensor directory and every tensor's data.
#![no_main]
use cielr_planner::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = cielr_fuzz::scratch_file("model.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let _ = file.get_str_array("tokenizer.ggml.tokens");
    let _ = file.get_f32_array("tokenizer.ggml.scores");
    let _ = file.get_i32_array("tokenizer.ggml.token_type");
    for name in file.tensor_names() {
        if let Ok((shape, values)) = file.tensor_f32(&name) {
            assert_eq!(shape.iter().product::<usize>(), values.len());
        }
    }
});
