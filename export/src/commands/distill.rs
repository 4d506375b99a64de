//! `distill`: train a smaller student to reproduce a teacher's embeddings, similarity maps and affinities, with checkpoints and resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use cavsync_cli::progress_bar;
use cavsync_core::model::Modality;
use cavsync_device::bundle::{Bundle, Embedding, PlanOptions};
use cavsync_device::latency::peak_rss_mib;
use cavsync_train::distill::{
    CheckpointTeacher, DistillConfig, DistillFiles, Distiller, PRESETS, StudentSection, Teacher,
    TeacherBatch, TeacherCache, TeacherShape,
};
use cavsync_train::train::{TrainData, TrainError};

/// Arguments of `distill`.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: a checkpoint (.pth/.pt/.safetensors, any layout `inspect` reads) or a bundle folder (run with its ONNX graphs).
    #[arg(long, required_unless_present_any = ["resume", "list_presets"])]
    teacher: Option<PathBuf>,
    /// Attention heads of a checkpoint teacher (default: embedding dim / 64).
    #[arg(long)]
    heads: Option<usize>,
    /// Student size: a preset (tiny, small, micro, nano; see --list-presets) or a TOML file with the [student] fields (dim, depth, joint_depth, registers, mlp_ratio). Overrides --config's [student].
    #[arg(long)]
    student: Option<String>,
    /// Training data folder written by `synth` (or any folder with a CAV-MAE datafile.json and 16 frames per clip).
    #[arg(long, required_unless_present = "list_presets")]
    data: Option<PathBuf>,
    /// Student checkpoint to write (safetensors, official key names); CKPT.distill.toml, CKPT.state.json, CKPT.proj.safetensors and CKPT.optim.bpk are written beside it.
    #[arg(long, required_unless_present = "list_presets")]
    out: Option<PathBuf>,
    /// Distillation configuration (TOML: [student], [loss], [optim], [data], [run]); defaults are used for what it omits.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Teacher cache (f16 safetensors; default CKPT.teacher.safetensors): computed once, reused while it matches the teacher and data.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Continue the run whose checkpoint is --out (the teacher is needed only if its cache is gone).
    #[arg(long)]
    resume: bool,
    /// Stop (with a checkpoint) once the run has completed this many steps; continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Threads of a bundle teacher while filling the cache.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the student presets with their parameters and GFLOP per frame pair for a teacher of segment length 64, and exit.
    #[arg(long)]
    list_presets: bool,
}

/// A bundle teacher, run through the runtime's plans one pair at a time.
struct BundleTeacher {
    bundle: Bundle,
    identity: String,
    out: Embedding,
}

impl BundleTeacher {
    fn open(dir: &Path, threads: usize) -> anyhow::Result<Self> {
        let bundle = Bundle::open_with(dir, &PlanOptions { threads })?;
        let manifest = dir.join("manifest.toml");
        let bytes = std::fs::read(&manifest)
            .with_context(|| format!("{}: cannot read", manifest.display()))?;
        Ok(Self {
            bundle,
            identity: cavsync_core::manifest::sha256_hex(&bytes),
            out: Embedding::default(),
        })
    }
}

impl Teacher for BundleTeacher {
    fn shape(&self) -> TeacherShape {
        let m = &self.bundle.manifest;
        TeacherShape {
            dim: m.model.dim,
            audio_length: m.audio_preprocessing.target_length,
            image_size: m.image_preprocessing.size,
            audio_tokens: m.audio.tokens,
            visual_tokens: m.visual.tokens,
        }
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn pair_gflops(&self) -> Option<f64> {
        self.bundle.manifest.model.gflops_per_pair
    }

    fn encode(
        &mut self,
        audio: &[f32],
        images: &[f32],
        batch: usize,
    ) -> Result<TeacherBatch, TrainError> {
        let mut out = TeacherBatch::default();
        let (la, lv) = (audio.len() / batch, images.len() / batch);
        for i in 0..batch {
            for (modality, input) in [
                (Modality::Audio, &audio[i * la..(i + 1) * la]),
                (Modality::Visual, &images[i * lv..(i + 1) * lv]),
            ] {
                self.bundle
                    .embed_into(modality, input, &mut self.out)
                    .map_err(|e| TrainError::Teacher {
                        path: self.bundle.dir.clone(),
                        message: e.to_string(),
                    })?;
                let (global, tokens) = match modality {
                    Modality::Audio => (&mut out.global_a, &mut out.tokens_a),
                    Modality::Visual => (&mut out.global_v, &mut out.tokens_v),
                };
                global.extend_from_slice(&self.out.global);
                tokens.extend_from_slice(&self.out.tokens);
            }
        }
        Ok(out)
    }
}

/// The teacher at `path`: a bundle folder or a checkpoint file.
fn open_teacher(
    path: &Path,
    heads: Option<usize>,
    threads: usize,
) -> anyhow::Result<Box<dyn Teacher>> {
    if path.is_dir() {
        Ok(Box::new(BundleTeacher::open(path, threads)?))
    } else {
        Ok(Box::new(CheckpointTeacher::load(path, heads)?))
    }
}

/// The student size named by --student: a preset or a TOML file of [student] fields.
fn student_arg(value: &str) -> anyhow::Result<StudentSection> {
    if let Some(s) = StudentSection::preset(value) {
        return Ok(s);
    }
    let path = Path::new(value);
    if !path.is_file() {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
        anyhow::bail!(
            "--student {value}: neither a preset ({}) nor a file",
            names.join(", ")
        );
    }
    Ok(StudentSection::read(path)?)
}

/// The cost line of a student of segment length `audio_length` against a teacher's GFLOP.
fn cost_line(student: &StudentSection, audio_length: usize, teacher_gflops: Option<f64>) -> String {
    let c = student.model_config(audio_length);
    let g = c.pair_gflops();
    let ratio = teacher_gflops.map_or(String::new(), |t| {
        format!(", {:.1}x fewer than the teacher's {t:.3}", t / g)
    });
    format!(
        "student dim {}, depth {} + joint {}, registers {}, MLP {}x, {} px: {:.3} M parameters, {g:.4} GFLOP per frame pair{ratio}",
        student.dim,
        student.depth,
        student.joint_depth,
        student.registers,
        student.mlp_ratio,
        student.image_size,
        c.encoder_parameters() as f64 / 1e6
    )
}

fn list_presets() {
    let demo = cavsync_formats::layout::ModelConfig {
        mlp_hidden: 512,
        depth_u: 1,
        ..cavsync_formats::layout::ModelConfig::sync(128, 3, 2, 64)
    };
    println!(
        "against the demo teacher (128-dim, 3 + 1 blocks, L = 64): {:.4} GFLOP per pair",
        demo.pair_gflops()
    );
    for (name, s, what) in PRESETS {
        println!("{name:<6} {}", cost_line(&s, 64, Some(demo.pair_gflops())));
        println!("       {what}");
    }
}

/// Reuses the cache at `path` when it matches the run's teacher, else fills it from the teacher.
fn teacher_cache(
    distiller: &Distiller,
    args: &DistillArgs,
    data: &TrainData,
    path: &Path,
    teacher: &mut Option<Box<dyn Teacher>>,
) -> anyhow::Result<TeacherCache> {
    if path.exists() {
        let cache = TeacherCache::load(path)?;
        if cache.data == data.identity() && distiller.check_cache(&cache, path).is_ok() {
            tracing::info!(path = %path.display(), pairs = cache.pairs.len(), "teacher cache reused");
            return Ok(cache);
        }
        tracing::warn!(path = %path.display(), "teacher cache is for another teacher or data; recomputing it");
    }
    let teacher = match teacher {
        Some(t) => t,
        None => {
            let path = args.teacher.as_deref().with_context(|| {
                format!(
                    "{}: no usable teacher cache; pass --teacher to compute it",
                    path.display()
                )
            })?;
            teacher.insert(open_teacher(path, args.heads, args.threads)?)
        }
    };
    let frames = distiller.config().data.frames_per_clip;
    let bar = progress_bar(
        0,
        "teacher [{bar:30}] {pos}/{len} pairs {per_sec} eta {eta}",
    );
    let started = Instant::now();
    let cache = TeacherCache::build(teacher.as_mut(), data, frames, 16, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    distiller.check_cache(&cache, path)?;
    cache.save(path)?;
    println!(
        "teacher cache: {} pairs ({frames} frames x {} clips) in {:.1} s, {}",
        cache.pairs.len(),
        data.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(cache)
}

/// Distil (or resume) and print the loss history, the student's cost, time and peak memory.
pub fn run(args: &DistillArgs) -> anyhow::Result<()> {
    if args.list_presets {
        list_presets();
        return Ok(());
    }
    let (Some(out), Some(data_dir)) = (&args.out, &args.data) else {
        anyhow::bail!("--out and --data are required");
    };
    let started = Instant::now();
    let mut teacher: Option<Box<dyn Teacher>> = None;
    let mut distiller = if args.resume {
        Distiller::resume(out).with_context(|| format!("cannot resume from {}", out.display()))?
    } else {
        let mut config = match &args.config {
            Some(path) => DistillConfig::read(path)?,
            None => DistillConfig::default(),
        };
        if let Some(s) = &args.student {
            config.student = student_arg(s)?;
            config.validate("--student")?;
        }
        let path = args
            .teacher
            .as_deref()
            .context("--teacher is required for a new run")?;
        let t = teacher.insert(open_teacher(path, args.heads, args.threads)?);
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
        }
        Distiller::new(config, t.shape(), t.identity(), out)?
    };
    let config = distiller.config().clone();
    let shape = distiller.state.teacher_shape;
    println!(
        "{}",
        cost_line(
            &config.student,
            shape.audio_length,
            teacher.as_deref().and_then(|t| t.pair_gflops())
        )
    );
    let last = distiller.target_step(args.stop_after);
    if distiller.state.step < last {
        let data = super::train::load_data(data_dir)?;
        let cache_path = args
            .cache
            .clone()
            .unwrap_or_else(|| DistillFiles::new(out).cache);
        let cache = teacher_cache(&distiller, args, &data, &cache_path, &mut teacher)?;
        drop(teacher);
        tracing::info!(
            pairs = cache.pairs.len(),
            steps = config.optim.steps,
            batch = config.optim.batch_size,
            "distilling"
        );
        let bar = progress_bar(
            config.optim.steps,
            "distill [{bar:25}] {pos}/{len} {msg} eta {eta}",
        );
        bar.set_position(distiller.state.step as u64);
        distiller.run(&data, &cache, args.stop_after, |step, v, lr| {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {:.3} (global {:.3} patch {:.3} map {:.3} matched {:.3} affinity {:.3} nce {:.3}) peak {:.2} acc {:.2} lr {lr:.1e}",
                v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
            ));
        })?;
        bar.finish_and_clear();
    }
    for h in &distiller.state.history {
        println!(
            "step {:>6}  loss {:.4}  global {:.4}  patch {:.4}  map {:.4}  matched {:.4}  affinity {:.4}  nce {:.4}  peak agreement {:.3}  acc {:.3}  lr {:.2e}  {:.2} s/step",
            h.step,
            h.loss,
            h.global,
            h.patch,
            h.map,
            h.matched_map,
            h.affinity,
            h.contrastive,
            h.peak_agreement,
            h.accuracy,
            h.lr,
            h.seconds_per_step
        );
    }
    if distiller.state.step < config.optim.steps {
        println!(
            "stopped after step {} of {}; continue with --resume",
            distiller.state.step, config.optim.steps
        );
    }
    println!(
        "distilled to step {} in {:.1} min (this invocation), peak memory {} MiB; student {}",
        distiller.state.step,
        started.elapsed().as_secs_f64() / 60.0,
        peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0}")),
        out.display()
    );
    Ok(())
}
