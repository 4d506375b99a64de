//! Running a bundle over a clip: frame-aligned audio segments and frames in, embeddings and localization out.

use image::RgbImage;
use ndarray::Array2;

use crate::bundle::{Bundle, BundleError, Embedding};
use crate::clip::{Clip, FrameRef};
use crate::localize::{
    FrameLocalization, LocalizeConfig, LocalizeError, Localizer, similarity_map,
};
use crate::preprocess::fbank::{FbankError, ShortInput, clip_log_mel};
use crate::preprocess::image::{ImageError, ImagePreprocessor, load_rgb};
use crate::preprocess::segment::frame_segment;

/// Errors raised while running a clip through a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The clip's audio could not be turned into a filterbank.
    #[error("clip `{clip}`: {source}")]
    Fbank {
        /// The clip id.
        clip: String,
        /// The fbank error.
        source: FbankError,
    },
    /// A frame image could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Inference failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Localization post-processing failed.
    #[error(transparent)]
    Localize(#[from] LocalizeError),
}

/// Embeddings of one frame of a clip.
#[derive(Debug, Clone)]
pub struct FrameEmbeddings {
    /// The frame this is for.
    pub frame: FrameRef,
    /// Audio embedding of the frame-aligned segment.
    pub audio: Embedding,
    /// Visual embedding of the frame.
    pub visual: Embedding,
}

/// Encodes clips frame by frame with one bundle, reusing its buffers between frames.
pub struct ClipEncoder<'a> {
    bundle: &'a Bundle,
    images: ImagePreprocessor,
    image_buf: Vec<f32>,
    segment_buf: Vec<f32>,
}

impl<'a> ClipEncoder<'a> {
    /// A clip encoder for `bundle`.
    pub fn new(bundle: &'a Bundle) -> Self {
        let shape = &bundle.manifest.visual.input_shape;
        Self {
            bundle,
            images: ImagePreprocessor::new(),
            image_buf: vec![0.0; shape.iter().product()],
            segment_buf: Vec::new(),
        }
    }

    /// The clip's raw log-mel (official clip path: mean removal, Kaldi fbank).
    pub fn clip_fbank(&self, clip: &Clip) -> Result<Array2<f32>, PipelineError> {
        clip_log_mel(&clip.audio, ShortInput::ZeroPad).map_err(|source| PipelineError::Fbank {
            clip: clip.id.clone(),
            source,
        })
    }

    /// Encode frame `frame` of a clip whose log-mel is `mel`; returns the embeddings and the decoded frame.
    pub fn encode_frame(
        &mut self,
        mel: &Array2<f32>,
        frame: &FrameRef,
        total_frames: usize,
    ) -> Result<(FrameEmbeddings, RgbImage), PipelineError> {
        let target = self.bundle.manifest.audio_preprocessing.target_length;
        let seg = frame_segment(mel.view(), frame.index, total_frames, target);
        self.segment_buf.clear();
        self.segment_buf.extend(seg.iter());
        let audio = self.bundle.embed_audio(&self.segment_buf)?;
        let rgb = load_rgb(&frame.path)?;
        self.images.run_into(&rgb, &mut self.image_buf)?;
        let visual = self.bundle.embed_visual(&self.image_buf)?;
        Ok((
            FrameEmbeddings {
                frame: frame.clone(),
                audio,
                visual,
            },
            rgb,
        ))
    }
}

/// Localization of one frame, with its normalised heatmap at frame resolution.
#[derive(Debug, Clone)]
pub struct LocalizedFrame {
    /// Raw cosine map on the patch grid (rows x columns).
    pub raw_map: Vec<f32>,
    /// Normalised heatmap, frame_h x frame_w.
    pub heatmap: Vec<f32>,
    /// Peaks, boxes, score and activity.
    pub result: FrameLocalization,
}

/// Turns frame embeddings into localization results with the bundle's calibrated threshold.
#[derive(Debug)]
pub struct FrameLocalizer {
    localizer: Localizer,
    grid: [usize; 2],
}

impl FrameLocalizer {
    /// A localizer using the bundle's threshold and patch grid, other settings at their defaults.
    pub fn new(bundle: &Bundle) -> Result<Self, PipelineError> {
        let config = LocalizeConfig {
            active_threshold: bundle.manifest.localization.active_threshold,
            ..LocalizeConfig::default()
        };
        Ok(Self {
            localizer: Localizer::new(config)?,
            grid: bundle.manifest.visual.grid,
        })
    }

    /// Localize the audio of a frame in its image of size `width` x `height`.
    pub fn localize(
        &mut self,
        emb: &FrameEmbeddings,
        width: usize,
        height: usize,
    ) -> Result<LocalizedFrame, PipelineError> {
        let [gh, gw] = self.grid;
        let mut raw_map = vec![0.0; gh * gw];
        similarity_map(&emb.audio.global, &emb.visual.tokens, &mut raw_map)?;
        let mut heatmap = Vec::new();
        let result = self
            .localizer
            .run(&raw_map, gh, gw, width, height, &mut heatmap)?;
        Ok(LocalizedFrame {
            raw_map,
            heatmap,
            result,
        })
    }
}
