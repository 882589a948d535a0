//! The deployment files, checked offline by `deploy/check.py`: the kustomize overlays render and
//! validate (core kinds against the Kubernetes schemas of `kubernetes-validate`, KEDA's kinds
//! against its CRD schemas in `deploy/schemas/`), their cross-references hold,
//! `docker-compose.yml` matches the Compose specification, and the Prometheus rules pass
//! `promtool check rules` and their own `promtool test rules`. The Python packages go into a
//! virtualenv under the target directory; `kubectl` (or `kustomize`) must be on PATH, and
//! `promtool` is taken from PATH or unpacked from Debian's `prometheus` package.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn deployment_files_validate() {
    let python = common::venv(
        "deploy-venv",
        &["kubernetes-validate==1.37.0", "jsonschema", "PyYAML"],
        "import kubernetes_validate, jsonschema, yaml",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&python)
        .arg(root.join("deploy/check.py"))
        .arg("--cache")
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-check"))
        .output()
        .expect("deploy/check.py runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("all deployment checks passed"), "{report}");
}
