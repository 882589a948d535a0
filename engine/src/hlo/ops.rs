//! The StableHLO ops the model programs use, each checking its operand types
//! and inferring its result type as the spec defines it.

use super::builder::FuncBuilder;
use super::literal::{dense_literal, scalar_literal};
use super::types::{ElemType, Result, TensorType, Value, invalid};

/// `comparison_direction` of `stablehlo.compare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn mlir(self) -> &'static str {
        match self {
            Cmp::Eq => "EQ",
            Cmp::Ne => "NE",
            Cmp::Lt => "LT",
            Cmp::Le => "LE",
            Cmp::Gt => "GT",
            Cmp::Ge => "GE",
        }
    }
}

/// Dimension numbers of `stablehlo.dot_general`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DotDims {
    pub lhs_batch: Vec<i64>,
    pub rhs_batch: Vec<i64>,
    pub lhs_contract: Vec<i64>,
    pub rhs_contract: Vec<i64>,
}

impl DotDims {
    /// Plain contraction without batching dimensions.
    pub fn contract(lhs: &[i64], rhs: &[i64]) -> Self {
        DotDims {
            lhs_contract: lhs.to_vec(),
            rhs_contract: rhs.to_vec(),
            ..Default::default()
        }
    }

    pub fn batched(lhs_batch: &[i64], rhs_batch: &[i64], lhs: &[i64], rhs: &[i64]) -> Self {
        DotDims {
            lhs_batch: lhs_batch.to_vec(),
            rhs_batch: rhs_batch.to_vec(),
            lhs_contract: lhs.to_vec(),
            rhs_contract: rhs.to_vec(),
        }
    }
}

/// Operand precision of `dot_general`. `Highest` keeps f32 matmuls in full f32 on
/// accelerators that would otherwise use bf16 or TF32 passes; the CPU ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Default,
    Highest,
}

/// Dimension numbers of `stablehlo.gather` (without operand batching dims).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherDims {
    pub offset_dims: Vec<i64>,
    pub collapsed_slice_dims: Vec<i64>,
    pub start_index_map: Vec<i64>,
    pub index_vector_dim: i64,
}

/// The combiner of a `stablehlo.reduce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

pub(super) fn arr(xs: &[i64]) -> String {
    if xs.is_empty() {
        "array<i64>".to_string()
    } else {
        let parts: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
        format!("array<i64: {}>", parts.join(", "))
    }
}

pub(super) fn list(xs: &[i64]) -> String {
    let parts: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

pub(super) fn is_perm(perm: &[i64], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm.iter().all(|&p| {
            let ok = p >= 0 && (p as usize) < rank && !seen[p as usize];
            if ok {
                seen[p as usize] = true;
            }
            ok
        })
}

pub(super) fn check_dims(op: &'static str, dims: &[i64], rank: usize) -> Result<()> {
    let mut seen = vec![false; rank];
    for &d in dims {
        if d < 0 || d as usize >= rank || seen[d as usize] {
            return invalid(
                op,
                format!("dimension {d} invalid or repeated for rank {rank}"),
            );
        }
        seen[d as usize] = true;
    }
    Ok(())
}

impl FuncBuilder {
    // ---- constants -------------------------------------------------------

    /// A constant with every element equal to `v` (rounded to the element type).
    pub fn splat(&mut self, ty: TensorType, v: f64) -> Value {
        let lit = scalar_literal(ty.elem, v);
        self.emit(
            "stablehlo.constant",
            &[],
            &format!("value = dense<{lit}> : {ty}"),
            ty,
        )
    }

    /// A scalar constant.
    pub fn scalar(&mut self, elem: ElemType, v: f64) -> Value {
        self.splat(TensorType::scalar(elem), v)
    }

    /// A dense f32 constant of shape `dims` from row-major `data`.
    pub fn constant_f32(&mut self, dims: &[i64], data: &[f32]) -> Result<Value> {
        let ty = TensorType::f32(dims);
        if ty.num_elements() as usize != data.len() {
            return invalid("constant", format!("{} values for {ty}", data.len()));
        }
        let vals: Vec<f64> = data.iter().map(|&x| x as f64).collect();
        let lit = dense_literal(ElemType::F32, dims, &vals);
        Ok(self.emit(
            "stablehlo.constant",
            &[],
            &format!("value = dense<{lit}> : {ty}"),
            ty,
        ))
    }

    /// A dense i32 constant of shape `dims` from row-major `data`.
    pub fn constant_i32(&mut self, dims: &[i64], data: &[i32]) -> Result<Value> {
        let ty = TensorType::i32(dims);
        if ty.num_elements() as usize != data.len() {
            return invalid("constant", format!("{} values for {ty}", data.len()));
        }
        let vals: Vec<f64> = data.iter().map(|&x| x as f64).collect();
        let lit = dense_literal(ElemType::I32, dims, &vals);
        Ok(self.emit(
            "stablehlo.constant",
            &[],
            &format!("value = dense<{lit}> : {ty}"),
            ty,
        ))
    }

    /// `stablehlo.iota` along `dim` of `ty`.
    pub fn iota(&mut self, ty: TensorType, dim: i64) -> Result<Value> {
        if dim < 0 || dim as usize >= ty.rank() {
            return invalid("iota", format!("dimension {dim} out of range for {ty}"));
        }
        Ok(self.emit(
            "stablehlo.iota",
            &[],
            &format!("iota_dimension = {dim} : i64"),
            ty,
        ))
    }

    // ---- elementwise -----------------------------------------------------

    fn binary(&mut self, op: &'static str, a: &Value, b: &Value) -> Result<Value> {
        if a.ty != b.ty {
            return invalid(op, format!("operand types differ: {} vs {}", a.ty, b.ty));
        }
        let ty = a.ty.clone();
        Ok(self.emit(op, &[a, b], "", ty))
    }

    pub fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("stablehlo.add", a, b)
    }
    pub fn sub(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("stablehlo.subtract", a, b)
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("stablehlo.multiply", a, b)
    }
    pub fn div(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("stablehlo.divide", a, b)
    }
    pub fn max(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("stablehlo.maximum", a, b)
    }
    pub fn min(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("stablehlo.minimum", a, b)
    }
    /// Logical (`i1`) or bitwise (`i32`) and.
    pub fn and(&mut self, a: &Value, b: &Value) -> Result<Value> {
        if a.elem().is_float() {
            return invalid("stablehlo.and", "needs boolean or integer operands");
        }
        self.binary("stablehlo.and", a, b)
    }
    /// Logical (`i1`) or bitwise (`i32`) or.
    pub fn or(&mut self, a: &Value, b: &Value) -> Result<Value> {
        if a.elem().is_float() {
            return invalid("stablehlo.or", "needs boolean or integer operands");
        }
        self.binary("stablehlo.or", a, b)
    }

    fn unary_float(&mut self, op: &'static str, x: &Value) -> Result<Value> {
        if !x.elem().is_float() {
            return invalid(op, format!("needs a float operand, got {}", x.ty));
        }
        let ty = x.ty.clone();
        Ok(self.emit(op, &[x], "", ty))
    }

    pub fn neg(&mut self, x: &Value) -> Result<Value> {
        if x.elem() == ElemType::Pred {
            return invalid("stablehlo.negate", "needs a numeric operand");
        }
        let ty = x.ty.clone();
        Ok(self.emit("stablehlo.negate", &[x], "", ty))
    }
    pub fn exp(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.exponential", x)
    }
    pub fn log(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.log", x)
    }
    pub fn rsqrt(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.rsqrt", x)
    }
    pub fn sqrt(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.sqrt", x)
    }
    pub fn tanh(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.tanh", x)
    }
    /// `1 / (1 + exp(-x))`.
    pub fn logistic(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.logistic", x)
    }
    pub fn cos(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.cosine", x)
    }
    pub fn sin(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("stablehlo.sine", x)
    }

    /// Element type conversion (`stablehlo.convert`).
    pub fn convert(&mut self, x: &Value, elem: ElemType) -> Value {
        if x.elem() == elem {
            return x.clone();
        }
        let ty = x.ty.with_elem(elem);
        self.emit("stablehlo.convert", &[x], "", ty)
    }

    /// `stablehlo.compare`; the comparison type follows the operand element type.
    pub fn compare(&mut self, a: &Value, b: &Value, dir: Cmp) -> Result<Value> {
        if a.ty != b.ty {
            return invalid(
                "stablehlo.compare",
                format!("operand types differ: {} vs {}", a.ty, b.ty),
            );
        }
        let ctype = match a.elem() {
            ElemType::F32 | ElemType::BF16 => "FLOAT",
            ElemType::I32 => "SIGNED",
            ElemType::Pred => "UNSIGNED",
        };
        let ty = a.ty.with_elem(ElemType::Pred);
        Ok(self.emit(
            "stablehlo.compare",
            &[a, b],
            &format!(
                "comparison_direction = #stablehlo<comparison_direction {}>, compare_type = #stablehlo<comparison_type {ctype}>",
                dir.mlir()
            ),
            ty,
        ))
    }

    /// `stablehlo.select`: `pred` is either a scalar or has the shape of the branches.
    pub fn select(&mut self, pred: &Value, on_true: &Value, on_false: &Value) -> Result<Value> {
        if pred.elem() != ElemType::Pred {
            return invalid("stablehlo.select", format!("predicate is {}", pred.ty));
        }
        if on_true.ty != on_false.ty {
            return invalid(
                "stablehlo.select",
                format!("branch types differ: {} vs {}", on_true.ty, on_false.ty),
            );
        }
        if pred.rank() != 0 && pred.dims() != on_true.dims() {
            return invalid(
                "stablehlo.select",
                format!("predicate {} does not match {}", pred.ty, on_true.ty),
            );
        }
        let ty = on_true.ty.clone();
        Ok(self.emit("stablehlo.select", &[pred, on_true, on_false], "", ty))
    }

    // ---- shape ops ---------------------------------------------------------

    /// `stablehlo.broadcast_in_dim`: operand dimension `i` maps to result dimension `dims[i]`.
    pub fn broadcast_in_dim(&mut self, x: &Value, out_dims: &[i64], dims: &[i64]) -> Result<Value> {
        const OP: &str = "stablehlo.broadcast_in_dim";
        if dims.len() != x.rank() {
            return invalid(OP, format!("{} mapping dims for {}", dims.len(), x.ty));
        }
        check_dims(OP, dims, out_dims.len())?;
        for (i, &d) in dims.iter().enumerate() {
            let src = x.dims()[i];
            if src != 1 && src != out_dims[d as usize] {
                return invalid(
                    OP,
                    format!("dim {i} of {} cannot become {out_dims:?}", x.ty),
                );
            }
        }
        if dims.windows(2).any(|w| w[0] >= w[1]) {
            // The spec allows any order, but XLA's layout assignment is simplest
            // with increasing dims and every caller here can provide them.
            return invalid(OP, "broadcast dims must be increasing");
        }
        let ty = x.ty.with_dims(out_dims);
        Ok(self.emit(
            OP,
            &[x],
            &format!("broadcast_dimensions = {}", arr(dims)),
            ty,
        ))
    }

    pub fn reshape(&mut self, x: &Value, dims: &[i64]) -> Result<Value> {
        let ty = x.ty.with_dims(dims);
        if ty.num_elements() != x.ty.num_elements() {
            return invalid("stablehlo.reshape", format!("{} cannot become {ty}", x.ty));
        }
        if ty == x.ty {
            return Ok(x.clone());
        }
        Ok(self.emit("stablehlo.reshape", &[x], "", ty))
    }

    /// `stablehlo.transpose`: result dimension `i` is operand dimension `perm[i]`.
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Result<Value> {
        if !is_perm(perm, x.rank()) {
            return invalid(
                "stablehlo.transpose",
                format!("{perm:?} is not a permutation for {}", x.ty),
            );
        }
        let dims: Vec<i64> = perm.iter().map(|&p| x.dims()[p as usize]).collect();
        let ty = x.ty.with_dims(&dims);
        Ok(self.emit(
            "stablehlo.transpose",
            &[x],
            &format!("permutation = {}", arr(perm)),
            ty,
        ))
    }

    pub fn concatenate(&mut self, xs: &[&Value], dim: i64) -> Result<Value> {
        const OP: &str = "stablehlo.concatenate";
        let Some(first) = xs.first() else {
            return invalid(OP, "no operands");
        };
        if dim < 0 || dim as usize >= first.rank() {
            return invalid(OP, format!("dimension {dim} out of range for {}", first.ty));
        }
        let mut dims = first.dims().to_vec();
        dims[dim as usize] = 0;
        for x in xs {
            let same_rest = x.rank() == first.rank()
                && x.elem() == first.elem()
                && x.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == dim as usize || a == b);
            if !same_rest {
                return invalid(OP, format!("{} does not fit {}", x.ty, first.ty));
            }
            dims[dim as usize] += x.dims()[dim as usize];
        }
        let ty = first.ty.with_dims(&dims);
        Ok(self.emit(OP, xs, &format!("dimension = {dim} : i64"), ty))
    }

    /// `stablehlo.slice` with unit strides.
    pub fn slice(&mut self, x: &Value, start: &[i64], limit: &[i64]) -> Result<Value> {
        let strides = vec![1; x.rank()];
        self.slice_strided(x, start, limit, &strides)
    }

    pub fn slice_strided(
        &mut self,
        x: &Value,
        start: &[i64],
        limit: &[i64],
        strides: &[i64],
    ) -> Result<Value> {
        const OP: &str = "stablehlo.slice";
        let r = x.rank();
        if start.len() != r || limit.len() != r || strides.len() != r {
            return invalid(OP, format!("index lists must have rank {r}"));
        }
        let mut dims = Vec::with_capacity(r);
        for i in 0..r {
            if start[i] < 0 || start[i] > limit[i] || limit[i] > x.dims()[i] || strides[i] < 1 {
                return invalid(OP, format!("bad bounds on dim {i} of {}", x.ty));
            }
            dims.push((limit[i] - start[i] + strides[i] - 1) / strides[i]);
        }
        let ty = x.ty.with_dims(&dims);
        Ok(self.emit(
            OP,
            &[x],
            &format!(
                "start_indices = {}, limit_indices = {}, strides = {}",
                arr(start),
                arr(limit),
                arr(strides)
            ),
            ty,
        ))
    }

    /// `stablehlo.dynamic_slice`: `starts` are scalar i32 values, one per
    /// dimension (clamped by the op so the slice stays in bounds).
    pub fn dynamic_slice(&mut self, x: &Value, starts: &[&Value], sizes: &[i64]) -> Result<Value> {
        const OP: &str = "stablehlo.dynamic_slice";
        if starts.len() != x.rank() || sizes.len() != x.rank() {
            return invalid(OP, format!("need {} start indices and sizes", x.rank()));
        }
        if starts
            .iter()
            .any(|s| s.ty != TensorType::scalar(ElemType::I32))
        {
            return invalid(OP, "start indices must be tensor<i32>");
        }
        if sizes.iter().zip(x.dims()).any(|(&s, &d)| s < 0 || s > d) {
            return invalid(OP, format!("sizes {sizes:?} exceed {}", x.ty));
        }
        let mut operands = vec![x];
        operands.extend_from_slice(starts);
        let ty = x.ty.with_dims(sizes);
        Ok(self.emit(OP, &operands, &format!("slice_sizes = {}", arr(sizes)), ty))
    }

    /// `stablehlo.dynamic_update_slice`: writes `update` into `x` at `starts`.
    pub fn dynamic_update_slice(
        &mut self,
        x: &Value,
        update: &Value,
        starts: &[&Value],
    ) -> Result<Value> {
        const OP: &str = "stablehlo.dynamic_update_slice";
        if starts.len() != x.rank() || update.rank() != x.rank() || update.elem() != x.elem() {
            return invalid(OP, format!("{} does not fit {}", update.ty, x.ty));
        }
        if starts
            .iter()
            .any(|s| s.ty != TensorType::scalar(ElemType::I32))
        {
            return invalid(OP, "start indices must be tensor<i32>");
        }
        let mut operands = vec![x, update];
        operands.extend_from_slice(starts);
        let ty = x.ty.clone();
        Ok(self.emit(OP, &operands, "", ty))
    }
}
