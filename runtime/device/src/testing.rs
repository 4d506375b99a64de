//! Inputs and comparisons shared by the unit tests of the x86-64 product operators.

use tract_onnx::tract_hir::internal::*;

/// `len` values spread over [-1, 1), a different pattern for each `seed`.
pub(crate) fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 1999) as f32 / 999.5) - 1.0)
        .collect()
}

/// The output of `model`, optimised, on `input`, in a plan on `threads` threads (tract's pool and
/// a team of as many).
pub(crate) fn run_optimized(model: TypedModel, input: &Tensor, threads: usize) -> Tensor {
    let options = crate::bundle::PlanOptions { threads }
        .run_options()
        .unwrap();
    let plan = model
        .into_optimized()
        .unwrap()
        .into_runnable_with_options(&options)
        .unwrap();
    let team = crate::team::Team::new(threads).unwrap();
    crate::team::with(&team, || plan.run(tvec!(input.clone().into_tvalue())))
        .unwrap()
        .remove(0)
        .into_tensor()
}

/// The largest difference between two f32 outputs of `what` of one shape, relative to
/// 1 + |reference|.
pub(crate) fn worst_relative(reference: &Tensor, ours: &Tensor, what: &str) -> f32 {
    assert_eq!(reference.shape(), ours.shape(), "{what}");
    let (r, o) = (
        reference.try_as_plain_ram().unwrap(),
        ours.try_as_plain_ram().unwrap(),
    );
    let (r, o) = (r.as_slice::<f32>().unwrap(), o.as_slice::<f32>().unwrap());
    r.iter()
        .zip(o)
        .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
        .fold(0f32, f32::max)
}
