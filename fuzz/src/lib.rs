//! Helpers shared by the fuzz targets: an allocation limit (so that a reader allocating
//! gigabytes for a small input is reported as a crash, with or without a sanitizer) and a
//! scratch file for readers that only take paths.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;

/// The largest single allocation allowed, in bytes (`CIELR_FUZZ_ALLOC_LIMIT_MB`, default
/// 1024): a reader asking for more on fuzzer-sized inputs is a bug.
fn limit() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static LIMIT: AtomicUsize = AtomicUsize::new(0);
    let l = LIMIT.load(Ordering::Relaxed);
    if l != 0 {
        return l;
    }
    // Reading the environment allocates; the allocator is re-entered with small sizes only.
    let mb = std::env::var("CIELR_FUZZ_ALLOC_LIMIT_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    let l = mb.saturating_mul(1 << 20).max(1);
    LIMIT.store(l, Ordering::Relaxed);
    l
}

/// The system allocator with a limit on the size of one allocation.
pub struct LimitedAlloc;

fn too_large(size: usize) -> ! {
    // No allocation here: write the message with a fixed buffer and abort, which libFuzzer
    // records as a crash with the input that caused it.
    let mut buf = [0u8; 96];
    let msg = b"cielr-fuzz: allocation of ";
    let mut n = 0;
    for &b in msg {
        buf[n] = b;
        n += 1;
    }
    let mut digits = [0u8; 20];
    let mut d = 0;
    let mut v = size;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    for &b in b" bytes exceeds the limit\n" {
        buf[n] = b;
        n += 1;
    }
    unsafe {
        libc_write(2, buf.as_ptr(), n);
    }
    std::process::abort()
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > (1 << 24) && layout.size() > limit() {
            too_large(layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > (1 << 24) && layout.size() > limit() {
            too_large(layout.size());
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > (1 << 24) && new_size > limit() {
            too_large(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

/// A scratch file private to this process (in `/dev/shm` when there is one), rewritten with
/// `data` on every call; for readers that take a path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("cielr-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("writing the scratch file");
    path
}

/// The SSR of `assets/coffee.ssr.json`, the scene the reasoning targets plan over.
pub fn coffee_scene() -> cielr_core::Scene {
    cielr_core::Scene::from_json(include_str!("../../assets/coffee.ssr.json"))
        .expect("the coffee SSR parses")
}

/// Splits `data` at byte `0x1e` (ASCII record separator) into UTF-8 strings (lossy).
pub fn records(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0x1e)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[path = "../../crates/cielr-core/tests/support/json_close.rs"]
mod json_close;
pub use json_close::json_close;
