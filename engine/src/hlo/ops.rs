//! The StableHLO ops the model programs use, each checking its operand types
//! and inferring its result type as the spec defines it.

use super::builder::{FuncBuilder, RegionSpec};
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

fn arr(xs: &[i64]) -> String {
    if xs.is_empty() {
        "array<i64>".to_string()
    } else {
        let parts: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
        format!("array<i64: {}>", parts.join(", "))
    }
}

fn list(xs: &[i64]) -> String {
    let parts: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn is_perm(perm: &[i64], rank: usize) -> bool {
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

fn check_dims(op: &'static str, dims: &[i64], rank: usize) -> Result<()> {
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

    /// `stablehlo.gather` (no operand batching dims).
    pub fn gather(
        &mut self,
        operand: &Value,
        indices: &Value,
        dn: &GatherDims,
        slice_sizes: &[i64],
    ) -> Result<Value> {
        const OP: &str = "stablehlo.gather";
        if indices.elem() != ElemType::I32 {
            return invalid(OP, "indices must be i32");
        }
        if slice_sizes.len() != operand.rank() {
            return invalid(OP, "one slice size per operand dimension");
        }
        check_dims(OP, &dn.collapsed_slice_dims, operand.rank())?;
        check_dims(OP, &dn.start_index_map, operand.rank())?;
        for &c in &dn.collapsed_slice_dims {
            if slice_sizes[c as usize] != 1 {
                return invalid(OP, "collapsed dims must have slice size 1");
            }
        }
        let ivd = dn.index_vector_dim;
        if ivd < 0 || ivd as usize > indices.rank() {
            return invalid(OP, "index_vector_dim out of range");
        }
        let index_len = if (ivd as usize) < indices.rank() {
            indices.dims()[ivd as usize]
        } else {
            1
        };
        if index_len != dn.start_index_map.len() as i64 {
            return invalid(OP, "start_index_map must match the index vector length");
        }
        let batch: Vec<i64> = indices
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as i64 != ivd)
            .map(|(_, &d)| d)
            .collect();
        let offsets: Vec<i64> = slice_sizes
            .iter()
            .enumerate()
            .filter(|(i, _)| !dn.collapsed_slice_dims.contains(&(*i as i64)))
            .map(|(_, &s)| s)
            .collect();
        if offsets.len() != dn.offset_dims.len() {
            return invalid(
                OP,
                "offset_dims must name every uncollapsed slice dimension",
            );
        }
        let rank = batch.len() + offsets.len();
        check_dims(OP, &dn.offset_dims, rank)?;
        let (mut bi, mut oi) = (batch.iter(), offsets.iter());
        let dims: Vec<i64> = (0..rank as i64)
            .map(|d| {
                if dn.offset_dims.contains(&d) {
                    oi.next().copied().unwrap_or(0)
                } else {
                    bi.next().copied().unwrap_or(0)
                }
            })
            .collect();
        let mut fields = Vec::new();
        if !dn.offset_dims.is_empty() {
            fields.push(format!("offset_dims = {}", list(&dn.offset_dims)));
        }
        if !dn.collapsed_slice_dims.is_empty() {
            fields.push(format!(
                "collapsed_slice_dims = {}",
                list(&dn.collapsed_slice_dims)
            ));
        }
        fields.push(format!("start_index_map = {}", list(&dn.start_index_map)));
        fields.push(format!("index_vector_dim = {ivd}"));
        let ty = operand.ty.with_dims(&dims);
        Ok(self.emit(
            OP,
            &[operand, indices],
            &format!(
                "dimension_numbers = #stablehlo.gather<{}>, indices_are_sorted = false, slice_sizes = {}",
                fields.join(", "),
                arr(slice_sizes)
            ),
            ty,
        ))
    }

    /// `stablehlo.dot_general`. The result holds batch dims, then lhs free dims,
    /// then rhs free dims; its element type is `out` (e.g. f32 from bf16 operands).
    pub fn dot_general(
        &mut self,
        lhs: &Value,
        rhs: &Value,
        dn: &DotDims,
        out: ElemType,
        precision: Precision,
    ) -> Result<Value> {
        const OP: &str = "stablehlo.dot_general";
        if lhs.elem() != rhs.elem() {
            return invalid(
                OP,
                format!("operand element types differ: {} vs {}", lhs.ty, rhs.ty),
            );
        }
        if dn.lhs_batch.len() != dn.rhs_batch.len()
            || dn.lhs_contract.len() != dn.rhs_contract.len()
        {
            return invalid(OP, "batch and contracting dim lists must pair up");
        }
        let mut lhs_used: Vec<i64> = dn.lhs_batch.clone();
        lhs_used.extend(&dn.lhs_contract);
        let mut rhs_used: Vec<i64> = dn.rhs_batch.clone();
        rhs_used.extend(&dn.rhs_contract);
        check_dims(OP, &lhs_used, lhs.rank())?;
        check_dims(OP, &rhs_used, rhs.rank())?;
        for (l, r) in dn
            .lhs_batch
            .iter()
            .zip(&dn.rhs_batch)
            .chain(dn.lhs_contract.iter().zip(&dn.rhs_contract))
        {
            if lhs.dims()[*l as usize] != rhs.dims()[*r as usize] {
                return invalid(
                    OP,
                    format!("dim {l} of {} does not match dim {r} of {}", lhs.ty, rhs.ty),
                );
            }
        }
        let mut dims: Vec<i64> = dn
            .lhs_batch
            .iter()
            .map(|&d| lhs.dims()[d as usize])
            .collect();
        for (i, &d) in lhs.dims().iter().enumerate() {
            if !lhs_used.contains(&(i as i64)) {
                dims.push(d);
            }
        }
        for (i, &d) in rhs.dims().iter().enumerate() {
            if !rhs_used.contains(&(i as i64)) {
                dims.push(d);
            }
        }
        let mut fields = Vec::new();
        if !dn.lhs_batch.is_empty() {
            fields.push(format!("lhs_batching_dimensions = {}", list(&dn.lhs_batch)));
            fields.push(format!("rhs_batching_dimensions = {}", list(&dn.rhs_batch)));
        }
        if !dn.lhs_contract.is_empty() {
            fields.push(format!(
                "lhs_contracting_dimensions = {}",
                list(&dn.lhs_contract)
            ));
            fields.push(format!(
                "rhs_contracting_dimensions = {}",
                list(&dn.rhs_contract)
            ));
        }
        let mut attrs = format!(
            "dot_dimension_numbers = #stablehlo.dot<{}>",
            fields.join(", ")
        );
        if precision == Precision::Highest {
            attrs.push_str(
                ", precision_config = [#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]",
            );
        }
        let ty = TensorType::new(&dims, out);
        Ok(self.emit(OP, &[lhs, rhs], &attrs, ty))
    }

    // ---- ops with regions --------------------------------------------------

    /// `stablehlo.reduce` of `x` over `dims` with a sum, max or min body.
    pub fn reduce(&mut self, x: &Value, dims: &[i64], op: ReduceOp) -> Result<Value> {
        const OP: &str = "stablehlo.reduce";
        check_dims(OP, dims, x.rank())?;
        let elem = x.elem();
        let init_value = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        };
        if elem == ElemType::I32 && op != ReduceOp::Sum {
            return invalid(OP, "integer max/min reductions are not needed");
        }
        let init = self.scalar(elem, init_value);
        let body_op = match op {
            ReduceOp::Sum => "stablehlo.add",
            ReduceOp::Max => "stablehlo.maximum",
            ReduceOp::Min => "stablehlo.minimum",
        };
        let out_dims: Vec<i64> = x
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !dims.contains(&(*i as i64)))
            .map(|(_, &d)| d)
            .collect();
        let scalar = TensorType::scalar(elem);
        let region = RegionSpec {
            arg_types: vec![scalar.clone(), scalar.clone()],
            build: Box::new(move |b: &mut FuncBuilder, args: &[Value]| {
                let r = b.emit(body_op, &[&args[0], &args[1]], "", scalar);
                Ok(vec![r])
            }),
        };
        let mut out = self.emit_with_regions(
            OP,
            &[x, &init],
            &format!("dimensions = {}", arr(dims)),
            vec![region],
            vec![x.ty.with_dims(&out_dims)],
        )?;
        Ok(out.remove(0))
    }

    /// `stablehlo.while` over the loop-carried `init` values. `cond` returns a
    /// `tensor<i1>`; `body` returns the next values, with the same types as `init`.
    pub fn while_loop<C, B>(&mut self, init: &[&Value], cond: C, body: B) -> Result<Vec<Value>>
    where
        C: FnOnce(&mut FuncBuilder, &[Value]) -> Result<Value>,
        B: FnOnce(&mut FuncBuilder, &[Value]) -> Result<Vec<Value>>,
    {
        const OP: &str = "stablehlo.while";
        let types: Vec<TensorType> = init.iter().map(|v| v.ty.clone()).collect();
        let body_types = types.clone();
        let regions = vec![
            RegionSpec {
                arg_types: types.clone(),
                build: Box::new(move |b: &mut FuncBuilder, args: &[Value]| {
                    let c = cond(b, args)?;
                    if c.ty != TensorType::scalar(ElemType::Pred) {
                        return invalid(OP, format!("condition is {}", c.ty));
                    }
                    Ok(vec![c])
                }),
            },
            RegionSpec {
                arg_types: types.clone(),
                build: Box::new(move |b: &mut FuncBuilder, args: &[Value]| {
                    let next = body(b, args)?;
                    let next_types: Vec<&TensorType> = next.iter().map(|v| &v.ty).collect();
                    if next_types != body_types.iter().collect::<Vec<_>>() {
                        return invalid(OP, "body results must match the loop-carried types");
                    }
                    Ok(next)
                }),
            },
        ];
        self.emit_with_regions(OP, init, "", regions, types)
    }
}
