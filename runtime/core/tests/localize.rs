//! Localization maths against hand-computed values and torch references, detections on
//! synthetic maps, overlays and PNG writing.

use std::path::{Path, PathBuf};

use cavsync_core::localize::{
    ActivityFeatures, ActivityHead, AudioDescriptor, FrameLocalization, FrameSize, Grid,
    LocalizeConfig, LocalizeError, Localizer, Peak, min_max_normalize, render_overlay, save_png,
    similarity_map, upsample_bilinear,
};
use image::{Rgb, RgbImage};

const GRID: usize = 14;
/// Audio descriptor handed with maps whose activity does not depend on it.
const LEVEL: AudioDescriptor = AudioDescriptor {
    level: -6.0,
    loudest_band: -5.0,
    band_spread: 0.5,
    peak: -4.0,
    floor: -6.5,
};

fn grid(rows: usize, cols: usize) -> Grid {
    Grid { rows, cols }
}

fn size(width: usize, height: usize) -> FrameSize {
    FrameSize { width, height }
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/localize")
}

/// A torch reference case: input grid, its shape, and the expected output.
fn reference(name: &str) -> (Vec<f32>, usize, usize, Vec<f32>, Vec<usize>) {
    let input = cavsync_core::npy::read_f32(&data_dir().join(format!("{name}.input.npy"))).unwrap();
    let output =
        cavsync_core::npy::read_f32(&data_dir().join(format!("{name}.output.npy"))).unwrap();
    let (gh, gw) = (input.shape()[0], input.shape()[1]);
    let shape = output.shape().to_vec();
    (
        input.iter().copied().collect(),
        gh,
        gw,
        output.iter().copied().collect(),
        shape,
    )
}

fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol, "index {i}: {a} vs {e}");
    }
}

/// A 14x14 map at `low` with the given patches at `high`.
fn grid_with(hot: &[(usize, usize)], low: f32, high: f32) -> Vec<f32> {
    let mut map = vec![low; GRID * GRID];
    for &(row, col) in hot {
        map[row * GRID + col] = high;
    }
    map
}

/// Frame-pixel extent of grid patch (row, col), from torchvision's Resize(224) + CenterCrop(224) geometry.
fn patch_area(frame_w: usize, frame_h: usize, row: usize, col: usize) -> (f64, f64, f64, f64) {
    let (w, h) = (frame_w as f64, frame_h as f64);
    let short = w.min(h);
    let long_resized = (224.0 * w.max(h) / short).floor();
    let offset = ((long_resized - 224.0) / 2.0).round_ties_even();
    let (resized_w, off_x, resized_h, off_y) = if frame_w >= frame_h {
        (long_resized, offset, 224.0, 0.0)
    } else {
        (224.0, 0.0, long_resized, offset)
    };
    let patch = 224.0 / GRID as f64;
    let to_x = |u: f64| (u + off_x) * w / resized_w;
    let to_y = |v: f64| (v + off_y) * h / resized_h;
    (
        to_x(col as f64 * patch),
        to_y(row as f64 * patch),
        to_x((col + 1) as f64 * patch),
        to_y((row + 1) as f64 * patch),
    )
}

fn inside(p: &Peak, area: (f64, f64, f64, f64)) -> bool {
    let (x0, y0, x1, y1) = area;
    (x0..x1).contains(&f64::from(p.x)) && (y0..y1).contains(&f64::from(p.y))
}

fn run(config: LocalizeConfig, map: &[f32], w: usize, h: usize) -> (FrameLocalization, Vec<f32>) {
    let mut heatmap = Vec::new();
    let loc = Localizer::new(config)
        .unwrap()
        .run(map, LEVEL, grid(GRID, GRID), size(w, h), &mut heatmap)
        .unwrap();
    (loc, heatmap)
}

#[test]
fn similarity_map_matches_hand_computed_cosines() {
    let audio = [2.0, 0.0, 0.0];
    let tokens = [
        1.0, 0.0, 0.0, // same direction
        0.0, 3.0, 0.0, // orthogonal
        1.0, 1.0, 0.0, // 45 degrees
        -5.0, 0.0, 0.0, // opposite
        0.0, 0.0, 0.0, // zero vector
        3.0, 4.0, 0.0, // 3-4-5 triangle
    ];
    let mut out = [f32::NAN; 6];
    similarity_map(&audio, &tokens, &mut out).unwrap();
    assert_close(
        &out,
        &[1.0, 0.0, std::f32::consts::FRAC_1_SQRT_2, -1.0, 0.0, 0.6],
        1e-6,
    );
}

#[test]
fn similarity_map_rejects_mismatched_shapes() {
    let mut out = [0.0; 2];
    let err = similarity_map(&[1.0, 2.0, 3.0], &[0.0; 5], &mut out).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LocalizeError::Shape { .. }), "{message}");
    assert!(
        message.contains("expected 6") && message.contains("found 5"),
        "{message}"
    );
    assert!(matches!(
        similarity_map(&[], &[], &mut out),
        Err(LocalizeError::Empty { .. })
    ));
}

#[test]
fn upsample_2x2_to_4x4_matches_hand_values_and_torch() {
    // torch: src = (dst + 0.5) / 2 - 0.5, clamped at 0: weights 1, .75/.25, .25/.75, 1.
    let map = [0.0, 1.0, 2.0, 4.0];
    let mut out = [0.0; 16];
    upsample_bilinear(&map, grid(2, 2), &mut out, size(4, 4)).unwrap();
    #[rustfmt::skip]
    let hand = [
        0.0, 0.25, 0.75, 1.0,
        0.5, 0.8125, 1.4375, 1.75,
        1.5, 1.9375, 2.8125, 3.25,
        2.0, 2.5, 3.5, 4.0,
    ];
    assert_close(&out, &hand, 1e-6);
    let (input, gh, gw, expected, _) = reference("up_2x2_4x4");
    assert_eq!((gh, gw), (2, 2));
    assert_eq!(input, map);
    assert_close(&out, &expected, 1e-6);
}

#[test]
fn upsample_matches_torch_for_non_integer_scales_and_downscaling() {
    for (name, h, w) in [("up_3x5_7x11", 7, 11), ("down_5x7_3x4", 3, 4)] {
        let (input, gh, gw, expected, shape) = reference(name);
        assert_eq!(shape, [h, w], "{name}");
        let mut out = vec![0.0; h * w];
        upsample_bilinear(&input, grid(gh, gw), &mut out, size(w, h)).unwrap();
        assert_close(&out, &expected, 1e-5);
    }
}

#[test]
fn upsample_14x14_to_224_matches_torch_at_corners_and_centre() {
    let (input, gh, gw, blocks, shape) = reference("up_14x14_224");
    assert_eq!((gh, gw), (14, 14));
    assert_eq!(shape, [5, 16, 16]);
    let mut out = vec![0.0; 224 * 224];
    upsample_bilinear(&input, grid(gh, gw), &mut out, size(224, 224)).unwrap();
    let origins = [(0, 0), (0, 208), (208, 0), (208, 208), (104, 104)];
    for (b, &(r0, c0)) in origins.iter().enumerate() {
        let actual: Vec<f32> = (0..16)
            .flat_map(|r| (0..16).map(move |c| (r0 + r, c0 + c)))
            .map(|(r, c)| out[r * 224 + c])
            .collect();
        assert_close(&actual, &blocks[b * 256..(b + 1) * 256], 1e-6);
    }
}

#[test]
fn upsample_rejects_bad_shapes() {
    let mut out = [0.0; 16];
    let err = upsample_bilinear(&[0.0; 3], grid(2, 2), &mut out, size(4, 4)).unwrap_err();
    assert!(
        err.to_string().contains("expected 4 values, found 3"),
        "{err}"
    );
    let err = upsample_bilinear(&[0.0; 4], grid(2, 2), &mut out, size(5, 4)).unwrap_err();
    assert!(
        err.to_string().contains("expected 20 values, found 16"),
        "{err}"
    );
    assert!(matches!(
        upsample_bilinear(&[], grid(0, 2), &mut out, size(4, 4)),
        Err(LocalizeError::Empty { .. })
    ));
    assert!(matches!(
        upsample_bilinear(&[0.0; 4], grid(2, 2), &mut [], size(4, 0)),
        Err(LocalizeError::Empty { .. })
    ));
}

#[test]
fn min_max_normalize_maps_onto_unit_range_and_flattens_constants() {
    let mut values = [-1.0, 0.0, 3.0, 1.0];
    min_max_normalize(&mut values);
    assert_close(&values, &[0.0, 0.25, 1.0, 0.5], 1e-7);
    let mut constant = [0.3; 5];
    min_max_normalize(&mut constant);
    assert_eq!(constant, [0.0; 5]);
    // One-ulp rounding noise of an interpolated constant is not stretched to [0, 1].
    let mut noisy = [0.42, f32::from_bits(0.42f32.to_bits() + 1), 0.42];
    min_max_normalize(&mut noisy);
    assert_eq!(noisy, [0.0; 3]);
    let mut empty: [f32; 0] = [];
    min_max_normalize(&mut empty);
}

#[test]
fn hot_patch_peak_and_first_box_lie_on_the_patch_in_a_320x240_frame() {
    let map = grid_with(&[(3, 10)], 0.1, 0.8);
    let (loc, heatmap) = run(LocalizeConfig::default(), &map, 320, 240);
    assert_eq!(heatmap.len(), 320 * 240);
    assert!((loc.score - 0.8).abs() < 1e-7);
    assert!(loc.active);
    assert_eq!(loc.peaks.len(), 1, "{:?}", loc.peaks);
    let area = patch_area(320, 240, 3, 10);
    assert!(inside(&loc.peaks[0], area), "{:?} vs {area:?}", loc.peaks);
    assert!((loc.peaks[0].value - 1.0).abs() < 1e-3);
    assert_eq!(loc.boxes.len(), 1, "{:?}", loc.boxes);
    let b = &loc.boxes[0];
    let (cx, cy) = ((area.0 + area.2) / 2.0, (area.1 + area.3) / 2.0);
    assert!(f64::from(b.x0) <= cx && cx < f64::from(b.x1), "{b:?}");
    assert!(f64::from(b.y0) <= cy && cy < f64::from(b.y1), "{b:?}");
    // The region is about one patch (17 px) wide, not the whole frame.
    assert!(b.x1 - b.x0 < 40.0 && b.y1 - b.y0 < 40.0, "{b:?}");
    assert!(b.score >= 0.5 && b.score <= 1.0);
    // Outside the model's centre-crop view (frame columns < 40 or >= 280) there is no evidence.
    for y in [0, 120, 239] {
        assert_eq!(heatmap[y * 320 + 39], 0.0);
        assert_eq!(heatmap[y * 320 + 280], 0.0);
    }
    assert!(heatmap.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn portrait_frames_place_the_grid_on_the_vertical_centre_crop() {
    let map = grid_with(&[(12, 1)], 0.0, 1.0);
    let (loc, _) = run(LocalizeConfig::default(), &map, 240, 320);
    assert_eq!(loc.peaks.len(), 1);
    let area = patch_area(240, 320, 12, 1);
    assert!(inside(&loc.peaks[0], area), "{:?} vs {area:?}", loc.peaks);
}

#[test]
fn square_224_frame_heatmap_equals_upsample_then_normalize() {
    let (input, ..) = reference("up_14x14_224");
    let (_, heatmap) = run(LocalizeConfig::default(), &input, 224, 224);
    let mut expected = vec![0.0; 224 * 224];
    upsample_bilinear(&input, grid(GRID, GRID), &mut expected, size(224, 224)).unwrap();
    min_max_normalize(&mut expected);
    assert_close(&heatmap, &expected, 1e-5);
}

#[test]
fn two_separated_hot_patches_give_two_peaks_and_two_boxes() {
    let map = grid_with(&[(3, 3), (10, 11)], -0.2, 0.5);
    let (loc, _) = run(LocalizeConfig::default(), &map, 320, 240);
    assert_eq!(loc.peaks.len(), 2, "{:?}", loc.peaks);
    assert_eq!(loc.boxes.len(), 2, "{:?}", loc.boxes);
    for patch in [(3, 3), (10, 11)] {
        let area = patch_area(320, 240, patch.0, patch.1);
        assert!(
            loc.peaks.iter().any(|p| inside(p, area)),
            "no peak in {area:?}: {:?}",
            loc.peaks
        );
        let (cx, cy) = ((area.0 + area.2) / 2.0, (area.1 + area.3) / 2.0);
        assert!(loc.boxes.iter().any(|b| f64::from(b.x0) <= cx
            && cx < f64::from(b.x1)
            && f64::from(b.y0) <= cy
            && cy < f64::from(b.y1)));
    }
}

#[test]
fn peaks_are_strongest_first_and_boxes_ordered_by_mass() {
    // A weaker single patch and a stronger 2x2 block.
    let mut map = grid_with(&[(2, 2)], 0.0, 0.7);
    for (r, c) in [(9, 9), (9, 10), (10, 9), (10, 10)] {
        map[r * GRID + c] = 1.0;
    }
    let (loc, _) = run(LocalizeConfig::default(), &map, 224, 224);
    assert_eq!(loc.peaks.len(), 2);
    assert!(loc.peaks[0].value > loc.peaks[1].value);
    assert!(loc.peaks[0].x > 140.0 && loc.peaks[0].y > 140.0);
    assert_eq!(loc.boxes.len(), 2);
    let area = |b: &cavsync_core::localize::BoundingBox| (b.x1 - b.x0) * (b.y1 - b.y0);
    assert!(area(&loc.boxes[0]) > area(&loc.boxes[1]));
}

#[test]
fn close_peaks_are_suppressed_but_regions_stay_separate() {
    // Two patch centres 2 patches (~34 px) apart, below 0.1 x the 400 px diagonal.
    let map = grid_with(&[(5, 5), (5, 7)], 0.0, 1.0);
    let (loc, _) = run(LocalizeConfig::default(), &map, 320, 240);
    assert_eq!(loc.peaks.len(), 1, "{:?}", loc.peaks);
    assert_eq!(loc.boxes.len(), 2, "{:?}", loc.boxes);
    let config = LocalizeConfig {
        min_peak_separation: 0.05,
        ..LocalizeConfig::default()
    };
    let (loc, _) = run(config, &map, 320, 240);
    assert_eq!(loc.peaks.len(), 2, "{:?}", loc.peaks);
}

#[test]
fn max_peaks_limits_peaks_and_boxes() {
    let map = grid_with(&[(1, 1), (1, 12), (12, 1), (12, 12), (7, 7)], 0.0, 1.0);
    let (loc, _) = run(LocalizeConfig::default(), &map, 224, 224);
    assert_eq!((loc.peaks.len(), loc.boxes.len()), (3, 3));
    let config = LocalizeConfig {
        max_peaks: 5,
        ..LocalizeConfig::default()
    };
    let (loc, _) = run(config, &map, 224, 224);
    assert_eq!((loc.peaks.len(), loc.boxes.len()), (5, 5));
    let config = LocalizeConfig {
        max_peaks: 0,
        ..LocalizeConfig::default()
    };
    let (loc, _) = run(config, &map, 224, 224);
    assert!(loc.peaks.is_empty() && loc.boxes.is_empty());
}

#[test]
fn constant_map_gives_zero_heatmap_and_no_detections() {
    let map = vec![0.42; GRID * GRID];
    let (loc, heatmap) = run(LocalizeConfig::default(), &map, 320, 240);
    assert!(heatmap.iter().all(|&v| v == 0.0));
    assert!(loc.peaks.is_empty() && loc.boxes.is_empty());
    assert!((loc.score - 0.42).abs() < 1e-7);
}

#[test]
fn active_flag_follows_the_threshold_on_the_raw_score() {
    let map = grid_with(&[(4, 4)], 0.05, 0.3);
    for (threshold, active) in [(0.29, true), (0.3, true), (0.31, false)] {
        let config = LocalizeConfig {
            active_threshold: threshold,
            ..LocalizeConfig::default()
        };
        let (loc, _) = run(config, &map, 224, 224);
        assert_eq!(loc.active, active, "threshold {threshold}");
        // Detections are reported either way; inactive ones are drawn as not confident.
        assert_eq!(loc.peaks.len(), 1);
    }
}

#[test]
fn activity_head_replaces_the_threshold_and_sees_contrast_and_level() {
    // Peak 0.3 over a floor of 0.05: contrast = 0.3 - mean.
    let map = grid_with(&[(4, 4)], 0.05, 0.3);
    let mean = (0.3 + 0.05 * (GRID * GRID - 1) as f32) / (GRID * GRID) as f32;
    let head = ActivityHead {
        weights: [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        bias: 8.0,
    };
    for (level, active) in [(-7.5, true), (-8.0, true), (-8.5, false)] {
        let config = LocalizeConfig {
            // The threshold alone would make every frame inactive.
            active_threshold: 10.0,
            activity: Some(head),
            ..LocalizeConfig::default()
        };
        let mut localizer = Localizer::new(config).unwrap();
        let loc = localizer
            .run(
                &map,
                AudioDescriptor { level, ..LEVEL },
                grid(GRID, GRID),
                size(224, 224),
                &mut Vec::new(),
            )
            .unwrap();
        assert_eq!(loc.active, active, "level {level}");
        assert_eq!(loc.audio, AudioDescriptor { level, ..LEVEL });
        assert!((loc.contrast - (0.3 - mean)).abs() < 1e-6, "{loc:?}");
        let features = ActivityFeatures {
            score: loc.score,
            contrast: loc.contrast,
            audio: loc.audio,
        };
        assert_eq!(head.logit(features) >= 0.0, active);
    }
    let err = Localizer::new(LocalizeConfig {
        activity: Some(ActivityHead {
            weights: [1.0, f32::INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0],
            bias: 0.0,
        }),
        ..LocalizeConfig::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("activity = inf"), "{err}");
    let err = Localizer::new(LocalizeConfig::default())
        .unwrap()
        .run(
            &map,
            AudioDescriptor {
                floor: f32::NAN,
                ..LEVEL
            },
            grid(GRID, GRID),
            size(224, 224),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("audio floor"), "{err}");
}

#[test]
fn audio_descriptor_reads_loudness_shape_and_dynamics() {
    // 3 rows of 4 bands: band means 2, 3, 4, 7 (mean 4, spread sqrt(3.5)); row means 3, 4, 5.
    let segment = [
        1.0, 2.0, 3.0, 6.0, //
        2.0, 3.0, 4.0, 7.0, //
        3.0, 4.0, 5.0, 8.0,
    ];
    let d = AudioDescriptor::of(&segment, 4);
    assert_eq!(d.level, 4.0);
    assert_eq!(d.loudest_band, 7.0);
    assert!((d.band_spread - 3.5f32.sqrt()).abs() < 1e-6, "{d:?}");
    assert_eq!(d.peak, 8.0);
    assert_eq!(d.floor, 3.0);
    // A trailing partial row is ignored; nothing to describe gives zeros.
    let mut longer = segment.to_vec();
    longer.push(100.0);
    assert_eq!(AudioDescriptor::of(&longer, 4), d);
    assert_eq!(AudioDescriptor::of(&[], 4), AudioDescriptor::default());
    assert_eq!(AudioDescriptor::of(&segment, 0), AudioDescriptor::default());
}

#[test]
fn an_activity_head_of_three_weights_reads_as_score_contrast_and_level() {
    let legacy: ActivityHead = toml::from_str("weights = [1.0, 2.0, 3.0]\nbias = -1.0").unwrap();
    assert_eq!(legacy.weights, [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]);
    let full: ActivityHead =
        toml::from_str("weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]\nbias = 0.5").unwrap();
    assert_eq!(full.weights[6], 7.0);
    let err = toml::from_str::<ActivityHead>("weights = [1.0, 2.0]\nbias = 0.0").unwrap_err();
    assert!(
        err.to_string()
            .contains("expected 7 weights (score, contrast, level, loudest_band"),
        "{err}"
    );
    assert!(err.to_string().contains("found 2"), "{err}");
}

#[test]
fn run_rejects_bad_inputs_with_clear_messages() {
    let mut localizer = Localizer::new(LocalizeConfig::default()).unwrap();
    let mut heatmap = Vec::new();
    let err = localizer
        .run(
            &[0.0; 10],
            LEVEL,
            grid(GRID, GRID),
            size(320, 240),
            &mut heatmap,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("expected 196 values, found 10"),
        "{err}"
    );
    let mut map = vec![0.0; GRID * GRID];
    map[17] = f32::NAN;
    let err = localizer
        .run(&map, LEVEL, grid(GRID, GRID), size(320, 240), &mut heatmap)
        .unwrap_err();
    assert!(
        matches!(err, LocalizeError::NonFinite { index: 17, .. }),
        "{err}"
    );
    let err = localizer
        .run(
            &[0.0; 196],
            LEVEL,
            grid(GRID, GRID),
            size(0, 240),
            &mut heatmap,
        )
        .unwrap_err();
    assert!(matches!(err, LocalizeError::Empty { .. }), "{err}");
    let err = Localizer::new(LocalizeConfig {
        region_threshold: 1.5,
        ..LocalizeConfig::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("region_threshold = 1.5"), "{err}");
}

#[test]
fn localizer_reuses_the_heatmap_buffer_across_frames_and_sizes() {
    let mut localizer = Localizer::new(LocalizeConfig::default()).unwrap();
    let mut heatmap = Vec::new();
    let a = grid_with(&[(3, 10)], 0.0, 1.0);
    let b = grid_with(&[(10, 3)], 0.0, 1.0);
    let first = localizer
        .run(&a, LEVEL, grid(GRID, GRID), size(320, 240), &mut heatmap)
        .unwrap();
    let capacity = heatmap.capacity();
    let second = localizer
        .run(&b, LEVEL, grid(GRID, GRID), size(320, 240), &mut heatmap)
        .unwrap();
    assert_eq!(heatmap.capacity(), capacity);
    assert_ne!(first.peaks, second.peaks);
    assert!(inside(&second.peaks[0], patch_area(320, 240, 10, 3)));
    // A smaller frame afterwards reuses the same buffer and gives the fresh answer.
    let small = localizer
        .run(&a, LEVEL, grid(GRID, GRID), size(224, 224), &mut heatmap)
        .unwrap();
    assert_eq!(heatmap.len(), 224 * 224);
    assert_eq!(small, run(LocalizeConfig::default(), &a, 224, 224).0);
}

#[test]
fn config_deserialises_with_defaults_for_missing_fields() {
    let config: LocalizeConfig = serde_json::from_str(r#"{"active_threshold": 0.12}"#).unwrap();
    assert_eq!(
        config,
        LocalizeConfig {
            active_threshold: 0.12,
            ..LocalizeConfig::default()
        }
    );
    let defaults = LocalizeConfig::default();
    assert_eq!(
        (
            defaults.region_threshold,
            defaults.max_peaks,
            defaults.min_peak_separation
        ),
        (0.5, 3, 0.1)
    );
}

fn grey_frame(w: u32, h: u32) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb([90, 90, 90]))
}

#[test]
fn overlay_keeps_the_frame_size_and_marks_the_peak() {
    let map = grid_with(&[(3, 10)], 0.0, 1.0);
    let (loc, heatmap) = run(LocalizeConfig::default(), &map, 320, 240);
    let frame = grey_frame(320, 240);
    let overlay = render_overlay(&frame, &heatmap, &loc).unwrap();
    assert_eq!(overlay.dimensions(), (320, 240));
    let (px, py) = (loc.peaks[0].x as u32, loc.peaks[0].y as u32);
    assert_ne!(overlay.get_pixel(px, py), frame.get_pixel(px, py));
    // The peak is drawn in white on an active frame.
    assert_eq!(*overlay.get_pixel(px, py), Rgb([255, 255, 255]));
    // Cold pixels are tinted blue, hot ones red.
    let cold = overlay.get_pixel(5, 5);
    assert!(cold[2] > cold[0], "{cold:?}");
    let inactive = FrameLocalization {
        active: false,
        ..loc.clone()
    };
    let grey = render_overlay(&frame, &heatmap, &inactive).unwrap();
    assert_eq!(*grey.get_pixel(px, py), Rgb([128, 128, 128]));
    let b = &loc.boxes[0];
    assert_eq!(
        *grey.get_pixel(b.x0 as u32, b.y0 as u32),
        Rgb([128, 128, 128])
    );
}

#[test]
fn overlay_rejects_a_heatmap_of_the_wrong_size_and_clips_outside_marks() {
    let frame = grey_frame(32, 24);
    let loc = FrameLocalization {
        score: 0.5,
        contrast: 0.25,
        audio: LEVEL,
        active: true,
        peaks: vec![Peak {
            x: 1e30,
            y: -5.0,
            value: 1.0,
        }],
        boxes: vec![cavsync_core::localize::BoundingBox {
            x0: -10.0,
            y0: 20.0,
            x1: 1e12,
            y1: f32::INFINITY,
            score: 1.0,
        }],
    };
    let err = render_overlay(&frame, &[0.0; 10], &loc).unwrap_err();
    assert!(
        err.to_string().contains("expected 768 values, found 10"),
        "{err}"
    );
    let overlay = render_overlay(&frame, &vec![0.5; 32 * 24], &loc).unwrap();
    assert_eq!(overlay.dimensions(), (32, 24));
}

#[test]
fn save_png_writes_a_readable_image_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlay.png");
    let mut img = grey_frame(8, 6);
    img.put_pixel(3, 2, Rgb([250, 10, 20]));
    save_png(&img, &path).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!(back, img);
    // Overwriting replaces the file; no temporary file is left behind.
    save_png(&grey_frame(4, 4), &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (4, 4));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn save_png_into_a_missing_folder_fails_naming_the_path_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("overlay.png");
    let err = save_png(&grey_frame(4, 4), &path).unwrap_err();
    assert!(matches!(err, LocalizeError::Io { .. }));
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A path that names a folder is refused and the folder is untouched.
    let err = save_png(&grey_frame(4, 4), dir.path()).unwrap_err();
    assert!(matches!(err, LocalizeError::Io { .. }), "{err}");
    assert!(dir.path().is_dir());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
