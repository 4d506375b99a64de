//! The trainer's pretraining losses and gradients against the official `CAVMAE.forward` (scripts/make_pretrain_fixture.py, scripts/make_pretrain_grad_fixture.py): same weights, inputs and masking noise.

use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use cavsync_core::npy;
use cavsync_formats::checkpoint::Checkpoint;
use cavsync_formats::layout::ModelConfig;
use cavsync_train::model::CavMae;
use cavsync_train::pretrain::{self, Masking, Objective};
use ndarray::ArrayD;

/// Losses agree to float32 accumulation noise; accuracy exactly.
const TOLERANCE: f64 = 1e-4;
/// Each parameter's gradient agrees within this share of its largest reference magnitude...
const GRAD_TOLERANCE: f32 = 1e-3;
/// ...plus this absolute allowance, the float32 noise of the whole backward pass.
const GRAD_FLOOR: f32 = 1e-6;

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

/// The reference fixture: official weights, inputs and masking noise.
struct Fixture {
    dir: PathBuf,
    ck: Checkpoint,
    config: ModelConfig,
    audio: ArrayD<f32>,
    image: ArrayD<f32>,
    mask_a: Masking,
    mask_v: Masking,
}

impl Fixture {
    fn load() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pretrain");
        let ck = Checkpoint::load(&dir.join("checkpoint.pth")).unwrap();
        let config = ModelConfig::detect(&ck, Some(1)).unwrap();
        Self {
            audio: npy::read_f32(&dir.join("audio_input.npy")).unwrap(),
            image: npy::read_f32(&dir.join("image_input.npy")).unwrap(),
            mask_a: Masking::from_noise(&rows(&dir.join("noise_a.npy")), 0.75),
            mask_v: Masking::from_noise(&rows(&dir.join("noise_v.npy")), 0.75),
            dir,
            ck,
            config,
        }
    }

    fn model(&self, device: &Device) -> CavMae {
        CavMae::from_checkpoint(&self.ck, &self.config, device).unwrap()
    }

    /// The pretraining losses of `model` on the fixture's inputs and masks.
    fn forward(
        &self,
        model: &CavMae,
        objective: &Objective,
        device: &Device,
    ) -> pretrain::PretrainOutput {
        let a = Tensor::<3>::from_data(
            TensorData::new(
                self.audio.iter().copied().collect(),
                self.audio.shape().to_vec(),
            ),
            device,
        );
        let v = Tensor::<4>::from_data(
            TensorData::new(
                self.image.iter().copied().collect(),
                self.image.shape().to_vec(),
            ),
            device,
        );
        pretrain::forward(model, a, v, &self.mask_a, &self.mask_v, objective).unwrap()
    }
}

#[test]
fn pretraining_losses_match_the_official_forward() {
    let fixture = Fixture::load();
    let device = Device::default();
    let model = fixture.model(&device);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.dir.join("losses.json")).unwrap())
            .unwrap();
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
        let out = fixture.forward(&model, &objective, &device);
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

/// Replaces every parameter of a module by its gradient (zeros where the loss does not reach it).
struct ToGradients<'a>(&'a GradientsParams);

impl ModuleMapper for ToGradients<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        let value = param.val();
        let grad = self.0.get::<D>(id).unwrap_or_else(|| value.zeros_like());
        Param::initialized(id, grad)
    }
}

#[test]
fn pretraining_gradients_match_the_official_backward() {
    let fixture = Fixture::load();
    let reference = Checkpoint::load(&fixture.dir.join("grads.pth")).unwrap();
    let device = Device::default().autodiff();
    let model = fixture.model(&device).freeze_positions();
    let objective = Objective {
        mae_weight: 1.0,
        contrastive_weight: 0.01,
        temperature: 0.05,
        bidirectional: false,
        norm_pix_loss: false,
        global_local: true,
        ..Objective::default()
    };
    let out = fixture.forward(&model, &objective, &device);
    let grads = GradientsParams::from_grads(out.loss.backward(), &model);
    let ours = model.map(&mut ToGradients(&grads)).state_dict().unwrap();
    let mut failures = Vec::new();
    for (key, want) in &reference.tensors {
        let got = ours
            .get(key)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        assert_eq!(got.shape, want.shape, "{key}");
        let scale = want.data.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = got
            .data
            .iter()
            .zip(&want.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("{key}: max |grad| {scale:.3e}, max diff {diff:.3e}");
        if diff > GRAD_TOLERANCE * scale + GRAD_FLOOR {
            failures.push(format!(
                "{key}: differs by {diff:e} (largest |grad| {scale:e})"
            ));
        }
    }
    assert!(reference.tensors.len() > 500, "too few reference gradients");
    assert!(failures.is_empty(), "{failures:#?}");
}
