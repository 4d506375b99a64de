//! Tracking sound sources across frames: the active peaks of successive frames become tracks with stable ids.
//!
//! Each frame gives observations (a peak's position, the box around it, its strength, and
//! whether the frame was judged active). They are matched to existing tracks greedily by
//! distance within a gate, then by the overlap of their boxes beyond it (a peak that jumps
//! within its object's region), and a track born on an older one is folded into it; a matched track moves toward its observation (exponential
//! smoothing of position and box) and its activity moves toward the observation's evidence: how
//! close its peak is to the map's maximum (1 for the strongest peak, 0 at `min_peak`), scaled
//! down by `inactive_evidence` when the frame was judged inactive; an unmatched one keeps its place while its activity decays twice as fast. So a track
//! follows where the map points whatever the activity head says, and its `activity` says how
//! sure the runtime is that it sounds (as ODAS's tracked sources do). Birth and death have
//! hysteresis: a new track is reported only after `confirm` observations in a row, and a
//! confirmed track survives `hold` frames without one, so a source that blinks for a frame
//! keeps its id and a one-frame flicker elsewhere never gets one. Everything lives in
//! fixed-capacity storage: updating allocates nothing.

use heapless::Vec as FixedVec;

use crate::localize::{FrameLocalization, FrameSize};

/// Most tracks alive at once (tentative ones included).
pub const MAX_TRACKS: usize = 16;
/// Most observations taken from one frame.
pub const MAX_OBSERVATIONS: usize = 8;

/// Why a tracker configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tracker field `{field}` = {value}: expected {expected}")]
pub struct TrackerConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Its value.
    pub value: f32,
    /// What was expected.
    pub expected: &'static str,
}

/// Tracker settings; missing fields take their defaults when deserialised.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Largest distance, in normalised image units, between a track and the observation it takes (default 0.2).
    pub gate: f32,
    /// Weight of a new observation in the smoothed position and box, in (0, 1] (default 0.5).
    pub smoothing: f32,
    /// Weight of each frame in the smoothed activity, in (0, 1] (default 0.3).
    pub activity_smoothing: f32,
    /// Observations in a row before a track is reported (default 3).
    pub confirm: u32,
    /// Frames a reported track survives without an observation (default 15).
    pub hold: u32,
    /// Smallest normalised peak value that counts as an observation, in [0, 1] (default 0.75).
    pub min_peak: f32,
    /// Smallest distance, in normalised image units, between two observations of one frame: a weaker peak closer than this to a stronger one is taken as the same source and ignored (default 0.2).
    pub min_separation: f32,
    /// Weight, in [0, 1], of a peak on a frame judged inactive: its track keeps a small activity, above tracks the map no longer points at (default 0.1).
    pub inactive_evidence: f32,
    /// Smallest overlap (intersection over union, in (0, 1]) of a track's box and an observation's box that lets the track take an observation beyond `gate`: a peak that jumps within one object's region stays that object's track (default 0.3).
    pub iou_gate: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            gate: 0.2,
            smoothing: 0.5,
            activity_smoothing: 0.3,
            confirm: 3,
            hold: 15,
            min_peak: 0.75,
            min_separation: 0.2,
            inactive_evidence: 0.1,
            iou_gate: 0.3,
        }
    }
}

impl TrackerConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), TrackerConfigError> {
        let unit = |field, value: f32, open_low: bool| {
            let ok = if open_low {
                value > 0.0 && value <= 1.0
            } else {
                (0.0..=1.0).contains(&value)
            };
            if ok {
                Ok(())
            } else {
                Err(TrackerConfigError {
                    field,
                    value,
                    expected: if open_low {
                        "a fraction in (0, 1]"
                    } else {
                        "a fraction in [0, 1]"
                    },
                })
            }
        };
        if !(self.gate > 0.0 && self.gate.is_finite()) {
            return Err(TrackerConfigError {
                field: "gate",
                value: self.gate,
                expected: "a finite distance > 0",
            });
        }
        if !(self.min_separation >= 0.0 && self.min_separation.is_finite()) {
            return Err(TrackerConfigError {
                field: "min_separation",
                value: self.min_separation,
                expected: "a finite distance >= 0",
            });
        }
        unit("smoothing", self.smoothing, true)?;
        unit("activity_smoothing", self.activity_smoothing, true)?;
        unit("min_peak", self.min_peak, false)?;
        unit("inactive_evidence", self.inactive_evidence, false)?;
        unit("iou_gate", self.iou_gate, true)?;
        if self.confirm == 0 {
            return Err(TrackerConfigError {
                field: "confirm",
                value: 0.0,
                expected: "at least 1 observation",
            });
        }
        Ok(())
    }
}

/// One frame's evidence of a source, in normalised image coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Horizontal position in [0, 1].
    pub x: f32,
    /// Vertical position in [0, 1].
    pub y: f32,
    /// Box around it: x0, y0, x1, y1 in [0, 1].
    pub bbox: [f32; 4],
    /// Normalised heatmap value at the peak.
    pub strength: f32,
    /// Whether its frame was judged active (a visible source sounding).
    pub active: bool,
}

/// A tracked source.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Track {
    /// Stable id, never reused.
    pub id: u64,
    /// Smoothed horizontal position in [0, 1].
    pub x: f32,
    /// Smoothed vertical position in [0, 1].
    pub y: f32,
    /// Smoothed box: x0, y0, x1, y1 in [0, 1].
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Smoothed activity in [0, 1]: how consistently it was observed lately.
    pub activity: f32,
    /// Observations in a row (0 when missed this frame).
    #[serde(skip)]
    pub streak: u32,
    /// Frames since its last observation.
    #[serde(skip)]
    pub missed: u32,
    /// Whether it has been confirmed (reported).
    #[serde(skip)]
    pub confirmed: bool,
}

/// Frame-to-frame association of observations into tracks; allocation-free.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: FixedVec<Track, MAX_TRACKS>,
    pairs: FixedVec<(f32, u8, u8), { MAX_TRACKS * MAX_OBSERVATIONS }>,
    next_id: u64,
}

impl Tracker {
    /// A tracker with `config` after checking its ranges.
    pub fn new(config: TrackerConfig) -> Result<Self, TrackerConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            tracks: FixedVec::new(),
            pairs: FixedVec::new(),
            next_id: 1,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Advances one frame with its localization (on a frame of `size`) and returns the tracks.
    ///
    /// Each peak at or above `min_peak`, at least `min_separation` from every stronger one and
    /// outside their boxes (one region of the map is one source), is an observation, with the box that holds it (or a point box) and the frame's activity.
    pub fn update_frame(&mut self, loc: &FrameLocalization, size: FrameSize) -> &[Track] {
        let mut observations: FixedVec<Observation, MAX_OBSERVATIONS> = FixedVec::new();
        let (w, h) = (size.width.max(1) as f32, size.height.max(1) as f32);
        for peak in loc.peaks.iter().filter(|p| p.value >= self.config.min_peak) {
            let bbox = loc
                .boxes
                .iter()
                .find(|b| peak.x >= b.x0 && peak.x < b.x1 && peak.y >= b.y0 && peak.y < b.y1)
                .map_or([peak.x, peak.y, peak.x, peak.y], |b| {
                    [b.x0, b.y0, b.x1, b.y1]
                });
            let (x, y) = (peak.x / w, peak.y / h);
            if observations
                .iter()
                .any(|o| self.same_source((o.x, o.y), &o.bbox, (x, y)))
            {
                continue;
            }
            let observation = Observation {
                x,
                y,
                bbox: [bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h],
                strength: peak.value,
                active: loc.active,
            };
            if observations.push(observation).is_err() {
                break;
            }
        }
        self.update(&observations)
    }

    /// Advances one frame with `observations` (the first [`MAX_OBSERVATIONS`] are used); returns the tracks.
    pub fn update(&mut self, observations: &[Observation]) -> &[Track] {
        let observations = &observations[..observations.len().min(MAX_OBSERVATIONS)];
        self.pairs.clear();
        let gate = self.config.gate;
        for (t, track) in self.tracks.iter().enumerate() {
            for (o, obs) in observations.iter().enumerate() {
                let d = (track.x - obs.x).hypot(track.y - obs.y);
                // Beyond the gate, overlapping boxes still pair (after every pair within it).
                let cost = if d <= gate {
                    Some(d)
                } else {
                    let overlap = iou(&track.bbox, &obs.bbox);
                    (overlap >= self.config.iou_gate).then_some(gate + 1.0 - overlap)
                };
                if let Some(cost) = cost {
                    // Capacity is MAX_TRACKS * MAX_OBSERVATIONS: every pair fits.
                    let _ = self.pairs.push((cost, t as u8, o as u8));
                }
            }
        }
        self.pairs
            .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let mut track_taken = [false; MAX_TRACKS];
        let mut obs_taken = [false; MAX_OBSERVATIONS];
        let (k, ka) = (self.config.smoothing, self.config.activity_smoothing);
        for &(_, t, o) in &self.pairs {
            let (t, o) = (usize::from(t), usize::from(o));
            if track_taken[t] || obs_taken[o] {
                continue;
            }
            track_taken[t] = true;
            obs_taken[o] = true;
            let obs = &observations[o];
            let target = self.evidence(obs);
            let track = &mut self.tracks[t];
            track.x += k * (obs.x - track.x);
            track.y += k * (obs.y - track.y);
            for (b, &ob) in track.bbox.iter_mut().zip(&obs.bbox) {
                *b += k * (ob - *b);
            }
            track.activity += ka * (target - track.activity);
            track.streak += 1;
            track.missed = 0;
            if track.streak >= self.config.confirm {
                track.confirmed = true;
            }
        }
        for (track, taken) in self.tracks.iter_mut().zip(track_taken) {
            if !taken {
                track.streak = 0;
                track.missed += 1;
                // Unseen decays faster than seen-but-inactive: the map no longer points there.
                track.activity *= (1.0 - ka) * (1.0 - ka);
            }
        }
        self.merge_duplicates();
        let hold = self.config.hold;
        self.tracks.retain(|t| {
            if t.confirmed {
                t.missed <= hold
            } else {
                t.missed == 0
            }
        });
        for (obs, taken) in observations.iter().zip(obs_taken) {
            if taken {
                continue;
            }
            let track = Track {
                id: self.next_id,
                x: obs.x,
                y: obs.y,
                bbox: obs.bbox,
                activity: ka * self.evidence(obs),
                streak: 1,
                missed: 0,
                confirmed: self.config.confirm <= 1,
            };
            if self.tracks.push(track).is_ok() {
                self.next_id += 1;
            }
        }
        self.tracks()
    }

    /// Whether a point at `other` belongs to the source at `at` with box `bbox`: closer than
    /// `min_separation`, or inside the box (one region of the map is one source).
    fn same_source(&self, at: (f32, f32), bbox: &[f32; 4], other: (f32, f32)) -> bool {
        let (x, y) = other;
        (at.0 - x).hypot(at.1 - y) < self.config.min_separation
            || (x >= bbox[0] && x < bbox[2] && y >= bbox[1] && y < bbox[3])
    }

    /// Folds each younger track that sits on an older one (within `min_separation` of it, or
    /// inside its box) into the older: one source, one id. The older takes the younger's place
    /// when only the younger was seen this frame.
    fn merge_duplicates(&mut self) {
        let mut gone = [false; MAX_TRACKS];
        let n = self.tracks.len();
        for young in 1..n {
            let older = (0..young).find(|&old| {
                let (a, b) = (&self.tracks[old], &self.tracks[young]);
                !gone[old] && self.same_source((a.x, a.y), &a.bbox, (b.x, b.y))
            });
            let Some(old) = older else {
                continue;
            };
            gone[young] = true;
            let y = self.tracks[young];
            let o = &mut self.tracks[old];
            if o.missed > 0 && y.missed == 0 {
                (o.x, o.y, o.bbox) = (y.x, y.y, y.bbox);
            }
            o.activity = o.activity.max(y.activity);
            o.missed = o.missed.min(y.missed);
            o.streak = o.streak.max(y.streak);
            o.confirmed |= y.confirmed;
        }
        let mut index = 0;
        self.tracks.retain(|_| {
            index += 1;
            !gone[index - 1]
        });
    }

    /// How much one observation says its source sounds, in [0, 1]: its peak's standing between `min_peak` (0) and the map's maximum (1), times `inactive_evidence` on an inactive frame.
    fn evidence(&self, obs: &Observation) -> f32 {
        let floor = self.config.min_peak;
        let standing = if floor >= 1.0 {
            1.0
        } else {
            ((obs.strength - floor) / (1.0 - floor)).clamp(0.0, 1.0)
        };
        if obs.active {
            standing
        } else {
            standing * self.config.inactive_evidence
        }
    }

    /// Every live track, tentative ones included; report those with `confirmed`.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// The id the next new track will get (ids start at 1).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The confirmed tracks.
    pub fn confirmed(&self) -> impl Iterator<Item = &Track> {
        self.tracks.iter().filter(|t| t.confirmed)
    }
}

/// Intersection over union of two boxes `[x0, y0, x1, y1]` (0 when either has no area).
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(x: f32, y: f32) -> Observation {
        Observation {
            x,
            y,
            bbox: [x - 0.05, y - 0.05, x + 0.05, y + 0.05],
            strength: 1.0,
            active: true,
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(TrackerConfig::default()).unwrap()
    }

    fn confirmed_ids(t: &Tracker) -> Vec<u64> {
        t.confirmed().map(|t| t.id).collect()
    }

    #[test]
    fn a_source_is_reported_after_confirm_frames_and_keeps_its_id_while_moving() {
        let mut t = tracker();
        t.update(&[obs(0.2, 0.2)]);
        t.update(&[obs(0.22, 0.2)]);
        assert!(confirmed_ids(&t).is_empty());
        t.update(&[obs(0.24, 0.21)]);
        assert_eq!(confirmed_ids(&t), vec![1]);
        for i in 0..30 {
            t.update(&[obs(0.24 + 0.01 * i as f32, 0.21)]);
        }
        assert_eq!(confirmed_ids(&t), vec![1]);
        let track = t.confirmed().next().unwrap();
        assert!((track.x - 0.53).abs() < 0.02, "x {}", track.x);
        assert!(track.activity > 0.95);
    }

    #[test]
    fn a_blink_keeps_the_id_and_a_flicker_gets_none() {
        let mut t = tracker();
        for _ in 0..5 {
            t.update(&[obs(0.5, 0.5)]);
        }
        for _ in 0..3 {
            t.update(&[]);
        }
        let faded = t.confirmed().next().unwrap().activity;
        assert!(faded < 0.5, "activity decays while unobserved: {faded}");
        t.update(&[obs(0.51, 0.5), obs(0.9, 0.1)]);
        t.update(&[obs(0.5, 0.5)]);
        assert_eq!(confirmed_ids(&t), vec![1]);
        assert_eq!(t.tracks().len(), 1, "the one-frame flicker is gone");
    }

    #[test]
    fn a_track_dies_after_hold_frames_and_ids_are_not_reused() {
        let mut t = tracker();
        for _ in 0..3 {
            t.update(&[obs(0.3, 0.3)]);
        }
        for _ in 0..=15 {
            assert_eq!(confirmed_ids(&t), vec![1]);
            t.update(&[]);
        }
        assert!(t.tracks().is_empty());
        for _ in 0..3 {
            t.update(&[obs(0.3, 0.3)]);
        }
        assert_eq!(confirmed_ids(&t), vec![2]);
    }

    fn boxed(x: f32, y: f32, bbox: [f32; 4]) -> Observation {
        Observation { bbox, ..obs(x, y) }
    }

    #[test]
    fn a_peak_that_jumps_within_its_region_keeps_the_id() {
        let mut t = tracker();
        for _ in 0..4 {
            t.update(&[boxed(0.35, 0.35, [0.3, 0.3, 0.8, 0.8])]);
        }
        // 0.52 away (beyond the 0.2 gate) and outside the track's box, but in a region that
        // overlaps it (IoU 0.67): the same track.
        for _ in 0..4 {
            t.update(&[boxed(0.85, 0.5, [0.4, 0.3, 0.9, 0.8])]);
        }
        assert_eq!(confirmed_ids(&t), vec![1]);
        assert_eq!(t.tracks().len(), 1);
        assert!(t.tracks()[0].x > 0.8, "x {}", t.tracks()[0].x);
        // A region that barely overlaps (IoU 0.05) is another source.
        let mut t = tracker();
        for _ in 0..4 {
            t.update(&[boxed(0.35, 0.35, [0.3, 0.3, 0.5, 0.5])]);
        }
        for _ in 0..4 {
            t.update(&[boxed(0.75, 0.75, [0.45, 0.45, 0.9, 0.9])]);
        }
        assert_eq!(confirmed_ids(&t), vec![1, 2]);
    }

    #[test]
    fn a_track_born_inside_an_older_ones_region_is_folded_into_it() {
        let mut t = tracker();
        for _ in 0..4 {
            t.update(&[boxed(0.4, 0.4, [0.2, 0.2, 0.8, 0.8])]);
        }
        t.update(&[]);
        t.update(&[]);
        // Back as a small peak far from the track (0.42) inside its region: the old id moves there.
        for _ in 0..4 {
            t.update(&[obs(0.7, 0.7)]);
        }
        assert_eq!(confirmed_ids(&t), vec![1]);
        assert_eq!(t.tracks().len(), 1);
        assert!(
            (t.tracks()[0].x - 0.7).abs() < 0.01,
            "x {}",
            t.tracks()[0].x
        );
        assert_eq!(t.tracks()[0].missed, 0);
    }

    #[test]
    fn two_sources_are_matched_by_distance() {
        let mut t = tracker();
        for i in 0..10 {
            let d = 0.01 * i as f32;
            t.update(&[obs(0.2 + d, 0.5), obs(0.8 - d, 0.5)]);
        }
        let tracks: Vec<(u64, f32)> = t.confirmed().map(|t| (t.id, t.x)).collect();
        assert_eq!(tracks.len(), 2);
        assert!(tracks[0].1 < 0.35 && tracks[1].1 > 0.65, "{tracks:?}");
        assert_eq!((tracks[0].0, tracks[1].0), (1, 2));
    }

    #[test]
    fn inactive_frames_keep_the_track_and_lower_its_activity() {
        let mut t = tracker();
        for _ in 0..6 {
            t.update(&[obs(0.4, 0.4)]);
        }
        let quiet = Observation {
            active: false,
            ..obs(0.4, 0.4)
        };
        for _ in 0..6 {
            t.update(&[quiet]);
        }
        let track = t.confirmed().next().unwrap();
        assert_eq!(track.id, 1);
        assert!(track.activity <= 0.2, "{}", track.activity);
    }

    #[test]
    fn close_weaker_peaks_of_one_frame_are_one_source() {
        use crate::localize::{BoundingBox, FrameLocalization, Peak};
        let peak = |x: f32, value: f32| Peak { x, y: 50.0, value };
        let loc = FrameLocalization {
            active: true,
            peaks: vec![peak(40.0, 1.0), peak(55.0, 0.9), peak(90.0, 0.8)],
            boxes: vec![BoundingBox {
                x0: 30.0,
                y0: 40.0,
                x1: 60.0,
                y1: 60.0,
                score: 0.9,
            }],
            ..FrameLocalization::default()
        };
        let size = FrameSize {
            width: 100,
            height: 100,
        };
        let mut t = tracker();
        for _ in 0..3 {
            t.update_frame(&loc, size);
        }
        let tracks: Vec<(f32, [f32; 4])> = t.confirmed().map(|t| (t.x, t.bbox)).collect();
        assert_eq!(tracks.len(), 2, "{tracks:?}");
        assert!((tracks[0].0 - 0.4).abs() < 1e-6);
        assert_eq!(tracks[0].1, [0.3, 0.4, 0.6, 0.6]);
        assert!((tracks[1].0 - 0.9).abs() < 1e-6);
    }

    #[test]
    fn capacity_is_bounded() {
        let mut t = tracker();
        let many: Vec<Observation> = (0..MAX_OBSERVATIONS + 4)
            .map(|i| obs(i as f32 / 20.0, 0.5))
            .collect();
        for _ in 0..(MAX_TRACKS + 4) {
            t.update(&many);
        }
        assert!(t.tracks().len() <= MAX_TRACKS);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let err = Tracker::new(TrackerConfig {
            iou_gate: 0.0,
            ..TrackerConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "iou_gate");
        let err = Tracker::new(TrackerConfig {
            smoothing: 0.0,
            ..TrackerConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "smoothing");
        let err = Tracker::new(TrackerConfig {
            gate: f32::NAN,
            ..TrackerConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "gate");
    }
}
