//! One test per StableHLO builder op: the emitted program is compiled and run on
//! the real CPU PJRT plugin and its output compared with values computed here.

use std::sync::OnceLock;

use scorer_engine::hlo::{Cmp, DotDims, ElemType, FuncBuilder, Precision, TensorType, Value};
use scorer_engine::pjrt::{Buffer, Client, Plugin, default_plugin_path};

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let plugin =
            Plugin::load(&default_plugin_path()).expect("CPU PJRT plugin (run `scorer fetch`)");
        Client::new(&plugin).expect("PJRT client")
    })
}

/// Host inputs of a test program.
enum In {
    F32(Vec<f32>, Vec<i64>),
    I32(Vec<i32>, Vec<i64>),
}

impl In {
    fn ty(&self) -> TensorType {
        match self {
            In::F32(_, d) => TensorType::f32(d),
            In::I32(_, d) => TensorType::i32(d),
        }
    }
    fn upload(&self) -> Buffer {
        match self {
            In::F32(v, d) => client().buffer_from_host(v, d, 0).unwrap(),
            In::I32(v, d) => client().buffer_from_host(v, d, 0).unwrap(),
        }
    }
}

/// Builds a program over `inputs` with `body`, runs it and returns its outputs.
fn run(inputs: &[In], body: impl FnOnce(&mut FuncBuilder, &[Value]) -> Vec<Value>) -> Vec<Buffer> {
    let mut b = FuncBuilder::new();
    let params: Vec<Value> = inputs.iter().map(|i| b.param(i.ty())).collect();
    let outs = body(&mut b, &params);
    let text = b.finish(&outs).unwrap();
    let exe = client()
        .compile(&text)
        .unwrap_or_else(|e| panic!("compile failed: {e}\n{text}"));
    let bufs: Vec<Buffer> = inputs.iter().map(In::upload).collect();
    let refs: Vec<&Buffer> = bufs.iter().collect();
    exe.execute(&refs).unwrap()
}

fn f32s(b: &Buffer) -> Vec<f32> {
    b.to_host::<f32>().unwrap()
}

fn i32s(b: &Buffer) -> Vec<i32> {
    b.to_host::<i32>().unwrap()
}

/// Deterministic values in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn constants_splat_and_dense() {
    let out = run(&[], |b, _| {
        let s = b.splat(TensorType::f32(&[2, 3]), -1.5);
        let d = b.constant_f32(&[2, 2], &[1.0, 2.5, -3.0, 1e-7]).unwrap();
        let i = b.constant_i32(&[3], &[7, -8, 9]).unwrap();
        let z = b.scalar(ElemType::F32, 0.1);
        vec![s, d, i, z]
    });
    assert_eq!(f32s(&out[0]), vec![-1.5; 6]);
    assert_eq!(f32s(&out[1]), vec![1.0, 2.5, -3.0, 1e-7]);
    assert_eq!(i32s(&out[2]), vec![7, -8, 9]);
    assert_eq!(f32s(&out[3]), vec![0.1f32]);
}

#[test]
fn binary_elementwise() {
    let a = data(12, 1);
    let c: Vec<f32> = data(12, 2).iter().map(|x| x + 2.0).collect();
    let out = run(
        &[
            In::F32(a.clone(), vec![3, 4]),
            In::F32(c.clone(), vec![3, 4]),
        ],
        |b, p| {
            vec![
                b.add(&p[0], &p[1]).unwrap(),
                b.sub(&p[0], &p[1]).unwrap(),
                b.mul(&p[0], &p[1]).unwrap(),
                b.div(&p[0], &p[1]).unwrap(),
                b.max(&p[0], &p[1]).unwrap(),
                b.min(&p[0], &p[1]).unwrap(),
            ]
        },
    );
    let zip = |f: fn(f32, f32) -> f32| a.iter().zip(&c).map(|(x, y)| f(*x, *y)).collect::<Vec<_>>();
    assert_eq!(f32s(&out[0]), zip(|x, y| x + y));
    assert_eq!(f32s(&out[1]), zip(|x, y| x - y));
    assert_eq!(f32s(&out[2]), zip(|x, y| x * y));
    assert_close(&f32s(&out[3]), &zip(|x, y| x / y), 1e-7);
    assert_eq!(f32s(&out[4]), zip(f32::max));
    assert_eq!(f32s(&out[5]), zip(f32::min));
}

#[test]
fn integer_add_and_logical_ops() {
    let out = run(
        &[
            In::I32(vec![1, -2, 3, 4], vec![4]),
            In::I32(vec![10, 20, -30, 4], vec![4]),
        ],
        |b, p| {
            let s = b.add(&p[0], &p[1]).unwrap();
            let lt = b.compare(&p[0], &p[1], Cmp::Lt).unwrap();
            let eq = b.compare(&p[0], &p[1], Cmp::Eq).unwrap();
            let both = b.and(&lt, &eq).unwrap();
            let either = b.or(&lt, &eq).unwrap();
            let both = b.convert(&both, ElemType::I32);
            let either = b.convert(&either, ElemType::I32);
            vec![s, both, either]
        },
    );
    assert_eq!(i32s(&out[0]), vec![11, 18, -27, 8]);
    assert_eq!(i32s(&out[1]), vec![0, 0, 0, 0]);
    assert_eq!(i32s(&out[2]), vec![1, 1, 0, 1]);
}

#[test]
fn unary_elementwise() {
    let x: Vec<f32> = data(16, 3).iter().map(|v| v * 4.0).collect();
    let pos: Vec<f32> = x.iter().map(|v| v.abs() + 0.05).collect();
    let out = run(
        &[In::F32(x.clone(), vec![16]), In::F32(pos.clone(), vec![16])],
        |b, p| {
            vec![
                b.neg(&p[0]).unwrap(),
                b.exp(&p[0]).unwrap(),
                b.log(&p[1]).unwrap(),
                b.rsqrt(&p[1]).unwrap(),
                b.sqrt(&p[1]).unwrap(),
                b.tanh(&p[0]).unwrap(),
                b.logistic(&p[0]).unwrap(),
                b.cos(&p[0]).unwrap(),
                b.sin(&p[0]).unwrap(),
            ]
        },
    );
    let map = |v: &[f32], f: fn(f32) -> f32| v.iter().map(|x| f(*x)).collect::<Vec<_>>();
    assert_eq!(f32s(&out[0]), map(&x, |v| -v));
    assert_close(&f32s(&out[1]), &map(&x, f32::exp), 1e-6);
    assert_close(&f32s(&out[2]), &map(&pos, f32::ln), 1e-6);
    assert_close(&f32s(&out[3]), &map(&pos, |v| 1.0 / v.sqrt()), 1e-6);
    assert_close(&f32s(&out[4]), &map(&pos, f32::sqrt), 1e-6);
    assert_close(&f32s(&out[5]), &map(&x, f32::tanh), 1e-6);
    assert_close(&f32s(&out[6]), &map(&x, |v| 1.0 / (1.0 + (-v).exp())), 1e-6);
    assert_close(&f32s(&out[7]), &map(&x, f32::cos), 1e-6);
    assert_close(&f32s(&out[8]), &map(&x, f32::sin), 1e-6);
}

#[test]
fn convert_between_types() {
    let x = vec![1.0f32, 1.0 + 1.0 / 256.0, -2.5, 3.0e-3, 1234.5678];
    let out = run(
        &[
            In::F32(x.clone(), vec![5]),
            In::I32(vec![-3, 0, 7], vec![3]),
        ],
        |b, p| {
            let h = b.convert(&p[0], ElemType::BF16);
            let back = b.convert(&h, ElemType::F32);
            let fi = b.convert(&p[1], ElemType::F32);
            vec![back, fi, h]
        },
    );
    let want: Vec<f32> = x
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(f32s(&out[0]), want);
    assert_eq!(f32s(&out[1]), vec![-3.0, 0.0, 7.0]);
    let raw = out[2].to_host::<half::bf16>().unwrap();
    assert_eq!(raw.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), want);
}

#[test]
fn broadcast_in_dim_maps_dimensions() {
    let out = run(&[In::F32(vec![1.0, 2.0, 3.0], vec![3])], |b, p| {
        let rows = b.broadcast_in_dim(&p[0], &[2, 3], &[1]).unwrap();
        let cols = b.broadcast_in_dim(&p[0], &[3, 2], &[0]).unwrap();
        let s = b.scalar(ElemType::F32, 4.0);
        let all = b.broadcast_in_dim(&s, &[2], &[]).unwrap();
        vec![rows, cols, all]
    });
    assert_eq!(f32s(&out[0]), vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    assert_eq!(f32s(&out[1]), vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    assert_eq!(f32s(&out[2]), vec![4.0, 4.0]);
}

#[test]
fn reshape_keeps_row_major_order() {
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let out = run(&[In::F32(x.clone(), vec![2, 3, 4])], |b, p| {
        let r = b.reshape(&p[0], &[6, 4]).unwrap();
        vec![b.slice(&r, &[1, 0], &[2, 4]).unwrap()]
    });
    assert_eq!(f32s(&out[0]), vec![4.0, 5.0, 6.0, 7.0]);
}

#[test]
fn transpose_permutes() {
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let out = run(&[In::F32(x.clone(), vec![2, 3, 4])], |b, p| {
        vec![b.transpose(&p[0], &[2, 0, 1]).unwrap()]
    });
    let got = f32s(&out[0]);
    // result[k][i][j] = x[i][j][k]
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                assert_eq!(got[k * 6 + i * 3 + j], x[i * 12 + j * 4 + k]);
            }
        }
    }
}

fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, b_is_nk: bool) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for t in 0..k {
                let bv = if b_is_nk { b[j * k + t] } else { b[t * n + j] };
                s += a[i * k + t] as f64 * bv as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

#[test]
fn dot_general_plain_and_transposed_rhs() {
    let (m, k, n) = (5, 7, 3);
    let a = data(m * k, 4);
    let w_kn = data(k * n, 5);
    let w_nk = data(n * k, 6);
    let out = run(
        &[
            In::F32(a.clone(), vec![m as i64, k as i64]),
            In::F32(w_kn.clone(), vec![k as i64, n as i64]),
            In::F32(w_nk.clone(), vec![n as i64, k as i64]),
        ],
        |b, p| {
            vec![
                b.dot_general(
                    &p[0],
                    &p[1],
                    &DotDims::contract(&[1], &[0]),
                    ElemType::F32,
                    Precision::Highest,
                )
                .unwrap(),
                b.dot_general(
                    &p[0],
                    &p[2],
                    &DotDims::contract(&[1], &[1]),
                    ElemType::F32,
                    Precision::Default,
                )
                .unwrap(),
            ]
        },
    );
    assert_close(&f32s(&out[0]), &matmul(&a, &w_kn, m, k, n, false), 1e-5);
    assert_close(&f32s(&out[1]), &matmul(&a, &w_nk, m, k, n, true), 1e-5);
}

#[test]
fn dot_general_batched() {
    let (bt, m, k, n) = (3, 4, 5, 2);
    let a = data(bt * m * k, 7);
    let c = data(bt * n * k, 8);
    let out = run(
        &[
            In::F32(a.clone(), vec![bt as i64, m as i64, k as i64]),
            In::F32(c.clone(), vec![bt as i64, n as i64, k as i64]),
        ],
        |b, p| {
            let d = b
                .dot_general(
                    &p[0],
                    &p[1],
                    &DotDims::batched(&[0], &[0], &[2], &[2]),
                    ElemType::F32,
                    Precision::Highest,
                )
                .unwrap();
            assert_eq!(d.dims(), &[3, 4, 2]);
            vec![d]
        },
    );
    let mut want = Vec::new();
    for i in 0..bt {
        want.extend(matmul(
            &a[i * m * k..(i + 1) * m * k],
            &c[i * n * k..(i + 1) * n * k],
            m,
            k,
            n,
            true,
        ));
    }
    assert_close(&f32s(&out[0]), &want, 1e-5);
}

#[test]
fn dot_general_bf16_operands_f32_result() {
    let (m, k, n) = (4, 16, 3);
    let a = data(m * k, 9);
    let w = data(n * k, 10);
    let out = run(
        &[
            In::F32(a.clone(), vec![m as i64, k as i64]),
            In::F32(w.clone(), vec![n as i64, k as i64]),
        ],
        |b, p| {
            let ah = b.convert(&p[0], ElemType::BF16);
            let wh = b.convert(&p[1], ElemType::BF16);
            vec![
                b.dot_general(
                    &ah,
                    &wh,
                    &DotDims::contract(&[1], &[1]),
                    ElemType::F32,
                    Precision::Default,
                )
                .unwrap(),
            ]
        },
    );
    let round = |v: &[f32]| {
        v.iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect::<Vec<_>>()
    };
    assert_close(
        &f32s(&out[0]),
        &matmul(&round(&a), &round(&w), m, k, n, true),
        1e-3,
    );
}

#[test]
fn reduce_sum_and_max() {
    let x = data(24, 11);
    let out = run(&[In::F32(x.clone(), vec![2, 3, 4])], |b, p| {
        vec![
            b.reduce_sum(&p[0], &[2]).unwrap(),
            b.reduce_max(&p[0], &[0, 2]).unwrap(),
        ]
    });
    let mut sums = vec![0f32; 6];
    let mut maxs = vec![f32::NEG_INFINITY; 3];
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                let v = x[i * 12 + j * 4 + k];
                sums[i * 3 + j] += v;
                maxs[j] = maxs[j].max(v);
            }
        }
    }
    assert_close(&f32s(&out[0]), &sums, 1e-6);
    assert_eq!(f32s(&out[1]), maxs);
}

#[test]
fn iota_counts_along_a_dimension() {
    let out = run(&[], |b, _| {
        vec![
            b.iota(TensorType::i32(&[2, 3]), 1).unwrap(),
            b.iota(TensorType::f32(&[2, 3]), 0).unwrap(),
        ]
    });
    assert_eq!(i32s(&out[0]), vec![0, 1, 2, 0, 1, 2]);
    assert_eq!(f32s(&out[1]), vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
}

#[test]
fn compare_and_select() {
    let a = vec![1.0f32, 5.0, -2.0, 3.0];
    let c = vec![2.0f32, 5.0, -3.0, 4.0];
    let out = run(
        &[In::F32(a.clone(), vec![4]), In::F32(c.clone(), vec![4])],
        |b, p| {
            let dirs = [Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge];
            dirs.iter()
                .map(|d| {
                    let m = b.compare(&p[0], &p[1], *d).unwrap();
                    b.select(&m, &p[0], &p[1]).unwrap()
                })
                .collect()
        },
    );
    let pick = |f: fn(f32, f32) -> bool| {
        a.iter()
            .zip(&c)
            .map(|(x, y)| if f(*x, *y) { *x } else { *y })
            .collect::<Vec<_>>()
    };
    assert_eq!(f32s(&out[0]), pick(|x, y| x == y));
    assert_eq!(f32s(&out[1]), pick(|x, y| x != y));
    assert_eq!(f32s(&out[2]), pick(|x, y| x < y));
    assert_eq!(f32s(&out[3]), pick(|x, y| x <= y));
    assert_eq!(f32s(&out[4]), pick(|x, y| x > y));
    assert_eq!(f32s(&out[5]), pick(|x, y| x >= y));
}

#[test]
fn concatenate_along_a_dimension() {
    let out = run(
        &[
            In::F32(vec![1.0, 2.0, 3.0, 4.0], vec![2, 2]),
            In::F32(vec![5.0, 6.0], vec![2, 1]),
        ],
        |b, p| vec![b.concatenate(&[&p[0], &p[1]], 1).unwrap()],
    );
    assert_eq!(f32s(&out[0]), vec![1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
}

#[test]
fn slice_with_strides() {
    let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
    let out = run(&[In::F32(x, vec![4, 5])], |b, p| {
        vec![
            b.slice_strided(&p[0], &[1, 0], &[4, 5], &[2, 2]).unwrap(),
            b.slice(&p[0], &[0, 3], &[2, 5]).unwrap(),
        ]
    });
    assert_eq!(f32s(&out[0]), vec![5.0, 7.0, 9.0, 15.0, 17.0, 19.0]);
    assert_eq!(f32s(&out[1]), vec![3.0, 4.0, 8.0, 9.0]);
}

#[test]
fn dynamic_slice_reads_at_runtime_offsets_and_clamps() {
    let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
    let out = run(
        &[
            In::F32(x, vec![4, 5]),
            In::I32(vec![2], vec![]),
            In::I32(vec![4], vec![]),
        ],
        |b, p| {
            let zero = b.scalar_i32(0);
            vec![
                b.dynamic_slice(&p[0], &[&p[1], &zero], &[1, 5]).unwrap(),
                // Start 4 on a dim of 5 with size 2 is clamped to 3.
                b.dynamic_slice(&p[0], &[&p[1], &p[2]], &[2, 2]).unwrap(),
            ]
        },
    );
    assert_eq!(f32s(&out[0]), vec![10.0, 11.0, 12.0, 13.0, 14.0]);
    assert_eq!(f32s(&out[1]), vec![13.0, 14.0, 18.0, 19.0]);
}

#[test]
fn dynamic_update_slice_writes_at_runtime_offsets() {
    let out = run(
        &[
            In::F32(vec![0.0; 6], vec![2, 3]),
            In::F32(vec![7.0, 8.0], vec![1, 2]),
            In::I32(vec![1], vec![]),
        ],
        |b, p| {
            vec![
                b.dynamic_update_slice(&p[0], &p[1], &[&p[2], &p[2]])
                    .unwrap(),
            ]
        },
    );
    assert_eq!(f32s(&out[0]), vec![0.0, 0.0, 0.0, 0.0, 7.0, 8.0]);
}

#[test]
fn gather_rows_by_index() {
    let table: Vec<f32> = (0..15).map(|v| v as f32).collect(); // [5, 3]
    let out = run(
        &[
            In::F32(table.clone(), vec![5, 3]),
            In::I32(vec![4, 0, 2], vec![3]),
            In::I32(vec![1, 1, 3, 0], vec![2, 2]),
        ],
        |b, p| {
            let a = b.take_rows(&p[0], &p[1]).unwrap();
            let c = b.take_rows(&p[0], &p[2]).unwrap();
            assert_eq!(c.dims(), &[2, 2, 3]);
            vec![a, c]
        },
    );
    let rows = |ids: &[usize]| {
        ids.iter()
            .flat_map(|&i| table[i * 3..i * 3 + 3].to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(f32s(&out[0]), rows(&[4, 0, 2]));
    assert_eq!(f32s(&out[1]), rows(&[1, 1, 3, 0]));
}

#[test]
fn while_loop_over_stacked_weights() {
    // x <- x @ W[i] + 1 for each of 3 stacked [4, 4] matrices.
    let (layers, d) = (3usize, 4usize);
    let w = data(layers * d * d, 12);
    let x = data(2 * d, 13);
    let out = run(
        &[
            In::F32(x.clone(), vec![2, d as i64]),
            In::F32(w.clone(), vec![layers as i64, d as i64, d as i64]),
        ],
        |b, p| {
            let i0 = b.scalar_i32(0);
            let res = b
                .while_loop(
                    &[&i0, &p[0], &p[1]],
                    |b, a| b.lt_const(&a[0], layers as i32),
                    |b, a| {
                        let z = b.scalar_i32(0);
                        let wi = b.dynamic_slice(&a[2], &[&a[0], &z, &z], &[1, 4, 4])?;
                        let wi = b.reshape(&wi, &[4, 4])?;
                        let y = b.dot_general(
                            &a[1],
                            &wi,
                            &DotDims::contract(&[1], &[0]),
                            ElemType::F32,
                            Precision::Highest,
                        )?;
                        let y = b.add_const(&y, 1.0)?;
                        let one = b.scalar_i32(1);
                        let i = b.add(&a[0], &one)?;
                        Ok(vec![i, y, a[2].clone()])
                    },
                )
                .unwrap();
            vec![res[0].clone(), res[1].clone()]
        },
    );
    let mut want = x.clone();
    for l in 0..layers {
        want = matmul(&want, &w[l * d * d..(l + 1) * d * d], 2, d, d, false);
        want.iter_mut().for_each(|v| *v += 1.0);
    }
    assert_eq!(i32s(&out[0]), vec![layers as i32]);
    assert_close(&f32s(&out[1]), &want, 1e-5);
}

#[test]
fn softmax_and_logsumexp() {
    let x: Vec<f32> = data(12, 14).iter().map(|v| v * 30.0).collect();
    let out = run(&[In::F32(x.clone(), vec![3, 4])], |b, p| {
        vec![
            b.softmax_last(&p[0]).unwrap(),
            b.logsumexp_last(&p[0]).unwrap(),
        ]
    });
    let mut sm = Vec::new();
    let mut lse = Vec::new();
    for r in x.chunks(4) {
        let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = r.iter().map(|v| (*v as f64 - m).exp()).sum();
        sm.extend(r.iter().map(|v| ((*v as f64 - m).exp() / s) as f32));
        lse.push((m + s.ln()) as f32);
    }
    assert_close(&f32s(&out[0]), &sm, 1e-6);
    assert_close(&f32s(&out[1]), &lse, 1e-6);
}

#[test]
fn builder_rejects_mismatched_shapes() {
    let mut b = FuncBuilder::new();
    let a = b.param(TensorType::f32(&[2, 3]));
    let c = b.param(TensorType::f32(&[3, 2]));
    assert!(b.add(&a, &c).is_err());
    assert!(
        b.dot_general(
            &a,
            &c,
            &DotDims::contract(&[1], &[1]),
            ElemType::F32,
            Precision::Default
        )
        .is_err()
    );
    assert!(b.reshape(&a, &[5]).is_err());
    assert!(b.transpose(&a, &[0, 0]).is_err());
    assert!(b.broadcast_in_dim(&a, &[2, 4], &[0, 1]).is_err());
    assert!(b.slice(&a, &[0, 0], &[3, 3]).is_err());
    let i = b.param(TensorType::i32(&[2]));
    assert!(b.exp(&i).is_err());
}
