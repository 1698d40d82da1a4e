//! The sandbox demo (`rbm-fallback sandbox --demo`) is a promise made in the
//! README: every scenario, track mode and send mode, reaches the outcome the
//! simulation implies. Run it as a test so the promise stays true.

mod common;

use common::*;

#[tokio::test]
async fn every_demo_scenario_reaches_its_expected_outcome() {
    let h = start().await;
    let all_ok = rbm_fallback::sandbox::demo::run(&h.s)
        .await
        .expect("the demo runs");
    assert!(
        all_ok,
        "a scenario missed its outcome (see the table above)"
    );
}
