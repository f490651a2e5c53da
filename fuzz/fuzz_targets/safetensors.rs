//! safetensors reader (`TensorStore`): header, offsets and every tensor as f32.
#![no_main]
use std::path::PathBuf;

use cielr_core::weights::TensorStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(store) =
        TensorStore::from_buffers(vec![(PathBuf::from("fuzz.safetensors"), data.to_vec())])
    else {
        return;
    };
    let _ = store.describe();
    for name in store.names() {
        let shape = store.shape(name).unwrap_or_default();
        if let Ok((s, values)) = store.read(name) {
            assert_eq!(s, shape);
            assert_eq!(s.iter().product::<usize>(), values.len());
        }
        let _ = store.read_f32(name, &shape);
        let _ = store.read_f32(name, &[]);
    }
});
