//! GGUF reader: header, metadata, tensor directory and every tensor's data; matrices in a
//! block format are also unpacked as stored (`QuantMatrix`, decode steps), must dequantise to
//! the reader's values and multiply without a panic.
#![no_main]
use cielr_planner::gguf::GgufFile;
use cielr_planner::quant::QuantMatrix;
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
        let Ok((shape, values)) = file.tensor_f32(&name) else {
            continue;
        };
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let (Ok((info, bytes)), &[rows, cols]) = (file.tensor_bytes(&name), shape.as_slice())
        else {
            continue;
        };
        if !QuantMatrix::supports(info.dtype) {
            continue;
        }
        let Ok(q) = QuantMatrix::from_gguf(info.dtype, rows, cols, &bytes) else {
            continue;
        };
        let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
        let unpacked = q.dequantize();
        assert!(unpacked.len() == values.len());
        assert!(unpacked.iter().zip(&values).all(|(&a, &b)| same(a, b)));
        let y = q.matmul(&vec![1.0; cols]).expect("one whole input row");
        assert_eq!(y.len(), rows);
    }
});
