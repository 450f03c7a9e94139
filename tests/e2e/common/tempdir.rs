//! Temporary directories for tests, removed with everything in them when dropped. The standard
//! library only: a test-only crate (tempfile) would change the features of crates the product
//! shares with it, and so make `cargo test` rebuild what `cargo build` has just built. Included
//! by the end-to-end tests and, by `#[path]`, by the library's unit tests (`src/lib.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory under the system's temporary directory, deleted on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates an empty directory named `PREFIX-PID-N-NANOS` (never one that exists already).
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = CREATED.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path =
                std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> TempDir {
    match TempDir::new("token-console-test") {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}
