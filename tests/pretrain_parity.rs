//! The trainer's pretraining losses against the official `CAVMAE.forward` (scripts/make_pretrain_fixture.py): same weights, inputs and masking noise.

use std::path::Path;

use burn::prelude::*;
use cavsync::npy;
use cavsync_export::checkpoint::Checkpoint;
use cavsync_export::layout::ModelConfig;
use cavsync_export::model::CavMae;
use cavsync_export::pretrain::{self, Masking, Objective};

/// Losses agree to float32 accumulation noise; accuracy exactly.
const TOLERANCE: f64 = 1e-4;

fn rows(path: &Path) -> Vec<Vec<f32>> {
    let a = npy::read_f32(path).unwrap();
    let cols = a.shape()[1];
    a.iter()
        .copied()
        .collect::<Vec<_>>()
        .chunks(cols)
        .map(<[f32]>::to_vec)
        .collect()
}

#[test]
fn pretraining_losses_match_the_official_forward() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pretrain");
    let ck = Checkpoint::load(&dir.join("checkpoint.pth")).unwrap();
    let config = ModelConfig::detect(&ck, Some(1)).unwrap();
    let device = Device::default();
    let model = CavMae::from_checkpoint(&ck, &config, &device).unwrap();
    let audio = npy::read_f32(&dir.join("audio_input.npy")).unwrap();
    let image = npy::read_f32(&dir.join("image_input.npy")).unwrap();
    let mask_a = Masking::from_noise(&rows(&dir.join("noise_a.npy")), 0.75);
    let mask_v = Masking::from_noise(&rows(&dir.join("noise_v.npy")), 0.75);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("losses.json")).unwrap()).unwrap();
    for (key, expected) in reference["results"].as_object().unwrap() {
        let objective = Objective {
            mae_weight: 1.0,
            contrastive_weight: 0.01,
            temperature: 0.05,
            bidirectional: false,
            norm_pix_loss: key.contains("norm_pix=true"),
            global_local: key.contains("global_local=true"),
            ..Objective::default()
        };
        let a = Tensor::<3>::from_data(
            TensorData::new(
                audio.iter().copied().collect::<Vec<_>>(),
                audio.shape().to_vec(),
            ),
            &device,
        );
        let v = Tensor::<4>::from_data(
            TensorData::new(
                image.iter().copied().collect::<Vec<_>>(),
                image.shape().to_vec(),
            ),
            &device,
        );
        let out = pretrain::forward(&model, a, v, &mask_a, &mask_v, &objective).unwrap();
        let got = |t: Tensor<1>| f64::from(t.into_scalar::<f32>());
        for (name, value) in [
            ("loss_mae_a", got(out.mae_a)),
            ("loss_mae_v", got(out.mae_v)),
            ("nce", got(out.nce)),
            ("c_acc", got(out.accuracy)),
        ] {
            let want = expected[name].as_f64().unwrap();
            println!(
                "{key} {name}: cavsync {value:.7} official {want:.7} diff {:.2e}",
                (value - want).abs()
            );
            assert!(
                (value - want).abs() <= TOLERANCE * want.abs().max(1.0),
                "{key} {name}"
            );
        }
    }
}
