//! Constrained decoding: whatever bytes the automaton accepts, completed with its own
//! shortest completion, must parse under the same constraint (the first byte picks one of the
//! planner's constraints; the rest is fed until a byte is refused).
#![no_main]
use cielr_planner::constrained::CompiledConstraint;
use libfuzzer_sys::fuzz_target;

#[path = "shapes.rs"]
mod shapes;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let c = shapes::constraint(k);
    let compiled = CompiledConstraint::new(&c)
        .expect("the planner's constraints compile")
        .with_leading_space(k & 0x80 != 0);
    let mut state = compiled.start();
    let mut out = Vec::new();
    for &b in rest {
        let mut next = state;
        if !next.step(&compiled, b) {
            break;
        }
        state = next;
        out.push(b);
    }
    let tail = state.completion(&compiled);
    assert!(
        state.step_bytes(&compiled, &tail),
        "the completion {:?} of {:?} is refused",
        String::from_utf8_lossy(&tail),
        String::from_utf8_lossy(&out)
    );
    assert!(
        state.is_complete(&compiled),
        "completed text is not complete"
    );
    out.extend_from_slice(&tail);
    let text = String::from_utf8(out).expect("accepted bytes are UTF-8");
    if let Err(reason) = c.parse(&text) {
        panic!("constrained output {text:?} does not parse: {reason}");
    }
});
