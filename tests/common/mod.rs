//! Shared by the root test binaries: the engine-level support of `scorer-testkit`, plus the
//! throwaway virtualenv (it lives under this binary's `CARGO_TARGET_TMPDIR`).

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use scorer_testkit::engine::*;

/// A throwaway virtualenv `name` under the target directory with `packages` pip-installed, made
/// once per target directory and reused while `import` still runs in it. Returns its python.
pub fn venv(name: &str, packages: &[&str], import: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin/python");
    let imports = |py: &Path| {
        Command::new(py)
            .args(["-c", import])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !imports(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv {}", dir.display());
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install {packages:?}");
    }
    assert!(imports(&python), "`{import}` runs in {}", dir.display());
    python
}
