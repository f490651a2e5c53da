//! SSR JSON (`Scene::from_json`): a parsed scene is valid, and writing it back and parsing it
//! again gives the same scene (floats within 1e-12 relative: see `json_close`).
#![no_main]
use cielr_core::Scene;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scene) = Scene::from_json(text) else {
        return;
    };
    scene.validate().expect("a parsed scene is valid");
    let _ = scene.describe();
    for o in &scene.objects {
        let _ = scene.area_fraction(o);
        let _ = scene.center(o);
    }
    let again = Scene::from_json(&scene.to_json()).expect("a written scene parses");
    assert_eq!(scene.objects.len(), again.objects.len());
    assert!(
        cielr_fuzz::json_close(&scene.to_value(), &again.to_value()),
        "{scene:?} != {again:?}"
    );
});
