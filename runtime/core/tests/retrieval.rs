//! Retrieval evaluation against the official CAV-MAE Sync `src/retrieval.py`.
//!
//! `scripts/make_retrieval_reference.py` ran the official `get_agg_sim_mat` and
//! `compute_metrics` on the embeddings under `tests/data/retrieval/<case>/`. The similarity
//! matrices must agree to 1e-5 (the official code works in float32, one cosine at a time) and
//! the metrics must be equal, ties included: the `ties` and `small` cases hold duplicated clips,
//! so some rows' true pair ties exactly with other candidates. The smallest gap between a true
//! pair's score and any other score of its row in the reference matrices is 1.4e-5 where it is
//! not an exact tie, far above float32 rounding, so equal metrics are a fair requirement.

use std::path::PathBuf;

use cavsync_core::retrieval::{
    ClipEmbeddings, RetrievalMetrics, Strategy, compute_metrics, evaluate, similarity_matrix,
};
use ndarray::{Array2, Array3};
use ndarray_npy::read_npy;

/// Largest absolute difference allowed between our similarity matrices and the official ones.
const MATRIX_TOLERANCE: f64 = 1e-5;

/// Strategies in the order of the reference `metrics.npy`.
const STRATEGIES: [Strategy; 4] = [
    Strategy::Max,
    Strategy::Mean,
    Strategy::DiagonalMean,
    Strategy::DiagonalMax,
];

/// Directions in the order of the reference `metrics.npy`.
const DIRECTIONS: [&str; 2] = ["a2v", "v2a"];

/// Reference cases, and whether each holds exact ties with a true pair.
const CASES: [(&str, bool); 3] = [("random", false), ("ties", true), ("small", true)];

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/retrieval")
        .join(case)
}

fn embeddings(case: &str, modality: &str) -> ClipEmbeddings {
    let raw: Array3<f32> = read_npy(case_dir(case).join(format!("{modality}.npy"))).unwrap();
    ClipEmbeddings::from_array(raw.view()).unwrap()
}

/// The official metrics of one case, strategy and direction.
fn official_metrics(
    case: &str,
    strategy: usize,
    direction: usize,
    queries: usize,
) -> RetrievalMetrics {
    let all: Array3<f64> = read_npy(case_dir(case).join("metrics.npy")).unwrap();
    assert_eq!(all.dim(), (STRATEGIES.len(), DIRECTIONS.len(), 4));
    let m = all.slice(ndarray::s![strategy, direction, ..]);
    RetrievalMetrics {
        r1: m[0],
        r5: m[1],
        r10: m[2],
        median_rank: m[3],
        queries,
    }
}

/// Number of rows whose true-pair score equals some other score of the row.
fn tied_rows(sim: &Array2<f64>) -> usize {
    sim.rows()
        .into_iter()
        .enumerate()
        .filter(|(i, row)| {
            row.iter()
                .enumerate()
                .any(|(j, &v)| j != *i && v == row[*i])
        })
        .count()
}

#[test]
fn matches_official_retrieval() {
    let mut worst = 0.0f64;
    for (case, has_ties) in CASES {
        let audio = embeddings(case, "audio");
        let visual = embeddings(case, "visual");
        let n = audio.clips();
        let mut case_ties = 0;
        for (s, strategy) in STRATEGIES.into_iter().enumerate() {
            let report = evaluate(&audio, &visual, strategy).unwrap();
            assert_eq!(report.strategy, strategy);
            for (d, direction) in DIRECTIONS.into_iter().enumerate() {
                let (queries, candidates, reported) = match direction {
                    "a2v" => (&audio, &visual, report.audio_to_visual),
                    _ => (&visual, &audio, report.visual_to_audio),
                };
                let official: Array2<f64> = read_npy(
                    case_dir(case).join(format!("sim_{}_{direction}.npy", strategy.as_str())),
                )
                .unwrap();
                let ours = similarity_matrix(queries, candidates, strategy).unwrap();
                assert_eq!(ours.dim(), official.dim(), "{case} {strategy} {direction}");
                let err = ours
                    .iter()
                    .zip(&official)
                    .map(|(&a, &b)| (f64::from(a) - b).abs())
                    .fold(0.0f64, f64::max);
                worst = worst.max(err);
                assert!(
                    err <= MATRIX_TOLERANCE,
                    "{case} {strategy} {direction}: max abs error {err:e}"
                );
                case_ties += tied_rows(&official);

                let expected = official_metrics(case, s, d, n);
                // The official matrix holds float32 values, so casting it loses nothing.
                let from_official = compute_metrics(&official.mapv(|v| v as f32)).unwrap();
                assert_eq!(
                    from_official, expected,
                    "{case} {strategy} {direction} (official matrix)"
                );
                assert_eq!(
                    compute_metrics(&ours).unwrap(),
                    expected,
                    "{case} {strategy} {direction}"
                );
                assert_eq!(
                    reported, expected,
                    "{case} {strategy} {direction} (evaluate)"
                );
                println!("{case:6} {strategy:13} {direction}: {reported}  max abs error {err:.2e}");
            }
        }
        assert_eq!(case_ties > 0, has_ties, "{case}: {case_ties} tied rows");
    }
    println!("worst similarity error {worst:.2e}");
}
