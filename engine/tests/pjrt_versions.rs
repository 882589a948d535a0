//! PJRT C API versions and plugin-specific client options: the version read at load and
//! checked against ours, the refusal message, our argument structs against what the CUDA
//! plugin demands, options reaching the CPU plugin, and the CUDA plugin (`jax-cuda13-pjrt`
//! 0.11.2, API 0.115) getting as far as a machine without a GPU allows.
//!
//! The CUDA plugin comes from `SCORER_CUDA_PLUGIN`, else `--pjrt-plugin cuda13` discovery
//! (`scorer fetch --plugin cuda13`, or a Python environment holding `jax-cuda13-pjrt`),
//! else the wheel in /tmp/jaxw (unpacked once under target/); without any of them that
//! test prints why and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use scorer_engine::pjrt::discover::{self, PluginName};
use scorer_engine::pjrt::{
    self, Client, ClientOption, ClientOptions, GpuAllocator, HEADER_API_VERSION, Plugin,
    check_api_version,
};

fn cpu_plugin() -> Plugin {
    let path = pjrt::default_plugin_path();
    Plugin::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn the_cpu_plugin_version_is_read_and_accepted() {
    let p = cpu_plugin();
    let version = p.api_version();
    println!(
        "CPU plugin {}: PJRT C API {}.{}, table {} bytes; ours {}.{}, {} bytes",
        p.path().display(),
        version.0,
        version.1,
        p.api_struct_size(),
        HEADER_API_VERSION.0,
        HEADER_API_VERSION.1,
        pjrt::ffi::PJRT_Api::STRUCT_SIZE
    );
    assert_eq!(version.0, 0);
    check_api_version(version).expect("the CPU plugin's version is supported");
    // Argument structs larger than the plugin's (0.113 layout against 0.81) are accepted:
    // a client, a compile and an execute all work.
    let c = Client::new(&p).expect("client");
    let exe = c
        .compile(
            r#"module @m { func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {
                 %0 = stablehlo.add %a, %a : tensor<2xf32>
                 return %0 : tensor<2xf32> } }"#,
        )
        .expect("compile");
    let a = c.buffer_from_host(&[1.0f32, 2.0], &[2], 0).unwrap();
    let out = exe.execute(&[&a]).expect("execute");
    assert_eq!(out[0].to_host::<f32>().unwrap(), vec![2.0, 4.0]);
    let bytes = exe.serialize().expect("serialize");
    c.deserialize_executable(&bytes)
        .expect("deserialize with the 0.113 struct");
}

#[test]
fn an_unusable_version_is_refused_naming_both_versions() {
    let old = check_api_version((0, 54)).unwrap_err().to_string();
    assert!(old.contains("PJRT C API 0.54"), "{old}");
    assert!(old.contains("written against 0.113"), "{old}");
    assert!(old.contains("too old"), "{old}");
    let other_major = check_api_version((1, 2)).unwrap_err().to_string();
    assert!(
        other_major.contains("1.2") && other_major.contains("0.113"),
        "{other_major}"
    );
    assert!(other_major.contains("major"), "{other_major}");
    // Newer 0.x plugins are accepted: the header only appends within a major version.
    check_api_version((0, 115)).expect("0.115");
    check_api_version((0, 200)).expect("a newer 0.x");
}

#[test]
fn our_structs_are_at_least_what_the_cuda_plugin_demands() {
    let declared = pjrt::ffi::minimum_sizes::declared();
    for (name, minimum) in pjrt::ffi::minimum_sizes::CUDA13_0_115 {
        let ours = declared
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not declared"))
            .1;
        assert!(
            ours >= *minimum,
            "{name}: ours {ours} < the 0.115 plugin's {minimum}"
        );
    }
    assert_eq!(declared.len(), pjrt::ffi::minimum_sizes::CUDA13_0_115.len());
}

#[test]
fn typed_options_reach_the_cpu_plugin() {
    let mut o = ClientOptions::default();
    o.push_flag("cpu_device_count:int=3").unwrap();
    let c = Client::with_client_options(&cpu_plugin(), &o).expect("client");
    assert_eq!(c.devices().len(), 3);
}

/// The CUDA plugin file, or why there is none.
fn cuda_plugin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SCORER_CUDA_PLUGIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(p) = discover::resolve_plugin("cuda13") {
        return Ok(p);
    }
    let wheel = Path::new("/tmp/jaxw/jax_cuda13_pjrt-0.11.2-py3-none-manylinux_2_27_x86_64.whl");
    if !wheel.is_file() {
        return Err(format!(
            "no CUDA plugin: SCORER_CUDA_PLUGIN unset, discovery found none ({}), and {} is absent; \
             `scorer fetch --plugin cuda13` provides one",
            discover::resolve_plugin("cuda13").unwrap_err(),
            wheel.display()
        ));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("jax-cuda13-pjrt-0.11.2");
    let so = dir.join(PluginName::Cuda13.site_packages_path());
    if !so.is_file() {
        let status = Command::new("python3")
            .args(["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])"])
            .arg(wheel)
            .arg(PluginName::Cuda13.site_packages_path())
            .arg(&dir)
            .status()
            .map_err(|e| format!("cannot run python3 to unzip the wheel: {e}"))?;
        if !status.success() {
            return Err(format!("unzipping {} failed: {status}", wheel.display()));
        }
    }
    Ok(so)
}

#[test]
fn the_cuda_plugin_gets_past_every_argument_check_to_cuinit() {
    let path = match cuda_plugin() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let t = Instant::now();
    let p = Plugin::load(&path).expect("the CUDA plugin loads and initializes");
    let version = p.api_version();
    println!(
        "CUDA plugin {}: PJRT C API {}.{}, table {} bytes (ours {}), loaded in {:.1}s",
        path.display(),
        version.0,
        version.1,
        p.api_struct_size(),
        pjrt::ffi::PJRT_Api::STRUCT_SIZE,
        t.elapsed().as_secs_f64()
    );
    check_api_version(version).expect("supported");
    if version == (0, 115) {
        // 0.115 appended no slot after 0.113: the tables are the same length.
        assert_eq!(p.api_struct_size(), pjrt::ffi::PJRT_Api::STRUCT_SIZE);
    }
    let attrs = p.attributes().expect("attributes");
    println!("attributes: {attrs:?}");

    let no_gpu = |e: &pjrt::Error| {
        let m = e.message().to_string();
        assert!(
            !m.contains("size"),
            "a struct-size refusal, not the GPU check: {m}"
        );
        assert!(
            m.contains("cuInit") || m.contains("GPU") || m.contains("CUDA") || m.contains("device"),
            "expected the no-GPU failure: {m}"
        );
        m
    };
    if std::path::Path::new("/dev/nvidia0").exists() {
        println!("SKIPPED the no-GPU expectations: this machine has a GPU");
        return;
    }
    let err = Client::new(&p).map(|_| ()).unwrap_err();
    println!("default options: {}", no_gpu(&err));

    // Typed GPU options pass the plugin's own name/type validation and fail at the same place.
    let mut o = ClientOptions::default();
    o.set_gpu_memory_fraction(0.5).unwrap();
    o.gpu_preallocate = Some(false);
    o.gpu_allocator = Some(GpuAllocator::Bfc);
    let err = Client::with_client_options(&p, &o).map(|_| ()).unwrap_err();
    println!("GPU options: {}", no_gpu(&err));

    // An option the GPU plugin does not know is refused by it before the GPU check, which
    // shows the options reach the plugin.
    let err = Client::with_options(&p, &[("no_such_option", ClientOption::Bool(true))])
        .map(|_| ())
        .unwrap_err();
    println!("unknown option: {err}");
    assert!(err.message().contains("no_such_option"), "{err}");
}
