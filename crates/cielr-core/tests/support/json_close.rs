//! JSON comparison shared by the `ssr_json` fuzz target (fuzz/src/lib.rs) and its replayed
//! findings (crates/cielr-core/tests/fuzz_regressions.rs).

/// Whether two JSON values are equal, numbers within a relative 1e-12: serde_json (without
/// its `float_roundtrip` feature) may parse a long decimal 1 ulp away from the nearest
/// double, so a written-and-reread file can differ in the last bit of a float.
pub fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}
