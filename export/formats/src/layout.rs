//! Detecting a checkpoint's model layout (CAV-MAE Sync or original CAV-MAE) and dimensions from its keys.
//!
//! Detection reads the explicit official key names (`patch_embed_a.proj.weight`, `blocks_u.0.*`,
//! `cls_token_a`, ...) and then verifies every key and shape the detected layout implies, so a
//! checkpoint of another model, a truncated one or one with renamed keys is rejected with a
//! report of what is missing, unexpected or mis-shaped instead of loading garbage.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use cavsync_core::model::{Layout, Modality};
use cavsync_core::preprocess::fbank::NUM_MEL_BINS;
use cavsync_core::preprocess::image::IMAGE_SIZE;

use crate::checkpoint::Checkpoint;

/// Total transformer depth of the official model: modality-specific plus joint blocks.
pub const TOTAL_DEPTH: usize = 12;
/// LayerNorm epsilon of the official model (torch default).
pub const LAYER_NORM_EPS: f64 = 1e-5;
/// Square patch side of every published model.
pub const PATCH: usize = 16;

/// Errors raised when a checkpoint's keys do not describe a CAV-MAE encoder.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Core keys are absent: the file holds some other model.
    #[error(
        "{path}: not a CAV-MAE / CAV-MAE Sync checkpoint: missing {missing}; found keys such as {found}"
    )]
    NotCavMae {
        /// The checkpoint file.
        path: PathBuf,
        /// Comma-separated core keys that are absent.
        missing: String,
        /// A sample of the keys that are present.
        found: String,
    },
    /// A dimension read from the keys is inconsistent.
    #[error("{path}: inconsistent model dimensions: {detail}")]
    Dims {
        /// The checkpoint file.
        path: PathBuf,
        /// What is inconsistent.
        detail: String,
    },
    /// The number of attention heads does not divide the embedding dimension.
    #[error(
        "{path}: {heads} attention heads do not divide embedding dimension {dim} (set --heads)"
    )]
    Heads {
        /// The checkpoint file.
        path: PathBuf,
        /// Requested heads.
        heads: usize,
        /// Embedding dimension.
        dim: usize,
    },
    /// Keys are missing, unexpected or mis-shaped for the detected layout.
    #[error(
        "{path}: checkpoint does not match the detected {} layout:{report}",
        .layout.description()
    )]
    Keys {
        /// The checkpoint file.
        path: PathBuf,
        /// The detected layout.
        layout: Layout,
        /// One line per problem.
        report: String,
    },
}

/// Dimensions of the MAE decoder (present in pretraining checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Decoder embedding dimension.
    pub dim: usize,
    /// Number of decoder blocks.
    pub depth: usize,
    /// MLP hidden width of the decoder blocks.
    pub mlp_hidden: usize,
    /// Decoder attention heads (not stored in checkpoints; the official default keeps 32 dims per head).
    pub heads: usize,
}

/// Everything needed to build the encoders of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Model family.
    pub layout: Layout,
    /// Embedding dimension.
    pub dim: usize,
    /// Attention heads of the encoder blocks.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
    /// Square patch side (16 in every published model).
    pub patch: usize,
    /// Audio modality-specific blocks (`blocks_a`).
    pub depth_a: usize,
    /// Visual modality-specific blocks (`blocks_v`).
    pub depth_v: usize,
    /// Joint blocks (`blocks_u`).
    pub depth_u: usize,
    /// Register tokens per modality.
    pub registers: usize,
    /// Blocks in each contrastive head (0 when absent).
    pub contrastive_depth: usize,
    /// Audio segment length L in fbank frames.
    pub audio_length: usize,
    /// Square image side in pixels.
    pub image_size: usize,
    /// Decoder dimensions, when the checkpoint has one.
    pub decoder: Option<DecoderConfig>,
}

impl DecoderConfig {
    /// A decoder of `dim` and `depth` with the official proportions: MLP 4 x dim, 32 dims per head.
    pub fn new(dim: usize, depth: usize) -> Self {
        Self {
            dim,
            depth,
            mlp_hidden: 4 * dim,
            heads: (dim / 32).max(1),
        }
    }
}

impl ModelConfig {
    /// A CAV-MAE Sync encoder shaped as the published model, at any size.
    ///
    /// Sync layout, dim / 64 heads (at least 1), MLP 4 x dim, patch 16, `depth` blocks per
    /// modality and [`TOTAL_DEPTH`] - `depth` joint blocks (at least 1), 224-pixel images, no
    /// contrastive head and no decoder; change the rest with struct-update syntax, e.g.
    /// `ModelConfig { decoder: Some(DecoderConfig::new(512, 8)), ..ModelConfig::sync(768, 11, 8, 416) }`.
    pub fn sync(dim: usize, depth: usize, registers: usize, audio_length: usize) -> Self {
        Self {
            layout: Layout::Sync,
            dim,
            heads: (dim / 64).max(1),
            mlp_hidden: 4 * dim,
            patch: PATCH,
            depth_a: depth,
            depth_v: depth,
            depth_u: TOTAL_DEPTH.saturating_sub(depth).max(1),
            registers,
            contrastive_depth: 0,
            audio_length,
            image_size: IMAGE_SIZE as usize,
            decoder: None,
        }
    }

    /// Whether global tokens are prepended (CAV-MAE Sync).
    pub fn has_global_tokens(&self) -> bool {
        self.layout == Layout::Sync
    }

    /// Audio patch rows (frequency).
    pub fn audio_rows(&self) -> usize {
        NUM_MEL_BINS / self.patch
    }

    /// Audio patch columns (time).
    pub fn audio_cols(&self) -> usize {
        self.audio_length / self.patch
    }

    /// Audio patch tokens per segment.
    pub fn audio_patches(&self) -> usize {
        self.audio_rows() * self.audio_cols()
    }

    /// Visual patch grid side.
    pub fn visual_grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Visual patch tokens per frame.
    pub fn visual_patches(&self) -> usize {
        self.visual_grid() * self.visual_grid()
    }

    /// Detect the layout and dimensions from a checkpoint's keys and verify every key and shape.
    ///
    /// `heads` overrides the head count, which tensor shapes cannot reveal (default: dim / 64).
    pub fn detect(ck: &Checkpoint, heads: Option<usize>) -> Result<Self, LayoutError> {
        let t = &ck.tensors;
        check_core_keys(ck)?;
        let (dim, patch) = embedding_and_patch(ck)?;
        let audio_length = audio_length(ck, dim, patch)?;
        let grid = visual_grid(ck, dim)?;
        let depth_u = count_blocks(t, "blocks_u.");
        if depth_u == 0 {
            return Err(dims_err(ck, "no joint blocks (blocks_u.0.*)".into()));
        }
        let mlp_hidden = t
            .get("blocks_u.0.mlp.fc1.weight")
            .map(|w| w.shape[0])
            .ok_or_else(|| dims_err(ck, "blocks_u.0.mlp.fc1.weight is absent".into()))?;
        let registers = register_count(ck, dim)?;
        let heads = encoder_heads(ck, dim, heads)?;
        let config = Self {
            layout: detect_layout(ck),
            dim,
            heads,
            mlp_hidden,
            patch,
            depth_a: count_blocks(t, "blocks_a."),
            depth_v: count_blocks(t, "blocks_v."),
            depth_u,
            registers,
            contrastive_depth: count_blocks(t, "constrative_head_audio."),
            audio_length,
            image_size: grid * patch,
            decoder: detect_decoder(ck),
        };
        config.verify_keys(ck)?;
        Ok(config)
    }

    /// Every key the layout needs, with its expected shape.
    pub fn expected_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let (d, p) = (self.dim, self.patch);
        let mut m = BTreeMap::new();
        let mut put = |k: String, s: Vec<usize>| {
            m.insert(k, s);
        };
        put("patch_embed_a.proj.weight".into(), vec![d, 1, p, p]);
        put("patch_embed_a.proj.bias".into(), vec![d]);
        put("patch_embed_v.proj.weight".into(), vec![d, 3, p, p]);
        put("patch_embed_v.proj.bias".into(), vec![d]);
        put("pos_embed_a".into(), vec![1, self.audio_patches(), d]);
        put("pos_embed_v".into(), vec![1, self.visual_patches(), d]);
        put("modality_a".into(), vec![1, 1, d]);
        put("modality_v".into(), vec![1, 1, d]);
        if self.has_global_tokens() {
            put("cls_token_a".into(), vec![1, 1, d]);
            put("cls_token_v".into(), vec![1, 1, d]);
        }
        if self.registers > 0 {
            put("register_tokens".into(), vec![2 * self.registers, d]);
        }
        let groups = [
            ("blocks_a", self.depth_a),
            ("blocks_v", self.depth_v),
            ("blocks_u", self.depth_u),
            ("constrative_head_audio", self.contrastive_depth),
            ("constrative_head_visual", self.contrastive_depth),
        ];
        for (group, depth) in groups {
            for i in 0..depth {
                block_shapes(&format!("{group}.{i}"), d, self.mlp_hidden, &mut put);
            }
        }
        for norm in ["norm_a", "norm_v", "norm"] {
            put(format!("{norm}.weight"), vec![d]);
            put(format!("{norm}.bias"), vec![d]);
        }
        if let Some(dec) = self.decoder {
            let e = dec.dim;
            put("decoder_embed.weight".into(), vec![e, d]);
            put("decoder_embed.bias".into(), vec![e]);
            put("mask_token".into(), vec![1, 1, e]);
            put("decoder_modality_a".into(), vec![1, 1, e]);
            put("decoder_modality_v".into(), vec![1, 1, e]);
            put(
                "decoder_pos_embed_a".into(),
                vec![1, self.audio_patches(), e],
            );
            put(
                "decoder_pos_embed_v".into(),
                vec![1, self.visual_patches(), e],
            );
            for i in 0..dec.depth {
                block_shapes(&format!("decoder_blocks.{i}"), e, dec.mlp_hidden, &mut put);
            }
            put("decoder_norm.weight".into(), vec![e]);
            put("decoder_norm.bias".into(), vec![e]);
            put("decoder_pred_a.weight".into(), vec![p * p, e]);
            put("decoder_pred_a.bias".into(), vec![p * p]);
            put("decoder_pred_v.weight".into(), vec![3 * p * p, e]);
            put("decoder_pred_v.bias".into(), vec![3 * p * p]);
        }
        m
    }

    fn verify_keys(&self, ck: &Checkpoint) -> Result<(), LayoutError> {
        let expected = self.expected_shapes();
        let mut report = String::new();
        let missing: Vec<&String> = expected
            .keys()
            .filter(|k| !ck.tensors.contains_key(*k))
            .collect();
        let unexpected: Vec<&String> = ck
            .tensors
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        let mismatched: Vec<String> = expected
            .iter()
            .filter_map(|(k, s)| {
                let found = &ck.tensors.get(k)?.shape;
                (found != s).then(|| format!("{k}: expected {s:?}, found {found:?}"))
            })
            .collect();
        for (title, items) in [
            (
                "missing keys",
                missing.iter().map(|s| s.to_string()).collect(),
            ),
            (
                "unexpected keys",
                unexpected.iter().map(|s| s.to_string()).collect(),
            ),
            ("mis-shaped tensors", mismatched),
        ] {
            list_section(&mut report, title, &items);
        }
        if report.is_empty() {
            Ok(())
        } else {
            Err(LayoutError::Keys {
                path: ck.path.clone(),
                layout: self.layout,
                report,
            })
        }
    }

    /// Encoder parameter count (patch embeddings, tokens, blocks, norms; no decoder).
    pub fn encoder_parameters(&self) -> usize {
        self.expected_shapes()
            .iter()
            .filter(|(k, _)| !is_decoder_key(k))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Multiply-adds of one modality's encoder pass as the runtime runs it: patch embedding, modality blocks (with global and register tokens), the last joint block and the contrastive head (without registers); norms and softmax not counted.
    pub fn encoder_macs(&self, modality: Modality) -> u64 {
        let (patches, channels, depth) = match modality {
            Modality::Audio => (self.audio_patches(), 1, self.depth_a),
            Modality::Visual => (self.visual_patches(), 3, self.depth_v),
        };
        let (d, h) = (self.dim as u64, self.mlp_hidden as u64);
        let block = |n: u64| 4 * n * d * d + 2 * n * d * h + 2 * n * n * d;
        let with_global = patches as u64 + u64::from(self.has_global_tokens());
        let embed = (patches * channels * self.patch * self.patch) as u64 * d;
        embed
            + depth as u64 * block(with_global + self.registers as u64)
            + (1 + self.contrastive_depth as u64) * block(with_global)
    }

    /// GFLOP (2 x multiply-adds) of one frame pair: one audio segment and one image.
    pub fn pair_gflops(&self) -> f64 {
        let macs = self.encoder_macs(Modality::Audio) + self.encoder_macs(Modality::Visual);
        2.0 * macs as f64 / 1e9
    }

    /// Decoder parameter count (0 without a decoder).
    pub fn decoder_parameters(&self) -> usize {
        self.expected_shapes()
            .iter()
            .filter(|(k, _)| is_decoder_key(k))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// The dimension error of checkpoint `ck`.
fn dims_err(ck: &Checkpoint, detail: String) -> LayoutError {
    LayoutError::Dims {
        path: ck.path.clone(),
        detail,
    }
}

/// The keys every CAV-MAE checkpoint has; their absence means another model.
fn check_core_keys(ck: &Checkpoint) -> Result<(), LayoutError> {
    let core = [
        "patch_embed_a.proj.weight",
        "patch_embed_v.proj.weight",
        "pos_embed_a",
        "pos_embed_v",
        "modality_a",
        "modality_v",
    ];
    let missing: Vec<&str> = core
        .iter()
        .copied()
        .filter(|k| !ck.tensors.contains_key(*k))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(LayoutError::NotCavMae {
        path: ck.path.clone(),
        missing: missing.join(", "),
        found: sample_keys(ck.tensors.keys(), 6),
    })
}

/// Embedding dimension and patch side, from the visual patch embedding `[dim, 3, p, p]`.
fn embedding_and_patch(ck: &Checkpoint) -> Result<(usize, usize), LayoutError> {
    let pv = &ck.tensors["patch_embed_v.proj.weight"].shape;
    if pv.len() != 4 || pv[2] != pv[3] || pv[2] == 0 || !NUM_MEL_BINS.is_multiple_of(pv[2]) {
        return Err(dims_err(
            ck,
            format!(
                "patch_embed_v.proj.weight has shape {pv:?}; expected [dim, 3, p, p] with p dividing {NUM_MEL_BINS}"
            ),
        ));
    }
    Ok((pv[0], pv[2]))
}

/// Audio segment length L in fbank frames, from the audio positional embedding.
fn audio_length(ck: &Checkpoint, dim: usize, patch: usize) -> Result<usize, LayoutError> {
    let pos_a = &ck.tensors["pos_embed_a"].shape;
    let rows = NUM_MEL_BINS / patch;
    if pos_a.len() != 3 || !pos_a[1].is_multiple_of(rows) || pos_a[1] == 0 {
        return Err(dims_err(
            ck,
            format!("pos_embed_a has shape {pos_a:?}; expected [1, {rows} * time patches, {dim}]"),
        ));
    }
    Ok(pos_a[1] / rows * patch)
}

/// Side of the square visual patch grid, from the visual positional embedding.
fn visual_grid(ck: &Checkpoint, dim: usize) -> Result<usize, LayoutError> {
    let pos_v = &ck.tensors["pos_embed_v"].shape;
    let tokens = pos_v.get(1).copied().unwrap_or(0);
    let grid = (1..=tokens).find(|g| g * g >= tokens).unwrap_or(0);
    if pos_v.len() != 3 || grid * grid != pos_v[1] || grid == 0 {
        return Err(dims_err(
            ck,
            format!(
                "pos_embed_v has shape {pos_v:?}; expected [1, g*g, {dim}] for a square patch grid"
            ),
        ));
    }
    Ok(grid)
}

/// Sync when either global token is present, else the original CAV-MAE.
fn detect_layout(ck: &Checkpoint) -> Layout {
    if ck.tensors.contains_key("cls_token_a") || ck.tensors.contains_key("cls_token_v") {
        Layout::Sync
    } else {
        Layout::Plain
    }
}

/// Register tokens per modality, from `register_tokens` `[2R, dim]` (0 when absent).
fn register_count(ck: &Checkpoint, dim: usize) -> Result<usize, LayoutError> {
    match ck.tensors.get("register_tokens") {
        Some(r) if r.shape.len() == 2 && r.shape[0] % 2 == 0 => Ok(r.shape[0] / 2),
        Some(r) => Err(dims_err(
            ck,
            format!(
                "register_tokens has shape {:?}; expected [2R, {dim}]",
                r.shape
            ),
        )),
        None => Ok(0),
    }
}

/// The MAE decoder's dimensions, when the checkpoint has one (heads: 32 dims each, as the tools assume).
fn detect_decoder(ck: &Checkpoint) -> Option<DecoderConfig> {
    let t = &ck.tensors;
    t.get("decoder_embed.weight").map(|w| DecoderConfig {
        dim: w.shape[0],
        depth: count_blocks(t, "decoder_blocks."),
        mlp_hidden: t
            .get("decoder_blocks.0.mlp.fc1.weight")
            .map_or(4 * w.shape[0], |w| w.shape[0]),
        heads: (w.shape[0] / 32).max(1),
    })
}

/// The encoder head count: `heads`, or dim / 64 (at least 1); it must divide `dim`.
fn encoder_heads(ck: &Checkpoint, dim: usize, heads: Option<usize>) -> Result<usize, LayoutError> {
    let heads = heads.unwrap_or((dim / 64).max(1));
    if heads == 0 || !dim.is_multiple_of(heads) {
        return Err(LayoutError::Heads {
            path: ck.path.clone(),
            heads,
            dim,
        });
    }
    Ok(heads)
}

fn is_decoder_key(k: &str) -> bool {
    k.starts_with("decoder_") || k == "mask_token"
}

/// Keys and shapes of one timm-style block with the per-modality norms of the official `Block`.
fn block_shapes(prefix: &str, d: usize, hidden: usize, put: &mut impl FnMut(String, Vec<usize>)) {
    for norm in ["norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v"] {
        put(format!("{prefix}.{norm}.weight"), vec![d]);
        put(format!("{prefix}.{norm}.bias"), vec![d]);
    }
    put(format!("{prefix}.attn.qkv.weight"), vec![3 * d, d]);
    put(format!("{prefix}.attn.qkv.bias"), vec![3 * d]);
    put(format!("{prefix}.attn.proj.weight"), vec![d, d]);
    put(format!("{prefix}.attn.proj.bias"), vec![d]);
    put(format!("{prefix}.mlp.fc1.weight"), vec![hidden, d]);
    put(format!("{prefix}.mlp.fc1.bias"), vec![hidden]);
    put(format!("{prefix}.mlp.fc2.weight"), vec![d, hidden]);
    put(format!("{prefix}.mlp.fc2.bias"), vec![d]);
}

/// Number of consecutive blocks `prefix{0,1,..}.` present.
fn count_blocks<V>(t: &BTreeMap<String, V>, prefix: &str) -> usize {
    t.keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

fn sample_keys<'a>(keys: impl Iterator<Item = &'a String>, n: usize) -> String {
    let keys: Vec<&String> = keys.collect();
    let mut s = keys
        .iter()
        .take(n)
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > n {
        let _ = write!(s, " (and {} more)", keys.len() - n);
    }
    s
}

const LIST_LIMIT: usize = 12;

fn list_section(report: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let sep = if report.is_empty() { " " } else { "; " };
    let _ = write!(report, "{sep}{} {title}: ", items.len());
    let shown: Vec<&str> = items.iter().take(LIST_LIMIT).map(String::as_str).collect();
    report.push_str(&shown.join(", "));
    if items.len() > LIST_LIMIT {
        let _ = write!(report, " (and {} more)", items.len() - LIST_LIMIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_cost_counts_every_product_of_the_runtime_pass() {
        // Audio of a (64-dim, 1 block + joint, 1 register, L = 16) model, counted by hand:
        // patch embedding 8 patches x 256 pixels x 64; the modality block on 8 + 1 + 1 tokens;
        // the joint block on 8 + 1 tokens (registers dropped).
        let c = ModelConfig::sync(64, 1, 1, 16);
        let block = |n: u64| 4 * n * 64 * 64 + 2 * n * 64 * 256 + 2 * n * n * 64;
        assert_eq!(
            c.encoder_macs(Modality::Audio),
            8 * 256 * 64 + block(10) + block(9)
        );
        assert_eq!(
            c.encoder_macs(Modality::Visual),
            196 * 768 * 64 + block(198) + block(197)
        );
        // The published model: 37.5 G multiply-adds per frame pair (projections and MLPs 35.7 G,
        // attention products 1.6 G, patch embeddings 0.2 G).
        let full = ModelConfig::sync(768, 11, 8, 416).pair_gflops();
        assert!((74.9..75.1).contains(&full), "{full}");
    }
    use crate::checkpoint::{CheckpointFormat, RawTensor};

    fn synthetic(config: &ModelConfig) -> Checkpoint {
        let tensors = config
            .expected_shapes()
            .into_iter()
            .map(|(k, shape)| {
                let n = shape.iter().product();
                (
                    k,
                    RawTensor {
                        shape,
                        data: vec![0.0; n],
                    },
                )
            })
            .collect();
        Checkpoint {
            path: PathBuf::from("synthetic.pth"),
            format: CheckpointFormat::Torch,
            tensors,
        }
    }

    fn sync_config() -> ModelConfig {
        ModelConfig {
            heads: 3,
            depth_u: 1,
            contrastive_depth: 2,
            decoder: Some(DecoderConfig::new(48, 2)),
            ..ModelConfig::sync(96, 2, 4, 256)
        }
    }

    #[test]
    fn constructors_give_the_published_proportions() {
        let c = ModelConfig::sync(768, 11, 8, 416);
        assert_eq!((c.heads, c.mlp_hidden, c.patch), (12, 3072, 16));
        assert_eq!((c.depth_a, c.depth_v, c.depth_u), (11, 11, 1));
        assert_eq!(
            (c.image_size, c.audio_patches(), c.visual_patches()),
            (224, 208, 196)
        );
        assert_eq!(c.layout, Layout::Sync);
        assert_eq!(ModelConfig::sync(4, 12, 0, 64).depth_u, 1);
        let d = DecoderConfig::new(512, 8);
        assert_eq!((d.mlp_hidden, d.heads), (2048, 16));
    }

    #[test]
    fn detects_what_it_generates() {
        let config = sync_config();
        let ck = synthetic(&config);
        assert_eq!(ModelConfig::detect(&ck, Some(3)).unwrap(), config);
        let plain = ModelConfig {
            layout: Layout::Plain,
            registers: 0,
            contrastive_depth: 0,
            decoder: None,
            audio_length: 1024,
            heads: 1,
            ..config
        };
        assert_eq!(
            ModelConfig::detect(&synthetic(&plain), None).unwrap(),
            plain
        );
    }

    #[test]
    fn reports_missing_unexpected_and_misshaped_keys() {
        let mut ck = synthetic(&sync_config());
        ck.tensors.remove("blocks_v.1.attn.proj.bias");
        ck.tensors.insert(
            "extra.weight".into(),
            RawTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        ck.tensors.get_mut("norm_a.weight").unwrap().shape = vec![95];
        let msg = ModelConfig::detect(&ck, Some(3)).unwrap_err().to_string();
        assert!(msg.contains("synthetic.pth"), "{msg}");
        assert!(
            msg.contains("1 missing keys: blocks_v.1.attn.proj.bias"),
            "{msg}"
        );
        assert!(msg.contains("1 unexpected keys: extra.weight"), "{msg}");
        assert!(
            msg.contains("norm_a.weight: expected [96], found [95]"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_other_models_and_bad_heads() {
        let mut ck = synthetic(&sync_config());
        ck.tensors.retain(|k, _| k.starts_with("blocks_u"));
        let err = ModelConfig::detect(&ck, None).unwrap_err();
        assert!(matches!(err, LayoutError::NotCavMae { .. }), "{err}");
        let ck = synthetic(&sync_config());
        let err = ModelConfig::detect(&ck, Some(5)).unwrap_err();
        assert!(matches!(err, LayoutError::Heads { heads: 5, .. }), "{err}");
    }
}
