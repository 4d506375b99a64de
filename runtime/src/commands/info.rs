//! `cavsync info`: what a verified bundle's manifest says.

use super::{BundleArgs, DeviceArgs};

/// Arguments of `cavsync info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Open the bundle (verifying it and preparing its plans on `--device`) and print its manifest.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bundle = args.bundle.open_on(&args.device)?;
    let m = &bundle.manifest;
    println!(
        "bundle            {} (format {}, verified)",
        bundle.dir.display(),
        m.format_version
    );
    println!(
        "model             {} layout, dim {}, heads {}, depth audio {} / visual {} / joint {}, registers {}, contrastive {}",
        m.model.layout,
        m.model.dim,
        m.model.heads,
        m.model.depth_audio,
        m.model.depth_visual,
        m.model.depth_joint,
        m.model.registers,
        m.model.contrastive_depth
    );
    println!(
        "precision         {} (batch {})",
        m.model.precision, m.model.batch
    );
    let guidance = m.model.precision_guidance.as_deref();
    println!(
        "precision use     {}",
        guidance.unwrap_or(m.model.precision.guidance())
    );
    if let (Some(params), Some(gflops)) = (m.model.parameters, m.model.gflops_per_pair) {
        println!(
            "cost              {:.2} M encoder parameters, {gflops:.3} GFLOP per frame pair",
            params as f64 / 1e6
        );
    }
    for (name, e) in [("audio", &m.audio), ("visual", &m.visual)] {
        println!(
            "{name:<17} {} {:?} -> {} (1, {}), {} (1, {}, {}); grid {}x{}; sha256 {}",
            e.file,
            e.input_shape,
            e.global_output,
            m.model.dim,
            e.tokens_output,
            e.tokens,
            m.model.dim,
            e.grid[0],
            e.grid[1],
            e.sha256
        );
    }
    let a = &m.audio_preprocessing;
    println!(
        "audio input       {} Hz, {} mel bins, {}/{} samples frame/shift, L = {}, T = {}, clip {} frames, norm (x - {}) / {}",
        a.sample_rate,
        a.num_mel_bins,
        a.frame_length,
        a.frame_shift,
        a.target_length,
        a.total_frames,
        a.clip_frames,
        a.norm_mean,
        a.norm_std
    );
    let i = &m.image_preprocessing;
    println!(
        "image input       {} px, {} resize, {} crop, mean {:?}, std {:?}",
        i.size, i.resize, i.crop, i.mean, i.std
    );
    let l = &m.localization;
    match &l.activity {
        Some(h) => println!("localization      active when {h} >= 0 ({})", l.calibration),
        None => println!(
            "localization      active threshold {} ({})",
            l.active_threshold, l.calibration
        ),
    }
    println!(
        "provenance        {} (sha256 {}), {}",
        m.provenance.checkpoint, m.provenance.checkpoint_sha256, m.provenance.tool
    );
    Ok(())
}
