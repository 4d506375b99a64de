//! Synthetic audio-visual clips with ground truth: a small world in which objects of several classes sound, each class with its own sound.
//!
//! Two worlds. The default, [`World::Hard`], is one where only the sound tells which object
//! sounds: 2 to 4 objects of distinct classes covering 3% to 25% of the frame each, placed
//! anywhere; every object moves, pulses and brightens, a sounding one with its own loudness
//! and a silent one with a decoy envelope drawn from the same schedule statistics, so no frame
//! alone says which object sounds; the link is the class (timbre, rhythm, pitch with size) and
//! the timing. Some clips also have a source out of view, whose slots are annotated as
//! off-screen. [`World::Legacy`] is the first world, kept so that the demo model's record can
//! be reproduced, and described below.
//!
//! A clip is 10 s of 16 kHz audio and 16 frames (frame k at k * 10 / 16 s), written in the
//! CAV-MAE datafile layout (`audio/ID.wav`, `frames/frame_{k}/ID.jpg`, `datafile.json`) plus
//! `annotations.json` ([`cavsync_core::annotations`]). Each frame's time slot (the 0.64 s the
//! official loader centres its audio segment on, see [`SLOT_SAMPLES`]) has a set of sounding
//! objects: zero, one or two. A sounding object glows with its loudness (brighter colours, a
//! bright rim, a larger outline that bobs); a silent one, including a distractor that never
//! sounds, is dimmed and half desaturated. Each class has a colour, a surface pattern and a
//! sound (timbre, pitch range, noise band, rhythm); an object's pitch follows its size (bigger
//! is lower). Backgrounds are procedural textures or crops of photographs; background noise is
//! added at a random SNR. Everything is a function of the seed.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use image::{RgbImage, imageops};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cavsync_core::annotations::{
    self, Annotations, ClipAnnotation, FrameAnnotation, ObjectAnnotation,
};

/// Sample rate of the written audio (the model's).
pub const SAMPLE_RATE: u32 = cavsync_core::preprocess::audio::SAMPLE_RATE;
/// Clip length in seconds.
pub const DURATION_S: f32 = 10.0;
/// Frames per clip.
pub const FRAMES: usize = 16;
/// Frame side in pixels (frames are square, the model's input size).
pub const FRAME_SIZE: u32 = cavsync_core::preprocess::image::IMAGE_SIZE;
/// JPEG quality of the written frames.
const JPEG_QUALITY: u8 = 90;
/// Samples per frame slot: the official loader centres frame k's audio segment on fbank row
/// round(k * 1024 / 16) = 64 k, i.e. at 0.64 k s, so slot k is the 0.64 s around that time.
pub const SLOT_SAMPLES: usize = cavsync_core::preprocess::segment::CLIP_FRAMES
    * cavsync_core::preprocess::fbank::FRAME_SHIFT
    / FRAMES;
/// Fade at slot boundaries, in samples (10 ms).
const FADE: usize = 160;

/// Errors raised while generating a data set.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file could not be read or written.
    #[error("{path}: cannot {action}: {message}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What failed.
        message: String,
    },
    /// The backgrounds folder holds no readable image.
    #[error("{0}: no .jpg/.jpeg/.png background images found")]
    NoBackgrounds(PathBuf),
}

fn io_err(path: &Path, action: &'static str, e: impl ToString) -> SynthError {
    SynthError::Io {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
    }
}

/// Surface pattern of a class.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    Rings,
    HorizontalStripes,
    VerticalStripes,
    Checker,
    Dots,
    Diagonal,
    Grid,
    Triangles,
}

/// Sound of a class.
#[derive(Debug, Clone, Copy)]
enum Voice {
    /// Struck inharmonic partials decaying at `decay` per second, `rate` strikes per second.
    Bell { f0: f32, rate: f32, decay: f32 },
    /// Noise bursts (low-passed with coefficient `bright`) with a thump at `f0`.
    Drum { f0: f32, rate: f32, bright: f32 },
    /// Sine with vibrato at `vibrato` Hz.
    Flute { f0: f32, vibrato: f32 },
    /// Sawtooth buzz plus rumble, amplitude-modulated at `am` Hz.
    Engine { f0: f32, am: f32 },
    /// Rising chirps.
    Bird { f0: f32, rate: f32 },
    /// Gated square wave.
    Buzzer { f0: f32, rate: f32 },
}

/// One object class: name, colour, pattern, sound.
#[derive(Debug, Clone, Copy)]
struct Class {
    name: &'static str,
    color: [u8; 3],
    pattern: Pattern,
    voice: Voice,
}

/// Every class; the legacy world uses the first [`LEGACY_CLASSES`].
const CLASSES: [Class; 12] = [
    Class {
        name: "bell",
        color: [235, 200, 40],
        pattern: Pattern::Rings,
        voice: Voice::Bell {
            f0: 660.0,
            rate: 4.0,
            decay: 9.0,
        },
    },
    Class {
        name: "drum",
        color: [210, 45, 40],
        pattern: Pattern::HorizontalStripes,
        voice: Voice::Drum {
            f0: 80.0,
            rate: 3.0,
            bright: 0.12,
        },
    },
    Class {
        name: "flute",
        color: [40, 90, 220],
        pattern: Pattern::VerticalStripes,
        voice: Voice::Flute {
            f0: 520.0,
            vibrato: 5.0,
        },
    },
    Class {
        name: "engine",
        color: [150, 150, 160],
        pattern: Pattern::Checker,
        voice: Voice::Engine { f0: 90.0, am: 12.0 },
    },
    Class {
        name: "bird",
        color: [40, 190, 70],
        pattern: Pattern::Dots,
        voice: Voice::Bird {
            f0: 2000.0,
            rate: 6.0,
        },
    },
    Class {
        name: "buzzer",
        color: [200, 50, 200],
        pattern: Pattern::Diagonal,
        voice: Voice::Buzzer {
            f0: 330.0,
            rate: 8.0,
        },
    },
    Class {
        name: "gong",
        color: [245, 130, 30],
        pattern: Pattern::Grid,
        voice: Voice::Bell {
            f0: 150.0,
            rate: 0.8,
            decay: 1.5,
        },
    },
    Class {
        name: "snare",
        color: [40, 200, 210],
        pattern: Pattern::Triangles,
        voice: Voice::Drum {
            f0: 220.0,
            rate: 7.0,
            bright: 0.7,
        },
    },
    Class {
        name: "whistle",
        color: [250, 150, 190],
        pattern: Pattern::HorizontalStripes,
        voice: Voice::Flute {
            f0: 1500.0,
            vibrato: 11.0,
        },
    },
    Class {
        name: "motor",
        color: [110, 60, 30],
        pattern: Pattern::Dots,
        voice: Voice::Engine { f0: 38.0, am: 2.5 },
    },
    Class {
        name: "cricket",
        color: [170, 230, 40],
        pattern: Pattern::Rings,
        voice: Voice::Bird {
            f0: 4200.0,
            rate: 15.0,
        },
    },
    Class {
        name: "alarm",
        color: [120, 40, 180],
        pattern: Pattern::Checker,
        voice: Voice::Buzzer {
            f0: 950.0,
            rate: 2.0,
        },
    },
];

/// Classes of the legacy world (its scenes draw from the first six).
const LEGACY_CLASSES: usize = 6;

/// Names of the classes, in class-id order.
pub fn class_names() -> Vec<String> {
    CLASSES.iter().map(|c| c.name.to_string()).collect()
}

/// Which synthetic world to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum World {
    /// Small objects anywhere, animated decoys and off-screen sound: localization needs the audio.
    #[default]
    Hard,
    /// The first world: large sources near the centre, dimmed silent objects.
    Legacy,
}

impl std::str::FromStr for World {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hard" => Ok(Self::Hard),
            "legacy" => Ok(Self::Legacy),
            other => Err(format!(
                "`{other}` is not a world (expected hard or legacy)"
            )),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Which world.
    pub world: World,
    /// Number of clips.
    pub clips: usize,
    /// Seed; clip i depends only on (seed, i).
    pub seed: u64,
    /// Photographs to use as backgrounds (empty: procedural textures only).
    pub backgrounds: Vec<RgbImage>,
    /// Share of clips, in [0, 1], that get a photograph when `backgrounds` is not empty.
    pub photo_share: f32,
}

/// Loads every .jpg/.jpeg/.png in `dir` (sorted by name) as a background.
pub fn load_backgrounds(dir: &Path) -> Result<Vec<RgbImage>, SynthError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, "list the backgrounds folder", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    paths.sort();
    let images = paths
        .iter()
        .map(|p| {
            image::open(p)
                .map(|i| i.to_rgb8())
                .map_err(|e| io_err(p, "decode the background image", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if images.is_empty() {
        return Err(SynthError::NoBackgrounds(dir.to_path_buf()));
    }
    Ok(images)
}

/// One object of a scene.
#[derive(Debug, Clone)]
struct Object {
    class: usize,
    /// Centre at frame 0, pixels.
    x: f32,
    y: f32,
    /// Drift over the clip, pixels.
    dx: f32,
    dy: f32,
    /// Box size at rest, pixels.
    w: f32,
    h: f32,
    /// Loudness per slot (0 = silent).
    loudness: [f32; FRAMES],
    /// How strongly the object glows, grows and bobs per slot: its loudness, or a decoy envelope.
    animation: [f32; FRAMES],
    /// Bobbing phase.
    phase: f32,
    /// Pitch factor of its sound: bigger objects sound lower.
    pitch: f32,
    /// Whether it is drawn (an off-screen source is heard only).
    visible: bool,
}

impl Object {
    /// The drawn box (x0, y0, x1, y1) in frame `k`, clipped to the frame.
    fn rect(&self, k: usize) -> [f32; 4] {
        let t = k as f32 / (FRAMES - 1) as f32;
        let a = self.animation[k];
        let scale = 1.0 + 0.12 * a;
        let bob = if a > 0.0 {
            5.0 * (self.phase + k as f32 * 1.7).sin() * a
        } else {
            0.0
        };
        let (cx, cy) = (self.x + self.dx * t, self.y + self.dy * t + bob);
        let (hw, hh) = (self.w * scale / 2.0, self.h * scale / 2.0);
        let s = FRAME_SIZE as f32;
        [
            (cx - hw).clamp(0.0, s),
            (cy - hh).clamp(0.0, s),
            (cx + hw).clamp(0.0, s),
            (cy + hh).clamp(0.0, s),
        ]
    }
}

/// A generated clip: audio, frames and ground truth.
pub struct SynthClip {
    /// Clip name.
    pub id: String,
    /// 16 kHz mono samples in [-1, 1].
    pub audio: Vec<f32>,
    /// The frames.
    pub frames: Vec<RgbImage>,
    /// Ground truth.
    pub annotation: ClipAnnotation,
}

/// Generates clip `index` of the data set `config` describes.
pub fn generate_clip(config: &SynthConfig, index: usize) -> SynthClip {
    let mut rng = StdRng::seed_from_u64(
        config
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(index as u64),
    );
    let id = format!("s{}_{index:05}", config.seed);
    let objects = match config.world {
        World::Legacy => make_objects(&mut rng),
        World::Hard => hard_objects(&mut rng),
    };
    let use_photo = !config.backgrounds.is_empty() && rng.random::<f32>() < config.photo_share;
    let background = if use_photo {
        let photo = &config.backgrounds[rng.random_range(0..config.backgrounds.len())];
        photo_background(photo, &mut rng)
    } else {
        texture_background(&mut rng)
    };
    let frames = (0..FRAMES)
        .map(|k| render_frame(&background, &objects, k))
        .collect();
    let audio = render_audio(&objects, &mut rng);
    let s = FRAME_SIZE as f32;
    let frames_gt = (0..FRAMES)
        .map(|k| {
            let (mut sounding, mut silent, mut offscreen) = (Vec::new(), Vec::new(), Vec::new());
            for o in &objects {
                if !o.visible {
                    if o.loudness[k] > 0.0 {
                        offscreen.push(CLASSES[o.class].name.to_string());
                    }
                    continue;
                }
                let r = o.rect(k);
                let ann = ObjectAnnotation {
                    class: CLASSES[o.class].name.to_string(),
                    bbox: [r[0] / s, r[1] / s, r[2] / s, r[3] / s],
                };
                if o.loudness[k] > 0.0 {
                    sounding.push(ann);
                } else {
                    silent.push(ann);
                }
            }
            FrameAnnotation {
                frame: k,
                sounding,
                silent,
                offscreen,
            }
        })
        .collect();
    SynthClip {
        annotation: ClipAnnotation {
            video_id: id.clone(),
            width: FRAME_SIZE,
            height: FRAME_SIZE,
            frames: frames_gt,
        },
        id,
        audio,
        frames,
    }
}

/// 1-2 sources (objects that sound at some time) and 0-1 silent distractor, of distinct classes.
fn make_objects(rng: &mut StdRng) -> Vec<Object> {
    let sources = if rng.random::<f32>() < 0.6 { 1 } else { 2 };
    let distractors = usize::from(rng.random::<f32>() < 0.5);
    let mut classes: Vec<usize> = (0..LEGACY_CLASSES).collect();
    for i in 0..classes.len() {
        let j = rng.random_range(i..classes.len());
        classes.swap(i, j);
    }
    let s = FRAME_SIZE as f32;
    let mut objects: Vec<Object> = Vec::new();
    // Two sources sit on opposite sides along a random axis so that both stay visible.
    let horizontal = rng.random::<bool>();
    for (n, &class) in classes.iter().take(sources + distractors).enumerate() {
        let is_source = n < sources;
        let side = match (is_source, sources) {
            (true, 1) => rng.random_range(140.0..190.0),
            (true, _) => rng.random_range(120.0..150.0),
            (false, _) => rng.random_range(60.0..100.0),
        };
        let aspect: f32 = rng.random_range(0.8..1.25);
        let (w, h) = (side * aspect.sqrt(), side / aspect.sqrt());
        let free = |extent: f32| {
            let m = (extent * 0.45).min(s / 2.0);
            (m, (s - m).max(m + 1.0))
        };
        let (lo_x, hi_x) = free(w);
        let (lo_y, hi_y) = free(h);
        let (mut x, mut y) = (rng.random_range(lo_x..hi_x), rng.random_range(lo_y..hi_y));
        if is_source && sources == 2 {
            let along = if n == 0 {
                rng.random_range(0.25..0.35)
            } else {
                rng.random_range(0.65..0.75)
            } * s;
            if horizontal {
                x = along;
            } else {
                y = along;
            }
        }
        objects.push(Object {
            class,
            x,
            y,
            dx: rng.random_range(-15.0..15.0),
            dy: rng.random_range(-10.0..10.0),
            w,
            h,
            loudness: [0.0; FRAMES],
            animation: [0.0; FRAMES],
            phase: rng.random_range(0.0..2.0 * PI),
            pitch: 140.0 / (w * h).sqrt(),
            visible: true,
        });
    }
    let loudness = schedule(rng, sources);
    for (o, l) in objects.iter_mut().zip(loudness) {
        o.loudness = l;
        o.animation = l;
    }
    // Draw order: bigger first, so smaller objects stay visible.
    objects.sort_by(|a, b| (b.w * b.h).total_cmp(&(a.w * a.h)));
    objects
}

/// Loudness per slot of `sources` (1 or 2) sources: a persistent random walk over the sounding sets {none, A, B, A+B}.
fn schedule(rng: &mut StdRng, sources: usize) -> Vec<[f32; FRAMES]> {
    let mut loudness = vec![[0.0; FRAMES]; sources];
    let mut state: u8 = rng.random_range(1..4);
    for k in 0..FRAMES {
        if k > 0 && rng.random::<f32>() > 0.7 {
            state = if rng.random::<f32>() < 0.18 {
                0
            } else {
                rng.random_range(1..4)
            };
        }
        let on = |i: usize| match (sources, state) {
            (_, 0) => false,
            (1, _) => i == 0,
            (_, 1) => i == 0,
            (_, 2) => i == 1,
            _ => true,
        };
        for (i, l) in loudness.iter_mut().enumerate() {
            if on(i) {
                l[k] = rng.random_range(0.5..1.0);
            }
        }
    }
    loudness
}

/// Share of hard-world clips with a source out of view.
const OFFSCREEN_SHARE: f32 = 0.3;
/// Chance that an off-screen source sounds in a slot where no visible one does.
const OFFSCREEN_ON: f32 = 0.7;

/// A hard-world scene: 2-4 visible objects of distinct classes (1-2 sources, the rest decoys animated like sources), maybe an off-screen source.
fn hard_objects(rng: &mut StdRng) -> Vec<Object> {
    let count = rng.random_range(2..=4usize);
    let sources = if count > 2 && rng.random::<f32>() < 0.4 {
        2
    } else {
        1
    };
    let mut classes: Vec<usize> = (0..CLASSES.len()).collect();
    for i in 0..classes.len() {
        let j = rng.random_range(i..classes.len());
        classes.swap(i, j);
    }
    let mut objects: Vec<Object> = Vec::with_capacity(count + 1);
    for &class in classes.iter().take(count) {
        let o = place(rng, class, &objects);
        objects.push(o);
    }
    for (o, l) in objects.iter_mut().zip(schedule(rng, sources)) {
        o.loudness = l;
        o.animation = l;
    }
    for o in objects.iter_mut().skip(sources) {
        // A decoy: the envelope of a source of a scene like this one, not heard.
        let envelopes = schedule(rng, sources);
        o.animation = envelopes[rng.random_range(0..sources)];
    }
    if rng.random::<f32>() < OFFSCREEN_SHARE {
        let mut hidden = place(rng, classes[count], &[]);
        hidden.visible = false;
        for k in 0..FRAMES {
            let quiet = objects.iter().all(|o| o.loudness[k] == 0.0);
            if quiet && rng.random::<f32>() < OFFSCREEN_ON {
                hidden.loudness[k] = rng.random_range(0.5..1.0);
            }
        }
        objects.push(hidden);
    }
    objects.sort_by(|a, b| (b.w * b.h).total_cmp(&(a.w * a.h)));
    objects
}

/// A hard-world object of `class`: 3% to 25% of the frame (log-uniform), anywhere with at least 70% of each side inside it, overlapping earlier objects little.
fn place(rng: &mut StdRng, class: usize, others: &[Object]) -> Object {
    let s = FRAME_SIZE as f32;
    let area = (0.03f32.ln() + rng.random::<f32>() * (0.25f32 / 0.03).ln()).exp();
    let aspect: f32 = rng.random_range(0.75..1.33);
    let (w, h) = (s * (area * aspect).sqrt(), s * (area / aspect).sqrt());
    // Centres anywhere the box keeps at least 70% of each side in the frame.
    let (mx, my) = (0.2 * w, 0.2 * h);
    let mut at = (s / 2.0, s / 2.0);
    for _ in 0..30 {
        at = (rng.random_range(mx..s - mx), rng.random_range(my..s - my));
        let overlap = |o: &Object| {
            let ix = (w + o.w) / 2.0 - (at.0 - o.x).abs();
            let iy = (h + o.h) / 2.0 - (at.1 - o.y).abs();
            ix.max(0.0) * iy.max(0.0) / (w * h).min(o.w * o.h)
        };
        if others.iter().all(|o| overlap(o) < 0.2) {
            break;
        }
    }
    // Drift of up to 20 px that keeps the centre in that range.
    let mut drift = |c: f32, m: f32| rng.random_range((m - c).max(-20.0)..=(s - m - c).min(20.0));
    let dx = drift(at.0, mx);
    let dy = drift(at.1, my);
    Object {
        class,
        x: at.0,
        y: at.1,
        dx,
        dy,
        w,
        h,
        loudness: [0.0; FRAMES],
        animation: [0.0; FRAMES],
        phase: rng.random_range(0.0..2.0 * PI),
        pitch: 75.0 / (w * h).sqrt(),
        visible: true,
    }
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Smooth value noise in muted colours, with faint stripes.
fn texture_background(rng: &mut StdRng) -> RgbImage {
    const GRID: usize = 5;
    let base: [f32; 3] = [
        rng.random_range(60.0..190.0),
        rng.random_range(60.0..190.0),
        rng.random_range(60.0..190.0),
    ];
    let grid: Vec<[f32; 3]> = (0..(GRID + 1) * (GRID + 1))
        .map(|_| {
            let v: f32 = rng.random_range(-45.0..45.0);
            [
                base[0] + v + rng.random_range(-15.0..15.0),
                base[1] + v + rng.random_range(-15.0..15.0),
                base[2] + v + rng.random_range(-15.0..15.0),
            ]
        })
        .collect();
    let angle: f32 = rng.random_range(0.0..PI);
    let freq: f32 = rng.random_range(0.03..0.12);
    let stripe_amp: f32 = rng.random_range(0.0..18.0);
    let s = FRAME_SIZE as f32;
    let mut img = RgbImage::new(FRAME_SIZE, FRAME_SIZE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let gx = x as f32 / s * GRID as f32;
        let gy = y as f32 / s * GRID as f32;
        let (ix, iy) = (gx as usize, gy as usize);
        let (fx, fy) = (gx - ix as f32, gy - iy as f32);
        let at = |i: usize, j: usize| grid[j * (GRID + 1) + i];
        let stripe = stripe_amp * ((x as f32 * angle.cos() + y as f32 * angle.sin()) * freq).sin();
        let noise: f32 = rng.random_range(-6.0..6.0);
        for c in 0..3 {
            let top = lerp(at(ix, iy)[c], at(ix + 1, iy)[c], fx);
            let bottom = lerp(at(ix, iy + 1)[c], at(ix + 1, iy + 1)[c], fx);
            px[c] = (lerp(top, bottom, fy) + stripe + noise).clamp(0.0, 255.0) as u8;
        }
    }
    img
}

/// A random square crop (at least 60% of the shorter side) of a photograph, maybe mirrored, at frame size.
fn photo_background(photo: &RgbImage, rng: &mut StdRng) -> RgbImage {
    let short = photo.width().min(photo.height());
    let side = ((short as f32) * rng.random_range(0.6..1.0)) as u32;
    let side = side.max(1);
    let x = rng.random_range(0..=photo.width() - side);
    let y = rng.random_range(0..=photo.height() - side);
    let crop = imageops::crop_imm(photo, x, y, side, side).to_image();
    let mut img = imageops::resize(
        &crop,
        FRAME_SIZE,
        FRAME_SIZE,
        imageops::FilterType::Triangle,
    );
    if rng.random::<bool>() {
        imageops::flip_horizontal_in_place(&mut img);
    }
    img
}

/// Whether pattern `p` shows its dark colour at object coordinates (u, v) in [0, 1].
fn pattern_dark(p: Pattern, u: f32, v: f32) -> bool {
    let band = |x: f32| (x.floor() as i64).rem_euclid(2) == 1;
    match p {
        Pattern::Rings => band(((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt() * 9.0),
        Pattern::HorizontalStripes => band(v * 7.0),
        Pattern::VerticalStripes => band(u * 7.0),
        Pattern::Checker => band(u * 4.0) != band(v * 4.0),
        Pattern::Dots => {
            let (fu, fv) = ((u * 4.0).fract() - 0.5, (v * 4.0).fract() - 0.5);
            fu * fu + fv * fv < 0.09
        }
        Pattern::Diagonal => band((u + v) * 5.0),
        Pattern::Grid => (u * 5.0).fract() < 0.3 || (v * 5.0).fract() < 0.3,
        Pattern::Triangles => (u * 3.0).fract() > (v * 3.0).fract(),
    }
}

/// An object's colour at loudness `loud`: a silent object is dimmed and half desaturated, a sounding one glows brighter with its loudness.
fn lit(color: [u8; 3], loud: f32) -> [u8; 3] {
    let c = color.map(f32::from);
    if loud > 0.0 {
        c.map(|v| (v + (255.0 - v) * 0.25 * loud).clamp(0.0, 255.0) as u8)
    } else {
        let grey = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        c.map(|v| ((0.5 * v + 0.5 * grey) * 0.6).clamp(0.0, 255.0) as u8)
    }
}

/// The background with every object drawn in frame `k`.
fn render_frame(background: &RgbImage, objects: &[Object], k: usize) -> RgbImage {
    let mut img = background.clone();
    for o in objects.iter().filter(|o| o.visible) {
        let class = &CLASSES[o.class];
        let [x0, y0, x1, y1] = o.rect(k);
        let (w, h) = (x1 - x0, y1 - y0);
        if w < 1.0 || h < 1.0 {
            continue;
        }
        let radius = 0.15 * w.min(h);
        let loud = o.animation[k];
        let rim = if loud > 0.0 { 3.0 + 6.0 * loud } else { 0.0 };
        let light = lit(class.color, loud);
        let dark = lit(class.color.map(|c| (f32::from(c) * 0.45) as u8), loud);
        for py in y0.floor() as u32..(y1.ceil() as u32).min(FRAME_SIZE) {
            for px in x0.floor() as u32..(x1.ceil() as u32).min(FRAME_SIZE) {
                let (fx, fy) = (px as f32 + 0.5, py as f32 + 0.5);
                // Signed distance to the rounded rectangle's edge (negative inside).
                let qx = (fx - (x0 + x1) / 2.0).abs() - (w / 2.0 - radius);
                let qy = (fy - (y0 + y1) / 2.0).abs() - (h / 2.0 - radius);
                let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
                let dist = outside + qx.max(qy).min(0.0) - radius;
                if dist > 0.0 {
                    continue;
                }
                let color = if -dist < rim {
                    [255, 255, 235]
                } else if pattern_dark(class.pattern, (fx - x0) / w, (fy - y0) / h) {
                    dark
                } else {
                    light
                };
                img.put_pixel(px, py, image::Rgb(color));
            }
        }
    }
    img
}

/// One source's signal over the whole clip (before gating), at unit level.
fn voice_signal(voice: Voice, pitch: f32, n: usize, rng: &mut StdRng) -> Vec<f32> {
    let sr = SAMPLE_RATE as f32;
    let mut out = vec![0.0f32; n];
    let mut lp = 0.0f32;
    let mut phase = 0.0f32;
    for (i, y) in out.iter_mut().enumerate() {
        let t = i as f32 / sr;
        let white: f32 = rng.random_range(-1.0..1.0);
        *y = match voice {
            Voice::Bell { f0, rate, decay } => {
                let tau = (t * rate).fract() / rate;
                let f = f0 * pitch;
                let env = (-tau * decay).exp();
                env * ((2.0 * PI * f * t).sin()
                    + 0.6 * (2.0 * PI * 2.76 * f * t).sin()
                    + 0.35 * (2.0 * PI * 5.4 * f * t).sin())
                    / 1.95
            }
            Voice::Drum { f0, rate, bright } => {
                let tau = (t * rate).fract() / rate;
                lp += bright * (white - lp);
                let env = (-tau * 18.0).exp();
                env * (1.6 * lp + 0.7 * (2.0 * PI * f0 * pitch * tau).sin())
            }
            Voice::Flute { f0, vibrato } => {
                phase +=
                    2.0 * PI * f0 * pitch * (1.0 + 0.012 * (2.0 * PI * vibrato * t).sin()) / sr;
                0.9 * phase.sin() + 0.15 * (2.0 * phase).sin() + 0.03 * white
            }
            Voice::Engine { f0, am } => {
                lp += 0.05 * (white - lp);
                let saw = 2.0 * (t * f0 * pitch).fract() - 1.0;
                (0.45 * saw + 2.0 * lp) * (0.7 + 0.3 * (2.0 * PI * am * t).sin())
            }
            Voice::Bird { f0, rate } => {
                let tau = (t * rate).fract() / rate;
                if tau < 0.08 {
                    let f = f0 * pitch * (1.0 + 12.5 * tau);
                    phase += 2.0 * PI * f / sr;
                    (PI * tau / 0.08).sin() * phase.sin()
                } else {
                    0.0
                }
            }
            Voice::Buzzer { f0, rate } => {
                let gate = if (t * rate).fract() < 0.5 { 1.0 } else { 0.0 };
                let sq = if (t * f0 * pitch).fract() < 0.5 {
                    0.5
                } else {
                    -0.5
                };
                gate * sq
            }
        };
    }
    out
}

/// Per-sample gain of a source: its slot loudness with short fades at slot changes.
fn gate(loudness: &[f32; FRAMES], n: usize) -> Vec<f32> {
    let target: Vec<f32> = (0..n)
        .map(|i| {
            // Slot of frame k covers the half-slot either side of k * SLOT_SAMPLES.
            let k = ((i as f32 / SLOT_SAMPLES as f32) + 0.5).floor() as usize;
            loudness[k.min(FRAMES - 1)]
        })
        .collect();
    // Linear ramps over FADE samples wherever the target changes.
    let mut out = target.clone();
    for i in 1..n {
        if target[i] != target[i - 1] {
            let (from, to) = (target[i - 1], target[i]);
            let start = i.saturating_sub(FADE / 2);
            for (j, v) in out
                .iter_mut()
                .enumerate()
                .take((i + FADE / 2).min(n))
                .skip(start)
            {
                let t = (j - start) as f32 / FADE as f32;
                *v = lerp(from, to, t);
            }
        }
    }
    out
}

/// The clip's audio: gated sources plus background noise at a random SNR, peak-limited to 0.9.
fn render_audio(objects: &[Object], rng: &mut StdRng) -> Vec<f32> {
    let n = (DURATION_S * SAMPLE_RATE as f32) as usize;
    let mut mix = vec![0.0f32; n];
    for o in objects {
        if o.loudness.iter().all(|&a| a == 0.0) {
            continue;
        }
        let signal = voice_signal(CLASSES[o.class].voice, o.pitch, n, rng);
        let level = 0.3;
        for ((m, s), g) in mix.iter_mut().zip(&signal).zip(gate(&o.loudness, n)) {
            *m += level * s * g;
        }
    }
    let active: Vec<f32> = mix.iter().copied().filter(|v| v.abs() > 1e-6).collect();
    let signal_power = if active.is_empty() {
        0.01
    } else {
        active.iter().map(|v| v * v).sum::<f32>() / active.len() as f32
    };
    let snr_db: f32 = rng.random_range(10.0..30.0);
    let noise_rms = (signal_power / 10f32.powf(snr_db / 10.0)).sqrt();
    let mut lp = 0.0f32;
    let noise: Vec<f32> = (0..n)
        .map(|_| {
            let white: f32 = rng.random_range(-1.0..1.0);
            lp += 0.1 * (white - lp);
            // Pinkish: mostly low-passed, some white.
            2.4 * lp + 0.2 * white
        })
        .collect();
    let raw_rms = (noise.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
    let gain = noise_rms / raw_rms.max(1e-12);
    for (m, v) in mix.iter_mut().zip(&noise) {
        *m += gain * v;
    }
    let peak = mix.iter().fold(0.0f32, |p, v| p.max(v.abs()));
    if peak > 0.9 {
        let g = 0.9 / peak;
        mix.iter_mut().for_each(|v| *v *= g);
    }
    mix
}

/// Writes `clip` under `out`: `audio/ID.wav` (16-bit) and `frames/frame_{k}/ID.jpg`.
fn write_clip(clip: &SynthClip, out: &Path) -> Result<(), SynthError> {
    let wav = out.join("audio").join(format!("{}.wav", clip.id));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut bytes = std::io::Cursor::new(Vec::with_capacity(clip.audio.len() * 2 + 44));
    {
        let mut writer = hound::WavWriter::new(&mut bytes, spec)
            .map_err(|e| io_err(&wav, "encode the audio", e))?;
        for &s in &clip.audio {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            writer
                .write_sample(v)
                .map_err(|e| io_err(&wav, "encode the audio", e))?;
        }
        writer
            .finalize()
            .map_err(|e| io_err(&wav, "encode the audio", e))?;
    }
    cavsync_core::atomic::write_atomic(&wav, |w| w.write_all(bytes.get_ref()))
        .map_err(|e| io_err(&wav, "write the audio", e))?;
    for (k, frame) in clip.frames.iter().enumerate() {
        let path = out
            .join("frames")
            .join(format!("frame_{k}"))
            .join(format!("{}.jpg", clip.id));
        cavsync_core::atomic::write_atomic(&path, |w| {
            image::codecs::jpeg::JpegEncoder::new_with_quality(w, JPEG_QUALITY)
                .encode_image(frame)
                .map_err(std::io::Error::other)
        })
        .map_err(|e| io_err(&path, "write the frame", e))?;
    }
    Ok(())
}

/// Generates the data set into `out`: clips, `datafile.json` (paths as `out/...`) and `annotations.json`; `progress` is called after each clip.
pub fn write_dataset(
    config: &SynthConfig,
    out: &Path,
    mut progress: impl FnMut(usize),
) -> Result<Annotations, SynthError> {
    for sub in ["audio", "frames"] {
        std::fs::create_dir_all(out.join(sub))
            .map_err(|e| io_err(&out.join(sub), "create the folder", e))?;
    }
    for k in 0..FRAMES {
        let dir = out.join("frames").join(format!("frame_{k}"));
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, "create the folder", e))?;
    }
    let mut entries = Vec::with_capacity(config.clips);
    let mut clips = Vec::with_capacity(config.clips);
    for i in 0..config.clips {
        let clip = generate_clip(config, i);
        write_clip(&clip, out)?;
        let labels: Vec<String> = clip
            .annotation
            .frames
            .iter()
            .flat_map(|f| f.sounding.iter().map(|o| o.class.clone()))
            .fold(Vec::new(), |mut acc, c| {
                if !acc.contains(&c) {
                    acc.push(c);
                }
                acc
            });
        entries.push(serde_json::json!({
            "video_id": clip.id,
            "wav": out.join("audio").join(format!("{}.wav", clip.id)),
            "video_path": out.join("frames"),
            "labels": labels.join(","),
        }));
        clips.push(clip.annotation);
        progress(i + 1);
    }
    let annotations = Annotations {
        format: annotations::FORMAT.to_string(),
        classes: class_names(),
        clips,
    };
    let datafile = out.join("datafile.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({ "data": entries }))
        .map_err(|e| io_err(&datafile, "serialise the datafile", e))?;
    cavsync_core::atomic::write_atomic(&datafile, |w| w.write_all(text.as_bytes()))
        .map_err(|e| io_err(&datafile, "write the datafile", e))?;
    let ann_path = out.join("annotations.json");
    let text = serde_json::to_string(&annotations)
        .map_err(|e| io_err(&ann_path, "serialise the annotations", e))?;
    cavsync_core::atomic::write_atomic(&ann_path, |w| w.write_all(text.as_bytes()))
        .map_err(|e| io_err(&ann_path, "write the annotations", e))?;
    Ok(annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> SynthConfig {
        SynthConfig {
            world: World::Legacy,
            clips: 4,
            seed,
            backgrounds: Vec::new(),
            photo_share: 0.0,
        }
    }

    #[test]
    fn clips_are_deterministic_per_seed() {
        let a = generate_clip(&config(7), 2);
        let b = generate_clip(&config(7), 2);
        let c = generate_clip(&config(8), 2);
        assert_eq!(a.audio, b.audio);
        assert_eq!(a.frames, b.frames);
        assert_eq!(a.annotation, b.annotation);
        assert_ne!(a.audio, c.audio);
    }

    #[test]
    fn ground_truth_matches_the_world() {
        for i in 0..12 {
            let clip = generate_clip(&config(1), i);
            assert_eq!(clip.audio.len(), 160_000);
            assert!(clip.audio.iter().all(|v| v.abs() <= 0.9 + 1e-6));
            for f in &clip.annotation.frames {
                assert!(f.sounding.len() <= 2);
                assert!((1..=3).contains(&(f.sounding.len() + f.silent.len())));
                for o in &f.sounding {
                    // Sources are large: the field's metric needs boxes over a quarter of the frame.
                    let [x1, y1, x2, y2] = o.bbox;
                    assert!((x2 - x1) * (y2 - y1) > 0.2, "{:?}", o.bbox);
                }
            }
        }
    }

    #[test]
    fn a_sounding_object_pulses_and_its_slot_is_louder() {
        let clip = (0..20)
            .map(|i| generate_clip(&config(3), i))
            .find(|c| {
                c.annotation.frames.iter().any(|f| f.sounding.is_empty())
                    && c.annotation.frames.iter().any(|f| !f.sounding.is_empty())
            })
            .expect("some clip has silent and sounding frames");
        let slot = SLOT_SAMPLES;
        let rms = |k: usize| {
            let c = k * slot;
            let lo = c.saturating_sub(slot / 2) + FADE;
            let hi = (c + slot / 2).min(160_000) - FADE;
            let s = &clip.audio[lo..hi];
            (s.iter().map(|v| v * v).sum::<f32>() / s.len() as f32).sqrt()
        };
        let frames = &clip.annotation.frames;
        let silent = frames.iter().position(|f| f.sounding.is_empty()).unwrap();
        let loud = frames.iter().position(|f| !f.sounding.is_empty()).unwrap();
        assert!(
            rms(loud) > 1.5 * rms(silent),
            "{} vs {}",
            rms(loud),
            rms(silent)
        );
    }

    fn hard(seed: u64) -> SynthConfig {
        SynthConfig {
            world: World::Hard,
            ..config(seed)
        }
    }

    #[test]
    fn hard_world_scenes_are_small_anywhere_and_mixed() {
        let (mut sounding_frames, mut centre_hits, mut offscreen) = (0, 0, 0);
        let prior = cavsync_core::metrics::centre_prior(224, 224);
        for i in 0..200 {
            let clip = generate_clip(&hard(11), i);
            assert_eq!(clip.audio.len(), 160_000);
            for f in &clip.annotation.frames {
                let visible = f.sounding.len() + f.silent.len();
                assert!((2..=4).contains(&visible), "{visible} objects");
                let mut classes: Vec<&str> = f
                    .sounding
                    .iter()
                    .chain(&f.silent)
                    .map(|o| o.class.as_str())
                    .collect();
                classes.sort_unstable();
                classes.dedup();
                assert_eq!(classes.len(), visible, "classes are distinct");
                for o in f.sounding.iter().chain(&f.silent) {
                    let [x1, y1, x2, y2] = o.bbox;
                    let area = (x2 - x1) * (y2 - y1);
                    assert!((0.01..0.32).contains(&area), "area {area}");
                }
                if !f.sounding.is_empty() {
                    let boxes: Vec<[f32; 4]> = f.sounding.iter().map(|o| o.bbox).collect();
                    let mask = cavsync_core::metrics::gt_map(&boxes, 224, 224);
                    let hit = cavsync_core::metrics::pointing_hit(&prior, &mask, 224, 224);
                    sounding_frames += 1;
                    centre_hits += usize::from(hit.unwrap());
                }
                for class in &f.offscreen {
                    assert!(f.sounding.is_empty());
                    assert!(!classes.contains(&class.as_str()), "{class} is in view");
                    offscreen += 1;
                }
            }
        }
        // The centre is not favoured: a centred prior points at a sounding object in few frames.
        let share = centre_hits as f64 / sounding_frames as f64;
        assert!(
            share < 0.35,
            "centre prior hits {share:.3} of sounding frames"
        );
        assert!(offscreen > 20, "{offscreen} off-screen frames");
    }

    #[test]
    fn hard_world_decoys_animate_like_sources() {
        let (mut source_on, mut sources, mut decoy_on, mut decoys) = (0, 0, 0, 0);
        for i in 0..200 {
            let mut rng = StdRng::seed_from_u64(i);
            for o in hard_objects(&mut rng).iter().filter(|o| o.visible) {
                let on = o.animation.iter().filter(|&&a| a > 0.0).count();
                if o.loudness.iter().any(|&l| l > 0.0) {
                    assert_eq!(o.animation, o.loudness, "a source shows its own loudness");
                    (source_on, sources) = (source_on + on, sources + FRAMES);
                } else {
                    (decoy_on, decoys) = (decoy_on + on, decoys + FRAMES);
                }
            }
        }
        let (s, d) = (
            source_on as f64 / sources as f64,
            decoy_on as f64 / decoys as f64,
        );
        assert!(
            (s - d).abs() < 0.1,
            "sources animated {s:.2}, decoys {d:.2}"
        );
    }
}
