//! Image preprocessing identical to the official eval transform: torchvision
//! `Resize(224, BICUBIC)` on a PIL image, `CenterCrop(224)`, `ToTensor`, ImageNet `Normalize`.
//!
//! The resampler is a port of Pillow's `Resample.c` (antialiased bicubic, `a = -0.5`, support
//! widened by the downscale factor, 8-bit fixed point with 22 fractional bits, horizontal pass
//! then vertical pass, each rounded and clamped to 8 bits). It is bit-exact with Pillow, which
//! `fast_image_resize` is not: for 8-bit images that crate runs the vertical pass first and uses
//! Pillow-SIMD's 16-bit coefficients, so the clamped intermediate differs at sharp edges
//! (up to 13 levels off on the `bars_100x80` fixture, 24 on `mandelbrot_180x300`, against 0 and
//! 3 here).
//!
//! Only the output pixels inside the centre crop are computed; each output pixel depends only
//! on its own filter window, so this gives the same bytes as resizing fully and then cropping.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageReader, RgbImage};
use ndarray::Array3;

/// Side length of the square model input.
pub const IMAGE_SIZE: u32 = 224;
/// Number of values in one preprocessed image tensor, `3 * IMAGE_SIZE * IMAGE_SIZE`.
pub const TENSOR_LEN: usize = 3 * (IMAGE_SIZE as usize) * (IMAGE_SIZE as usize);
/// Longest side of an image file accepted, in pixels (8K video is 7680 wide); a larger header is refused before decoding.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Per-channel (R, G, B) mean subtracted after scaling to `[0, 1]`.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel (R, G, B) standard deviation divided out after subtracting [`MEAN`].
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Fractional bits of the fixed-point filter weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Accumulator start value, so that the final shift rounds to nearest.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);
/// Radius of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Errors raised while loading or preprocessing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a decodable JPEG or PNG image.
    #[error("{path}: cannot decode image (expected a JPEG or PNG file): {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        source: image::ImageError,
    },
    /// A JPEG whose data ends before its end-of-image marker (the decoder would fill the rest with grey).
    #[error(
        "{path}: JPEG ends before its end-of-image marker (expected a complete JPEG file: truncated?)"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
    },
    /// The header gives dimensions whose decoded pixels exceed the decoder's memory limit.
    #[error(
        "{path}: image header claims {width} x {height} pixels, too large to decode (expected at most {MAX_IMAGE_SIDE} pixels a side, within the decoder's 512 MiB limit)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width the header claims.
        width: u32,
        /// Height the header claims.
        height: u32,
    },
    /// The output buffer given to [`ImagePreprocessor::run_into`] has the wrong length.
    #[error("image output buffer holds {actual} values, expected {expected}")]
    OutputLength {
        /// The required length, 3 x size x size.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
}

/// Decode a JPEG or PNG file to 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    if reader.format() == Some(image::ImageFormat::Jpeg) && jpeg_scan_unterminated(&bytes) {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
        });
    }
    let image = decode_guarded(|| reader.decode()).map_err(|source| {
        // The header's size, read without the limits that refused the decode.
        let dimensions = ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .ok()
            .and_then(|mut r| {
                r.no_limits();
                r.into_dimensions().ok()
            });
        match (&source, dimensions) {
            (image::ImageError::Limits(_), Some((width, height))) => ImageError::TooLarge {
                path: path.to_path_buf(),
                width,
                height,
            },
            _ => ImageError::Decode {
                path: path.to_path_buf(),
                source,
            },
        }
    })?;
    Ok(image.to_rgb8())
}

/// Runs `decode`, turning a panic inside the decoder into a decoding error (zune-jpeg 0.5 panics in its IDCT on some corrupt scans instead of returning one).
pub fn decode_guarded(
    decode: impl FnOnce() -> image::ImageResult<image::DynamicImage>,
) -> image::ImageResult<image::DynamicImage> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|payload| {
        let reason = crate::panic_message(payload.as_ref());
        Err(image::ImageError::Decoding(
            image::error::DecodingError::new(
                image::error::ImageFormatHint::Unknown,
                format!("the decoder failed on corrupt image data ({reason})"),
            ),
        ))
    })
}

/// Whether a JPEG's last start-of-scan is not followed by its end-of-image marker (byte
/// stuffing keeps `FF D9` out of the entropy-coded data; an EXIF thumbnail's own marker comes
/// before). A file cut inside its headers has no scan and is left to the decoder.
fn jpeg_scan_unterminated(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|start| !bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// Shorter side to `size` with PIL-compatible antialiased bicubic (8-bit), then centre crop to size x size.
///
/// An image without pixels gives a black square.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let mut out = RgbImage::new(size, size);
    CropResizer::new(size).run(img, &mut out);
    out
}

/// ToTensor + ImageNet normalisation of an RGB image into a (3, h, w) channel-major tensor.
pub fn normalize(img: &RgbImage) -> Array3<f32> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut out = Array3::zeros((3, height, width));
    let planes = out
        .as_slice_mut()
        .expect("a freshly allocated array is contiguous");
    normalize_into(img.as_raw(), &normalization_table(), planes);
    out
}

/// The official eval transform on a decoded image: resize_center_crop(IMAGE_SIZE) then normalize.
pub fn preprocess_rgb(img: &RgbImage) -> Array3<f32> {
    preprocess_rgb_at(img, IMAGE_SIZE)
}

/// The eval transform for a model of `size` x `size` inputs: resize_center_crop(size) then normalize.
pub fn preprocess_rgb_at(img: &RgbImage, size: u32) -> Array3<f32> {
    normalize(&resize_center_crop(img, size))
}

/// load_rgb + preprocess_rgb.
pub fn preprocess_image_file(path: &Path) -> Result<Array3<f32>, ImageError> {
    preprocess_image_file_at(path, IMAGE_SIZE)
}

/// load_rgb + preprocess_rgb_at(size).
pub fn preprocess_image_file_at(path: &Path, size: u32) -> Result<Array3<f32>, ImageError> {
    Ok(preprocess_rgb_at(&load_rgb(path)?, size))
}

/// Reusable eval-transform state that writes into a caller-owned buffer without per-frame allocation.
pub struct ImagePreprocessor {
    resizer: CropResizer,
    crop: RgbImage,
    table: [[f32; 256]; 3],
}

impl Default for ImagePreprocessor {
    fn default() -> Self {
        Self::new()
    }
}

impl ImagePreprocessor {
    /// Create a preprocessor for [`IMAGE_SIZE`] x [`IMAGE_SIZE`] model inputs.
    pub fn new() -> Self {
        Self::with_size(IMAGE_SIZE)
    }

    /// Create a preprocessor for `size` x `size` model inputs.
    pub fn with_size(size: u32) -> Self {
        Self {
            resizer: CropResizer::new(size),
            crop: RgbImage::new(size, size),
            table: normalization_table(),
        }
    }

    /// Values of one output tensor, 3 x size x size.
    pub fn tensor_len(&self) -> usize {
        self.crop.as_raw().len()
    }

    /// Run [`preprocess_rgb_at`] on `img`, writing the (3, size, size) tensor into `out` (length [`Self::tensor_len`]).
    ///
    /// Reuses its buffers between frames of one size (what the frame encoder relies on).
    pub fn run_into(&mut self, img: &RgbImage, out: &mut [f32]) -> Result<(), ImageError> {
        if out.len() != self.tensor_len() {
            return Err(ImageError::OutputLength {
                expected: self.tensor_len(),
                actual: out.len(),
            });
        }
        self.resizer.run(img, &mut self.crop);
        normalize_into(self.crop.as_raw(), &self.table, out);
        Ok(())
    }
}

/// `(v / 255 - mean) / std` for every 8-bit value and channel, in f32 as torchvision computes it.
fn normalization_table() -> [[f32; 256]; 3] {
    std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - MEAN[c]) / STD[c]))
}

/// Write interleaved RGB bytes as normalised channel planes; `planes.len() == rgb.len()`.
fn normalize_into(rgb: &[u8], table: &[[f32; 256]; 3], planes: &mut [f32]) {
    let plane_len = rgb.len() / 3;
    for (c, plane) in planes.chunks_exact_mut(plane_len.max(1)).enumerate() {
        for (value, pixel) in plane.iter_mut().zip(rgb.chunks_exact(3)) {
            *value = table[c][usize::from(pixel[c])];
        }
    }
}

/// Size of the image torchvision's `Resize(size)` produces: shorter side to `size`, longer side
/// to `int(size * long / short)`; returns `(width, height)`.
///
/// With [`crop_offset`] this is the one resize geometry: the preprocessing and the placement of
/// the localization map on the frame both use it.
pub fn resized_dims(width: u32, height: u32, size: u32) -> (u64, u64) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u64;
    if width <= height {
        (u64::from(size), new_long)
    } else {
        (new_long, u64::from(size))
    }
}

/// torchvision's `CenterCrop` offset, `int(round((resized - size) / 2))` with Python's
/// round-half-to-even.
pub fn crop_offset(resized: u64, size: u32) -> u64 {
    (resized.saturating_sub(u64::from(size)) as f64 / 2.0).round_ties_even() as u64
}

/// Pillow's bicubic kernel with `a = -0.5`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `clip8`: drop the fractional bits of an accumulator and clamp to 0..=255.
fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Fixed-point filter window of one output pixel: weights for source pixels `start..`.
struct Window {
    start: usize,
    weights: Vec<i32>,
}

/// Filter windows for output pixels `offset..offset + count` when resampling `in_size` source
/// pixels to `out_size` (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn windows(in_size: u32, out_size: u64, offset: u64, count: u32) -> Vec<Window> {
    let scale = f64::from(in_size) / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inverse_scale = 1.0 / filter_scale;
    (0..u64::from(count))
        .map(|i| {
            let center = ((offset + i) as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let raw: Vec<f64> = (first..end)
                .map(|x| bicubic((x as f64 - center + 0.5) * inverse_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total == 0.0 { w } else { w / total };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    if fixed < 0.0 {
                        (-0.5 + fixed) as i32
                    } else {
                        (0.5 + fixed) as i32
                    }
                })
                .collect();
            Window {
                start: first as usize,
                weights,
            }
        })
        .collect()
}

/// Filter windows of both axes for one source size.
struct Plan {
    source: (u32, u32),
    columns: Vec<Window>,
    rows: Vec<Window>,
}

/// Resize-and-centre-crop to a fixed square size, keeping the filter windows and the
/// intermediate buffer between calls.
struct CropResizer {
    size: u32,
    plan: Option<Plan>,
    temp: Vec<u8>,
}

impl CropResizer {
    fn new(size: u32) -> Self {
        Self {
            size,
            plan: None,
            temp: Vec::new(),
        }
    }

    /// Resample `img` into `out`, which must be `size` x `size`.
    fn run(&mut self, img: &RgbImage, out: &mut RgbImage) {
        let (width, height) = img.dimensions();
        if width == 0 || height == 0 {
            out.fill(0);
            return;
        }
        let size = self.size;
        let plan = match self.plan.take() {
            Some(plan) if plan.source == (width, height) => plan,
            _ => {
                let (new_width, new_height) = resized_dims(width, height, size);
                Plan {
                    source: (width, height),
                    columns: windows(width, new_width, crop_offset(new_width, size), size),
                    rows: windows(height, new_height, crop_offset(new_height, size), size),
                }
            }
        };

        // Horizontal pass over the source rows the vertical pass reads.
        let first_row = plan.rows.first().map_or(0, |w| w.start);
        let end_row = plan.rows.last().map_or(0, |w| w.start + w.weights.len());
        let row_len = size as usize * 3;
        self.temp.resize((end_row - first_row) * row_len, 0);
        let src_row_len = width as usize * 3;
        let src_rows =
            img.as_raw()[first_row * src_row_len..end_row * src_row_len].chunks_exact(src_row_len);
        for (src_row, temp_row) in src_rows.zip(self.temp.chunks_exact_mut(row_len)) {
            for (window, pixel) in plan.columns.iter().zip(temp_row.chunks_exact_mut(3)) {
                let mut acc = [ROUNDING; 3];
                let taps = src_row[window.start * 3..].chunks_exact(3);
                for (&k, src) in window.weights.iter().zip(taps) {
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a += i32::from(v) * k;
                    }
                }
                for (dst, a) in pixel.iter_mut().zip(acc) {
                    *dst = clip8(a);
                }
            }
        }

        // Vertical pass.
        for (window, out_row) in plan.rows.iter().zip(out.chunks_exact_mut(row_len)) {
            let taps = &self.temp[(window.start - first_row) * row_len..];
            for (x, dst) in out_row.iter_mut().enumerate() {
                let acc = window
                    .weights
                    .iter()
                    .zip(taps.chunks_exact(row_len))
                    .fold(ROUNDING, |acc, (&k, row)| acc + i32::from(row[x]) * k);
                *dst = clip8(acc);
            }
        }
        self.plan = Some(plan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_dims_truncate_the_long_side() {
        assert_eq!(resized_dims(320, 240, 224), (298, 224));
        assert_eq!(resized_dims(180, 300, 224), (224, 373));
        assert_eq!(resized_dims(100, 80, 224), (280, 224));
        assert_eq!(resized_dims(1280, 720, 224), (398, 224));
        assert_eq!(resized_dims(500, 500, 224), (224, 224));
    }

    #[test]
    fn crop_offset_rounds_half_to_even() {
        assert_eq!(crop_offset(224, 224), 0);
        assert_eq!(crop_offset(225, 224), 0);
        assert_eq!(crop_offset(226, 224), 1);
        assert_eq!(crop_offset(227, 224), 2);
        assert_eq!(crop_offset(229, 224), 2);
        assert_eq!(crop_offset(231, 224), 4);
        assert_eq!(crop_offset(398, 224), 87);
    }

    #[test]
    fn identity_windows_are_exact() {
        for window in windows(10, 10, 0, 10) {
            let nonzero: Vec<i32> = window.weights.into_iter().filter(|&k| k != 0).collect();
            assert_eq!(nonzero, [1 << PRECISION_BITS]);
        }
    }

    #[test]
    fn normalization_table_matches_formula() {
        let table = normalization_table();
        assert_eq!(table[0][0], -0.485 / 0.229);
        assert_eq!(table[2][255], (1.0 - 0.406) / 0.225);
    }
}
