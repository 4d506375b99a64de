//! The CAV-MAE Sync pretraining forward pass and losses, as the official `forward`: 75% masking, encoders on the visible patches, joint pass, MAE decoder, InfoNCE on the global tokens.

use burn::prelude::*;
use burn::tensor::activation;
use rand::Rng;

use cavsync_core::model::Modality;

use crate::model::{Block, CavMae, Decoder, NormSet};

/// Errors raised by the pretraining pass.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// The model has no decoder, so it cannot be pretrained.
    #[error("the model has no MAE decoder (decoder_* keys); pretraining needs one")]
    NoDecoder,
    /// The model has no joint block.
    #[error("the model has no joint block (blocks_u.*)")]
    NoJointBlock,
}

/// Per-sample random masking of one modality: which patches each sample keeps, how to restore the order, and the removed-patch mask.
#[derive(Debug, Clone)]
pub struct Masking {
    /// Patch indices kept, shuffled order, (batch, keep).
    pub keep: Vec<Vec<usize>>,
    /// Position of each patch in the shuffled order, (batch, patches).
    pub restore: Vec<Vec<usize>>,
    /// Patches per sample.
    pub patches: usize,
}

impl Masking {
    /// The official `random_masking_unstructured`: keep `int(n * (1 - ratio))` patches chosen by sorting uniform noise.
    pub fn random(batch: usize, patches: usize, ratio: f64, rng: &mut impl Rng) -> Self {
        let noise: Vec<Vec<f32>> = (0..batch)
            .map(|_| (0..patches).map(|_| rng.random::<f32>()).collect())
            .collect();
        Self::from_noise(&noise, ratio)
    }

    /// Masking from given per-sample noise (batch rows of equal length): patches with the smallest noise are kept.
    pub fn from_noise(noise: &[Vec<f32>], ratio: f64) -> Self {
        let patches = noise.first().map_or(0, Vec::len);
        let len_keep = (patches as f64 * (1.0 - ratio)) as usize;
        let (mut keep, mut restore) = (
            Vec::with_capacity(noise.len()),
            Vec::with_capacity(noise.len()),
        );
        for row in noise {
            let mut shuffle: Vec<usize> = (0..patches).collect();
            shuffle.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
            let mut r = vec![0; patches];
            for (pos, &idx) in shuffle.iter().enumerate() {
                r[idx] = pos;
            }
            keep.push(shuffle[..len_keep].to_vec());
            restore.push(r);
        }
        Self {
            keep,
            restore,
            patches,
        }
    }

    /// Patches kept per sample.
    pub fn kept(&self) -> usize {
        self.keep.first().map_or(0, Vec::len)
    }

    /// 1 for removed patches, 0 for kept ones, (batch, patches).
    fn mask(&self, device: &Device) -> Tensor<2> {
        let kept = self.kept();
        let data: Vec<f32> = self
            .restore
            .iter()
            .flat_map(|r| r.iter().map(move |&pos| if pos < kept { 0.0 } else { 1.0 }))
            .collect();
        Tensor::from_data(
            TensorData::new(data, [self.restore.len(), self.patches]),
            device,
        )
    }

    /// Index tensor (batch, n, dim) for `gather` along dim 1.
    fn index(rows: &[Vec<usize>], dim: usize, device: &Device) -> Tensor<3, Int> {
        let n = rows.first().map_or(0, Vec::len);
        let data: Vec<i64> = rows.iter().flatten().map(|&i| i as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [rows.len(), n]), device)
            .unsqueeze_dim::<3>(2)
            .expand([rows.len(), n, dim])
    }
}

/// The pretraining objective (DESIGN.md section 4): masking, loss weights and InfoNCE settings; the `[loss]` section of a training config.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objective {
    /// Share of audio patches removed.
    pub mask_ratio_a: f64,
    /// Share of visual patches removed.
    pub mask_ratio_v: f64,
    /// lambda_r: weight of the MAE loss (sum of the audio and visual terms).
    pub mae_weight: f64,
    /// lambda_c: weight of the contrastive loss.
    pub contrastive_weight: f64,
    /// InfoNCE temperature.
    pub temperature: f64,
    /// Average the audio-to-visual and visual-to-audio InfoNCE (the official default is one direction).
    pub bidirectional: bool,
    /// Normalise each target patch to zero mean, unit variance.
    pub norm_pix_loss: bool,
    /// The official `global_local_losses`: average InfoNCE on the global tokens with InfoNCE on the mean patch tokens.
    pub global_local: bool,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            mask_ratio_a: 0.75,
            mask_ratio_v: 0.75,
            mae_weight: 1.0,
            contrastive_weight: 0.1,
            temperature: 0.05,
            bidirectional: false,
            norm_pix_loss: false,
            global_local: false,
        }
    }
}

/// Losses and contrastive accuracy of one batch.
pub struct PretrainOutput {
    /// Weighted total, to differentiate.
    pub loss: Tensor<1>,
    /// Audio MAE loss on removed patches.
    pub mae_a: Tensor<1>,
    /// Visual MAE loss on removed patches.
    pub mae_v: Tensor<1>,
    /// Unweighted InfoNCE.
    pub nce: Tensor<1>,
    /// Share of visual items whose best-matching audio is their own.
    pub accuracy: Tensor<1>,
}

/// Patchify a (batch, channels, H, W) tensor as the official `patchify`: (batch, h*w, p*p*c), element order (row in patch, column in patch, channel).
pub fn patchify(x: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, hh, ww] = x.dims();
    let (h, w) = (hh / p, ww / p);
    x.reshape([b, c, h, p, w, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, h * w, p * p * c])
}

/// Mean squared error per patch, averaged over removed patches (the official `forward_mae_loss`).
fn mae_loss(pred: Tensor<3>, target: Tensor<3>, mask: Tensor<2>, norm_pix: bool) -> Tensor<1> {
    let target = if norm_pix {
        let mean = target.clone().mean_dim(2);
        let var = target.clone().var(2);
        (target - mean) / (var + 1e-6).sqrt()
    } else {
        target
    };
    let [b, n, _] = pred.dims();
    let per_patch = (pred - target).powf_scalar(2.0).mean_dim(2).reshape([b, n]);
    (per_patch * mask.clone()).sum() / mask.sum()
}

/// InfoNCE between L2-normalised audio and visual embeddings, log-softmax over the audio axis for each visual item (the official `forward_contrastive`, train mode).
pub(crate) fn info_nce(
    audio: Tensor<2>,
    visual: Tensor<2>,
    temperature: f64,
    bidirectional: bool,
) -> (Tensor<1>, Tensor<1>) {
    let [b, _] = audio.dims();
    let device = audio.device();
    let normalize = |x: Tensor<2>| {
        let norm = x
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        x / norm
    };
    let total = normalize(audio).matmul(normalize(visual).transpose()) / temperature;
    let eye = Tensor::<2>::eye(b, &device);
    let one_way = |t: Tensor<2>| {
        let nce = (activation::log_softmax(t.clone(), 0) * eye.clone())
            .sum()
            .neg()
            / b as f64;
        let targets = Tensor::<1, Int>::arange(0..b as i64, &device);
        let best = t.argmax(0).reshape([b]);
        let acc = best.equal(targets).float().sum() / b as f64;
        (nce, acc)
    };
    if bidirectional {
        let (n1, a1) = one_way(total.clone());
        let (n2, a2) = one_way(total.transpose());
        ((n1 + n2) / 2.0, (a1 + a2) / 2.0)
    } else {
        one_way(total)
    }
}

/// The modality stack on the patches `masking` keeps, (global token first when present).
fn encode_visible(
    model: &CavMae,
    input: Tensor<4>,
    masking: &Masking,
    modality: Modality,
) -> Tensor<3> {
    let patches = model.embed_patches(input, modality);
    let [_, _, d] = patches.dims();
    let device = patches.device();
    let visible = patches.gather(1, Masking::index(&masking.keep, d, &device));
    model.modality_blocks(visible, modality)
}

/// `blocks` in turn with their shared norms.
fn run_blocks(blocks: &[Block], mut x: Tensor<3>) -> Tensor<3> {
    for blk in blocks {
        x = blk.forward(x, NormSet::Shared);
    }
    x
}

/// The joint pass of the pretraining objective: both modalities' tokens without their global
/// tokens, concatenated, through every joint block with the shared norms, then the final norm.
fn joint_stream(model: &CavMae, a: &Tensor<3>, v: &Tensor<3>, has_cls: bool) -> Tensor<3> {
    let skip = usize::from(has_cls);
    let (na, nv) = (a.dims()[1], v.dims()[1]);
    let mut x = Tensor::cat(
        vec![
            a.clone().narrow(1, skip, na - skip),
            v.clone().narrow(1, skip, nv - skip),
        ],
        1,
    );
    for blk in &model.blocks_u {
        x = blk.forward(x, NormSet::Shared);
    }
    model.norm.forward(x)
}

/// The embeddings InfoNCE compares, (batch, dim) each.
struct ContrastiveEmbeddings {
    /// Audio global embeddings (global token, or mean token without one).
    audio: Tensor<2>,
    /// Visual global embeddings.
    visual: Tensor<2>,
    /// Mean final patch tokens (audio, visual), for `global_local`.
    local: Option<(Tensor<2>, Tensor<2>)>,
}

/// Mean over tokens of (batch, tokens, dim), as (batch, dim).
fn mean_tokens(x: Tensor<3>) -> Tensor<2> {
    let [b, _, d] = x.dims();
    x.mean_dim(1).reshape([b, d])
}

/// The joint block and contrastive heads per modality, then the global (and, with
/// `global_local`, mean-patch) embeddings after the final modality norms.
fn contrastive_embeddings(
    model: &CavMae,
    a: Tensor<3>,
    v: Tensor<3>,
    has_cls: bool,
    global_local: bool,
) -> ContrastiveEmbeddings {
    let ca = model.joint_and_head(a, Modality::Audio);
    let cv = model.joint_and_head(v, Modality::Visual);
    let [b, _, d] = ca.dims();
    if !has_cls {
        return ContrastiveEmbeddings {
            audio: mean_tokens(model.norm_a.forward(ca)),
            visual: mean_tokens(model.norm_v.forward(cv)),
            local: None,
        };
    }
    let local = global_local.then(|| {
        let (na, nv) = (ca.dims()[1], cv.dims()[1]);
        (
            mean_tokens(model.norm_a.forward(ca.clone().narrow(1, 1, na - 1))),
            mean_tokens(model.norm_v.forward(cv.clone().narrow(1, 1, nv - 1))),
        )
    });
    ContrastiveEmbeddings {
        audio: model.norm_a.forward(ca.narrow(1, 0, 1)).reshape([b, d]),
        visual: model.norm_v.forward(cv.narrow(1, 0, 1)).reshape([b, d]),
        local,
    }
}

/// The MAE decoder on the joint stream `x`: restore the full token order with mask tokens, add
/// positions and modality, run the blocks and norm; the (audio, visual) patch predictions.
fn decode(
    decoder: &Decoder,
    x: Tensor<3>,
    mask_a: &Masking,
    mask_v: &Masking,
) -> (Tensor<3>, Tensor<3>) {
    let device = x.device();
    let x = decoder.embed.forward(x);
    let [b, _, e] = x.dims();
    let (ka, kv) = (mask_a.kept(), mask_v.kept());
    let restore = |visible: Tensor<3>, m: &Masking| {
        let filler = decoder
            .mask_token
            .val()
            .expand([b, m.patches - m.kept(), e]);
        Tensor::cat(vec![visible, filler], 1).gather(1, Masking::index(&m.restore, e, &device))
    };
    let a_ = restore(x.clone().narrow(1, 0, ka), mask_a)
        + decoder.pos_embed_a.val()
        + decoder.modality_a.val();
    let v_ =
        restore(x.narrow(1, ka, kv), mask_v) + decoder.pos_embed_v.val() + decoder.modality_v.val();
    let y = decoder
        .norm
        .forward(run_blocks(&decoder.blocks, Tensor::cat(vec![a_, v_], 1)));
    let pred_a = decoder
        .pred_a
        .forward(y.clone().narrow(1, 0, mask_a.patches));
    let pred_v = decoder
        .pred_v
        .forward(y.narrow(1, mask_a.patches, mask_v.patches));
    (pred_a, pred_v)
}

/// InfoNCE and accuracy on the global embeddings, averaged with the mean-patch ones when present.
fn contrastive_loss(e: ContrastiveEmbeddings, objective: &Objective) -> (Tensor<1>, Tensor<1>) {
    let (t, both) = (objective.temperature, objective.bidirectional);
    let (nce, accuracy) = info_nce(e.audio, e.visual, t, both);
    match e.local {
        Some((local_a, local_v)) => {
            let (n2, a2) = info_nce(local_a, local_v, t, both);
            ((nce + n2) / 2.0, (accuracy + a2) / 2.0)
        }
        None => (nce, accuracy),
    }
}

/// One pretraining step's forward pass: `audio` (batch, L, 128) normalised segments, `images` (batch, 3, H, W).
pub fn forward(
    model: &CavMae,
    audio: Tensor<3>,
    images: Tensor<4>,
    mask_a: &Masking,
    mask_v: &Masking,
    objective: &Objective,
) -> Result<PretrainOutput, PretrainError> {
    let decoder = model.decoder.as_ref().ok_or(PretrainError::NoDecoder)?;
    if model.blocks_u.is_empty() {
        return Err(PretrainError::NoJointBlock);
    }
    let device = audio.device();
    let has_cls = model.cls_token_a.is_some();
    let p = model.patch_embed_a.weight.val().dims()[2];
    // (B, L, 128) -> (B, 1, 128, L), as the official forward_encoder and forward_mae_loss.
    let audio_img = audio.unsqueeze_dim::<4>(1).swap_dims(2, 3);

    let a = encode_visible(model, audio_img.clone(), mask_a, Modality::Audio);
    let v = encode_visible(model, images.clone(), mask_v, Modality::Visual);
    let x = joint_stream(model, &a, &v, has_cls);
    let embeddings = contrastive_embeddings(model, a, v, has_cls, objective.global_local);
    let (pred_a, pred_v) = decode(decoder, x, mask_a, mask_v);

    let mae_a = mae_loss(
        pred_a,
        patchify(audio_img, p),
        mask_a.mask(&device),
        objective.norm_pix_loss,
    );
    let mae_v = mae_loss(
        pred_v,
        patchify(images, p),
        mask_v.mask(&device),
        objective.norm_pix_loss,
    );
    let (nce, accuracy) = contrastive_loss(embeddings, objective);
    let loss = (mae_a.clone() + mae_v.clone()) * objective.mae_weight
        + nce.clone() * objective.contrastive_weight;
    Ok(PretrainOutput {
        loss,
        mae_a,
        mae_v,
        nce,
        accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn masking_keeps_a_quarter_and_restores_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let m = Masking::random(3, 196, 0.75, &mut rng);
        assert_eq!(m.kept(), 49);
        for (keep, restore) in m.keep.iter().zip(&m.restore) {
            for (pos, &idx) in keep.iter().enumerate() {
                assert_eq!(restore[idx], pos);
            }
            let mut sorted = restore.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..196).collect::<Vec<_>>());
        }
        let mask = m
            .mask(&Device::default())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(mask.iter().filter(|&&v| v == 1.0).count(), 3 * 147);
    }

    #[test]
    fn patchify_orders_row_column_channel() {
        // (1, 2, 4, 4) with value = c*100 + y*10 + x, patch 2.
        let data: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |y| (0..4).map(move |x| (c * 100 + y * 10 + x) as f32))
            })
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, [1, 2, 4, 4]), &Device::default());
        let p = patchify(x, 2).into_data().try_to_vec::<f32>().unwrap();
        // Patch 1 is (row 0, column 1): pixels (0,2), (0,3), (1,2), (1,3), channel fastest.
        assert_eq!(
            &p[8..16],
            &[2.0, 102.0, 3.0, 103.0, 12.0, 112.0, 13.0, 113.0]
        );
    }

    #[test]
    fn info_nce_by_hand() {
        let device = Device::default();
        // Two unit vectors per side; audio 0 matches visual 0, audio 1 is orthogonal to both.
        let a = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let v = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0], [2, 2]),
            &device,
        );
        let (nce, acc) = info_nce(a, v, 0.5, false);
        // total = [[2, 2], [0, 0]]; log_softmax over rows per column: column 0: [2, 0] -> log(e^2/(e^2+1));
        // column 1: [2, 0] -> entry (1,1) = log(1/(e^2+1)).
        let e2 = 2f64.exp();
        let expected = -((e2 / (e2 + 1.0)).ln() + (1.0 / (e2 + 1.0)).ln()) / 2.0;
        let got = f64::from(nce.into_scalar::<f32>());
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // Column 0's best audio is 0 (correct), column 1's best audio is 0 (wrong).
        assert_eq!(acc.into_scalar::<f32>(), 0.5);
    }
}
