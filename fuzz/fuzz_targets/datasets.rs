//! Dataset index loaders (`cielr_eval::datasets`): the first byte picks the JSONL manifest,
//! CIEBench's `benchmark.json` or the Reason-Edit index, the rest is the index file, written
//! into a scratch dataset folder. Every sample path must stay inside that folder.
#![no_main]
use std::path::{Component, Path};

use cielr_eval::datasets::{load_ciebench, load_manifest, load_reason_edit, resolve_in, Dataset};
use libfuzzer_sys::fuzz_target;

fn confined(ds: &Dataset, root: &Path) {
    for s in ds.entries.iter().flatten() {
        let paths = std::iter::once(&s.image)
            .chain(&s.masks)
            .chain(s.scene.as_ref());
        for p in paths {
            assert!(
                p.starts_with(root),
                "{} leaves {}",
                p.display(),
                root.display()
            );
            let rel = p.strip_prefix(root).unwrap();
            assert!(
                rel.components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                "{} escapes",
                p.display()
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let root = std::env::temp_dir().join(format!("cielr-fuzz-ds-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&root);
    match k % 4 {
        0 => {
            let file = root.join("set.jsonl");
            std::fs::write(&file, rest).unwrap();
            if let Ok(ds) = load_manifest(&file) {
                confined(&ds, &root);
            }
        }
        1 => {
            std::fs::write(root.join("benchmark.json"), rest).unwrap();
            if let Ok(ds) = load_ciebench(&root) {
                confined(&ds, &root);
            }
        }
        2 => {
            std::fs::write(root.join("Reason_test.txt"), rest).unwrap();
            if let Ok(ds) = load_reason_edit(&root) {
                confined(&ds, &root);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(p) = resolve_in(&root, &text) {
                assert!(p.starts_with(&root));
            }
        }
    }
});
