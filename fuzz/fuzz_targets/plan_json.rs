//! Plan JSON (`Plan::from_json`): parse, summarise (with and without a scene), write back.
#![no_main]
use cielr_core::Plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = Plan::from_json(text) else {
        return;
    };
    let scene = cielr_fuzz::coffee_scene();
    let _ = plan.summary(None);
    let _ = plan.summary(Some(&scene));
    for a in &plan.steps {
        let _ = a.validate(&scene);
    }
    let again = Plan::from_json(&plan.to_json()).expect("a written plan parses");
    assert_eq!(plan.steps, again.steps);
});
