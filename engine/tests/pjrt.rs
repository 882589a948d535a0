//! The PJRT layer against the real CPU plugin (`xla-cpu-pjrt` 0.0.1). Located through
//! `SCORER_PJRT_PLUGIN`, else `$SCORER_HOME/plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so`
//! (`SCORER_HOME` defaulting to `$HOME/.cache/scorer`); `scorer fetch` puts it there.

use half::bf16;
use scorer_engine::pjrt::{
    self, Buffer, Client, ClientOption, ElementType, LoadedExecutable, Plugin,
};

fn plugin() -> Plugin {
    let path = pjrt::default_plugin_path();
    Plugin::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn client() -> Client {
    Client::new(&plugin()).expect("client")
}

const ADD_2X3: &str = r#"
module @add {
  func.func public @main(%a: tensor<2x3xf32>, %b: tensor<2x3xf32>) -> tensor<2x3xf32> {
    %0 = stablehlo.add %a, %b : tensor<2x3xf32>
    return %0 : tensor<2x3xf32>
  }
}
"#;

const LHS: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
const RHS: [f32; 6] = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0];

fn add_on(c: &Client, exe: &LoadedExecutable, device: usize) -> Buffer {
    let a = c.buffer_from_host(&LHS, &[2, 3], device).unwrap();
    let b = c.buffer_from_host(&RHS, &[2, 3], device).unwrap();
    let mut out = exe.execute_on(device, &[&a, &b]).expect("execute");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn plugin_loads_with_api_0_81_or_newer() {
    let p = plugin();
    let (major, minor) = p.api_version();
    assert_eq!(major, 0);
    assert!(minor >= 81, "plugin API 0.{minor}");
    // 0.81 has the first 118 of the 138 slots we declare (0.113): a shorter table, whose
    // end `has_slot` respects.
    if minor == 81 {
        assert_eq!(p.api_struct_size(), 40 + 118 * 8);
        assert!(p.api_struct_size() < pjrt::ffi::PJRT_Api::STRUCT_SIZE);
    }
    // Loading the same file again shares the already initialized plugin.
    assert_eq!(
        Plugin::load(&pjrt::default_plugin_path()).unwrap().path(),
        p.path()
    );
    let attrs = p.attributes().expect("attributes");
    assert!(
        attrs.iter().any(|(k, _)| k == "stablehlo_current_version"),
        "attributes: {attrs:?}"
    );
}

#[test]
fn loading_something_else_fails_cleanly() {
    let missing = Plugin::load(std::path::Path::new("/nonexistent/xla_cpu_pjrt.so")).unwrap_err();
    assert_eq!(missing.code(), pjrt::code::NOT_FOUND, "{missing}");
    // A real shared library found through the loader's search path, but no PJRT plugin.
    let not_pjrt = Plugin::load(std::path::Path::new("libc.so.6")).unwrap_err();
    assert!(not_pjrt.message().contains("GetPjrtApi"), "{not_pjrt}");
}

#[test]
fn cpu_client_lists_four_devices() {
    let c = client();
    assert_eq!(c.platform_name().unwrap(), "cpu");
    assert!(!c.platform_version().unwrap().is_empty());
    let devices = c.devices();
    assert_eq!(devices.len(), 4);
    assert_eq!(c.device_count(), 4);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d.index(), i);
        assert_eq!(d.kind(), "cpu");
    }
    let mut ids: Vec<i32> = devices.iter().map(|d| d.id()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "device ids must be distinct: {devices:?}");
}

#[test]
fn compiles_and_adds_on_device_zero() {
    let c = client();
    let exe = c.compile(ADD_2X3).expect("compile");
    assert_eq!(exe.num_outputs().unwrap(), 1);
    let a = c.buffer_from_host(&LHS, &[2, 3], 0).unwrap();
    let b = c.buffer_from_host(&RHS, &[2, 3], 0).unwrap();
    let out = exe.execute(&[&a, &b]).expect("execute");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dims(), &[2, 3]);
    assert_eq!(out[0].element_type(), ElementType::F32);
    assert_eq!(out[0].device().unwrap(), 0);
    assert_eq!(out[0].on_device_size_bytes().unwrap(), 24);
    assert_eq!(
        out[0].to_host::<f32>().unwrap(),
        vec![11.0, 22.0, 33.0, 44.0, 55.0, 66.0]
    );
    // Arguments are borrowed, not donated: they still hold their values.
    assert_eq!(a.to_host::<f32>().unwrap(), LHS.to_vec());
    let again = exe.execute(&[&a, &b]).unwrap();
    assert_eq!(
        again[0].to_host::<f32>().unwrap(),
        out[0].to_host::<f32>().unwrap()
    );
}

#[test]
fn multiple_outputs_come_back_untupled() {
    let c = client();
    let exe = c
        .compile(
            r#"
func.func @main(%a: tensor<4xi32>) -> (tensor<4xi32>, tensor<i32>) {
  %0 = stablehlo.multiply %a, %a : tensor<4xi32>
  %z = stablehlo.constant dense<0> : tensor<i32>
  %1 = stablehlo.reduce(%a init: %z) applies stablehlo.add across dimensions = [0] : (tensor<4xi32>, tensor<i32>) -> tensor<i32>
  return %0, %1 : tensor<4xi32>, tensor<i32>
}
"#,
        )
        .expect("compile");
    assert_eq!(exe.num_outputs().unwrap(), 2);
    let a = c
        .buffer_from_host(&[-3i32, 1, 7, 100_000], &[4], 0)
        .unwrap();
    let out = exe.execute(&[&a]).unwrap();
    assert_eq!(
        out[0].to_host::<i32>().unwrap(),
        vec![9, 1, 49, 10_000_000_000i64 as i32]
    );
    assert_eq!(out[1].dims(), &[] as &[i64]);
    assert_eq!(out[1].to_host::<i32>().unwrap(), vec![100_005]);
}

#[test]
fn bf16_round_trips_and_converts_on_device() {
    let c = client();
    let host: Vec<bf16> = [1.5f32, -2.25, 3.0e-3, 65504.0, 0.0, -0.0]
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let buf = c.buffer_from_host(&host, &[3, 2], 1).unwrap();
    assert_eq!(buf.element_type(), ElementType::BF16);
    assert_eq!(buf.to_host::<bf16>().unwrap(), host);
    assert_eq!(buf.to_host_bytes().unwrap().len(), 12);
    // The device reads the same bits as bf16: widening to f32 there equals doing it here.
    let exe = c
        .compile(
            r#"
func.func @main(%x: tensor<3x2xbf16>) -> tensor<3x2xf32> {
  %0 = stablehlo.convert %x : (tensor<3x2xbf16>) -> tensor<3x2xf32>
  return %0 : tensor<3x2xf32>
}
"#,
        )
        .unwrap();
    let out = exe.execute_on(1, &[&buf]).unwrap();
    let want: Vec<f32> = host.iter().map(|x| x.to_f32()).collect();
    assert_eq!(out[0].to_host::<f32>().unwrap(), want);
}

#[test]
fn i32_round_trips_and_typed_reads_are_checked() {
    let c = client();
    let host = vec![i32::MIN, -1, 0, 1, i32::MAX, 42];
    let buf = c.buffer_from_host(&host, &[6], 0).unwrap();
    assert_eq!(buf.element_type(), ElementType::I32);
    assert_eq!(buf.to_host::<i32>().unwrap(), host);
    let err = buf.to_host::<f32>().unwrap_err();
    assert!(err.message().contains("I32"), "{err}");
}

#[test]
fn raw_bytes_upload_checks_the_length() {
    let c = client();
    let bytes: Vec<u8> = 7u32
        .to_le_bytes()
        .into_iter()
        .chain(9u32.to_le_bytes())
        .collect();
    let buf = c
        .buffer_from_bytes(&bytes, ElementType::U32, &[2], 3)
        .unwrap();
    assert_eq!(buf.device().unwrap(), 3);
    assert_eq!(buf.to_host::<u32>().unwrap(), vec![7, 9]);
    let err = c
        .buffer_from_bytes(&bytes, ElementType::U32, &[3], 0)
        .unwrap_err();
    assert!(!err.from_plugin(), "{err}");
    assert!(
        c.buffer_from_host(&[1.0f32], &[1], 4).is_err(),
        "device 4 does not exist"
    );
}

#[test]
fn compile_error_carries_the_plugin_message() {
    let c = client();
    let bad = r#"
func.func @main(%a: tensor<2x3xf32>, %b: tensor<3x2xf32>) -> tensor<2x3xf32> {
  %0 = stablehlo.add %a, %b : (tensor<2x3xf32>, tensor<3x2xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}
"#;
    let err = c.compile(bad).unwrap_err();
    assert!(err.from_plugin(), "{err}");
    assert_ne!(err.code(), 0);
    // The plugin's MLIR diagnostics name the offending op and its line.
    assert!(err.message().contains("stablehlo.add"), "{err}");
    assert!(err.message().contains(":3:"), "{err}");
    let garbage = c.compile("this is not MLIR").unwrap_err();
    assert!(garbage.from_plugin(), "{garbage}");
    assert!(!garbage.message().is_empty());
}

#[test]
fn serialized_executable_reloads_and_runs() {
    let c = client();
    let exe = c.compile(ADD_2X3).unwrap();
    let bytes = exe.serialize().expect("serialize");
    assert!(bytes.len() > 100, "{} bytes", bytes.len());
    drop(exe);
    let back = c.deserialize_executable(&bytes).expect("deserialize");
    assert_eq!(back.num_outputs().unwrap(), 1);
    for device in [0, 2] {
        let out = add_on(&c, &back, device);
        assert_eq!(out.device().unwrap(), device);
        assert_eq!(
            out.to_host::<f32>().unwrap(),
            vec![11.0, 22.0, 33.0, 44.0, 55.0, 66.0]
        );
    }
    assert!(c.deserialize_executable(b"not an executable").is_err());
}

#[test]
fn same_batch_on_each_device_gives_identical_results() {
    let c = client();
    let exe = c
        .compile(
            r#"
func.func @main(%x: tensor<8x16xf32>, %w: tensor<16x4xf32>) -> tensor<8x4xf32> {
  %0 = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<8x16xf32>, tensor<16x4xf32>) -> tensor<8x4xf32>
  %1 = stablehlo.tanh %0 : tensor<8x4xf32>
  return %1 : tensor<8x4xf32>
}
"#,
        )
        .unwrap();
    let x: Vec<f32> = (0..128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    let w: Vec<f32> = (0..64)
        .map(|i| ((i * 53 % 89) as f32 - 44.0) / 70.0)
        .collect();
    let mut results = Vec::new();
    for device in 0..c.device_count() {
        let xb = c.buffer_from_host(&x, &[8, 16], device).unwrap();
        let wb = c.buffer_from_host(&w, &[16, 4], device).unwrap();
        let out = exe.execute_on(device, &[&xb, &wb]).unwrap();
        assert_eq!(out[0].device().unwrap(), device);
        results.push(out[0].to_host::<f32>().unwrap());
    }
    // Bitwise identical everywhere, and actually the product (checked on the host).
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    for i in 0..8 {
        for j in 0..4 {
            let dot: f32 = (0..16).map(|k| x[i * 16 + k] * w[k * 4 + j]).sum();
            assert!((results[0][i * 4 + j] - dot.tanh()).abs() < 1e-5);
        }
    }
}

#[test]
fn arguments_must_live_on_the_execution_device() {
    let c = client();
    let exe = c.compile(ADD_2X3).unwrap();
    let a = c.buffer_from_host(&LHS, &[2, 3], 0).unwrap();
    let b = c.buffer_from_host(&RHS, &[2, 3], 0).unwrap();
    let err = exe.execute_on(1, &[&a, &b]).unwrap_err();
    assert!(err.from_plugin(), "{err}");
    // Copying across devices makes them usable there.
    let (a1, b1) = (a.copy_to_device(1).unwrap(), b.copy_to_device(1).unwrap());
    let out = exe.execute_on(1, &[&a1, &b1]).unwrap();
    assert_eq!(out[0].to_host::<f32>().unwrap()[5], 66.0);
}

#[test]
fn device_to_host_bytes_are_counted() {
    let c = client();
    let exe = c.compile(ADD_2X3).unwrap();
    let before = pjrt::d2h_bytes_thread();
    let before_total = pjrt::d2h_bytes_total();
    let out = add_on(&c, &exe, 0);
    // Uploading and executing copy nothing back.
    assert_eq!(pjrt::d2h_bytes_thread(), before);
    out.to_host::<f32>().unwrap();
    assert_eq!(pjrt::d2h_bytes_thread() - before, 24);
    out.to_host_bytes().unwrap();
    assert_eq!(pjrt::d2h_bytes_thread() - before, 48);
    assert!(pjrt::d2h_bytes_total() - before_total >= 48);
}

#[test]
fn handles_are_send_and_usable_from_another_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<Buffer>();
    assert_send_sync::<LoadedExecutable>();
    let c = client();
    let exe = c.compile(ADD_2X3).unwrap();
    let result = std::thread::spawn(move || add_on(&c, &exe, 3).to_host::<f32>().unwrap())
        .join()
        .unwrap();
    assert_eq!(result[0], 11.0);
}

#[test]
fn client_options_reach_the_plugin() {
    let c = Client::with_options(&plugin(), &[("cpu_device_count", ClientOption::Int64(2))])
        .expect("client with options");
    assert_eq!(c.device_count(), 2);
    let exe = c.compile(ADD_2X3).unwrap();
    assert_eq!(add_on(&c, &exe, 1).to_host::<f32>().unwrap()[0], 11.0);
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn dropped_buffers_and_outputs_free_their_memory() {
    let c = client();
    let exe = c
        .compile(
            r#"
func.func @main(%a: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %0 = stablehlo.add %a, %a : tensor<1024x1024xf32>
  return %0 : tensor<1024x1024xf32>
}
"#,
        )
        .unwrap();
    let host = vec![0.5f32; 1024 * 1024];
    let round = || {
        let a = c.buffer_from_host(&host, &[1024, 1024], 0).unwrap();
        let out = exe.execute(&[&a]).unwrap();
        assert_eq!(out[0].dims(), &[1024, 1024]);
    };
    round();
    let before = resident_bytes();
    // 150 rounds of a 4 MiB input and a 4 MiB output: 1.2 GiB if either leaked.
    for _ in 0..150 {
        round();
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 300 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
}

#[test]
fn empty_arrays_round_trip() {
    let c = client();
    let empty: [f32; 0] = [];
    let buf = c.buffer_from_host(&empty, &[0, 3], 2).unwrap();
    assert_eq!(buf.dims(), &[0, 3]);
    assert_eq!(buf.element_count(), 0);
    assert!(buf.to_host::<f32>().unwrap().is_empty());
    assert!(buf.to_host_bytes().unwrap().is_empty());
    let scalar = c.buffer_from_host(&[7i64], &[], 2).unwrap();
    assert_eq!(scalar.dims(), &[] as &[i64]);
    assert_eq!(scalar.to_host::<i64>().unwrap(), vec![7]);
}
