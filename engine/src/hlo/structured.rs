//! The StableHLO ops with structured attributes — gather and dot dimension numbers, reductions
//! and loops with regions — each checking its operands and inferring its result type as the
//! spec defines it (the plain element-wise and shape ops are in `ops.rs`).

use super::builder::{FuncBuilder, RegionSpec};
use super::ops::{DotDims, GatherDims, Precision, ReduceOp, arr, check_dims, list};
use super::types::{ElemType, Result, TensorType, Value, invalid};

impl FuncBuilder {
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
