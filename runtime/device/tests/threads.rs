//! Plans opened with several threads: each encoder keeps the threads or one, whichever measured faster, frame pairs run in turn or side by side, and the embeddings depend on neither choice.

use std::path::Path;

use cavsync_core::model::Modality;
use cavsync_device::bundle::{Bundle, Embedding, PairMode, PlanOptions};
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

/// Largest absolute difference between two embeddings' values.
fn worst(a: &Embedding, b: &Embedding) -> f32 {
    assert_eq!(a.tokens.len(), b.tokens.len());
    a.tokens
        .iter()
        .chain(&a.global)
        .zip(b.tokens.iter().chain(&b.global))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn pairs_side_by_side_and_in_turn_give_the_encoders_own_outputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo-student/bundle");
    let mut bundle = Bundle::open_with(&dir, &PlanOptions { threads: 2 }).unwrap();
    println!("chosen when opened: {:?}", bundle.pair_mode());
    for mode in [PairMode::SideBySide, PairMode::InTurn, PairMode::SideBySide] {
        bundle.set_pair_mode(mode).unwrap();
        assert_eq!(bundle.pair_mode(), mode);
        for seed in 0..12 {
            let audio_in = pattern(bundle.input_len(Modality::Audio), 7919 + seed);
            let image_in = pattern(bundle.input_len(Modality::Visual), 104_729 + seed);
            let (mut a, mut v, mut a_alone, mut v_alone) = Default::default();
            let times = bundle
                .embed_pair_into(&audio_in, &image_in, &mut a, &mut v)
                .unwrap();
            assert_eq!(times.concurrent, mode == PairMode::SideBySide);
            assert!(times.pair_s > 0.0 && times.audio_s > 0.0 && times.visual_s > 0.0);
            bundle
                .embed_into(Modality::Audio, &audio_in, &mut a_alone)
                .unwrap();
            bundle
                .embed_into(Modality::Visual, &image_in, &mut v_alone)
                .unwrap();
            assert!(worst(&a, &a_alone) <= 1e-6, "{mode:?} audio");
            assert!(worst(&v, &v_alone) <= 1e-6, "{mode:?} visual");
        }
        // A bad input fails the pair with the encoder's own error, on either thread.
        let short = vec![0.0f32; 3];
        let image_in = pattern(bundle.input_len(Modality::Visual), 1);
        let (mut a, mut v) = Default::default();
        let err = bundle
            .embed_pair_into(&short, &image_in, &mut a, &mut v)
            .unwrap_err();
        assert!(err.to_string().contains("audio segment"), "{err}");
    }
    let single = Bundle::open_with(&dir, &PlanOptions { threads: 1 });
    let err = single
        .unwrap()
        .set_pair_mode(PairMode::SideBySide)
        .unwrap_err();
    assert!(err.to_string().contains("two threads or more"), "{err}");
}
