//! The PJRT layer against the real CPU plugin (`xla-cpu-pjrt` 0.0.1). Located through
//! `SCORER_PJRT_PLUGIN`, else `$SCORER_HOME/plugins/...` (`SCORER_HOME` defaulting to
//! `$HOME/.cache/scorer`); `scorer fetch` puts it there.

use half::bf16;
use scorer_engine::pjrt::{self, Client, ElementType, Plugin};

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

#[test]
fn plugin_loads_with_api_0_81_or_newer() {
    let p = plugin();
    let (major, minor) = p.api_version();
    assert_eq!(major, 0);
    assert!(minor >= 81, "plugin API 0.{minor}");
    // Same header version: the plugin's table must be exactly as long as ours.
    if minor == 81 {
        assert_eq!(p.api_struct_size(), pjrt::ffi::PJRT_Api::STRUCT_SIZE);
    }
}

#[test]
fn compiles_and_adds_on_device_zero() {
    let c = client();
    let exe = c.compile(ADD_2X3).expect("compile");
    assert_eq!(exe.num_outputs().unwrap(), 1);
    let a = c.buffer_from_host(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], 0).unwrap();
    let b = c.buffer_from_host(&[10.0f32, 20.0, 30.0, 40.0, 50.0, 60.0], &[2, 3], 0).unwrap();
    let out = exe.execute(&[&a, &b]).expect("execute");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dims(), &[2, 3]);
    assert_eq!(out[0].element_type(), ElementType::F32);
    assert_eq!(out[0].to_host::<f32>().unwrap(), vec![11.0, 22.0, 33.0, 44.0, 55.0, 66.0]);
}
