//! Image preprocessing against torchvision golden outputs, plus input-format and error cases.

use std::path::{Path, PathBuf};

use cavsync_core::preprocess::image::{
    IMAGE_SIZE, ImageError, ImagePreprocessor, TENSOR_LEN, load_rgb, preprocess_image_file,
    preprocess_rgb, resize_center_crop,
};
use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use ndarray::Array3;

const FIXTURES: [&str; 4] = [
    "bars_100x80.png",
    "gradients_320x240.png",
    "mandelbrot_180x300.jpg",
    "testsrc_1280x720.jpg",
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/image")
}

/// Mean, 99th percentile and maximum absolute difference.
fn error_stats(actual: &Array3<f32>, expected: &Array3<f32>) -> (f32, f32, f32) {
    let mut errors: Vec<f32> = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .collect();
    errors.sort_by(f32::total_cmp);
    let n = errors.len();
    let mean = errors.iter().map(|&e| f64::from(e)).sum::<f64>() / n as f64;
    (
        mean as f32,
        errors[(n * 99).div_ceil(100) - 1],
        errors[n - 1],
    )
}

#[test]
fn fixtures_match_torchvision() {
    for name in FIXTURES {
        let path = data_dir().join(name);
        let stem = name.rsplit_once('.').unwrap().0;
        let expected: Array3<f32> =
            ndarray_npy::read_npy(data_dir().join(format!("{stem}.image.npy"))).unwrap();
        let actual = preprocess_image_file(&path).unwrap();
        assert_eq!(actual.shape(), &[3, 224, 224], "{name}");
        assert_eq!(expected.shape(), &[3, 224, 224], "{name}");
        let (mean, p99, max) = error_stats(&actual, &expected);
        println!("{name}: mean abs err {mean:.6}, p99 {p99:.6}, max {max:.6}");
        assert!(mean <= 0.02, "{name}: mean abs error {mean}");
        assert!(p99 <= 0.1, "{name}: p99 abs error {p99}");
        if name.ends_with(".png") {
            // Lossless decode: at most one 8-bit level (1 / 255 / std < 0.0175).
            assert!(max <= 0.0176, "{name}: max abs error {max}");
        }
    }
}

#[test]
fn run_into_matches_allocating_path_across_sizes() {
    let mut preprocessor = ImagePreprocessor::new();
    let mut out = vec![0.0f32; TENSOR_LEN];
    for name in FIXTURES.iter().chain(FIXTURES.iter()) {
        let img = load_rgb(&data_dir().join(name)).unwrap();
        preprocessor.run_into(&img, &mut out).unwrap();
        assert_eq!(
            out,
            preprocess_rgb(&img).into_raw_vec_and_offset().0,
            "{name}"
        );
    }
}

#[test]
fn run_into_rejects_wrong_buffer_length() {
    let img = RgbImage::new(300, 300);
    let mut out = vec![0.0f32; TENSOR_LEN - 1];
    let err = ImagePreprocessor::new()
        .run_into(&img, &mut out)
        .unwrap_err();
    assert!(matches!(
        err,
        ImageError::OutputLength {
            expected: TENSOR_LEN,
            actual
        } if actual == TENSOR_LEN - 1
    ));
}

/// An image whose pixel (x, y) encodes its coordinates, of a size that needs no resampling.
fn coordinate_image(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| Rgb([x as u8, y as u8, 7]))
}

#[test]
fn centre_crop_offsets_round_half_to_even() {
    // Shorter side already 224 and int(224 * long / 224) == long: resampling is the identity,
    // so the first output pixel reveals the crop offset.
    for (long, offset) in [(224, 0), (225, 0), (226, 1), (227, 2), (229, 2), (231, 4)] {
        let landscape = resize_center_crop(&coordinate_image(long, 224), IMAGE_SIZE);
        assert_eq!(landscape.dimensions(), (224, 224));
        assert_eq!(landscape.get_pixel(0, 0).0, [offset, 0, 7], "width {long}");
        let portrait = resize_center_crop(&coordinate_image(224, long), IMAGE_SIZE);
        assert_eq!(portrait.get_pixel(0, 0).0, [0, offset, 7], "height {long}");
    }
}

#[test]
fn resizes_portrait_landscape_and_upscale_to_a_square() {
    for (w, h) in [
        (640, 480),
        (480, 640),
        (100, 80),
        (50, 900),
        (1, 1),
        (3000, 224),
    ] {
        let img = RgbImage::from_pixel(w, h, Rgb([10, 128, 250]));
        let out = resize_center_crop(&img, IMAGE_SIZE);
        assert_eq!(out.dimensions(), (224, 224), "{w}x{h}");
        // A flat image stays flat: the filter weights sum to one.
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]), "{w}x{h}");
    }
}

#[test]
fn empty_image_gives_black_square() {
    let out = resize_center_crop(&RgbImage::new(0, 10), IMAGE_SIZE);
    assert_eq!(out.dimensions(), (224, 224));
    assert!(out.as_raw().iter().all(|&v| v == 0));
}

#[test]
fn grayscale_and_rgba_png_are_converted_to_rgb() {
    let dir = tempfile::tempdir().unwrap();

    let gray_path = dir.path().join("gray.png");
    GrayImage::from_fn(64, 48, |x, _| Luma([(x * 4) as u8]))
        .save(&gray_path)
        .unwrap();
    let gray = load_rgb(&gray_path).unwrap();
    assert_eq!(gray.dimensions(), (64, 48));
    assert_eq!(gray.get_pixel(10, 5).0, [40, 40, 40]);

    let rgba_path = dir.path().join("rgba.png");
    RgbaImage::from_pixel(30, 40, Rgba([200, 100, 50, 0]))
        .save(&rgba_path)
        .unwrap();
    let rgba = load_rgb(&rgba_path).unwrap();
    // Alpha is dropped, as PIL's convert('RGB') does.
    assert_eq!(rgba.get_pixel(0, 0).0, [200, 100, 50]);

    for path in [&gray_path, &rgba_path] {
        let tensor = preprocess_image_file(path).unwrap();
        assert_eq!(tensor.shape(), &[3, 224, 224]);
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
    let expected_red = (200.0 / 255.0 - 0.485) / 0.229;
    let red = preprocess_image_file(&rgba_path).unwrap()[[0, 100, 100]];
    assert!((red - expected_red).abs() < 1e-6);
}

#[test]
fn corrupt_file_is_a_decode_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jpg");
    let mut bytes = std::fs::read(data_dir().join("testsrc_1280x720.jpg")).unwrap();
    bytes.truncate(200);
    std::fs::write(&path, bytes).unwrap();
    let err = preprocess_image_file(&path).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("broken.jpg"), "{message}");
    assert!(message.contains("cannot decode image"), "{message}");

    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let err = load_rgb(&text).unwrap_err();
    assert!(err.to_string().contains("notes.png"), "{err}");
}

#[test]
fn jpeg_cut_inside_its_scan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.jpg");
    let bytes = std::fs::read(data_dir().join("testsrc_1280x720.jpg")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_rgb(&path).unwrap_err();
    assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("half.jpg"), "{err}");
}

#[test]
fn missing_file_is_a_read_error_naming_the_file() {
    let path = Path::new("/nonexistent/dir/frame_0.jpg");
    let err = preprocess_image_file(path).unwrap_err();
    assert!(matches!(err, ImageError::Read { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("/nonexistent/dir/frame_0.jpg: cannot read:"),
        "{message}"
    );
}
