//! Number literals in MLIR's `dense<...>` syntax.

use super::types::ElemType;

/// One element literal. Finite floats are written with a mantissa dot and nine
/// significant digits (MLIR float literals need the dot; nine digits round-trip
/// any f32); non-finite values use the bit pattern, as MLIR requires.
pub(crate) fn scalar_literal(elem: ElemType, v: f64) -> String {
    match elem {
        ElemType::Pred => if v != 0.0 { "true" } else { "false" }.to_string(),
        ElemType::I32 => format!("{}", v as i64),
        ElemType::F32 | ElemType::BF16 => {
            let f = v as f32;
            if f.is_finite() {
                format!("{f:.8e}")
            } else if elem == ElemType::F32 {
                format!("0x{:08X}", f.to_bits())
            } else {
                // bf16 is the upper half of the f32 bit pattern.
                format!("0x{:04X}", f.to_bits() >> 16)
            }
        }
    }
}

/// A nested `[[..], [..]]` literal of shape `dims` from row-major values.
pub(crate) fn dense_literal(elem: ElemType, dims: &[i64], vals: &[f64]) -> String {
    fn rec(elem: ElemType, dims: &[i64], vals: &[f64], out: &mut String) {
        match dims.split_first() {
            None => out.push_str(&scalar_literal(elem, vals.first().copied().unwrap_or(0.0))),
            Some((&n, rest)) => {
                let stride: usize = rest.iter().product::<i64>() as usize;
                out.push('[');
                for i in 0..n as usize {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    rec(elem, rest, &vals[i * stride..(i + 1) * stride], out);
                }
                out.push(']');
            }
        }
    }
    let mut out = String::new();
    rec(elem, dims, vals, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_literals_have_a_dot_and_round_trip() {
        for v in [1.0f32, -0.5, 1e-6, 3.4e38, f32::MIN_POSITIVE, 0.1] {
            let s = scalar_literal(ElemType::F32, v as f64);
            assert!(s.contains('.'), "{s}");
            assert_eq!(s.parse::<f32>().unwrap(), v);
        }
        assert_eq!(
            scalar_literal(ElemType::F32, f64::NEG_INFINITY),
            "0xFF800000"
        );
        assert_eq!(scalar_literal(ElemType::BF16, f64::NEG_INFINITY), "0xFF80");
        assert_eq!(scalar_literal(ElemType::I32, -3.0), "-3");
        assert_eq!(scalar_literal(ElemType::Pred, 1.0), "true");
    }

    #[test]
    fn dense_literal_nests_by_shape() {
        let s = dense_literal(ElemType::I32, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(s, "[[1, 2, 3], [4, 5, 6]]");
        let s = dense_literal(ElemType::I32, &[], &[7.0]);
        assert_eq!(s, "7");
    }
}
