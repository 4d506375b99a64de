//! Cosine similarity, the one definition localization and retrieval share.

/// Floor on each vector norm in a cosine, as in `torch.nn.functional.cosine_similarity`.
pub const COSINE_EPS: f64 = 1e-8;

/// Dot product of two equally long vectors, accumulated in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Euclidean norm of a vector, accumulated in f64.
pub fn norm(v: &[f32]) -> f64 {
    dot(v, v).sqrt()
}

/// Cosine of two equally long vectors with each norm floored at [`COSINE_EPS`] (a zero vector gives 0).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    cosine_with_norm(a, norm(a), b)
}

/// [`cosine`] when the norm of `a` is already known (one query against many vectors).
pub fn cosine_with_norm(a: &[f32], a_norm: f64, b: &[f32]) -> f32 {
    (dot(a, b) / (a_norm.max(COSINE_EPS) * norm(b).max(COSINE_EPS))) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_by_hand() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine(&[2.0, 0.0], &[-3.0, 0.0]), -1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
    }
}
