//! Ground truth of sounding objects per frame (a VGG-SS-like JSON): which objects sound in each frame, their class and box.
//!
//! Boxes are `[x1, y1, x2, y2]` normalised to the frame, as in VGG-SS; the evaluation turns
//! them into pixels exactly as the field's code does (see [`crate::metrics`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Value of [`Annotations::format`] this version reads and writes.
pub const FORMAT: &str = "cavsync-annotations-1";

/// Errors raised while reading an annotations file.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationsError {
    /// The file could not be read.
    #[error("{path}: cannot read annotations: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not an annotations JSON of this format.
    #[error("{path}: malformed annotations: {detail}")]
    Malformed {
        /// The file.
        path: String,
        /// Which field is wrong and what was expected.
        detail: String,
    },
}

/// All annotated clips of a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    /// Always [`FORMAT`].
    pub format: String,
    /// Class names, in class-id order.
    pub classes: Vec<String>,
    /// One entry per clip.
    pub clips: Vec<ClipAnnotation>,
}

/// Ground truth of one clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipAnnotation {
    /// Clip name (the datafile's `video_id`).
    pub video_id: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// One entry per frame index, in order.
    pub frames: Vec<FrameAnnotation>,
}

/// Ground truth of one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameAnnotation {
    /// Frame index k.
    pub frame: usize,
    /// Objects audible in this frame's audio segment and visible in the frame.
    pub sounding: Vec<ObjectAnnotation>,
    /// Visible objects that are silent in this frame.
    pub silent: Vec<ObjectAnnotation>,
    /// Classes audible in this frame's audio segment with no object in view (off-screen sound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offscreen: Vec<String>,
}

impl FrameAnnotation {
    /// Whether two or more classes are visible and exactly one of them sounds: the frames where only the sound can tell which object to point at.
    pub fn is_multi_class(&self) -> bool {
        let Some(first) = self.sounding.first() else {
            return false;
        };
        let one_sounding_class = self.sounding.iter().all(|o| o.class == first.class);
        one_sounding_class && self.silent.iter().any(|o| o.class != first.class)
    }

    /// Whether the only sound of the frame comes from outside the picture.
    pub fn is_offscreen_only(&self) -> bool {
        self.sounding.is_empty() && !self.offscreen.is_empty()
    }
}

/// One object in one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectAnnotation {
    /// Class name (one of [`Annotations::classes`]).
    pub class: String,
    /// `[x1, y1, x2, y2]` normalised to the frame, x2/y2 exclusive.
    pub bbox: [f32; 4],
}

impl Annotations {
    /// Reads and checks an annotations file: format, known classes, frames in order, boxes inside [0, 1] with x1 <= x2, y1 <= y2.
    pub fn read(path: &Path) -> Result<Self, AnnotationsError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AnnotationsError::Io {
            path: name.clone(),
            source,
        })?;
        let malformed = |detail: String| AnnotationsError::Malformed {
            path: name.clone(),
            detail,
        };
        let annotations: Self =
            serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        annotations.validate().map_err(malformed)?;
        Ok(annotations)
    }

    /// The clip named `video_id`, if annotated.
    pub fn clip(&self, video_id: &str) -> Option<&ClipAnnotation> {
        self.clips.iter().find(|c| c.video_id == video_id)
    }

    /// Checks the invariants [`Annotations::read`] promises; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is {:?}; expected {FORMAT:?}", self.format));
        }
        for (ci, clip) in self.clips.iter().enumerate() {
            if clip.width == 0 || clip.height == 0 {
                return Err(format!("clips[{ci}] ({}): zero frame size", clip.video_id));
            }
            for (fi, frame) in clip.frames.iter().enumerate() {
                if frame.frame != fi {
                    return Err(format!(
                        "clips[{ci}] ({}).frames[{fi}].frame is {}; expected {fi}",
                        clip.video_id, frame.frame
                    ));
                }
                if let Some(class) = frame.offscreen.iter().find(|c| !self.classes.contains(c)) {
                    return Err(format!(
                        "clips[{ci}] ({}).frames[{fi}].offscreen: unknown class {class:?}",
                        clip.video_id
                    ));
                }
                for (oi, object) in frame.sounding.iter().chain(&frame.silent).enumerate() {
                    let at = format!("clips[{ci}] ({}).frames[{fi}] object {oi}", clip.video_id);
                    if !self.classes.contains(&object.class) {
                        return Err(format!("{at}: unknown class {:?}", object.class));
                    }
                    let [x1, y1, x2, y2] = object.bbox;
                    let inside = |v: f32| (0.0..=1.0).contains(&v);
                    if !(inside(x1)
                        && inside(y1)
                        && inside(x2)
                        && inside(y2)
                        && x1 <= x2
                        && y1 <= y2)
                    {
                        return Err(format!(
                            "{at}: bbox {:?} is not [x1, y1, x2, y2] within [0, 1] with x1 <= x2, y1 <= y2",
                            object.bbox
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
