//! Small compositions of ops used throughout the model programs.

use super::builder::FuncBuilder;
use super::ops::{GatherDims, ReduceOp};
use super::types::{ElemType, Result, TensorType, Value, invalid};

impl FuncBuilder {
    /// A constant shaped and typed like `x`, every element `v`.
    pub fn splat_like(&mut self, x: &Value, v: f64) -> Value {
        self.splat(x.ty().clone(), v)
    }

    /// A scalar i32 constant (loop counters, slice starts).
    pub fn scalar_i32(&mut self, v: i32) -> Value {
        self.scalar(ElemType::I32, v as f64)
    }

    /// `x * v` for a constant `v`.
    pub fn mul_const(&mut self, x: &Value, v: f64) -> Result<Value> {
        let c = self.splat_like(x, v);
        self.mul(x, &c)
    }

    /// `x + v` for a constant `v`.
    pub fn add_const(&mut self, x: &Value, v: f64) -> Result<Value> {
        let c = self.splat_like(x, v);
        self.add(x, &c)
    }

    pub fn reduce_sum(&mut self, x: &Value, dims: &[i64]) -> Result<Value> {
        self.reduce(x, dims, ReduceOp::Sum)
    }

    pub fn reduce_max(&mut self, x: &Value, dims: &[i64]) -> Result<Value> {
        self.reduce(x, dims, ReduceOp::Max)
    }

    /// Broadcasts `x`, whose dimensions are the leading dimensions of `out_dims`,
    /// across the trailing ones (e.g. a per-row statistic `[T]` to `[T, H]`).
    pub fn broadcast_leading(&mut self, x: &Value, out_dims: &[i64]) -> Result<Value> {
        let dims: Vec<i64> = (0..x.rank() as i64).collect();
        self.broadcast_in_dim(x, out_dims, &dims)
    }

    /// Broadcasts `x`, whose dimensions are the trailing dimensions of
    /// `out_dims`, across the leading ones (e.g. a norm weight `[H]` to `[T, H]`).
    pub fn broadcast_trailing(&mut self, x: &Value, out_dims: &[i64]) -> Result<Value> {
        if x.rank() > out_dims.len() {
            return invalid(
                "broadcast_trailing",
                format!("{} is wider than {out_dims:?}", x.ty()),
            );
        }
        let offset = (out_dims.len() - x.rank()) as i64;
        let dims: Vec<i64> = (0..x.rank() as i64).map(|d| d + offset).collect();
        self.broadcast_in_dim(x, out_dims, &dims)
    }

    /// Rows of `table` (`[N, D..]`) picked by `indices` (`[I..]`, i32): `[I.., D..]`.
    /// Out-of-range indices are clamped, as `gather` defines.
    pub fn take_rows(&mut self, table: &Value, indices: &Value) -> Result<Value> {
        if table.rank() == 0 {
            return invalid("take_rows", "table must have a row dimension");
        }
        let mut idx_dims = indices.dims().to_vec();
        idx_dims.push(1);
        let idx = self.reshape(indices, &idx_dims)?;
        let batch_rank = indices.rank() as i64;
        let offset_dims: Vec<i64> = (0..table.rank() as i64 - 1)
            .map(|d| d + batch_rank)
            .collect();
        let mut slice_sizes = table.dims().to_vec();
        slice_sizes[0] = 1;
        self.gather(
            table,
            &idx,
            &GatherDims {
                offset_dims,
                collapsed_slice_dims: vec![0],
                start_index_map: vec![0],
                index_vector_dim: batch_rank,
            },
            &slice_sizes,
        )
    }

    /// `log(sum(exp(x)))` over the last dimension, computed stably.
    pub fn logsumexp_last(&mut self, x: &Value) -> Result<Value> {
        let last = x.rank() as i64 - 1;
        let dims = x.dims().to_vec();
        let m = self.reduce_max(x, &[last])?;
        let mb = self.broadcast_leading(&m, &dims)?;
        let shifted = self.sub(x, &mb)?;
        let e = self.exp(&shifted)?;
        let s = self.reduce_sum(&e, &[last])?;
        let l = self.log(&s)?;
        self.add(&l, &m)
    }

    /// Softmax over the last dimension.
    pub fn softmax_last(&mut self, x: &Value) -> Result<Value> {
        let last = x.rank() as i64 - 1;
        let dims = x.dims().to_vec();
        let m = self.reduce_max(x, &[last])?;
        let mb = self.broadcast_leading(&m, &dims)?;
        let shifted = self.sub(x, &mb)?;
        let e = self.exp(&shifted)?;
        let s = self.reduce_sum(&e, &[last])?;
        let sb = self.broadcast_leading(&s, &dims)?;
        self.div(&e, &sb)
    }

    /// A scalar i32 loop bound check `i < n`.
    pub fn lt_const(&mut self, i: &Value, n: i32) -> Result<Value> {
        if i.ty() != &TensorType::scalar(ElemType::I32) {
            return invalid("lt_const", format!("expects tensor<i32>, got {}", i.ty()));
        }
        let c = self.scalar_i32(n);
        self.compare(i, &c, super::ops::Cmp::Lt)
    }
}
