//! `tojson` as Hugging Face defines it for chat templates: Python's `json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)`.
//!
//! transformers replaces Jinja's own `tojson` (which HTML-escapes `<`, `>`, `&`, `'`) with
//! `json.dumps`, and tool-calling templates print tool schemas and call arguments with it, so the
//! exact bytes matter: Python's default separators are `", "` and `": "` (`","` and `": "` once an
//! indent is given), non-ASCII text is kept as is, and floats print as Python's `repr`.

use std::fmt::Write;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// How `json.dumps` lays a value out.
struct Layout {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// The `tojson` filter: `value | tojson(indent=None, separators=None, sort_keys=False, ensure_ascii=False)`.
pub(crate) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.to_string()),
        Some(v) => {
            let n = i64::try_from(v.clone()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?;
            Some(" ".repeat(usize::try_from(n.max(0)).unwrap_or(0)))
        }
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(seps) if seps.len() == 2 => (seps[0].clone(), seps[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair (item_separator, key_separator)",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let layout = Layout {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(&mut out, value, &layout, 0)?;
    Ok(Value::from(out))
}

fn write_value(out: &mut String, v: &Value, l: &Layout, depth: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default(), l.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, l, depth, '[', ']', items.len(), |out, i| {
                write_value(out, &items[i], l, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if l.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            write_container(out, l, depth, '{', '}', keys.len(), |out, i| {
                let k = &keys[i];
                match k.as_str() {
                    Some(s) => write_string(out, s, l.ensure_ascii),
                    None => write_string(out, &k.to_string(), l.ensure_ascii),
                }
                out.push_str(&l.key_sep);
                write_value(out, &v.get_item(k)?, l, depth + 1)
            })?;
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {other} value is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    l: &Layout,
    depth: usize,
    open: char,
    close: char,
    len: usize,
    mut each: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&l.item_sep);
        }
        if let Some(ind) = &l.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth + 1));
        }
        each(out, i)?;
    }
    if let Some(ind) = &l.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Integers as digits; floats as Python's `repr` (shortest round-trip, `1.0`, `1e-07`, `1e+16`).
fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        out.push_str(&v.to_string());
    } else {
        let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
        out.push_str(&python_float_repr(f));
    }
}

fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control
/// characters as `\u00XX`; non-ASCII kept (or `\uXXXX` with surrogate pairs under `ensure_ascii`).
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Environment;

    fn render(expr: &str, ctx: Value) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(&format!("{{{{ {expr} }}}}"), ctx).unwrap()
    }

    /// Expected strings are what Python 3.11's `json.dumps(x, ensure_ascii=False, ...)` prints.
    #[test]
    fn matches_python_json_dumps() {
        let ctx = Value::from(minijinja::value::Serde(serde_json::json!({
            "tool": {"name": "get_weather", "parameters": {"city": "Tōkyō <b>&'", "n": [1, 2.5, true, null]}},
            "f": [1.0, 0.1, 1e-7, 1e16, 123456.789, -0.0],
            "s": "tab\tnl\n\"q\" \\ \u{1}",
            "empty": {"a": [], "b": {}}
        })));
        assert_eq!(
            render("tool | tojson", ctx.clone()),
            r#"{"name": "get_weather", "parameters": {"city": "Tōkyō <b>&'", "n": [1, 2.5, true, null]}}"#
        );
        assert_eq!(
            render("f | tojson", ctx.clone()),
            "[1.0, 0.1, 1e-07, 1e+16, 123456.789, -0.0]"
        );
        assert_eq!(
            render("s | tojson", ctx.clone()),
            r#""tab\tnl\n\"q\" \\ \u0001""#
        );
        assert_eq!(
            render("tool | tojson(indent=2)", ctx.clone()),
            "{\n  \"name\": \"get_weather\",\n  \"parameters\": {\n    \"city\": \"Tōkyō <b>&'\",\n    \"n\": [\n      1,\n      2.5,\n      true,\n      null\n    ]\n  }\n}"
        );
        assert_eq!(
            render("empty | tojson(indent=1)", ctx.clone()),
            "{\n \"a\": [],\n \"b\": {}\n}"
        );
        assert_eq!(
            render(
                "tool.parameters | tojson(separators=[',', ':'], sort_keys=true)",
                ctx.clone()
            ),
            r#"{"city":"Tōkyō <b>&'","n":[1,2.5,true,null]}"#
        );
        assert_eq!(
            render("'é😀' | tojson(ensure_ascii=true)", ctx),
            r#""\u00e9\ud83d\ude00""#
        );
    }
}
