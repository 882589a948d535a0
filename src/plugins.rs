//! `scorer fetch --plugin NAME`: the PJRT plugins `scorer` can fetch, and the CUDA 13 one.
//!
//! `cpu` is the `xla-cpu-pjrt` artifact of [`crate::fetch`]. `cuda13` is `jax-cuda13-pjrt`
//! 0.11.2 plus the NVIDIA runtime wheels it needs: the `with-cuda` extra of
//! `jax-cuda13-plugin` 0.11.2 (its METADATA: cuBLAS, CUPTI, NVCC for `ptxas`, the CUDA
//! runtime, cuDNN, cuFFT, cuSOLVER, cuSPARSE, NCCL, nvJitLink, NVRTC, NVSHMEM, NVVM for
//! `libdevice`), pinned to the newest CUDA 13 release of each with its sha256. Header-only
//! dependencies of those wheels (`nvidia-cuda-crt`, `nvidia-cuda-cccl`) are not needed at
//! run time and are left out.
//!
//! The wheels are unpacked side by side, as pip would into site-packages, under
//! `SCORER_HOME/plugins/jax-cuda13-pjrt-0.11.2/`: the plugin's RPATH
//! (`$ORIGIN/../../nvidia/cu13/lib`, `.../cudnn/lib`, `.../nccl/lib`) and its CUDA root
//! search (`../../nvidia/cu13` for `bin/ptxas` and `nvvm/libdevice`) then resolve inside
//! it. `jax_plugins/xla_cuda13/scorer-plugin.json` records the library directories and the
//! libraries the engine preloads with `RTLD_GLOBAL` before opening the plugin, as JAX does
//! (`scorer_engine::pjrt::discover`). Nothing from the wheels is imported or executed.
//! The download is large (about 2.5 GB of wheels).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use scorer_engine::pjrt::discover::{self, PluginName, SIDECAR, Sidecar};

use crate::fetch::{self, FetchOutcome, Wheel};

/// The CUDA 13 plugin and its runtime, in the order JAX lists them.
pub static CUDA13_WHEELS: &[Wheel] = &[
    Wheel::new(
        "jax-cuda13-pjrt",
        "0.11.2",
        "e5ff589d43064913bb74027682d89639c7ea48f9f81c2bae6fc75117e913f93e",
    ),
    Wheel::new(
        "nvidia-cuda-runtime",
        "13.5.37",
        "df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d",
    ),
    Wheel::new(
        "nvidia-cuda-nvrtc",
        "13.5.37",
        "86b4d68058807988b7d9af5b44917a0601e9c337f35ccd657bfb3c759ff8d8bc",
    ),
    Wheel::new(
        "nvidia-nvjitlink",
        "13.5.37",
        "280d7cb9649704145f074b8dbde500de04ce02d0872e066e20a83c17bcaa93eb",
    ),
    Wheel::new(
        "nvidia-cublas",
        "13.10.0.20",
        "dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84",
    ),
    Wheel::new(
        "nvidia-cuda-cupti",
        "13.5.25",
        "9dcca41c12a734192b14e7128ae116bc9ce1b9da686e2ebf48ae7a4415f76650",
    ),
    Wheel::new(
        "nvidia-cusparse",
        "12.9.4.2",
        "072667e58c851a318738f5527a12eb225cbf058803f2ea451c722d8cf8edddec",
    ),
    Wheel::new(
        "nvidia-cusolver",
        "12.4.1.2",
        "b3b8e02fd2f2df869369af075dc3a179d43f6f7b85e94632a7dce556697be044",
    ),
    Wheel::new(
        "nvidia-cufft",
        "12.5.0.14",
        "b8be26837a5abad2b5b74f3e92dd29f622a42934b355be0961a48712cbba23ad",
    ),
    Wheel::new(
        "nvidia-nccl-cu13",
        "2.32.3",
        "1459723080ac889d73a26edfa3e04383a7928ab31ac8f0ec43b3ea9548b04ff3",
    ),
    Wheel::new(
        "nvidia-nvshmem-cu13",
        "3.8.0",
        "81a4d1f666543e6d34df6d2ff940c7da1435e34e186aab6f3c2b48861b64ef38",
    ),
    Wheel::new(
        "nvidia-cudnn-cu13",
        "9.28.1.4",
        "a54f205b1db1f2895d99f398754db1369816f0569dd459731f925635cf7b65ec",
    ),
    Wheel::new(
        "nvidia-cuda-nvcc",
        "13.5.37",
        "f5c4f7ead5d964fb4af42bbf1e6d3ec3c1e6e9d83b53749f691d387e7fcaa3a7",
    ),
    Wheel::new(
        "nvidia-nvvm",
        "13.5.37",
        "c41bfa362e407405163f103c2229f0765f8cc2ed7d148b754dc77f228bf7e070",
    ),
];

/// Written last: the sha256s of the wheels the tree was unpacked from.
const STAMP: &str = ".scorer-complete";

/// Library directories of the unpacked tree, relative to the plugin's directory.
const LIBRARY_DIRS: &[&str] = &[
    "../../nvidia/cu13/lib",
    "../../nvidia/cudnn/lib",
    "../../nvidia/nccl/lib",
    "../../nvidia/nvshmem/lib",
];

/// `scorer fetch --plugin NAME`: fetches the plugin `NAME` (`cpu` or `cuda13`) into `home`
/// and returns what was done and where the plugin file is.
pub fn fetch_plugin(home: &Path, name: &str) -> Result<(FetchOutcome, PathBuf)> {
    match PluginName::parse(name) {
        Some(PluginName::Cpu) => {
            let outcome = fetch::fetch(home, &[fetch::PLUGIN_ALIAS.to_string()])?
                .pop()
                .map(|(_, o)| o)
                .context("fetch returned nothing for the CPU plugin")?;
            let path = fetch::ARTIFACTS
                .iter()
                .find(|a| a.alias == fetch::PLUGIN_ALIAS)
                .map(|a| a.path(home))
                .context("the CPU plugin artifact is not declared")?;
            Ok((outcome, path))
        }
        Some(PluginName::Cuda13) => fetch_cuda13(home),
        Some(other @ (PluginName::Cuda12 | PluginName::Tpu)) => bail!(
            "`scorer fetch` does not fetch the {other} plugin; install it with pip \
             ({}) and pass `--pjrt-plugin {other}`: it is found in the Python environment",
            if other == PluginName::Tpu {
                "pip install libtpu"
            } else {
                "pip install jax-cuda12-pjrt with its nvidia-* runtime wheels"
            }
        ),
        None => bail!("unknown plugin '{name}' (expected cpu or cuda13)"),
    }
}

fn stamp_text() -> String {
    CUDA13_WHEELS
        .iter()
        .map(|w| format!("{}=={} {}\n", w.name, w.version, w.sha256))
        .collect()
}

fn fetch_cuda13(home: &Path) -> Result<(FetchOutcome, PathBuf)> {
    let root =
        discover::fetched_root(home, PluginName::Cuda13).context("no fetch location for cuda13")?;
    let plugin = root.join(PluginName::Cuda13.site_packages_path());
    if fs::read_to_string(root.join(STAMP)).is_ok_and(|s| s == stamp_text()) && plugin.is_file() {
        tracing::info!(plugin = %plugin.display(), "already present");
        return Ok((FetchOutcome::AlreadyVerified, plugin));
    }
    let downloads = home.join("downloads");
    fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let wheel_dir = downloads.join(format!("cuda13.{}", std::process::id()));
    let _ = fs::remove_dir_all(&wheel_dir);
    fs::create_dir_all(&wheel_dir)?;
    let staging = root.with_extension("partial");
    let result = (|| {
        let wheels = fetch::pip_download(CUDA13_WHEELS, &wheel_dir)?;
        let _ = fs::remove_dir_all(&staging);
        for wheel in &wheels {
            unpack_wheel(wheel, &staging)?;
        }
        write_sidecar(&staging)?;
        fs::write(staging.join(STAMP), stamp_text())?;
        if root.exists() {
            fs::remove_dir_all(&root)
                .with_context(|| format!("cannot replace {}", root.display()))?;
        }
        fs::rename(&staging, &root)
            .with_context(|| format!("cannot move {} into place", root.display()))
    })();
    let _ = fs::remove_dir_all(&wheel_dir);
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    tracing::info!(plugin = %plugin.display(), "CUDA 13 plugin and runtime unpacked");
    Ok((FetchOutcome::Downloaded, plugin))
}

/// Unpacks every member of `wheel` except its `.dist-info` into `dest`, keeping the
/// executable bits (`ptxas` must run) and refusing paths that leave `dest`.
pub fn unpack_wheel(wheel: &Path, dest: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(File::open(wheel)?)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else {
            bail!(
                "{} has an unsafe member path {:?}",
                wheel.display(),
                entry.name()
            );
        };
        if rel
            .components()
            .next()
            .is_some_and(|c| c.as_os_str().to_string_lossy().ends_with(".dist-info"))
        {
            continue;
        }
        let out = dest.join(&rel);
        if entry.is_dir() {
            fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file =
            File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
        io::copy(&mut entry, &mut file)
            .with_context(|| format!("cannot unpack {} from {}", rel.display(), wheel.display()))?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&out, fs::Permissions::from_mode(mode & 0o755 | 0o600))?;
        }
    }
    Ok(())
}

/// Writes `scorer-plugin.json` beside the unpacked plugin: the library directories and,
/// in JAX's order, the libraries that exist in them.
pub fn write_sidecar(root: &Path) -> Result<PathBuf> {
    let plugin = root.join(PluginName::Cuda13.site_packages_path());
    let dir = plugin.parent().context("plugin path has no directory")?;
    if !plugin.is_file() {
        bail!("{} is missing after unpacking", plugin.display());
    }
    let preload: Vec<PathBuf> = PluginName::Cuda13
        .nvidia_libraries()
        .iter()
        .map(|rel| Path::new("../..").join(rel))
        .filter(|p| dir.join(p).is_file())
        .collect();
    if preload.is_empty() {
        bail!(
            "no NVIDIA library was unpacked under {}",
            root.join("nvidia").display()
        );
    }
    let sidecar = Sidecar {
        name: PluginName::Cuda13.to_string(),
        version: "0.11.2".into(),
        library_dirs: LIBRARY_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| dir.join(p).is_dir())
            .collect(),
        preload,
    };
    let path = dir.join(SIDECAR);
    fs::write(&path, serde_json::to_string_pretty(&sidecar)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel(path: &Path, members: &[(&str, &[u8], u32)]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data, mode) in members {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn unpacks_a_site_packages_tree_and_records_its_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let w1 = dir.path().join("plugin.whl");
        let w2 = dir.path().join("runtime.whl");
        wheel(
            &w1,
            &[
                ("jax_plugins/xla_cuda13/xla_cuda_plugin.so", b"elf", 0o644),
                ("jax_cuda13_pjrt-0.11.2.dist-info/METADATA", b"x", 0o644),
            ],
        );
        wheel(
            &w2,
            &[
                ("nvidia/cu13/lib/libcudart.so.13", b"elf", 0o755),
                ("nvidia/cu13/bin/ptxas", b"elf", 0o755),
            ],
        );
        let root = dir.path().join("root");
        unpack_wheel(&w1, &root).unwrap();
        unpack_wheel(&w2, &root).unwrap();
        assert!(!root.join("jax_cuda13_pjrt-0.11.2.dist-info").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.join("nvidia/cu13/bin/ptxas"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "ptxas keeps its executable bits");

        let sidecar = write_sidecar(&root).unwrap();
        let s = Sidecar::read(&sidecar).unwrap();
        assert_eq!(s.library_dirs, vec![PathBuf::from("../../nvidia/cu13/lib")]);
        assert_eq!(
            s.preload,
            vec![PathBuf::from("../../nvidia/cu13/lib/libcudart.so.13")]
        );
        // The engine resolves the sidecar's entries relative to the plugin.
        let plugin = root.join("jax_plugins/xla_cuda13/xla_cuda_plugin.so");
        let list = discover::preload_list(&plugin).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].is_file());
    }

    #[test]
    fn refuses_members_that_leave_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("evil.whl");
        wheel(&w, &[("../outside.so", b"x", 0o644)]);
        let err = unpack_wheel(&w, &dir.path().join("root"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsafe member path"), "{err}");
        assert!(!dir.path().join("outside.so").exists());
    }

    #[test]
    fn every_wheel_is_pinned_with_a_sha256() {
        for w in CUDA13_WHEELS {
            assert_eq!(w.sha256.len(), 64, "{}", w.name);
            assert!(
                w.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}",
                w.name
            );
        }
        let err = fetch_plugin(Path::new("/nonexistent"), "tpu")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pip install libtpu"), "{err}");
    }
}
