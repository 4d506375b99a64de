//! Audio-visual retrieval evaluation, as the official CAV-MAE Sync `src/retrieval.py` computes it.
//!
//! Each clip is a sequence of per-frame global tokens. Every frame vector is L2-normalised (the
//! official code normalises with `torch.nn.functional.normalize` and then divides by the norms
//! again in `get_similarity`, so its similarity is the plain cosine), the frame-to-frame cosines
//! of two clips are aggregated into one score (`get_agg_sim_mat`), and the square score matrix,
//! true pairs on the diagonal, is ranked by `compute_metrics`.
//!
//! Ties follow `compute_metrics` exactly. The official code sorts each row of `-x`, subtracts the
//! row's diagonal value and keeps every position where the difference is zero
//! (`ind = np.where(ind == 0)`, column indices). A row whose true-pair score equals `e` scores of
//! the row (itself included) with `g` scores strictly above them contributes the `e` positions
//! `g, g + 1, ..., g + e - 1`, not one. R@K is the share of all contributed positions below K,
//! and the median rank is the median of all contributed positions plus one, so a tied row weighs
//! more than an untied one and the denominator can exceed the number of queries.

use std::fmt;

use ndarray::{Array2, ArrayView3, Axis};

use crate::annotations::ClipAnnotation;

/// Query clips scored together per pass over the candidates, to keep their frames in cache.
const QUERY_BLOCK: usize = 8;

/// How per-frame similarities are aggregated into one clip-to-clip score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Maximum cosine over all frame pairs.
    Max,
    /// Mean cosine over all frame pairs.
    Mean,
    /// Mean cosine over aligned frames (frame k against frame k).
    DiagonalMean,
    /// Maximum cosine over aligned frames (frame k against frame k).
    DiagonalMax,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Self; 4] = [Self::Max, Self::Mean, Self::DiagonalMean, Self::DiagonalMax];

    /// The strategy's name as the official code and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Max => "max",
            Strategy::Mean => "mean",
            Strategy::DiagonalMean => "diagonal_mean",
            Strategy::DiagonalMax => "diagonal_max",
        }
    }
}

crate::model::named!(
    Strategy,
    "retrieval strategy",
    "max, mean, diagonal_mean, diagonal_max"
);

/// Errors raised by retrieval evaluation.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// The embedding buffer does not hold clips x frames x dim values.
    #[error(
        "embedding data holds {found} values, expected {expected} ({clips} clips x {frames} frames x {dim} dims)"
    )]
    DataLength {
        /// clips x frames x dim.
        expected: usize,
        /// Length of the buffer given.
        found: usize,
        /// Clips requested.
        clips: usize,
        /// Frames per clip requested.
        frames: usize,
        /// Dimensions per frame requested.
        dim: usize,
    },
    /// A dimension of the embedding shape is zero, or their product overflows.
    #[error(
        "invalid embedding shape {clips} clips x {frames} frames x {dim} dims: expected every dimension >= 1 and a product that fits in memory"
    )]
    InvalidShape {
        /// Clips requested.
        clips: usize,
        /// Frames per clip requested.
        frames: usize,
        /// Dimensions per frame requested.
        dim: usize,
    },
    /// An embedding value is NaN or infinite.
    #[error("embedding value {index} of frame {frame} of clip {clip} is not finite: {value}")]
    NonFiniteEmbedding {
        /// Clip index.
        clip: usize,
        /// Frame index within the clip.
        frame: usize,
        /// Index within the frame vector.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A frame vector is all zeros, so its cosine similarity is undefined.
    #[error("frame {frame} of clip {clip} has zero norm: its cosine similarity is undefined")]
    ZeroNorm {
        /// Clip index.
        clip: usize,
        /// Frame index within the clip.
        frame: usize,
    },
    /// Two embedding sets, or an embedding set and a matrix, disagree on a dimension.
    #[error("{what} mismatch: expected {expected}, found {found}")]
    ShapeMismatch {
        /// Which dimension disagrees.
        what: &'static str,
        /// The size required.
        expected: usize,
        /// The size given.
        found: usize,
    },
    /// A visual frame was never added to [`PatchScores`].
    #[error("frame {frame} of visual clip {clip} was never scored")]
    MissingFrame {
        /// Clip index.
        clip: usize,
        /// Frame index within the clip.
        frame: usize,
    },
    /// The similarity matrix is not square or is empty.
    #[error("similarity matrix must be square and non-empty, found {rows} x {cols}")]
    NotSquare {
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// A similarity matrix entry is NaN or infinite.
    #[error("similarity matrix entry ({row}, {col}) is not finite: {value}")]
    NonFiniteSimilarity {
        /// Row (query) index.
        row: usize,
        /// Column (candidate) index.
        col: usize,
        /// The offending value.
        value: f32,
    },
}

/// Clip embeddings: clips x frames x dims, each frame vector stored L2-normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipEmbeddings {
    unit: Vec<f32>,
    clips: usize,
    frames: usize,
    dim: usize,
}

impl ClipEmbeddings {
    /// Validate row-major clips x frames x dim embeddings (not yet normalised) and normalise each frame.
    pub fn new(
        data: Vec<f32>,
        clips: usize,
        frames: usize,
        dim: usize,
    ) -> Result<Self, RetrievalError> {
        let invalid = RetrievalError::InvalidShape { clips, frames, dim };
        if clips == 0 || frames == 0 || dim == 0 {
            return Err(invalid);
        }
        let expected = clips
            .checked_mul(frames)
            .and_then(|n| n.checked_mul(dim))
            .ok_or(invalid)?;
        if data.len() != expected {
            return Err(RetrievalError::DataLength {
                expected,
                found: data.len(),
                clips,
                frames,
                dim,
            });
        }
        let mut unit = data;
        for (row, vector) in unit.chunks_exact_mut(dim).enumerate() {
            normalize(vector, row / frames, row % frames, 0)?;
        }
        Ok(Self {
            unit,
            clips,
            frames,
            dim,
        })
    }

    /// Validate and normalise a (clips, frames, dim) array of embeddings.
    pub fn from_array(array: ArrayView3<'_, f32>) -> Result<Self, RetrievalError> {
        let (clips, frames, dim) = array.dim();
        Self::new(array.iter().copied().collect(), clips, frames, dim)
    }

    /// Number of clips.
    pub fn clips(&self) -> usize {
        self.clips
    }

    /// Number of frames per clip.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Dimensions per frame vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The normalised frame vectors of one clip, frames x dim row-major.
    fn clip(&self, clip: usize) -> &[f32] {
        let len = self.frames * self.dim;
        &self.unit[clip * len..(clip + 1) * len]
    }

    /// Per clip, the mean of its normalised frame vectors (clips x dim row-major).
    fn frame_means(&self) -> Vec<f64> {
        let mut means = vec![0.0f64; self.clips * self.dim];
        for (clip, mean) in means.chunks_exact_mut(self.dim).enumerate() {
            for frame in self.clip(clip).chunks_exact(self.dim) {
                for (m, &v) in mean.iter_mut().zip(frame) {
                    *m += f64::from(v);
                }
            }
            for m in mean.iter_mut() {
                *m /= self.frames as f64;
            }
        }
        means
    }
}

/// L2-normalises one vector of frame `frame` of clip `clip` in place; `offset` places its values within the frame's in errors.
fn normalize(
    vector: &mut [f32],
    clip: usize,
    frame: usize,
    offset: usize,
) -> Result<(), RetrievalError> {
    if let Some((index, &value)) = vector.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(RetrievalError::NonFiniteEmbedding {
            clip,
            frame,
            index: offset + index,
            value,
        });
    }
    let norm = crate::similarity::norm(vector);
    if norm == 0.0 {
        return Err(RetrievalError::ZeroNorm { clip, frame });
    }
    for v in vector.iter_mut() {
        *v = (f64::from(*v) / norm) as f32;
    }
    Ok(())
}

/// The (queries x candidates) aggregated similarity matrix, rows = queries, exactly as get_agg_sim_mat.
pub fn similarity_matrix(
    queries: &ClipEmbeddings,
    candidates: &ClipEmbeddings,
    strategy: Strategy,
) -> Result<Array2<f32>, RetrievalError> {
    if candidates.frames != queries.frames {
        return Err(RetrievalError::ShapeMismatch {
            what: "frames per clip",
            expected: queries.frames,
            found: candidates.frames,
        });
    }
    if candidates.dim != queries.dim {
        return Err(RetrievalError::ShapeMismatch {
            what: "embedding dimension",
            expected: queries.dim,
            found: candidates.dim,
        });
    }
    let (rows, cols) = (queries.clips, candidates.clips);
    let (frames, dim) = (queries.frames, queries.dim);
    Ok(match strategy {
        // The mean of all frame-pair cosines of unit vectors is the dot product of the clips'
        // mean unit vectors, so this needs one dot per clip pair instead of frames^2.
        Strategy::Mean => {
            let (q, c) = (queries.frame_means(), candidates.frame_means());
            fill_parallel(rows, cols, |i, j| {
                dot_f64(&q[i * dim..(i + 1) * dim], &c[j * dim..(j + 1) * dim]) as f32
            })
        }
        Strategy::Max => fill_parallel(rows, cols, |i, j| {
            let (a, b) = (queries.clip(i), candidates.clip(j));
            a.chunks_exact(dim)
                .flat_map(|x| b.chunks_exact(dim).map(move |y| dot_f32(x, y)))
                .fold(f32::NEG_INFINITY, f32::max)
        }),
        Strategy::DiagonalMean => fill_parallel(rows, cols, |i, j| {
            let (a, b) = (queries.clip(i), candidates.clip(j));
            let sum: f64 = a
                .chunks_exact(dim)
                .zip(b.chunks_exact(dim))
                .map(|(x, y)| f64::from(dot_f32(x, y)))
                .sum();
            (sum / frames as f64) as f32
        }),
        Strategy::DiagonalMax => fill_parallel(rows, cols, |i, j| {
            let (a, b) = (queries.clip(i), candidates.clip(j));
            a.chunks_exact(dim)
                .zip(b.chunks_exact(dim))
                .map(|(x, y)| dot_f32(x, y))
                .fold(f32::NEG_INFINITY, f32::max)
        }),
    })
}

/// Dot product in f32 with eight independent accumulators (a fixed order: equal inputs give equal bits).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((lane, &xv), &yv) in lanes.iter_mut().zip(x).zip(y) {
            *lane += xv * yv;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Dot product in f64.
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The rows x cols matrix of `score(row, col)`, rows split over the available cores.
fn fill_parallel(
    rows: usize,
    cols: usize,
    score: impl Fn(usize, usize) -> f32 + Sync,
) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((rows, cols));
    if rows == 0 || cols == 0 {
        return out;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows.div_ceil(QUERY_BLOCK));
    let rows_per_thread = rows.div_ceil(threads);
    let score = &score;
    std::thread::scope(|scope| {
        for (chunk, mut part) in out
            .axis_chunks_iter_mut(Axis(0), rows_per_thread)
            .enumerate()
        {
            scope.spawn(move || {
                let first_row = chunk * rows_per_thread;
                for (block, mut block_out) in
                    part.axis_chunks_iter_mut(Axis(0), QUERY_BLOCK).enumerate()
                {
                    let block_first = first_row + block * QUERY_BLOCK;
                    for col in 0..cols {
                        for (offset, value) in block_out.column_mut(col).iter_mut().enumerate() {
                            *value = score(block_first + offset, col);
                        }
                    }
                }
            });
        }
    });
    out
}

/// The clip-pair scores of localization: audio clip i against visual clip j is the mean over aligned frames of the best patch cosine (frame k's audio global token against every patch token of frame k's image, the score of [`crate::localize`]'s map).
///
/// A model trained to find the sounding patch (a multiple-instance objective, as the demo
/// model) matches an audio clip to the image that holds its source, not to the image's global
/// token; this scores clip pairs the way such a model was trained. Visual frames are added one
/// at a time as they are encoded (their patch tokens are not kept), against audio embeddings
/// known in full.
#[derive(Debug, Clone)]
pub struct PatchScores {
    audio: ClipEmbeddings,
    sums: Array2<f64>,
    added: Vec<bool>,
    /// The frame being added, normalised (its buffer reused from frame to frame).
    unit: Vec<f32>,
}

impl PatchScores {
    /// Scores against `audio` (clips x frames of global tokens), every score zero until frames are added.
    pub fn new(audio: ClipEmbeddings) -> Self {
        let n = audio.clips;
        let added = vec![false; n * audio.frames];
        Self {
            audio,
            sums: Array2::zeros((n, n)),
            added,
            unit: Vec::new(),
        }
    }

    /// Adds frame `frame` of visual clip `clip`: its patch tokens, patches x dim row-major (not normalised).
    pub fn add_frame(
        &mut self,
        clip: usize,
        frame: usize,
        tokens: &[f32],
    ) -> Result<(), RetrievalError> {
        let (clips, frames, dim) = (self.audio.clips, self.audio.frames, self.audio.dim);
        if clip >= clips {
            return Err(RetrievalError::ShapeMismatch {
                what: "visual clip index (below the audio clips)",
                expected: clips,
                found: clip,
            });
        }
        if frame >= frames {
            return Err(RetrievalError::ShapeMismatch {
                what: "visual frame index (below the frames per clip)",
                expected: frames,
                found: frame,
            });
        }
        if tokens.is_empty() || !tokens.len().is_multiple_of(dim) {
            return Err(RetrievalError::ShapeMismatch {
                what: "patch token values (a positive multiple of the embedding dimension)",
                expected: dim,
                found: tokens.len(),
            });
        }
        self.unit.clear();
        self.unit.extend_from_slice(tokens);
        for (patch, vector) in self.unit.chunks_exact_mut(dim).enumerate() {
            normalize(vector, clip, frame, patch * dim)?;
        }
        for i in 0..clips {
            let a = &self.audio.clip(i)[frame * dim..(frame + 1) * dim];
            let best = self
                .unit
                .chunks_exact(dim)
                .map(|p| dot_f32(a, p))
                .fold(f32::NEG_INFINITY, f32::max);
            self.sums[[i, clip]] += f64::from(best);
        }
        self.added[clip * frames + frame] = true;
        Ok(())
    }

    /// The (audio clips x visual clips) matrix, once every frame of every visual clip was added.
    pub fn matrix(&self) -> Result<Array2<f32>, RetrievalError> {
        if let Some(missing) = self.added.iter().position(|&a| !a) {
            let frames = self.audio.frames;
            return Err(RetrievalError::MissingFrame {
                clip: missing / frames,
                frame: missing % frames,
            });
        }
        let frames = self.audio.frames as f64;
        Ok(self.sums.mapv(|s| (s / frames) as f32))
    }

    /// Retrieval both ways on the finished matrix (visual to audio ranks its transpose).
    pub fn evaluate(&self) -> Result<(RetrievalMetrics, RetrievalMetrics), RetrievalError> {
        let m = self.matrix()?;
        Ok((compute_metrics(&m)?, compute_metrics(&m.t().to_owned())?))
    }
}

/// R@1, R@5, R@10 (fractions) and median rank of one retrieval direction.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RetrievalMetrics {
    /// Share of matches ranked first.
    pub r1: f64,
    /// Share of matches ranked in the top 5.
    pub r5: f64,
    /// Share of matches ranked in the top 10.
    pub r10: f64,
    /// Median 1-based rank of the matches (a half-integer when the median falls between two).
    pub median_rank: f64,
    /// Number of queries (rows of the similarity matrix).
    pub queries: usize,
}

impl fmt::Display for RetrievalMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "R@1 {:.2}%  R@5 {:.2}%  R@10 {:.2}%  median rank {}  ({} queries)",
            100.0 * self.r1,
            100.0 * self.r5,
            100.0 * self.r10,
            self.median_rank,
            self.queries
        )
    }
}

/// The side of a square, non-empty similarity matrix of finite values.
fn check_square(sim: &Array2<f32>) -> Result<usize, RetrievalError> {
    let (rows, cols) = sim.dim();
    if rows != cols || rows == 0 {
        return Err(RetrievalError::NotSquare { rows, cols });
    }
    if let Some(((row, col), &value)) = sim.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(RetrievalError::NonFiniteSimilarity { row, col, value });
    }
    Ok(rows)
}

/// R@1, R@5, R@10 (fractions) and median rank of a square similarity matrix whose diagonal holds the true pairs, exactly as compute_metrics.
pub fn compute_metrics(sim: &Array2<f32>) -> Result<RetrievalMetrics, RetrievalError> {
    let n = check_square(sim)?;
    // opened[p] / closed[p]: rows whose run of tied positions starts / ends (exclusive) at p.
    let mut opened = vec![0usize; n + 1];
    let mut closed = vec![0usize; n + 1];
    let (mut total, mut top1, mut top5, mut top10) = (0usize, 0usize, 0usize, 0usize);
    for (i, row) in sim.rows().into_iter().enumerate() {
        let truth = row[i];
        let above = row.iter().filter(|&&v| v > truth).count();
        let tied = row.iter().filter(|&&v| v == truth).count();
        let end = above + tied;
        opened[above] += 1;
        closed[end] += 1;
        total += tied;
        top1 += usize::from(above == 0);
        top5 += end.min(5).saturating_sub(above);
        top10 += end.min(10).saturating_sub(above);
    }
    let mut counts = Vec::with_capacity(n);
    let mut live = 0usize;
    for p in 0..n {
        live = live + opened[p] - closed[p];
        counts.push(live);
    }
    // The k-th smallest (0-based) of all `total` positions; k < total, so it always exists.
    let nth = |k: usize| -> f64 {
        let position = counts
            .iter()
            .scan(0usize, |seen, &c| {
                *seen += c;
                Some(*seen)
            })
            .position(|seen| seen > k)
            .unwrap_or(n - 1);
        position as f64
    };
    let median = if total % 2 == 1 {
        nth(total / 2)
    } else {
        (nth(total / 2 - 1) + nth(total / 2)) / 2.0
    };
    let share = |hits: usize| hits as f64 / total as f64;
    Ok(RetrievalMetrics {
        r1: share(top1),
        r5: share(top5),
        r10: share(top10),
        median_rank: median + 1.0,
        queries: n,
    })
}

/// R@1, R@5, R@10 (fractions) and median rank when ties are broken at random: each query's chance of a rank within k, averaged; its expected rank, median over queries (for scorers with many ties, such as [`class_oracle`]).
pub fn expected_metrics(sim: &Array2<f32>) -> Result<RetrievalMetrics, RetrievalError> {
    let rows = check_square(sim)?;
    let (mut r1, mut r5, mut r10) = (0.0, 0.0, 0.0);
    let mut ranks = Vec::with_capacity(rows);
    for (i, row) in sim.rows().into_iter().enumerate() {
        let truth = row[i];
        let above = row.iter().filter(|&&v| v > truth).count() as f64;
        let tied = row.iter().filter(|&&v| v == truth).count() as f64;
        let within = |k: f64| (k - above).clamp(0.0, tied) / tied;
        r1 += within(1.0);
        r5 += within(5.0);
        r10 += within(10.0);
        ranks.push(above + (tied + 1.0) / 2.0);
    }
    ranks.sort_by(f64::total_cmp);
    let median = if rows % 2 == 1 {
        ranks[rows / 2]
    } else {
        (ranks[rows / 2 - 1] + ranks[rows / 2]) / 2.0
    };
    let n = rows as f64;
    Ok(RetrievalMetrics {
        r1: r1 / n,
        r5: r5 / n,
        r10: r10 / n,
        median_rank: median,
        queries: rows,
    })
}

/// Scores of an oracle that knows only which classes each frame's audio holds (sounding in view or off-screen) and which classes each frame shows: for audio clip i and visual clip j, the aligned frames whose heard classes are all in view in j (rows audio, columns visual; frames beyond the shorter clip are not scored).
///
/// Retrieval by this matrix is what recognising classes perfectly, and nothing else, gives: a
/// model that ranks better also matches something finer (pitch with size, timing).
pub fn class_oracle(clips: &[&ClipAnnotation]) -> Array2<f32> {
    let heard: Vec<Vec<Vec<&str>>> = clips
        .iter()
        .map(|c| {
            c.frames
                .iter()
                .map(|f| {
                    let mut h: Vec<&str> = f.sounding.iter().map(|o| o.class.as_str()).collect();
                    h.extend(f.offscreen.iter().map(String::as_str));
                    h
                })
                .collect()
        })
        .collect();
    let n = clips.len();
    Array2::from_shape_fn((n, n), |(i, j)| {
        heard[i]
            .iter()
            .zip(&clips[j].frames)
            .filter(|(h, f)| {
                !h.is_empty()
                    && h.iter().all(|class| {
                        f.sounding
                            .iter()
                            .chain(&f.silent)
                            .any(|o| o.class == *class)
                    })
            })
            .count() as f32
    })
}

/// Retrieval metrics of both directions for one aggregation strategy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RetrievalReport {
    /// Audio clips as queries, visual clips as candidates.
    pub audio_to_visual: RetrievalMetrics,
    /// Visual clips as queries, audio clips as candidates.
    pub visual_to_audio: RetrievalMetrics,
    /// The aggregation strategy used.
    pub strategy: Strategy,
}

impl fmt::Display for RetrievalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "strategy {}", self.strategy)?;
        writeln!(f, "audio->visual: {}", self.audio_to_visual)?;
        write!(f, "visual->audio: {}", self.visual_to_audio)
    }
}

/// Evaluate audio->visual and visual->audio retrieval of paired clips (clip i of each set is a pair).
pub fn evaluate(
    audio: &ClipEmbeddings,
    visual: &ClipEmbeddings,
    strategy: Strategy,
) -> Result<RetrievalReport, RetrievalError> {
    if visual.clips != audio.clips {
        return Err(RetrievalError::ShapeMismatch {
            what: "visual clips (one per audio clip)",
            expected: audio.clips,
            found: visual.clips,
        });
    }
    let audio_to_visual = compute_metrics(&similarity_matrix(audio, visual, strategy)?)?;
    let visual_to_audio = compute_metrics(&similarity_matrix(visual, audio, strategy)?)?;
    Ok(RetrievalReport {
        audio_to_visual,
        visual_to_audio,
        strategy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn expected_metrics_break_ties_at_random() {
        // Query 0: its match tied with one other at the top: rank 1 or 2. Query 1: one above, two
        // tied with it (ranks 2 to 4). Query 2: alone at the top.
        let sim = array![
            [5.0, 5.0, 1.0, 0.0],
            [9.0, 3.0, 3.0, 3.0],
            [0.0, 1.0, 7.0, 2.0],
            [4.0, 4.0, 4.0, 4.0]
        ];
        let m = expected_metrics(&sim).unwrap();
        assert!((m.r1 - (0.5 + 0.0 + 1.0 + 0.25) / 4.0).abs() < 1e-12);
        assert!((m.r5 - 1.0).abs() < 1e-12);
        // Expected ranks 1.5, 3, 1, 2.5: median 2.
        assert_eq!(m.median_rank, 2.0);
        // Without ties the two rules agree.
        let plain = array![[3.0, 1.0, 2.0], [0.5, 0.7, 0.9], [0.1, 0.2, 0.3]];
        let (a, b) = (
            expected_metrics(&plain).unwrap(),
            compute_metrics(&plain).unwrap(),
        );
        assert_eq!((a.r1, a.r5, a.median_rank), (b.r1, b.r5, b.median_rank));
        assert!(expected_metrics(&array![[1.0, 2.0]]).is_err());
    }

    #[test]
    fn the_class_oracle_counts_frames_whose_heard_classes_are_in_view() {
        use crate::annotations::{FrameAnnotation, ObjectAnnotation};
        let object = |class: &str| ObjectAnnotation {
            class: class.to_string(),
            bbox: [0.1, 0.1, 0.3, 0.3],
        };
        let frame = |k, sounding: &[&str], silent: &[&str], offscreen: &[&str]| FrameAnnotation {
            frame: k,
            sounding: sounding.iter().map(|c| object(c)).collect(),
            silent: silent.iter().map(|c| object(c)).collect(),
            offscreen: offscreen.iter().map(|c| c.to_string()).collect(),
        };
        let clip = |id: &str, frames| ClipAnnotation {
            video_id: id.to_string(),
            width: 224,
            height: 224,
            frames,
        };
        let a = clip(
            "a",
            vec![
                frame(0, &["bell"], &["drum"], &[]),
                frame(1, &[], &["bell", "drum"], &[]),
                frame(2, &[], &["bell", "drum"], &["gong"]),
            ],
        );
        let b = clip(
            "b",
            vec![
                frame(0, &["drum"], &["gong"], &[]),
                frame(1, &["gong"], &["drum"], &[]),
                frame(2, &["gong"], &[], &["bell"]),
            ],
        );
        let s = class_oracle(&[&a, &b]);
        // a's audio (bell, silence, gong off screen): in a, bell in view at 0, and neither the
        // silent frame nor the off-screen gong scores; in b, gong in view at 2. b's audio (drum,
        // gong, gong with bell off screen): in a, drum at 0; in b, 0 and 1 but not 2 (no bell).
        assert_eq!(s, array![[1.0, 1.0], [1.0, 2.0]]);
    }

    const ALL: [Strategy; 4] = Strategy::ALL;

    fn metrics(r1: f64, r5: f64, r10: f64, median_rank: f64, queries: usize) -> RetrievalMetrics {
        RetrievalMetrics {
            r1,
            r5,
            r10,
            median_rank,
            queries,
        }
    }

    #[test]
    fn hand_made_ranks() {
        // True-pair positions 0, 1 and 2.
        let sim = array![[0.9f32, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]];
        assert_eq!(
            compute_metrics(&sim).unwrap(),
            metrics(1.0 / 3.0, 1.0, 1.0, 2.0, 3)
        );
    }

    #[test]
    fn recall_boundaries_and_half_median() {
        // Row i has its true pair at 0-based position ranks[i]: `ranks[i]` candidates score
        // above it. Values checked against the official compute_metrics.
        let ranks = [0usize, 0, 1, 4, 5, 9, 10, 11, 3, 2, 6, 7];
        let n = ranks.len();
        let mut sim = Array2::from_elem((n, n), 0.1f32);
        for (i, &rank) in ranks.iter().enumerate() {
            sim[[i, i]] = 0.5;
            for j in (0..n).filter(|&j| j != i).take(rank) {
                sim[[i, j]] = 0.9;
            }
        }
        assert_eq!(
            compute_metrics(&sim).unwrap(),
            metrics(2.0 / 12.0, 0.5, 10.0 / 12.0, 5.5, 12)
        );
    }

    #[test]
    fn ties_count_every_tied_position() {
        // Row 0 ties at positions 0 and 1, row 1 is first, row 2 ties at 0, 1 and 2: six
        // positions in all, three of them 0, median (0 + 1) / 2. The official compute_metrics
        // gives R1 0.5 and MR 1.5 on this matrix.
        let sim = array![[0.5f32, 0.5, 0.1], [0.2, 0.4, 0.3], [0.3, 0.3, 0.3]];
        assert_eq!(
            compute_metrics(&sim).unwrap(),
            metrics(0.5, 1.0, 1.0, 1.5, 3)
        );
        // Signed zeros compare equal, as `sx - d == 0` does in numpy.
        let zeros = array![[0.0f32, -0.0], [-0.0, 0.0]];
        assert_eq!(
            compute_metrics(&zeros).unwrap(),
            metrics(0.5, 1.0, 1.0, 1.5, 2)
        );
    }

    /// Clip i, frame k is (k + 1) times the i-th basis vector.
    fn identity(clips: usize, frames: usize, dim: usize) -> ClipEmbeddings {
        let mut data = vec![0.0f32; clips * frames * dim];
        for i in 0..clips {
            for k in 0..frames {
                data[(i * frames + k) * dim + i] = (k + 1) as f32;
            }
        }
        ClipEmbeddings::new(data, clips, frames, dim).unwrap()
    }

    #[test]
    fn identity_embeddings_retrieve_perfectly() {
        let emb = identity(6, 3, 8);
        for strategy in ALL {
            let report = evaluate(&emb, &emb, strategy).unwrap();
            assert_eq!(report.audio_to_visual, metrics(1.0, 1.0, 1.0, 1.0, 6));
            assert_eq!(report.visual_to_audio, metrics(1.0, 1.0, 1.0, 1.0, 6));
            assert_eq!(report.strategy, strategy);
        }
    }

    #[test]
    fn aggregation_by_hand() {
        // a = frames (1, 0), (0, 1); b0 = (1, 0), (1, 0); b1 = (0, 1), (1, 1) / sqrt 2.
        let a = ClipEmbeddings::new(vec![1.0, 0.0, 0.0, 1.0], 1, 2, 2).unwrap();
        let b = ClipEmbeddings::new(vec![1.0, 0.0, 3.0, 0.0, 0.0, 2.0, 5.0, 5.0], 2, 2, 2).unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let expected = [
            (Strategy::Max, [1.0, 1.0]),
            (Strategy::Mean, [0.5, (2.0 * h + 1.0) / 4.0]),
            (Strategy::DiagonalMean, [0.5, h / 2.0]),
            (Strategy::DiagonalMax, [1.0, h]),
        ];
        for (strategy, want) in expected {
            let sim = similarity_matrix(&a, &b, strategy).unwrap();
            assert_eq!(sim.dim(), (1, 2));
            for (got, want) in sim.iter().zip(want) {
                assert!((got - want).abs() < 1e-6, "{strategy}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn similarity_ignores_frame_scale() {
        let data: Vec<f32> = (0..5 * 4 * 7)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let scaled: Vec<f32> = data
            .iter()
            .enumerate()
            .map(|(i, v)| v * [0.25f32, 4.0, 1024.0][(i / 7) % 3])
            .collect();
        let plain = ClipEmbeddings::new(data, 5, 4, 7).unwrap();
        let scaled = ClipEmbeddings::new(scaled, 5, 4, 7).unwrap();
        for strategy in ALL {
            assert_eq!(
                similarity_matrix(&plain, &plain, strategy).unwrap(),
                similarity_matrix(&scaled, &scaled, strategy).unwrap()
            );
        }
    }

    #[test]
    fn rectangular_similarity() {
        let queries = identity(2, 3, 5);
        let candidates = identity(5, 3, 5);
        let sim = similarity_matrix(&queries, &candidates, Strategy::DiagonalMean).unwrap();
        assert_eq!(sim.dim(), (2, 5));
        assert_eq!(sim[[1, 1]], 1.0);
        assert_eq!(sim[[1, 4]], 0.0);
    }

    #[test]
    fn embedding_shape_errors() {
        let err = ClipEmbeddings::new(vec![1.0; 11], 2, 3, 2).unwrap_err();
        assert!(matches!(
            err,
            RetrievalError::DataLength {
                expected: 12,
                found: 11,
                ..
            }
        ));
        assert!(err.to_string().contains("expected 12"), "{err}");
        assert!(matches!(
            ClipEmbeddings::new(vec![], 0, 3, 2),
            Err(RetrievalError::InvalidShape { clips: 0, .. })
        ));
        assert!(matches!(
            ClipEmbeddings::new(vec![1.0], usize::MAX, 2, 2),
            Err(RetrievalError::InvalidShape { .. })
        ));
        let mut data = vec![1.0f32; 12];
        data[7] = f32::NAN;
        assert!(matches!(
            ClipEmbeddings::new(data, 2, 3, 2),
            Err(RetrievalError::NonFiniteEmbedding {
                clip: 1,
                frame: 0,
                index: 1,
                ..
            })
        ));
        let mut data = vec![1.0f32; 12];
        data[10] = 0.0;
        data[11] = 0.0;
        assert!(matches!(
            ClipEmbeddings::new(data, 2, 3, 2),
            Err(RetrievalError::ZeroNorm { clip: 1, frame: 2 })
        ));
    }

    #[test]
    fn mismatched_sets_are_rejected() {
        let base = identity(4, 3, 5);
        let err = similarity_matrix(&base, &identity(4, 2, 5), Strategy::Max).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frames per clip mismatch: expected 3, found 2"
        );
        let err = similarity_matrix(&base, &identity(4, 3, 6), Strategy::Mean).unwrap_err();
        assert_eq!(
            err.to_string(),
            "embedding dimension mismatch: expected 5, found 6"
        );
        let err = evaluate(&base, &identity(3, 3, 5), Strategy::DiagonalMean).unwrap_err();
        assert!(matches!(
            err,
            RetrievalError::ShapeMismatch {
                expected: 4,
                found: 3,
                ..
            }
        ));
    }

    #[test]
    fn bad_similarity_matrices_are_rejected() {
        assert!(matches!(
            compute_metrics(&Array2::zeros((2, 3))),
            Err(RetrievalError::NotSquare { rows: 2, cols: 3 })
        ));
        assert!(matches!(
            compute_metrics(&Array2::zeros((0, 0))),
            Err(RetrievalError::NotSquare { rows: 0, cols: 0 })
        ));
        let sim = array![[0.5f32, f32::NAN], [0.1, 0.2]];
        assert!(matches!(
            compute_metrics(&sim),
            Err(RetrievalError::NonFiniteSimilarity { row: 0, col: 1, .. })
        ));
    }

    #[test]
    fn strategy_names_match_the_official_ones() {
        for strategy in ALL {
            assert_eq!(strategy.as_str().parse::<Strategy>(), Ok(strategy));
            assert_eq!(strategy.to_string(), strategy.as_str());
        }
        assert!("diagonal-mean".parse::<Strategy>().is_err());
    }

    #[test]
    fn patch_scores_take_the_best_patch_of_aligned_frames() {
        // Audio clip 0 points at [1, 0], clip 1 at [0, 1], in both frames.
        let audio =
            ClipEmbeddings::new(vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], 2, 2, 2).unwrap();
        let mut scores = PatchScores::new(audio);
        // Visual clip 0 holds [1, 0] among its patches, clip 1 holds [0, 1] (scaled: cosines).
        let v0 = [1.0, 0.0, 0.0, -1.0];
        let v1 = [0.0, 2.0, -1.0, 0.0];
        for frame in 0..2 {
            scores.add_frame(0, frame, &v0).unwrap();
        }
        let err = scores.matrix().unwrap_err();
        assert_eq!(err.to_string(), "frame 0 of visual clip 1 was never scored");
        scores.add_frame(1, 0, &v1).unwrap();
        // Frame 1 of clip 1 shows clip 0's source only: half the mean for the true pair.
        scores.add_frame(1, 1, &[1.0, 0.0, 0.0, -3.0]).unwrap();
        let m = scores.matrix().unwrap();
        assert_eq!(m, array![[1.0, 0.5], [0.0, 0.5]]);
        let (a2v, v2a) = scores.evaluate().unwrap();
        // Each audio clip ranks its own first; visual 1 ties audio 0 and 1 at 0.5 (both positions count).
        assert_eq!((a2v.r1, a2v.queries), (1.0, 2));
        assert_eq!(v2a.r1, 2.0 / 3.0);
        assert!(matches!(
            scores.add_frame(2, 0, &v0),
            Err(RetrievalError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            scores.add_frame(0, 0, &[1.0, 0.0, 0.0]),
            Err(RetrievalError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            scores.add_frame(0, 0, &[0.0, 0.0]),
            Err(RetrievalError::ZeroNorm { clip: 0, frame: 0 })
        ));
    }
}
