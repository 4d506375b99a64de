//! Plans opened with several threads: each encoder keeps the threads or one, whichever measured faster, and the embeddings do not depend on the choice.

use std::path::Path;

use cavsync_core::model::Modality;
use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_device::latency::pattern;

#[test]
fn threaded_plans_choose_their_threads_and_agree_with_one_thread() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo/bundle");
    let single = Bundle::open_with(&dir, &PlanOptions { threads: 1 }).unwrap();
    let threaded = Bundle::open_with(&dir, &PlanOptions { threads: 2 }).unwrap();
    for (modality, stride) in [(Modality::Audio, 7919), (Modality::Visual, 104_729)] {
        assert_eq!(single.threads(modality), 1);
        let used = threaded.threads(modality);
        assert!(used == 1 || used == 2, "{modality:?} uses {used} threads");
        println!("{modality:?} encoder: {used} of 2 threads");
        let input = pattern(single.input_len(modality), stride);
        let (mut a, mut b) = Default::default();
        single.embed_into(modality, &input, &mut a).unwrap();
        threaded.embed_into(modality, &input, &mut b).unwrap();
        let worst = a
            .tokens
            .iter()
            .chain(&a.global)
            .zip(b.tokens.iter().chain(&b.global))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{modality:?}: max abs difference {worst:e}");
    }
}
