//! The function builder: SSA naming, nested regions and module text.
//!
//! Every op is written in MLIR's generic form (`"stablehlo.add"(%a, %b) : (..) -> ..`),
//! which the StableHLO parser accepts for every op and which needs no per-op
//! pretty-printer knowledge. Names are unique across the whole function, so
//! values defined outside a region may be referenced inside it without shadowing.

use std::fmt::Write as _;

use super::types::{Result, TensorType, Value, invalid};

/// Builds one `func.func @main` and renders it as a StableHLO module.
pub struct FuncBuilder {
    params: Vec<Value>,
    next_id: usize,
    /// Lines of the regions currently open; the first is the function body.
    regions: Vec<Vec<String>>,
}

impl Default for FuncBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FuncBuilder {
    pub fn new() -> Self {
        FuncBuilder {
            params: Vec::new(),
            next_id: 0,
            regions: vec![Vec::new()],
        }
    }

    /// Declares the next parameter of `@main`. Parameters may be declared at any
    /// point; their order is the declaration order.
    pub fn param(&mut self, ty: TensorType) -> Value {
        let v = Value {
            name: format!("%arg{}", self.params.len()),
            ty,
        };
        self.params.push(v.clone());
        v
    }

    pub fn params(&self) -> &[Value] {
        &self.params
    }

    fn fresh(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("%{prefix}{n}")
    }

    fn push_line(&mut self, line: String) {
        let depth = self.regions.len();
        let indent = "  ".repeat(depth + 1);
        if let Some(region) = self.regions.last_mut() {
            region.push(format!("{indent}{line}"));
        }
    }

    /// Emits a single-result op in generic form and returns its result.
    pub(crate) fn emit(
        &mut self,
        op: &str,
        operands: &[&Value],
        attrs: &str,
        result: TensorType,
    ) -> Value {
        let name = self.fresh("v");
        let line = format!(
            "{name} = \"{op}\"({}){} : {} -> {result}",
            operand_list(operands),
            attr_block(attrs),
            operand_types(operands),
        );
        self.push_line(line);
        Value { name, ty: result }
    }

    /// Emits an op whose regions are built by `regions`; each closure writes one
    /// region's ops and returns the values its terminator (`stablehlo.return`) yields.
    pub(crate) fn emit_with_regions(
        &mut self,
        op: &str,
        operands: &[&Value],
        attrs: &str,
        regions: Vec<RegionSpec<'_>>,
        results: Vec<TensorType>,
    ) -> Result<Vec<Value>> {
        let mut region_texts = Vec::with_capacity(regions.len());
        for spec in regions {
            let args: Vec<Value> = spec
                .arg_types
                .iter()
                .map(|ty| Value {
                    name: self.fresh("b"),
                    ty: ty.clone(),
                })
                .collect();
            self.regions.push(Vec::new());
            let yielded = (spec.build)(self, &args);
            let yielded = match yielded {
                Ok(y) => y,
                Err(e) => {
                    self.regions.pop();
                    return Err(e);
                }
            };
            self.push_line(format!(
                "\"stablehlo.return\"({}) : {} -> ()",
                operand_list(&yielded.iter().collect::<Vec<_>>()),
                operand_types(&yielded.iter().collect::<Vec<_>>()),
            ));
            let body = self.regions.pop().unwrap_or_default();
            let depth = self.regions.len();
            let indent = "  ".repeat(depth + 1);
            let mut text = String::from("{\n");
            let sig: Vec<String> = args
                .iter()
                .map(|a| format!("{}: {}", a.name, a.ty))
                .collect();
            let _ = writeln!(text, "{indent}^bb0({}):", sig.join(", "));
            for l in body {
                text.push_str(&l);
                text.push('\n');
            }
            let _ = write!(text, "{indent}}}");
            region_texts.push(text);
        }
        let base = self.fresh("v");
        let lhs = if results.len() == 1 {
            base.clone()
        } else {
            format!("{base}:{}", results.len())
        };
        let result_types: Vec<String> = results.iter().map(|t| t.to_string()).collect();
        let line = format!(
            "{lhs} = \"{op}\"({}){} ({}) : {} -> ({})",
            operand_list(operands),
            attr_block(attrs),
            region_texts.join(", "),
            operand_types(operands),
            result_types.join(", "),
        );
        self.push_line(line);
        Ok(if results.len() == 1 {
            vec![Value {
                name: base,
                ty: results[0].clone(),
            }]
        } else {
            results
                .into_iter()
                .enumerate()
                .map(|(i, ty)| Value {
                    name: format!("{base}#{i}"),
                    ty,
                })
                .collect()
        })
    }

    /// Renders the module with `@main` returning `results`.
    pub fn finish(mut self, results: &[Value]) -> Result<String> {
        if self.regions.len() != 1 {
            return invalid("finish", "a region is still open");
        }
        let refs: Vec<&Value> = results.iter().collect();
        self.push_line(format!(
            "\"func.return\"({}) : {} -> ()",
            operand_list(&refs),
            operand_types(&refs),
        ));
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty))
            .collect();
        let result_types: Vec<String> = results.iter().map(|r| r.ty.to_string()).collect();
        let mut text = String::new();
        let _ = writeln!(text, "module @scorer {{");
        let _ = writeln!(
            text,
            "  func.func public @main({}) -> ({}) {{",
            params.join(", "),
            result_types.join(", ")
        );
        for l in self.regions.pop().unwrap_or_default() {
            text.push_str(&l);
            text.push('\n');
        }
        let _ = writeln!(text, "  }}");
        let _ = writeln!(text, "}}");
        Ok(text)
    }
}

/// One region of an op: the types of its block arguments and a closure that
/// builds its body and returns the values to yield.
pub(crate) struct RegionSpec<'a> {
    pub arg_types: Vec<TensorType>,
    #[allow(clippy::type_complexity)]
    pub build: Box<dyn FnOnce(&mut FuncBuilder, &[Value]) -> Result<Vec<Value>> + 'a>,
}

fn operand_list(operands: &[&Value]) -> String {
    operands
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn operand_types(operands: &[&Value]) -> String {
    let tys: Vec<String> = operands.iter().map(|v| v.ty.to_string()).collect();
    format!("({})", tys.join(", "))
}

fn attr_block(attrs: &str) -> String {
    if attrs.is_empty() {
        String::new()
    } else {
        format!(" <{{{attrs}}}>")
    }
}
