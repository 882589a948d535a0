//! Finding PJRT plugins by name, and preparing a CUDA plugin's libraries before it opens.
//!
//! Why: users who run JAX already hold the plugins as wheels — `jax-cuda13-pjrt`
//! (`jax_plugins/xla_cuda13/xla_cuda_plugin.so`), `jax-cuda12-pjrt` (`xla_cuda12`),
//! `libtpu` (`libtpu/libtpu.so`) — so `--pjrt-plugin cuda13` should find them without a
//! path. We ask each Python interpreter for its `sys.path` (one `python -c` that imports
//! only `sys` and `json`; no package is imported) and look for those files; a plugin
//! fetched by `scorer fetch --plugin cuda13` under `SCORER_HOME` comes first.
//!
//! The CUDA plugin dlopens the NVIDIA runtime (cudart, cuBLAS, cuDNN, NCCL, ...) by
//! soname. Its RPATH points at `$ORIGIN/../../nvidia/*/lib`, which holds in a
//! site-packages layout (and in the one `scorer fetch` unpacks), and JAX preloads the
//! same libraries with `RTLD_GLOBAL` in case they live elsewhere. We do what JAX does:
//! before opening a plugin, [`preload_for`] loads the libraries listed in a
//! `scorer-plugin.json` beside it (written by `scorer fetch`), or, without one, the
//! NVIDIA libraries found in the `nvidia/` directory two levels up.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// A plugin that can be named instead of given as a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginName {
    /// XLA's CPU plugin (`xla-cpu-pjrt`, the default).
    Cpu,
    /// NVIDIA GPUs, CUDA 13 (`jax-cuda13-pjrt`).
    Cuda13,
    /// NVIDIA GPUs, CUDA 12 (`jax-cuda12-pjrt`).
    Cuda12,
    /// Cloud TPU (`libtpu`).
    Tpu,
}

impl PluginName {
    pub const ALL: [PluginName; 4] = [
        PluginName::Cpu,
        PluginName::Cuda13,
        PluginName::Cuda12,
        PluginName::Tpu,
    ];

    pub fn parse(s: &str) -> Option<PluginName> {
        match s {
            "cpu" => Some(PluginName::Cpu),
            "cuda13" | "cuda" | "gpu" => Some(PluginName::Cuda13),
            "cuda12" => Some(PluginName::Cuda12),
            "tpu" => Some(PluginName::Tpu),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PluginName::Cpu => "cpu",
            PluginName::Cuda13 => "cuda13",
            PluginName::Cuda12 => "cuda12",
            PluginName::Tpu => "tpu",
        }
    }

    /// Where the plugin file sits inside a site-packages directory.
    pub fn site_packages_path(self) -> &'static str {
        match self {
            PluginName::Cpu => "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so",
            PluginName::Cuda13 => "jax_plugins/xla_cuda13/xla_cuda_plugin.so",
            PluginName::Cuda12 => "jax_plugins/xla_cuda12/xla_cuda_plugin.so",
            PluginName::Tpu => "libtpu/libtpu.so",
        }
    }

    /// The NVIDIA libraries to preload, as paths under a site-packages directory, in the
    /// order JAX loads them (`jax_plugins/xla_cuda13/__init__.py`).
    pub fn nvidia_libraries(self) -> &'static [&'static str] {
        match self {
            PluginName::Cuda13 => &[
                "nvidia/cu13/lib/libcudart.so.13",
                "nvidia/cu13/lib/libnvrtc.so.13",
                "nvidia/cu13/lib/libnvJitLink.so.13",
                "nvidia/cu13/lib/libcublasLt.so.13",
                "nvidia/cu13/lib/libcublas.so.13",
                "nvidia/nccl/lib/libnccl.so.2",
                "nvidia/cu13/lib/libcupti.so.13",
                "nvidia/cu13/lib/libcusparse.so.12",
                "nvidia/cu13/lib/libcusolver.so.12",
                "nvidia/cu13/lib/libcufft.so.12",
                "nvidia/nvshmem/lib/libnvshmem_host.so.3",
                "nvidia/cudnn/lib/libcudnn.so.9",
            ],
            PluginName::Cuda12 => &[
                "nvidia/cuda_runtime/lib/libcudart.so.12",
                "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
                "nvidia/nvjitlink/lib/libnvJitLink.so.12",
                "nvidia/cublas/lib/libcublasLt.so.12",
                "nvidia/cublas/lib/libcublas.so.12",
                "nvidia/nccl/lib/libnccl.so.2",
                "nvidia/cuda_cupti/lib/libcupti.so.12",
                "nvidia/cusparse/lib/libcusparse.so.12",
                "nvidia/cusolver/lib/libcusolver.so.11",
                "nvidia/cufft/lib/libcufft.so.11",
                "nvidia/nvshmem/lib/libnvshmem_host.so.3",
                "nvidia/cudnn/lib/libcudnn.so.9",
            ],
            PluginName::Cpu | PluginName::Tpu => &[],
        }
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin could not be found or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("unknown PJRT plugin name '{0}' (expected a path, or cpu, cuda13, cuda12 or tpu)")]
    UnknownName(String),
    #[error("{}", not_found_message(*name, looked))]
    NotFound {
        name: PluginName,
        looked: Vec<PathBuf>,
    },
    #[error("{path}: {why}")]
    Sidecar { path: PathBuf, why: String },
    #[error("preloading {path} for the PJRT plugin: {why}")]
    Preload { path: PathBuf, why: String },
}

fn not_found_message(name: PluginName, looked: &[PathBuf]) -> String {
    let hint = match name {
        PluginName::Cpu => "run `scorer fetch --plugin`",
        PluginName::Cuda13 => {
            "run `scorer fetch --plugin cuda13`, or `pip install jax-cuda13-pjrt` with its NVIDIA libraries"
        }
        PluginName::Cuda12 => "`pip install jax-cuda12-pjrt` with its NVIDIA libraries",
        PluginName::Tpu => "`pip install libtpu` (on a TPU VM)",
    };
    let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no {name} PJRT plugin found ({hint}); looked at: {}",
        if looked.is_empty() {
            "nothing (no Python interpreter answered)".to_string()
        } else {
            looked.join(", ")
        }
    )
}

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Given as a path (or a bare file name left to the dynamic loader).
    Path,
    /// An environment variable (`SCORER_PJRT_PLUGIN`, `TPU_LIBRARY_PATH`).
    Env(&'static str),
    /// Fetched under `SCORER_HOME`.
    ScorerHome,
    /// A `sys.path` entry of a Python interpreter.
    Python { interpreter: String, dir: PathBuf },
}

/// A plugin file and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub name: Option<PluginName>,
    pub origin: Origin,
}

/// The environment discovery reads, gathered once so that tests can supply their own.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub scorer_home: PathBuf,
    /// `SCORER_PJRT_PLUGIN` (the explicit CPU default).
    pub scorer_pjrt_plugin: Option<PathBuf>,
    /// `TPU_LIBRARY_PATH` (what JAX honours for libtpu).
    pub tpu_library_path: Option<PathBuf>,
    /// Directories to search, each with the interpreter that reported it.
    pub python_dirs: Vec<(String, PathBuf)>,
}

impl Env {
    /// The process environment; `python_dirs` from every interpreter of [`interpreters`].
    pub fn from_process() -> Env {
        Env {
            scorer_home: crate::home::scorer_home(),
            scorer_pjrt_plugin: non_empty(std::env::var_os("SCORER_PJRT_PLUGIN")),
            tpu_library_path: non_empty(std::env::var_os("TPU_LIBRARY_PATH")),
            python_dirs: interpreters()
                .into_iter()
                .flat_map(|py| {
                    python_sys_path(&py)
                        .into_iter()
                        .map(move |d| (py.clone(), d))
                })
                .collect(),
        }
    }
}

fn non_empty(v: Option<OsString>) -> Option<PathBuf> {
    v.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Interpreters to ask, in order: `SCORER_PYTHON`, the active virtualenv's `python`,
/// then `python3` from `PATH`.
pub fn interpreters() -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("SCORER_PYTHON").filter(|p| !p.is_empty()) {
        out.push(p.to_string_lossy().into_owned());
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        let py = PathBuf::from(venv).join("bin").join("python");
        if py.exists() {
            out.push(py.to_string_lossy().into_owned());
        }
    }
    out.push("python3".to_string());
    out.dedup();
    out
}

/// The existing directories of `python`'s `sys.path`, or none if it cannot be run.
pub fn python_sys_path(python: &str) -> Vec<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import sys, json; print(json.dumps(sys.path))"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    let dirs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    dirs.into_iter()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .collect()
}

/// Where `scorer fetch --plugin cuda13` unpacks the CUDA 13 plugin (a site-packages
/// layout: `jax_plugins/` and `nvidia/` side by side).
pub fn fetched_root(home: &Path, name: PluginName) -> Option<PathBuf> {
    match name {
        PluginName::Cuda13 => Some(home.join("plugins").join("jax-cuda13-pjrt-0.11.2")),
        _ => None,
    }
}

/// Every place a plugin of `name` may be, in search order.
pub fn candidates(name: PluginName, env: &Env) -> Vec<Located> {
    let mut out = Vec::new();
    match name {
        PluginName::Cpu => {
            if let Some(p) = &env.scorer_pjrt_plugin {
                out.push(Located {
                    path: p.clone(),
                    name: Some(name),
                    origin: Origin::Env("SCORER_PJRT_PLUGIN"),
                });
            }
            out.push(Located {
                path: super::plugin::plugin_path_in(&env.scorer_home),
                name: Some(name),
                origin: Origin::ScorerHome,
            });
        }
        PluginName::Tpu => {
            if let Some(p) = &env.tpu_library_path {
                out.push(Located {
                    path: p.clone(),
                    name: Some(name),
                    origin: Origin::Env("TPU_LIBRARY_PATH"),
                });
            }
        }
        PluginName::Cuda13 | PluginName::Cuda12 => {}
    }
    if let Some(root) = fetched_root(&env.scorer_home, name) {
        out.push(Located {
            path: root.join(name.site_packages_path()),
            name: Some(name),
            origin: Origin::ScorerHome,
        });
    }
    for (py, dir) in &env.python_dirs {
        let path = dir.join(name.site_packages_path());
        if !out.iter().any(|c| c.path == path) {
            out.push(Located {
                path,
                name: Some(name),
                origin: Origin::Python {
                    interpreter: py.clone(),
                    dir: dir.clone(),
                },
            });
        }
    }
    out
}

/// The first existing plugin of `name`.
pub fn locate(name: PluginName, env: &Env) -> Result<Located, DiscoverError> {
    let all = candidates(name, env);
    match all.iter().find(|c| c.path.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(DiscoverError::NotFound {
            name,
            looked: all.into_iter().map(|c| c.path).collect(),
        }),
    }
}

/// Every plugin present, of every name (for `scorer`'s listing and the device check).
pub fn discover_all(env: &Env) -> Vec<Located> {
    PluginName::ALL
        .iter()
        .flat_map(|&n| candidates(n, env).into_iter().filter(|c| c.path.is_file()))
        .collect()
}

/// Resolves a `--pjrt-plugin` value: a name (`cpu`, `cuda13`, `cuda12`, `tpu`) is looked
/// up in `SCORER_HOME` and the Python environments; anything else is a path (a bare file
/// name is left to the dynamic loader, as before).
pub fn resolve_plugin(spec: &str) -> Result<PathBuf, DiscoverError> {
    resolve_plugin_in(spec, &Env::from_process)
}

/// [`resolve_plugin`] with the environment supplied lazily (a path never runs Python).
pub fn resolve_plugin_in(spec: &str, env: &dyn Fn() -> Env) -> Result<PathBuf, DiscoverError> {
    let looks_like_path = spec.contains('/') || spec.ends_with(".so") || Path::new(spec).exists();
    if looks_like_path {
        return Ok(PathBuf::from(spec));
    }
    let name = PluginName::parse(spec).ok_or_else(|| DiscoverError::UnknownName(spec.into()))?;
    Ok(locate(name, &env())?.path)
}

/// The file `scorer fetch` writes beside a plugin it unpacked.
pub const SIDECAR: &str = "scorer-plugin.json";

/// `scorer-plugin.json`: which plugin this is and the libraries to load before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub name: String,
    pub version: String,
    /// Directories holding the libraries the plugin needs (relative to the sidecar's
    /// directory, or absolute): the `LD_LIBRARY_PATH` a user would otherwise set.
    pub library_dirs: Vec<PathBuf>,
    /// Libraries to load with `RTLD_GLOBAL` before the plugin, in order (same rule).
    pub preload: Vec<PathBuf>,
}

impl Sidecar {
    pub fn read(path: &Path) -> Result<Sidecar, DiscoverError> {
        let err = |why: String| DiscoverError::Sidecar {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// What to preload before opening `plugin`: the sidecar's list (every entry must exist),
/// else the known NVIDIA libraries present under `../../nvidia` of a `jax_plugins`
/// layout, else nothing.
pub fn preload_list(plugin: &Path) -> Result<Vec<PathBuf>, DiscoverError> {
    let Some(dir) = plugin.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(Vec::new()); // a bare name left to the dynamic loader
    };
    let sidecar = dir.join(SIDECAR);
    if sidecar.is_file() {
        let s = Sidecar::read(&sidecar)?;
        return s
            .preload
            .iter()
            .map(|p| {
                let full = dir.join(p);
                if full.is_file() {
                    Ok(full)
                } else {
                    Err(DiscoverError::Sidecar {
                        path: sidecar.clone(),
                        why: format!(
                            "lists {} which does not exist (fetch again)",
                            full.display()
                        ),
                    })
                }
            })
            .collect();
    }
    let name = match dir.file_name().and_then(|n| n.to_str()) {
        Some("xla_cuda13") => PluginName::Cuda13,
        Some("xla_cuda12") => PluginName::Cuda12,
        _ => return Ok(Vec::new()),
    };
    let Some(site) = dir.parent().and_then(Path::parent) else {
        return Ok(Vec::new());
    };
    Ok(name
        .nvidia_libraries()
        .iter()
        .map(|rel| site.join(rel))
        .filter(|p| p.is_file())
        .collect())
}

/// Loads [`preload_list`]`(plugin)` with `RTLD_NOW | RTLD_GLOBAL`, once per process per
/// library; the handles stay open for the process, like the plugin's.
pub fn preload_for(plugin: &Path) -> Result<Vec<PathBuf>, DiscoverError> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let list = preload_list(plugin)?;
    for lib in &list {
        // SAFETY: loading a shared library runs its initializers; these are the NVIDIA
        // runtime libraries the plugin itself would load.
        let handle = unsafe { Library::open(Some(lib), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| {
            DiscoverError::Preload {
                path: lib.clone(),
                why: e.to_string(),
            }
        })?;
        std::mem::forget(handle);
        tracing::debug!(library = %lib.display(), "preloaded for the PJRT plugin");
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(home: &Path, dirs: &[&Path]) -> Env {
        Env {
            scorer_home: home.to_path_buf(),
            scorer_pjrt_plugin: None,
            tpu_library_path: None,
            python_dirs: dirs
                .iter()
                .map(|d| ("python3".to_string(), d.to_path_buf()))
                .collect(),
        }
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn names_parse_and_paths_pass_through() {
        assert_eq!(PluginName::parse("cuda13"), Some(PluginName::Cuda13));
        assert_eq!(PluginName::parse("tpu"), Some(PluginName::Tpu));
        assert_eq!(PluginName::parse("rocm"), None);
        let never = || -> Env { panic!("a path must not run discovery") };
        assert_eq!(
            resolve_plugin_in("/opt/x/libtpu.so", &never).unwrap(),
            PathBuf::from("/opt/x/libtpu.so")
        );
        assert_eq!(
            resolve_plugin_in("libtpu.so", &never).unwrap(),
            PathBuf::from("libtpu.so")
        );
        let err = resolve_plugin_in("rocm", &Env::default).unwrap_err();
        assert!(
            err.to_string().contains("unknown PJRT plugin name 'rocm'"),
            "{err}"
        );
    }

    #[test]
    fn finds_plugins_in_python_dirs_after_scorer_home() {
        let root = std::env::temp_dir().join(format!("scorer-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = root.join("home");
        let venv = root.join("venv/lib/python3.12/site-packages");
        let user = root.join("user-site");
        touch(&venv.join("jax_plugins/xla_cuda13/xla_cuda_plugin.so"));
        touch(&user.join("libtpu/libtpu.so"));
        let e = env(&home, &[&venv, &user]);

        let cuda = locate(PluginName::Cuda13, &e).unwrap();
        assert_eq!(
            cuda.path,
            venv.join("jax_plugins/xla_cuda13/xla_cuda_plugin.so")
        );
        assert!(matches!(cuda.origin, Origin::Python { .. }));
        assert_eq!(
            resolve_plugin_in("tpu", &|| e.clone()).unwrap(),
            user.join("libtpu/libtpu.so")
        );
        let missing = locate(PluginName::Cuda12, &e).unwrap_err().to_string();
        assert!(missing.contains("no cuda12 PJRT plugin found"), "{missing}");
        assert!(
            missing.contains("xla_cuda12/xla_cuda_plugin.so"),
            "{missing}"
        );

        // A fetched plugin under SCORER_HOME wins over the Python environment.
        let fetched = fetched_root(&home, PluginName::Cuda13)
            .unwrap()
            .join(PluginName::Cuda13.site_packages_path());
        touch(&fetched);
        assert_eq!(locate(PluginName::Cuda13, &e).unwrap().path, fetched);
        assert_eq!(discover_all(&e).len(), 3); // fetched + venv cuda13, libtpu
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn preload_list_reads_the_sidecar_or_the_nvidia_layout() {
        let root = std::env::temp_dir().join(format!("scorer-preload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let plugin = root.join("jax_plugins/xla_cuda13/xla_cuda_plugin.so");
        touch(&plugin);
        assert!(preload_list(&plugin).unwrap().is_empty());
        touch(&root.join("nvidia/cu13/lib/libcudart.so.13"));
        touch(&root.join("nvidia/cudnn/lib/libcudnn.so.9"));
        assert_eq!(
            preload_list(&plugin).unwrap(),
            vec![
                root.join("nvidia/cu13/lib/libcudart.so.13"),
                root.join("nvidia/cudnn/lib/libcudnn.so.9")
            ]
        );
        let sidecar = Sidecar {
            name: "cuda13".into(),
            version: "0.11.2".into(),
            library_dirs: vec!["../../nvidia/cu13/lib".into()],
            preload: vec!["../../nvidia/cu13/lib/libmissing.so.1".into()],
        };
        std::fs::write(
            plugin.with_file_name(SIDECAR),
            serde_json::to_string(&sidecar).unwrap(),
        )
        .unwrap();
        let err = preload_list(&plugin).unwrap_err().to_string();
        assert!(
            err.contains("libmissing.so.1") && err.contains("does not exist"),
            "{err}"
        );

        // A listed library that exists is loaded (RTLD_GLOBAL) before the plugin.
        let real = Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1");
        if real.is_file() {
            let sidecar = Sidecar {
                preload: vec![real.to_path_buf()],
                ..sidecar
            };
            std::fs::write(
                plugin.with_file_name(SIDECAR),
                serde_json::to_string(&sidecar).unwrap(),
            )
            .unwrap();
            assert_eq!(preload_for(&plugin).unwrap(), vec![real.to_path_buf()]);
        } else {
            println!("SKIPPED the dlopen half: no {}", real.display());
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
