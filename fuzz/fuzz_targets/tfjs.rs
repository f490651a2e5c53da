//! TF.js graph-model reader: `model.json` (bytes up to the first 0xFF, which valid UTF-8 never
//! holds) and the weight shards (the rest, cut into the groups' declared sizes).
#![no_main]
use cielr_scene::tfjs::{ModelManifest, TfjsModel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (json, rest) = (&data[..cut], data.get(cut + 1..).unwrap_or(&[]));
    let Ok(manifest) = ModelManifest::parse(json) else {
        return;
    };
    let mut groups = Vec::new();
    let mut rest = rest;
    for (i, g) in manifest.groups.iter().enumerate() {
        let want = if i + 1 == manifest.groups.len() {
            rest.len()
        } else {
            usize::try_from(g.stored_bytes())
                .unwrap_or(usize::MAX)
                .min(rest.len())
        };
        groups.push(rest[..want].to_vec());
        rest = &rest[want..];
    }
    if let Ok(model) = TfjsModel::from_manifest(manifest, &groups) {
        for t in model.weights.values() {
            assert_eq!(t.shape.iter().product::<usize>(), t.len());
        }
    }
});
