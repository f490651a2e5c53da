//! Shared by the `fuzz_regressions` tests of `cielr-core`, `cielr-planner` and `cielr-scene`
//! (each includes this file with `#[path = ...] mod fuzz_support;`): a counting allocator
//! that records the largest single allocation per thread, so a test can check that hostile
//! input is refused before anything large is allocated; the reader of the inputs the fuzz
//! targets found (`tests/fixtures/fuzz-regressions/<target>/` of the including crate); and a
//! scratch-file writer. Including the module installs the allocator as the test binary's
//! global allocator.

// Each including test uses only part of this.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// The system allocator, recording the largest single allocation per thread.
pub struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size);
        }
    });
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(Cell::get))
}

/// Every input kept for fuzz target `target` (the files of the including crate's
/// `tests/fixtures/fuzz-regressions/<target>/`, sorted by name) with its bytes; panics when
/// there are none, so a test over them cannot pass vacuously.
pub fn fixtures(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz-regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Writes `bytes` to `name` in a temporary folder of this crate's test process.
pub fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{}-fuzz-regressions-{}",
        env!("CARGO_PKG_NAME"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Guards the tests that bound allocations: the allocator does record a large one.
#[test]
fn the_counting_allocator_sees_a_large_allocation() {
    let (v, peak) = peak_during(|| std::hint::black_box(vec![1u8; 2 * MIB]));
    assert_eq!(v.len(), 2 * MIB);
    assert!(peak >= 2 * MIB, "{peak}");
}
