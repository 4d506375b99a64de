//! An opened bundle: the verified manifest and one optimised tract plan per encoder, fed from memory.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cavsync_core::manifest::{EncoderInfo, Manifest, ManifestError};
use cavsync_core::model::Modality;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use crate::device::{self, Device, DeviceError};
use crate::graph;
use crate::pair::Helper;

/// Errors raised while opening or running a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The manifest, or a file it names, failed verification.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The plans cannot run on the device asked for.
    #[error("device {device}: {source}")]
    Device {
        /// The device asked for.
        device: Device,
        /// Why it cannot be used.
        source: DeviceError,
    },
    /// The plan options cannot be honoured.
    #[error("plan options: {0}")]
    Options(String),
    /// tract could not load or optimise a model file.
    #[error("{path}: cannot load ONNX model: {message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        message: String,
    },
    /// An input has the wrong length.
    #[error("{what}: got {found} values, expected {expected}")]
    Input {
        /// Which input.
        what: &'static str,
        /// Length given.
        found: usize,
        /// Length expected.
        expected: usize,
    },
    /// An input holds NaN or infinite values, which the encoders would turn into garbage.
    #[error("{what}: value {index} is {value}, expected finite values")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Position of the first non-finite value.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// Inference failed inside tract.
    #[error("inference failed: {0}")]
    Run(String),
}

/// How the encoder plans run; part of each plan, not of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Most threads for matrix products (1 = single-threaded); an encoder that runs faster on one keeps one.
    pub threads: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { threads: 1 }
    }
}

impl PlanOptions {
    /// tract's run options for these settings: a private thread pool when `threads > 1`.
    pub(crate) fn run_options(&self) -> Result<RunOptions, BundleError> {
        if self.threads == 0 {
            return Err(BundleError::Options(
                "threads must be at least 1".to_string(),
            ));
        }
        let executor = if self.threads > 1 {
            Executor::multithread(self.threads)
        } else {
            Executor::SingleThread
        };
        Ok(RunOptions {
            executor: Some(executor),
            ..RunOptions::default()
        })
    }
}

/// A plan on its device: tract's optimised CPU plan, or what tract-cuda prepared.
#[derive(Debug)]
enum Plan {
    /// tract's plan, with the executor it runs in (its thread pool, when it has threads).
    Cpu(Arc<TypedRunnableModel>, Executor),
    Cuda(Box<dyn Runnable>),
}

/// One encoder's plan with its expected shapes.
#[derive(Debug)]
struct EncoderPlan {
    plan: Plan,
    input_shape: Vec<usize>,
    tokens: usize,
    /// Threads its matrix products use.
    threads: usize,
    /// A one-thread plan of the same model (sharing its weights), for pairs run side by side (CPU plans with two threads or more).
    single: Option<Arc<TypedRunnableModel>>,
}

/// Embeddings of one item: the global embedding and the patch tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embedding {
    /// Global embedding (D).
    pub global: Vec<f32>,
    /// Patch tokens (N x D, row-major).
    pub tokens: Vec<f32>,
}

/// Where one node of an optimised plan spends its time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeProfile {
    /// The node's name in the plan.
    pub name: String,
    /// Its operator kind (`OptMatMul`, `Softmax`, ...).
    pub op: String,
    /// What tract says of the operator (kernel choice, shapes).
    pub detail: String,
    /// Datum type of its first input.
    pub input_type: Option<String>,
    /// Mean seconds per run.
    pub seconds: f64,
    /// Multiply-adds per run, by tract's cost model (0 for nodes without arithmetic cost).
    pub fma: u64,
}

/// An opened, verified bundle with optimised plans for both encoders.
#[derive(Debug)]
pub struct Bundle {
    /// Directory the bundle was read from.
    pub dir: PathBuf,
    /// The verified manifest.
    pub manifest: Manifest,
    /// The options the plans were built with.
    pub options: PlanOptions,
    /// The device the plans run on.
    pub device: Device,
    audio: EncoderPlan,
    visual: EncoderPlan,
    /// The thread that runs the audio encoder beside the visual one, where that measured faster than running them in turn.
    pair: Option<Mutex<Helper>>,
}

/// What errors call the audio encoder's input.
const AUDIO_INPUT: &str = "audio segment";
/// What errors call the visual encoder's input.
const VISUAL_INPUT: &str = "image";

/// How the two encoders of a frame pair share the threads ([`Bundle::embed_pair_into`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairMode {
    /// Side by side where that measures faster than in turn (the default when a bundle opens).
    Auto,
    /// One after the other, each with the bundle's threads.
    InTurn,
    /// At the same time, one thread each (CPU plans with two threads or more).
    SideBySide,
}

/// How long each encoder of a pair ran, in seconds (side by side, or one after the other).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairTimes {
    /// The audio encoder's own run.
    pub audio_s: f64,
    /// The visual encoder's own run.
    pub visual_s: f64,
    /// The pair, start to end.
    pub pair_s: f64,
    /// Whether the two ran at the same time, one thread each.
    pub concurrent: bool,
}

impl Bundle {
    /// Open a bundle directory with single-threaded plans.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        Self::open_with(dir, &PlanOptions::default())
    }

    /// Open a bundle directory: parse the manifest, verify hashes and graph signatures, optimise both plans for the CPU.
    pub fn open_with(dir: &Path, options: &PlanOptions) -> Result<Self, BundleError> {
        Self::open_on(dir, options, Device::Cpu)
    }

    /// Open a bundle directory with both plans prepared for `device` (CUDA only where [`device::cuda_check`] passes).
    pub fn open_on(dir: &Path, options: &PlanOptions, device: Device) -> Result<Self, BundleError> {
        let run_options = options.run_options()?;
        let manifest = Manifest::read(dir)?;
        let dim = manifest.model.dim;
        let plan = |info| load_plan(dir, info, dim, &run_options, options.threads, device);
        let audio = plan(&manifest.audio)?;
        let visual = plan(&manifest.visual)?;
        let mut bundle = Self {
            dir: dir.to_path_buf(),
            manifest,
            options: options.clone(),
            device,
            audio,
            visual,
            pair: None,
        };
        bundle.set_pair_mode(PairMode::Auto)?;
        Ok(bundle)
    }

    /// Chooses how frame pairs run: [`PairMode::Auto`] times both ways on fixed inputs and keeps the faster; side by side needs CPU plans with two threads or more.
    pub fn set_pair_mode(&mut self, mode: PairMode) -> Result<(), BundleError> {
        self.pair = None;
        let helper = match mode {
            PairMode::InTurn => return Ok(()),
            PairMode::SideBySide => self.pair_helper()?.ok_or_else(|| {
                BundleError::Options(format!(
                    "running a pair side by side needs CPU plans with two threads or more; this bundle has {} thread(s) on {}",
                    self.options.threads, self.device
                ))
            })?,
            PairMode::Auto => match self.pair_helper()? {
                Some(mut helper) => {
                    if !self.side_by_side_is_faster(&mut helper)? {
                        return Ok(());
                    }
                    helper
                }
                None => return Ok(()),
            },
        };
        self.pair = Some(Mutex::new(helper));
        Ok(())
    }

    /// How frame pairs run now: [`PairMode::SideBySide`] or [`PairMode::InTurn`].
    pub fn pair_mode(&self) -> PairMode {
        if self.pair.is_some() {
            PairMode::SideBySide
        } else {
            PairMode::InTurn
        }
    }

    /// A helper thread running the audio encoder's one-thread plan, where the bundle has one.
    fn pair_helper(&self) -> Result<Option<Helper>, BundleError> {
        let Some(audio_single) = &self.audio.single else {
            return Ok(None);
        };
        if self.visual.single.is_none() {
            return Ok(None);
        }
        let (shape, tokens, dim) = (
            self.audio.input_shape.clone(),
            self.audio.tokens,
            self.dim(),
        );
        let plan = Arc::clone(audio_single);
        Helper::spawn(
            "cavsync-pair",
            Box::new(move |input: &[f32], out: &mut Embedding| {
                run_cpu(&plan, &shape, tokens, dim, input, out)
            }),
        )
        .map(Some)
        .map_err(|e| BundleError::Options(format!("cannot start the pair thread: {e}")))
    }

    /// Whether a pair on fixed inputs runs faster side by side through `helper` than in turn (medians of a few timed runs).
    fn side_by_side_is_faster(&self, helper: &mut Helper) -> Result<bool, BundleError> {
        let audio_in = crate::latency::pattern(self.input_len(Modality::Audio), 7919);
        let image_in = crate::latency::pattern(self.input_len(Modality::Visual), 104_729);
        let pair = |helper: Option<&mut Helper>| {
            let (mut a, mut v) = (Embedding::default(), Embedding::default());
            self.run_pair(helper, &audio_in, &image_in, &mut a, &mut v)
                .map(|t| t.pair_s)
        };
        pair(Some(&mut *helper))?;
        let first = pair(None)?;
        let runs = if first > THREADS_SURELY_PAY_S {
            2
        } else {
            choice_runs(first)
        };
        let (mut t_beside, mut t_turn) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            t_beside.push(pair(Some(&mut *helper))?);
            t_turn.push(pair(None)?);
        }
        let (t_beside, t_turn) = (
            crate::latency::median(t_beside),
            crate::latency::median(t_turn),
        );
        let faster = t_beside < t_turn;
        tracing::info!(
            side_by_side_ms = 1e3 * t_beside,
            in_turn_ms = 1e3 * t_turn,
            "{}",
            if faster {
                "a frame pair runs faster with the encoders side by side, one thread each; running them so"
            } else {
                "a frame pair runs faster with the encoders in turn; running them so"
            }
        );
        Ok(faster)
    }

    /// Encode one audio segment and one image: side by side, one thread each, where the bundle measured that faster when it opened (two threads or more), else one after the other.
    pub fn embed_pair_into(
        &self,
        segment: &[f32],
        image: &[f32],
        audio: &mut Embedding,
        visual: &mut Embedding,
    ) -> Result<PairTimes, BundleError> {
        match &self.pair {
            Some(helper) => {
                let mut helper = helper.lock().unwrap_or_else(|e| e.into_inner());
                self.run_pair(Some(&mut helper), segment, image, audio, visual)
            }
            None => self.run_pair(None, segment, image, audio, visual),
        }
    }

    /// One pair: side by side through `helper` (the visual encoder's one-thread plan on this thread), else in turn.
    fn run_pair(
        &self,
        helper: Option<&mut Helper>,
        segment: &[f32],
        image: &[f32],
        audio: &mut Embedding,
        visual: &mut Embedding,
    ) -> Result<PairTimes, BundleError> {
        let t0 = Instant::now();
        if let (Some(helper), Some(single)) = (helper, &self.visual.single) {
            check_input(&self.audio, segment, AUDIO_INPUT)?;
            check_input(&self.visual, image, VISUAL_INPUT)?;
            let v = &self.visual;
            let (theirs, mine) = helper.run(segment, audio, || {
                let t1 = Instant::now();
                run_cpu(single, &v.input_shape, v.tokens, self.dim(), image, visual)
                    .map(|()| t1.elapsed().as_secs_f64())
            });
            return Ok(PairTimes {
                audio_s: theirs?,
                visual_s: mine?,
                pair_s: t0.elapsed().as_secs_f64(),
                concurrent: true,
            });
        }
        self.embed_into(Modality::Audio, segment, audio)?;
        let t1 = Instant::now();
        self.embed_into(Modality::Visual, image, visual)?;
        let t2 = Instant::now();
        Ok(PairTimes {
            audio_s: (t1 - t0).as_secs_f64(),
            visual_s: (t2 - t1).as_secs_f64(),
            pair_s: (t2 - t0).as_secs_f64(),
            concurrent: false,
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.manifest.model.dim
    }

    /// Threads the matrix products of `modality`'s encoder use: [`PlanOptions::threads`], or 1 where the encoder measured faster on one when the bundle opened.
    pub fn threads(&self, modality: Modality) -> usize {
        self.plan(modality).threads
    }

    /// Values one input of `modality` holds (L x 128 for audio, 3 x H x W for images).
    pub fn input_len(&self, modality: Modality) -> usize {
        self.plan(modality).input_shape.iter().product()
    }

    /// Encode one normalised input of `modality` into `out`, reusing its buffers.
    pub fn embed_into(
        &self,
        modality: Modality,
        input: &[f32],
        out: &mut Embedding,
    ) -> Result<(), BundleError> {
        let what = match modality {
            Modality::Audio => AUDIO_INPUT,
            Modality::Visual => VISUAL_INPUT,
        };
        run_plan(self.plan(modality), input, what, self.dim(), out)
    }

    /// Encode one normalised fbank segment (L x 128, row-major).
    pub fn embed_audio(&self, segment: &[f32]) -> Result<Embedding, BundleError> {
        let mut out = Embedding::default();
        self.embed_into(Modality::Audio, segment, &mut out)?;
        Ok(out)
    }

    /// Encode one normalised image (3 x H x W, channel-major).
    pub fn embed_visual(&self, image: &[f32]) -> Result<Embedding, BundleError> {
        let mut out = Embedding::default();
        self.embed_into(Modality::Visual, image, &mut out)?;
        Ok(out)
    }

    /// Run one normalised input of `modality` `iterations` times (after one warm-up run), timing every node of the optimised plan (CPU plans only).
    pub fn profile(
        &self,
        modality: Modality,
        input: &[f32],
        iterations: usize,
    ) -> Result<Vec<NodeProfile>, BundleError> {
        let enc = self.plan(modality);
        let Plan::Cpu(plan, executor) = &enc.plan else {
            return Err(BundleError::Options(format!(
                "profiling times the nodes of CPU plans, and this bundle's plans run on {}",
                self.device
            )));
        };
        let expected: usize = enc.input_shape.iter().product();
        if input.len() != expected {
            return Err(BundleError::Input {
                what: "profiled input",
                found: input.len(),
                expected,
            });
        }
        let run_err = |e: TractError| BundleError::Run(format!("{e:#}"));
        let model = plan.model();
        let mut nodes: Vec<NodeProfile> = model
            .nodes()
            .iter()
            .map(|n| -> Result<NodeProfile, BundleError> {
                let facts = model.node_input_facts(n.id).map_err(run_err)?;
                let fma =
                    n.op.cost(&facts)
                        .map_err(run_err)?
                        .iter()
                        .filter(|(c, _)| matches!(c, tract_onnx::tract_core::ops::Cost::FMA(_)))
                        .filter_map(|(_, n)| n.to_i64().ok())
                        .sum::<i64>();
                Ok(NodeProfile {
                    name: n.name.clone(),
                    op: n.op.name().to_string(),
                    detail: n.op.info().map_err(run_err)?.join("; "),
                    input_type: facts.first().map(|f| format!("{:?}", f.datum_type)),
                    seconds: 0.0,
                    fma: u64::try_from(fma).unwrap_or(0),
                })
            })
            .collect::<Result<_, _>>()?;
        let tensor = Tensor::from_shape(&enc.input_shape, input).map_err(run_err)?;
        run_in(executor, || -> Result<(), BundleError> {
            let mut state = plan.spawn().map_err(run_err)?;
            for round in 0..=iterations {
                let mut times = vec![0.0f64; nodes.len()];
                state
                    .run_plan_with_eval(
                        tvec!(tensor.clone().into()),
                        |ctx, op_state, node, inputs| {
                            let t0 = Instant::now();
                            let out =
                                tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                            times[node.id] += t0.elapsed().as_secs_f64();
                            out
                        },
                    )
                    .map_err(run_err)?;
                if round > 0 {
                    for (n, t) in nodes.iter_mut().zip(&times) {
                        n.seconds += t / iterations as f64;
                    }
                }
            }
            Ok(())
        })?;
        Ok(nodes)
    }

    fn plan(&self, modality: Modality) -> &EncoderPlan {
        match modality {
            Modality::Audio => &self.audio,
            Modality::Visual => &self.visual,
        }
    }
}

/// Names of a graph's input or output nodes.
fn outlet_names(model: &InferenceModel, outlets: &[OutletId]) -> Vec<String> {
    outlets
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect()
}

/// Loads one encoder graph: hash, then the checks of [`graph::check`], then tract (a panic inside tract becomes an error naming the file).
fn load_plan(
    dir: &Path,
    info: &EncoderInfo,
    dim: usize,
    options: &RunOptions,
    threads: usize,
    device: Device,
) -> Result<EncoderPlan, BundleError> {
    let path = info.verified_path(dir)?;
    let model_err = |message: String| BundleError::Model {
        path: path.clone(),
        message,
    };
    let proto = tract_onnx::onnx()
        .proto_model_for_path(&path)
        .map_err(|e| model_err(format!("{e:#}")))?;
    graph::check(&proto).map_err(model_err)?;
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        build_plan(&path, &proto, info, dim, options, threads, device)
    }))
    .unwrap_or_else(|payload| {
        let reason = cavsync_core::panic_message(payload.as_ref());
        Err(model_err(format!(
            "tract failed on this graph ({reason}); expected a graph as cavsync-export writes it"
        )))
    })
}

/// tract's model of a checked graph, verified against the manifest and planned for `device`.
fn build_plan(
    path: &Path,
    proto: &tract_onnx::pb::ModelProto,
    info: &EncoderInfo,
    dim: usize,
    options: &RunOptions,
    mut threads: usize,
    device: Device,
) -> Result<EncoderPlan, BundleError> {
    let model_err = |message: String| BundleError::Model {
        path: path.to_path_buf(),
        message,
    };
    let tract_err = |e: TractError| model_err(format!("{e:#}"));
    // CPU plans read softmax and layer norm as cavsync's row operators; tract-cuda translates only tract's own.
    let parser = match device {
        Device::Cpu => crate::rowops::onnx(),
        Device::Cuda => tract_onnx::onnx(),
    };
    let model = parser
        .parse(proto, path.parent().and_then(Path::to_str))
        .map_err(tract_err)?
        .model;
    let inputs = outlet_names(&model, model.input_outlets().map_err(tract_err)?);
    if inputs != [info.input.clone()] {
        return Err(model_err(format!(
            "graph inputs {inputs:?}, manifest says [{:?}]",
            info.input
        )));
    }
    let outputs = outlet_names(&model, model.output_outlets().map_err(tract_err)?);
    let wanted = [info.global_output.clone(), info.tokens_output.clone()];
    if outputs != wanted {
        return Err(model_err(format!(
            "graph outputs {outputs:?}, manifest says {wanted:?}"
        )));
    }
    let model = model
        .with_input_fact(0, f32::fact(&info.input_shape).into())
        .map_err(tract_err)?;
    let check_outputs = |typed: &TypedModel| -> Result<(), BundleError> {
        let expected: [(&str, Vec<usize>); 2] = [
            ("global", vec![1, dim]),
            ("tokens", vec![1, info.tokens, dim]),
        ];
        for (slot, (what, want)) in expected.iter().enumerate() {
            let fact = typed.output_fact(slot).map_err(tract_err)?;
            let shape = fact.shape.as_concrete().map(<[usize]>::to_vec);
            if shape.as_ref() != Some(want) {
                return Err(model_err(format!(
                    "{what} output has shape {shape:?}, manifest implies {want:?}"
                )));
            }
        }
        Ok(())
    };
    let mut single = None;
    let plan = match device {
        Device::Cpu => {
            let optimized = model
                .into_typed()
                .and_then(|mut m| {
                    crate::rowops::fold_reshapes_into_permutes(&mut m)?;
                    m.into_decluttered()
                })
                .and_then(|mut m| {
                    crate::rowops::replace_gelu(&mut m)?;
                    crate::intops::replace_int8_epilogues(&mut m)?;
                    #[cfg(target_arch = "x86_64")]
                    if crate::intproduct::available() {
                        crate::intproduct::fuse_int8_products(&mut m)?;
                    }
                    #[cfg(target_arch = "x86_64")]
                    crate::matops::replace_float_products(&mut m)?;
                    #[cfg(target_arch = "x86_64")]
                    crate::matops::fuse_bias_additions(&mut m)?;
                    #[cfg(target_arch = "x86_64")]
                    if crate::packed::available() {
                        crate::packed::pack_weight_products(&mut m)?;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if crate::splitproduct::available() {
                        crate::splitproduct::split_weight_products(&mut m)?;
                    }
                    m.into_optimized()
                })
                .map(Arc::new)
                .map_err(tract_err)?;
            check_outputs(&optimized)?;
            let plan =
                TypedSimplePlan::new_with_options(optimized.clone(), options).map_err(tract_err)?;
            let executor = options.executor.clone().unwrap_or_default();
            if threads > 1 {
                let choice =
                    fastest_executor(plan, executor, optimized, &info.input_shape, threads)
                        .map_err(tract_err)?;
                threads = choice.threads;
                single = Some(choice.single);
                Plan::Cpu(choice.plan, choice.executor)
            } else {
                Plan::Cpu(plan, executor)
            }
        }
        Device::Cuda => {
            let runtime =
                device::cuda_runtime().map_err(|source| BundleError::Device { device, source })?;
            let typed = model
                .into_typed()
                .and_then(|m| m.into_decluttered())
                .map_err(tract_err)?;
            check_outputs(&typed)?;
            Plan::Cuda(
                runtime
                    .prepare_with_options(typed, options)
                    .map_err(tract_err)?,
            )
        }
    };
    Ok(EncoderPlan {
        plan,
        input_shape: info.input_shape.clone(),
        tokens: info.tokens,
        threads,
        single,
    })
}

/// A run longer than this gains more from threads than their dispatch can cost (tens of
/// microseconds per product), so its threaded plan is kept without timing a single-threaded one.
const THREADS_SURELY_PAY_S: f64 = 0.05;

/// Time spent timing each way of running when choosing between them: runs of a few
/// milliseconds on a virtual machine now and then take twice as long, so a median of a handful
/// picked the slower way in one opening of three (measured on the demo model).
const CHOICE_BUDGET_S: f64 = 0.1;

/// Timed runs of each way of running, whose first run took `first_s`: enough to fill
/// [`CHOICE_BUDGET_S`], from 5 to 25.
fn choice_runs(first_s: f64) -> usize {
    ((CHOICE_BUDGET_S / first_s.max(1e-6)) as usize).clamp(5, 25)
}

/// The plan an encoder runs alone, with its threads and executor, and a one-thread plan of the same model.
struct Choice {
    plan: Arc<TypedRunnableModel>,
    threads: usize,
    executor: Executor,
    single: Arc<TypedRunnableModel>,
}

/// The faster of `threaded` (run in `pool`) and a single-threaded plan of the same model
/// (sharing its weights), with the threads and executor it uses. Handing work to threads costs
/// more than it saves on small encoders (measured: the demo student ran 2.3 ms a pair on one
/// thread, 3.7 ms on two).
fn fastest_executor(
    threaded: Arc<TypedRunnableModel>,
    pool: Executor,
    model: Arc<TypedModel>,
    input_shape: &[usize],
    threads: usize,
) -> TractResult<Choice> {
    let len = input_shape.iter().product();
    let pattern = crate::latency::pattern(len, 7919);
    let time = |plan: &Arc<TypedRunnableModel>, executor: &Executor| -> TractResult<f64> {
        run_in(executor, || {
            let input = Tensor::from_shape(input_shape, &pattern)?;
            let t0 = Instant::now();
            plan.run(tvec!(input.into()))?;
            Ok(t0.elapsed().as_secs_f64())
        })
    };
    let single_options = RunOptions {
        executor: Some(Executor::SingleThread),
        ..RunOptions::default()
    };
    let single = TypedSimplePlan::new_with_options(model, &single_options)?;
    time(&threaded, &pool)?;
    if time(&threaded, &pool)? > THREADS_SURELY_PAY_S {
        return Ok(Choice {
            plan: threaded,
            threads,
            executor: pool,
            single,
        });
    }
    let first = time(&single, &Executor::SingleThread)?;
    let (mut t_threaded, mut t_single) = (Vec::new(), Vec::new());
    for _ in 0..choice_runs(first) {
        t_threaded.push(time(&threaded, &pool)?);
        t_single.push(time(&single, &Executor::SingleThread)?);
    }
    let (t_threaded, t_single) = (
        crate::latency::median(t_threaded),
        crate::latency::median(t_single),
    );
    tracing::info!(
        threads,
        threaded_ms = 1e3 * t_threaded,
        single_ms = 1e3 * t_single,
        "{}",
        if t_single < t_threaded {
            "encoder runs faster on one thread; keeping one"
        } else {
            "encoder runs faster on the threads; keeping them"
        }
    );
    Ok(if t_single < t_threaded {
        Choice {
            plan: Arc::clone(&single),
            threads: 1,
            executor: Executor::SingleThread,
            single,
        }
    } else {
        Choice {
            plan: threaded,
            threads,
            executor: pool,
            single,
        }
    })
}

/// Runs `f` for a plan of `executor`'s threads. On x86-64, on this thread with the process's
/// team of as many threads, which the operators of this crate split their work over (handing
/// `f` to a pool thread would cost two wake-ups a run). Elsewhere on a thread of the executor's
/// pool, so that tract's parallel nodes hand work to a neighbour that is still awake from the
/// last node instead of waking the pool from outside, twice per node.
pub(crate) fn run_in<R: Send>(executor: &Executor, f: impl FnOnce() -> R + Send) -> R {
    match executor {
        #[cfg(target_arch = "x86_64")]
        Executor::MultiThread(pool) => match crate::team::shared(pool.current_num_threads()) {
            Some(team) => crate::team::with(&team, f),
            None => pool.install(f),
        },
        #[cfg(not(target_arch = "x86_64"))]
        Executor::MultiThread(pool) => pool.install(f),
        _ => f(),
    }
}

/// Copies a plan output into `out`, checking its length.
fn copy_output(t: &TValue, len: usize, out: &mut Vec<f32>) -> Result<(), BundleError> {
    let view = t
        .to_plain_array_view::<f32>()
        .map_err(|e| BundleError::Run(format!("{e:#}")))?;
    if view.len() != len {
        return Err(BundleError::Run(format!(
            "output has {} values, expected {len}",
            view.len()
        )));
    }
    out.clear();
    out.extend(view.iter().copied());
    Ok(())
}

fn run_plan(
    enc: &EncoderPlan,
    input: &[f32],
    what: &'static str,
    dim: usize,
    out: &mut Embedding,
) -> Result<(), BundleError> {
    check_input(enc, input, what)?;
    match &enc.plan {
        Plan::Cpu(plan, executor) => run_in(executor, || {
            run_cpu(plan, &enc.input_shape, enc.tokens, dim, input, out)
        }),
        Plan::Cuda(plan) => {
            let run = |e: TractError| BundleError::Run(format!("{e:#}"));
            let tensor = Tensor::from_shape(&enc.input_shape, input).map_err(run)?;
            let outputs = plan.run(tvec!(tensor.into())).map_err(run)?;
            copy_output(&outputs[0], dim, &mut out.global)?;
            copy_output(&outputs[1], enc.tokens * dim, &mut out.tokens)
        }
    }
}

/// Checks that `input` (`what`) has the length `enc` takes and only finite values.
fn check_input(enc: &EncoderPlan, input: &[f32], what: &'static str) -> Result<(), BundleError> {
    let expected: usize = enc.input_shape.iter().product();
    if input.len() != expected {
        return Err(BundleError::Input {
            what,
            found: input.len(),
            expected,
        });
    }
    if let Some(index) = input.iter().position(|x| !x.is_finite()) {
        return Err(BundleError::NonFinite {
            what,
            index,
            value: input[index],
        });
    }
    Ok(())
}

/// Runs a CPU plan on one input of `shape` (checked by the caller) into `out`.
fn run_cpu(
    plan: &Arc<TypedRunnableModel>,
    shape: &[usize],
    tokens: usize,
    dim: usize,
    input: &[f32],
    out: &mut Embedding,
) -> Result<(), BundleError> {
    let run = |e: TractError| BundleError::Run(format!("{e:#}"));
    let tensor = Tensor::from_shape(shape, input).map_err(run)?;
    let outputs = plan.run(tvec!(tensor.into())).map_err(run)?;
    copy_output(&outputs[0], dim, &mut out.global)?;
    copy_output(&outputs[1], tokens * dim, &mut out.tokens)
}
