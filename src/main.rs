//! The `cielr` command line.

mod cli;

/// The models' many large short-lived tensors are slow under glibc malloc (docs/performance.md,
/// "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    cielr::keep_freed_memory();
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
