//! The CAV-MAE (Sync) audio and visual encoders in burn, reproducing the official `forward_feat` exactly.

use std::collections::BTreeMap;

use burn::module::{Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation;

use cavsync_core::model::Modality;
use cavsync_core::preprocess::fbank::NUM_MEL_BINS;
use cavsync_formats::checkpoint::{Checkpoint, RawTensor};
use cavsync_formats::layout::{DecoderConfig, LAYER_NORM_EPS, ModelConfig};

/// Errors raised while building the burn model from checkpoint tensors.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A key the detected layout needs is absent (only possible for an unverified config).
    #[error("checkpoint tensor `{0}` is missing")]
    Missing(String),
    /// Input batch has the wrong shape.
    #[error("{what} input has shape {found:?}; expected {expected}")]
    InputShape {
        /// Which input.
        what: &'static str,
        /// The shape given.
        found: Vec<usize>,
        /// The shape wanted, in words.
        expected: String,
    },
    /// Reading a tensor back from burn failed.
    #[error("reading tensor data back from burn failed: {0}")]
    Data(String),
}

/// Which LayerNorm pair of the official `Block` a pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormSet {
    /// `norm1`/`norm2`: modality blocks, contrastive heads, the concatenated joint pass.
    Shared,
    /// `norm1_a`/`norm2_a`: the joint block on audio tokens.
    Audio,
    /// `norm1_v`/`norm2_v`: the joint block on visual tokens.
    Visual,
}

/// Multi-head self-attention with a fused qkv projection (timm `Attention`).
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused query/key/value projection, dim -> 3 dim.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl Attention {
    /// Self-attention over (batch, tokens, dim).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let hd = c / self.heads;
        let qkv = self.qkv.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, n, self.heads, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scale = (hd as f64).powf(-0.5);
        let attn = activation::softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, n, c]);
        self.proj.forward(out)
    }
}

/// Two-layer MLP with exact (erf) GELU.
#[derive(Module, Debug)]
pub struct Mlp {
    /// dim -> hidden.
    pub fc1: Linear,
    /// hidden -> dim.
    pub fc2: Linear,
}

impl Mlp {
    /// fc2(gelu(fc1(x))).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(activation::gelu(self.fc1.forward(x)))
    }
}

/// The official pre-norm transformer block with shared and per-modality LayerNorms.
#[derive(Module, Debug)]
pub struct Block {
    /// Shared pre-attention norm.
    pub norm1: LayerNorm,
    /// Audio pre-attention norm.
    pub norm1_a: LayerNorm,
    /// Visual pre-attention norm.
    pub norm1_v: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Shared pre-MLP norm.
    pub norm2: LayerNorm,
    /// Audio pre-MLP norm.
    pub norm2_a: LayerNorm,
    /// Visual pre-MLP norm.
    pub norm2_v: LayerNorm,
    /// Feed-forward network.
    pub mlp: Mlp,
}

impl Block {
    /// x + attn(norm1(x)); x + mlp(norm2(x)), with the norms of `norms`.
    pub fn forward(&self, x: Tensor<3>, norms: NormSet) -> Tensor<3> {
        let (n1, n2) = match norms {
            NormSet::Shared => (&self.norm1, &self.norm2),
            NormSet::Audio => (&self.norm1_a, &self.norm2_a),
            NormSet::Visual => (&self.norm1_v, &self.norm2_v),
        };
        let x = x.clone() + self.attn.forward(n1.forward(x));
        x.clone() + self.mlp.forward(n2.forward(x))
    }
}

/// The MAE decoder's weights (used by pretraining, not by inference).
#[derive(Module, Debug)]
pub struct Decoder {
    /// Encoder dim -> decoder dim.
    pub embed: Linear,
    /// Token standing in for masked patches.
    pub mask_token: Param<Tensor<3>>,
    /// Audio modality embedding.
    pub modality_a: Param<Tensor<3>>,
    /// Visual modality embedding.
    pub modality_v: Param<Tensor<3>>,
    /// Audio positional embedding.
    pub pos_embed_a: Param<Tensor<3>>,
    /// Visual positional embedding.
    pub pos_embed_v: Param<Tensor<3>>,
    /// Decoder blocks.
    pub blocks: Vec<Block>,
    /// Final decoder norm.
    pub norm: LayerNorm,
    /// Audio patch reconstruction head.
    pub pred_a: Linear,
    /// Visual patch reconstruction head.
    pub pred_v: Linear,
}

/// Output of one modality encoder.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Global embedding per item, (batch, dim).
    pub global: Tensor<2>,
    /// Final-norm patch tokens, (batch, patches, dim).
    pub tokens: Tensor<3>,
}

/// CAV-MAE (Sync) encoders with the official parameter names.
#[derive(Module, Debug)]
pub struct CavMae {
    /// Audio patch embedding (1 channel).
    pub patch_embed_a: Conv2d,
    /// Visual patch embedding (3 channels).
    pub patch_embed_v: Conv2d,
    /// Audio positional embedding (1, Na, D).
    pub pos_embed_a: Param<Tensor<3>>,
    /// Visual positional embedding (1, Nv, D).
    pub pos_embed_v: Param<Tensor<3>>,
    /// Audio modality embedding (1, 1, D).
    pub modality_a: Param<Tensor<3>>,
    /// Visual modality embedding (1, 1, D).
    pub modality_v: Param<Tensor<3>>,
    /// Audio global token (Sync layout).
    pub cls_token_a: Option<Param<Tensor<3>>>,
    /// Visual global token (Sync layout).
    pub cls_token_v: Option<Param<Tensor<3>>>,
    /// Register tokens (2R, D): first R audio, last R visual.
    pub register_tokens: Option<Param<Tensor<2>>>,
    /// Register tokens per modality.
    pub registers: usize,
    /// Audio modality-specific blocks.
    pub blocks_a: Vec<Block>,
    /// Visual modality-specific blocks.
    pub blocks_v: Vec<Block>,
    /// Joint blocks.
    pub blocks_u: Vec<Block>,
    /// Optional audio contrastive head.
    pub contrastive_head_audio: Vec<Block>,
    /// Optional visual contrastive head.
    pub contrastive_head_visual: Vec<Block>,
    /// Final audio norm.
    pub norm_a: LayerNorm,
    /// Final visual norm.
    pub norm_v: LayerNorm,
    /// Final norm of the concatenated stream (pretraining).
    pub norm: LayerNorm,
    /// MAE decoder, when the checkpoint has one.
    pub decoder: Option<Decoder>,
}

impl CavMae {
    /// Stops gradients to the fixed sin-cos position embeddings, which the official pretraining does not train (`requires_grad=tr_pos`, False).
    pub fn freeze_positions(mut self) -> Self {
        self.pos_embed_a = self.pos_embed_a.set_require_grad(false);
        self.pos_embed_v = self.pos_embed_v.set_require_grad(false);
        if let Some(dec) = self.decoder.as_mut() {
            dec.pos_embed_a = dec.pos_embed_a.clone().set_require_grad(false);
            dec.pos_embed_v = dec.pos_embed_v.clone().set_require_grad(false);
        }
        self
    }

    /// Build the model from a checkpoint whose layout `config` was detected from.
    pub fn from_checkpoint(
        ck: &Checkpoint,
        config: &ModelConfig,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let l = Loader { ck, device };
        let blocks = |group: &str, n: usize| -> Result<Vec<Block>, ModelError> {
            (0..n)
                .map(|i| l.block(&format!("{group}.{i}"), config.heads))
                .collect()
        };
        let decoder = config.decoder.map(|dec| l.decoder(dec)).transpose()?;
        Ok(Self {
            patch_embed_a: l.conv("patch_embed_a.proj", 1, config.patch)?,
            patch_embed_v: l.conv("patch_embed_v.proj", 3, config.patch)?,
            pos_embed_a: l.param("pos_embed_a")?,
            pos_embed_v: l.param("pos_embed_v")?,
            modality_a: l.param("modality_a")?,
            modality_v: l.param("modality_v")?,
            cls_token_a: l.optional_param("cls_token_a")?,
            cls_token_v: l.optional_param("cls_token_v")?,
            register_tokens: l.optional_param("register_tokens")?,
            registers: config.registers,
            blocks_a: blocks("blocks_a", config.depth_a)?,
            blocks_v: blocks("blocks_v", config.depth_v)?,
            blocks_u: blocks("blocks_u", config.depth_u)?,
            contrastive_head_audio: blocks("constrative_head_audio", config.contrastive_depth)?,
            contrastive_head_visual: blocks("constrative_head_visual", config.contrastive_depth)?,
            norm_a: l.layer_norm("norm_a")?,
            norm_v: l.layer_norm("norm_v")?,
            norm: l.layer_norm("norm")?,
            decoder,
        })
    }

    /// Encode normalised fbank segments (batch, L, 128) into audio embeddings.
    pub fn forward_audio(&self, fbank: Tensor<3>) -> Embeddings {
        // (B, L, 128) -> (B, 1, 128, L): frequency rows, time columns.
        let x = fbank.unsqueeze_dim::<4>(1).swap_dims(2, 3);
        self.encode(x, Modality::Audio)
    }

    /// Encode normalised images (batch, 3, H, W) into visual embeddings.
    pub fn forward_visual(&self, images: Tensor<4>) -> Embeddings {
        self.encode(images, Modality::Visual)
    }

    /// Patch tokens of one modality: patch embedding, plus positional and modality embeddings, (batch, patches, dim).
    pub fn embed_patches(&self, input: Tensor<4>, modality: Modality) -> Tensor<3> {
        let (patch, pos, emb) = match modality {
            Modality::Audio => (&self.patch_embed_a, &self.pos_embed_a, &self.modality_a),
            Modality::Visual => (&self.patch_embed_v, &self.pos_embed_v, &self.modality_v),
        };
        let x = patch.forward(input);
        let [b, d, h, w] = x.dims();
        x.reshape([b, d, h * w]).swap_dims(1, 2) + pos.val() + emb.val()
    }

    /// The modality-specific stack on (some of) a modality's patch tokens: prepend the global token, append the registers, run the modality blocks, drop the registers.
    pub fn modality_blocks(&self, tokens: Tensor<3>, modality: Modality) -> Tensor<3> {
        let (cls, blocks) = match modality {
            Modality::Audio => (&self.cls_token_a, &self.blocks_a),
            Modality::Visual => (&self.cls_token_v, &self.blocks_v),
        };
        let [b, _, d] = tokens.dims();
        let mut x = tokens;
        if let Some(cls) = cls {
            x = Tensor::cat(vec![cls.val().expand([b, 1, d]), x], 1);
        }
        let r = self.registers;
        if let Some(regs) = &self.register_tokens {
            let start = if modality == Modality::Audio { 0 } else { r };
            let regs = regs
                .val()
                .narrow(0, start, r)
                .unsqueeze_dim::<3>(0)
                .expand([b, r, d]);
            x = Tensor::cat(vec![x, regs], 1);
        }
        for blk in blocks {
            x = blk.forward(x, NormSet::Shared);
        }
        if r > 0 {
            let n = x.dims()[1];
            x = x.narrow(1, 0, n - r);
        }
        x
    }

    /// The joint block with the modality's norms, then the modality's contrastive head, as the official `forward_feat`.
    ///
    /// The official code applies every joint block to the same input and keeps the last result
    /// (`for blk in self.blocks_u: ca = blk(a, 'a')`); with the published joint depth of 1
    /// this is the plain chain.
    pub fn joint_and_head(&self, x: Tensor<3>, modality: Modality) -> Tensor<3> {
        let (norms, head) = match modality {
            Modality::Audio => (NormSet::Audio, &self.contrastive_head_audio),
            Modality::Visual => (NormSet::Visual, &self.contrastive_head_visual),
        };
        let mut x = match self.blocks_u.last() {
            Some(last) => last.forward(x, norms),
            None => x,
        };
        for blk in head {
            x = blk.forward(x, NormSet::Shared);
        }
        x
    }

    /// The final modality norm applied to `x`.
    pub fn final_norm(&self, x: Tensor<3>, modality: Modality) -> Tensor<3> {
        match modality {
            Modality::Audio => self.norm_a.forward(x),
            Modality::Visual => self.norm_v.forward(x),
        }
    }

    fn encode(&self, input: Tensor<4>, modality: Modality) -> Embeddings {
        let has_cls = self.cls_token_a.is_some();
        let x = self.modality_blocks(self.embed_patches(input, modality), modality);
        let x = self.joint_and_head(x, modality);
        let [b, n, d] = x.dims();
        if has_cls {
            let global = self
                .final_norm(x.clone().narrow(1, 0, 1), modality)
                .reshape([b, d]);
            let tokens = self.final_norm(x.narrow(1, 1, n - 1), modality);
            Embeddings { global, tokens }
        } else {
            let tokens = self.final_norm(x, modality);
            let global = tokens.clone().mean_dim(1).reshape([b, d]);
            Embeddings { global, tokens }
        }
    }

    /// Check the shape of an audio batch against the model (batch, L, 128).
    pub fn check_audio_shape(
        &self,
        shape: &[usize],
        config: &ModelConfig,
    ) -> Result<(), ModelError> {
        let ok = shape.len() == 3 && shape[1] == config.audio_length && shape[2] == NUM_MEL_BINS;
        ok.then_some(()).ok_or_else(|| ModelError::InputShape {
            what: "audio",
            found: shape.to_vec(),
            expected: format!("[batch, {}, {NUM_MEL_BINS}]", config.audio_length),
        })
    }

    /// Check the shape of an image batch against the model (batch, 3, H, W).
    pub fn check_image_shape(
        &self,
        shape: &[usize],
        config: &ModelConfig,
    ) -> Result<(), ModelError> {
        let s = config.image_size;
        let ok = shape.len() == 4 && shape[1] == 3 && shape[2] == s && shape[3] == s;
        ok.then_some(()).ok_or_else(|| ModelError::InputShape {
            what: "image",
            found: shape.to_vec(),
            expected: format!("[batch, 3, {s}, {s}]"),
        })
    }
}

/// Builds burn modules from checkpoint tensors, converting torch layouts where they differ.
struct Loader<'a> {
    ck: &'a Checkpoint,
    device: &'a Device,
}

impl Loader<'_> {
    fn raw(&self, key: &str) -> Result<&RawTensor, ModelError> {
        self.ck
            .tensors
            .get(key)
            .ok_or_else(|| ModelError::Missing(key.to_string()))
    }

    fn tensor<const D: usize>(&self, key: &str) -> Result<Tensor<D>, ModelError> {
        let raw = self.raw(key)?;
        Ok(Tensor::from_data(
            TensorData::new(raw.data.clone(), raw.shape.clone()),
            self.device,
        ))
    }

    fn param<const D: usize>(&self, key: &str) -> Result<Param<Tensor<D>>, ModelError> {
        Ok(named_param(key, self.tensor(key)?))
    }

    fn optional_param<const D: usize>(
        &self,
        key: &str,
    ) -> Result<Option<Param<Tensor<D>>>, ModelError> {
        if self.ck.tensors.contains_key(key) {
            self.param(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// torch Linear stores (out, in); burn stores (in, out).
    fn linear(&self, prefix: &str) -> Result<Linear, ModelError> {
        let weight = self.tensor::<2>(&format!("{prefix}.weight"))?.transpose();
        Ok(Linear {
            weight: named_param(&format!("{prefix}.weight"), weight),
            bias: Some(self.param(&format!("{prefix}.bias"))?),
        })
    }

    fn layer_norm(&self, prefix: &str) -> Result<LayerNorm, ModelError> {
        let weight = self.tensor::<1>(&format!("{prefix}.weight"))?;
        let mut norm = LayerNormConfig::new(weight.dims()[0])
            .with_epsilon(LAYER_NORM_EPS)
            .init(self.device);
        norm.gamma = named_param(&format!("{prefix}.weight"), weight);
        norm.beta = Some(self.param(&format!("{prefix}.bias"))?);
        Ok(norm)
    }

    fn conv(&self, prefix: &str, channels: usize, patch: usize) -> Result<Conv2d, ModelError> {
        let weight = self.tensor::<4>(&format!("{prefix}.weight"))?;
        let mut conv = Conv2dConfig::new([channels, weight.dims()[0]], [patch, patch])
            .with_stride([patch, patch])
            .init(self.device);
        conv.weight = named_param(&format!("{prefix}.weight"), weight);
        conv.bias = Some(self.param(&format!("{prefix}.bias"))?);
        Ok(conv)
    }

    fn block(&self, prefix: &str, heads: usize) -> Result<Block, ModelError> {
        let norm = |n: &str| self.layer_norm(&format!("{prefix}.{n}"));
        Ok(Block {
            norm1: norm("norm1")?,
            norm1_a: norm("norm1_a")?,
            norm1_v: norm("norm1_v")?,
            attn: Attention {
                qkv: self.linear(&format!("{prefix}.attn.qkv"))?,
                proj: self.linear(&format!("{prefix}.attn.proj"))?,
                heads,
            },
            norm2: norm("norm2")?,
            norm2_a: norm("norm2_a")?,
            norm2_v: norm("norm2_v")?,
            mlp: Mlp {
                fc1: self.linear(&format!("{prefix}.mlp.fc1"))?,
                fc2: self.linear(&format!("{prefix}.mlp.fc2"))?,
            },
        })
    }

    fn decoder(&self, dec: DecoderConfig) -> Result<Decoder, ModelError> {
        let heads = dec.heads;
        Ok(Decoder {
            embed: self.linear("decoder_embed")?,
            mask_token: self.param("mask_token")?,
            modality_a: self.param("decoder_modality_a")?,
            modality_v: self.param("decoder_modality_v")?,
            pos_embed_a: self.param("decoder_pos_embed_a")?,
            pos_embed_v: self.param("decoder_pos_embed_v")?,
            blocks: (0..dec.depth)
                .map(|i| self.block(&format!("decoder_blocks.{i}"), heads))
                .collect::<Result<_, _>>()?,
            norm: self.layer_norm("decoder_norm")?,
            pred_a: self.linear("decoder_pred_a")?,
            pred_v: self.linear("decoder_pred_v")?,
        })
    }
}

/// A trainable parameter whose id is derived from its checkpoint key, so that optimizer state saved in one run matches the parameters of a model rebuilt from the checkpoint in the next.
fn named_param<const D: usize>(key: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    // FNV-1a of the key.
    let id = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let (_, value, mapper) = Param::from_tensor(tensor).consume();
    Param::from_mapped_value(ParamId::from(id), value, mapper)
}

/// Collects a model's tensors under their official checkpoint keys (torch layouts).
struct StateDict(BTreeMap<String, RawTensor>);

impl StateDict {
    fn put<const D: usize>(&mut self, key: String, t: Tensor<D>) -> Result<(), ModelError> {
        self.0.insert(key, to_raw(t)?);
        Ok(())
    }

    fn linear(&mut self, prefix: &str, l: &Linear) -> Result<(), ModelError> {
        self.put(format!("{prefix}.weight"), l.weight.val().transpose())?;
        if let Some(b) = &l.bias {
            self.put(format!("{prefix}.bias"), b.val())?;
        }
        Ok(())
    }

    fn layer_norm(&mut self, prefix: &str, n: &LayerNorm) -> Result<(), ModelError> {
        self.put(format!("{prefix}.weight"), n.gamma.val())?;
        if let Some(b) = &n.beta {
            self.put(format!("{prefix}.bias"), b.val())?;
        }
        Ok(())
    }

    fn conv(&mut self, prefix: &str, c: &Conv2d) -> Result<(), ModelError> {
        self.put(format!("{prefix}.weight"), c.weight.val())?;
        if let Some(b) = &c.bias {
            self.put(format!("{prefix}.bias"), b.val())?;
        }
        Ok(())
    }

    fn block(&mut self, prefix: &str, b: &Block) -> Result<(), ModelError> {
        for (name, norm) in [
            ("norm1", &b.norm1),
            ("norm1_a", &b.norm1_a),
            ("norm1_v", &b.norm1_v),
            ("norm2", &b.norm2),
            ("norm2_a", &b.norm2_a),
            ("norm2_v", &b.norm2_v),
        ] {
            self.layer_norm(&format!("{prefix}.{name}"), norm)?;
        }
        self.linear(&format!("{prefix}.attn.qkv"), &b.attn.qkv)?;
        self.linear(&format!("{prefix}.attn.proj"), &b.attn.proj)?;
        self.linear(&format!("{prefix}.mlp.fc1"), &b.mlp.fc1)?;
        self.linear(&format!("{prefix}.mlp.fc2"), &b.mlp.fc2)
    }

    fn blocks(&mut self, group: &str, blocks: &[Block]) -> Result<(), ModelError> {
        for (i, b) in blocks.iter().enumerate() {
            self.block(&format!("{group}.{i}"), b)?;
        }
        Ok(())
    }
}

impl CavMae {
    /// Every tensor under its official checkpoint key, in torch layouts (the inverse of [`CavMae::from_checkpoint`]).
    pub fn state_dict(&self) -> Result<BTreeMap<String, RawTensor>, ModelError> {
        let mut sd = StateDict(BTreeMap::new());
        sd.conv("patch_embed_a.proj", &self.patch_embed_a)?;
        sd.conv("patch_embed_v.proj", &self.patch_embed_v)?;
        sd.put("pos_embed_a".into(), self.pos_embed_a.val())?;
        sd.put("pos_embed_v".into(), self.pos_embed_v.val())?;
        sd.put("modality_a".into(), self.modality_a.val())?;
        sd.put("modality_v".into(), self.modality_v.val())?;
        if let Some(p) = &self.cls_token_a {
            sd.put("cls_token_a".into(), p.val())?;
        }
        if let Some(p) = &self.cls_token_v {
            sd.put("cls_token_v".into(), p.val())?;
        }
        if let Some(p) = &self.register_tokens {
            sd.put("register_tokens".into(), p.val())?;
        }
        sd.blocks("blocks_a", &self.blocks_a)?;
        sd.blocks("blocks_v", &self.blocks_v)?;
        sd.blocks("blocks_u", &self.blocks_u)?;
        sd.blocks("constrative_head_audio", &self.contrastive_head_audio)?;
        sd.blocks("constrative_head_visual", &self.contrastive_head_visual)?;
        sd.layer_norm("norm_a", &self.norm_a)?;
        sd.layer_norm("norm_v", &self.norm_v)?;
        sd.layer_norm("norm", &self.norm)?;
        if let Some(dec) = &self.decoder {
            sd.linear("decoder_embed", &dec.embed)?;
            sd.put("mask_token".into(), dec.mask_token.val())?;
            sd.put("decoder_modality_a".into(), dec.modality_a.val())?;
            sd.put("decoder_modality_v".into(), dec.modality_v.val())?;
            sd.put("decoder_pos_embed_a".into(), dec.pos_embed_a.val())?;
            sd.put("decoder_pos_embed_v".into(), dec.pos_embed_v.val())?;
            sd.blocks("decoder_blocks", &dec.blocks)?;
            sd.layer_norm("decoder_norm", &dec.norm)?;
            sd.linear("decoder_pred_a", &dec.pred_a)?;
            sd.linear("decoder_pred_v", &dec.pred_v)?;
        }
        Ok(sd.0)
    }
}

/// A linear layer from checkpoint tensors `PREFIX.weight` (torch layout, out x in) and `PREFIX.bias`, with parameter ids from the keys.
pub fn linear_from_checkpoint(
    ck: &Checkpoint,
    prefix: &str,
    device: &Device,
) -> Result<Linear, ModelError> {
    Loader { ck, device }.linear(prefix)
}

/// Adds a linear layer's tensors to `out` as `PREFIX.weight` (torch layout) and `PREFIX.bias`.
pub fn linear_state(
    out: &mut BTreeMap<String, RawTensor>,
    prefix: &str,
    layer: &Linear,
) -> Result<(), ModelError> {
    let mut sd = StateDict(std::mem::take(out));
    sd.linear(prefix, layer)?;
    *out = sd.0;
    Ok(())
}

/// Convert a burn tensor to a row-major f32 vector and its shape.
pub fn to_raw<const D: usize>(t: Tensor<D>) -> Result<RawTensor, ModelError> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))?;
    Ok(RawTensor { shape, data })
}

/// Build a burn tensor from a row-major f32 buffer.
pub fn from_raw<const D: usize>(data: Vec<f32>, shape: &[usize], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape.to_vec()), device)
}
