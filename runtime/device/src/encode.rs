//! Encoding frames with a bundle: a frame-aligned audio segment and an RGB image in, both embeddings out, buffers reused.

use image::RgbImage;
use ndarray::{Array2, ArrayView2};

use cavsync_core::localize::AudioDescriptor;
use cavsync_core::model::Modality;
use cavsync_core::preprocess::fbank::{FbankError, ShortInput, clip_log_mel};
use cavsync_core::preprocess::image::{ImageError, ImagePreprocessor};
use cavsync_core::preprocess::segment::{Alignment, FramePosition, segment_rows_into};

use crate::bundle::{Bundle, BundleError, Embedding};

/// Errors raised while encoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The clip's audio could not be turned into a filterbank.
    #[error("clip `{clip}`: {source}")]
    Fbank {
        /// The clip id.
        clip: String,
        /// The fbank error.
        source: FbankError,
    },
    /// A frame image could not be preprocessed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Inference failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// The raw log-mel of a clip's 16 kHz samples, as the official clip path computes it (mean removal, Kaldi fbank; short clips zero-padded).
pub fn clip_fbank(clip: &str, samples: &[f32]) -> Result<Array2<f32>, EncodeError> {
    clip_log_mel(samples, ShortInput::ZeroPad).map_err(|source| EncodeError::Fbank {
        clip: clip.to_string(),
        source,
    })
}

/// Embeddings of one frame: its audio segment's and its image's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameEmbeddings {
    /// Audio embedding of the frame-aligned segment.
    pub audio: Embedding,
    /// Loudness, spectral shape and dynamics of the normalised segment.
    pub audio_descriptor: AudioDescriptor,
    /// Visual embedding of the frame.
    pub visual: Embedding,
}

/// Encodes frames with one bundle from memory, reusing every buffer between frames.
pub struct FrameEncoder<'a> {
    bundle: &'a Bundle,
    images: ImagePreprocessor,
    image_buf: Vec<f32>,
    segment_buf: Vec<f32>,
    embeddings: FrameEmbeddings,
}

impl<'a> FrameEncoder<'a> {
    /// A frame encoder for `bundle`.
    pub fn new(bundle: &'a Bundle) -> Self {
        Self {
            bundle,
            images: ImagePreprocessor::with_size(bundle.manifest.image_preprocessing.size as u32),
            image_buf: vec![0.0; bundle.input_len(Modality::Visual)],
            segment_buf: Vec::with_capacity(bundle.input_len(Modality::Audio)),
            embeddings: FrameEmbeddings::default(),
        }
    }

    /// The bundle this encoder runs.
    pub fn bundle(&self) -> &'a Bundle {
        self.bundle
    }

    /// Encode a frame: its audio segment, placed by `alignment` at `frame` in the clip's raw log-mel `clip_mel`, and its image `rgb`.
    pub fn encode(
        &mut self,
        clip_mel: ArrayView2<'_, f32>,
        alignment: Alignment,
        frame: FramePosition,
        rgb: &RgbImage,
    ) -> Result<&FrameEmbeddings, EncodeError> {
        cut_segment(
            self.bundle,
            &mut self.segment_buf,
            clip_mel,
            alignment,
            frame,
        );
        self.images.run_into(rgb, &mut self.image_buf)?;
        self.bundle.embed_pair_into(
            &self.segment_buf,
            &self.image_buf,
            &mut self.embeddings.audio,
            &mut self.embeddings.visual,
        )?;
        self.embeddings.audio_descriptor = AudioDescriptor::of(
            &self.segment_buf,
            self.bundle.manifest.audio_preprocessing.num_mel_bins,
        );
        Ok(&self.embeddings)
    }

    /// Encode only the image `rgb`; returns its visual embedding.
    pub fn encode_visual(&mut self, rgb: &RgbImage) -> Result<&Embedding, EncodeError> {
        self.images.run_into(rgb, &mut self.image_buf)?;
        self.bundle.embed_into(
            Modality::Visual,
            &self.image_buf,
            &mut self.embeddings.visual,
        )?;
        Ok(&self.embeddings.visual)
    }

    /// Encode only the audio segment placed by `alignment` at `frame` in `clip_mel`, into `out`; returns the segment's descriptor.
    pub fn encode_audio_into(
        &mut self,
        clip_mel: ArrayView2<'_, f32>,
        alignment: Alignment,
        frame: FramePosition,
        out: &mut Embedding,
    ) -> Result<AudioDescriptor, EncodeError> {
        encode_audio(
            self.bundle,
            &mut self.segment_buf,
            clip_mel,
            alignment,
            frame,
            out,
        )
    }
}

/// Cuts the segment `alignment` places at `frame` in `clip_mel` into `segment`, padded to the bundle's length.
fn cut_segment(
    bundle: &Bundle,
    segment: &mut Vec<f32>,
    clip_mel: ArrayView2<'_, f32>,
    alignment: Alignment,
    frame: FramePosition,
) {
    let target = bundle.manifest.audio_preprocessing.target_length;
    let bounds = alignment.bounds(frame, clip_mel.nrows(), target);
    segment_rows_into(clip_mel, bounds, target, segment);
}

/// Cuts the frame's segment into `segment`, encodes it into `out` and returns its descriptor.
fn encode_audio(
    bundle: &Bundle,
    segment: &mut Vec<f32>,
    clip_mel: ArrayView2<'_, f32>,
    alignment: Alignment,
    frame: FramePosition,
    out: &mut Embedding,
) -> Result<AudioDescriptor, EncodeError> {
    cut_segment(bundle, segment, clip_mel, alignment, frame);
    bundle.embed_into(Modality::Audio, segment, out)?;
    Ok(AudioDescriptor::of(
        segment,
        bundle.manifest.audio_preprocessing.num_mel_bins,
    ))
}
