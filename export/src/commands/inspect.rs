//! `inspect`: a checkpoint's detected layout, dimensions and parameter counts.

use clap::Args;

use cavsync_formats::checkpoint::Checkpoint;
use cavsync_formats::layout::ModelConfig;

use super::ModelArgs;

/// Arguments of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
}

/// Print what the checkpoint holds, one aspect per line.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let ck = Checkpoint::load(&args.model.checkpoint)?;
    let c = ModelConfig::detect(&ck, args.model.heads)?;
    println!("checkpoint        {}", ck.path.display());
    println!("container         {}", ck.format);
    println!("layout            {}", c.layout.description());
    println!(
        "embedding         dim {}, heads {} (head dim {}), MLP {}",
        c.dim,
        c.heads,
        c.dim / c.heads,
        c.mlp_hidden
    );
    println!(
        "depth             audio {}, visual {}, joint {}, contrastive heads {}",
        c.depth_a, c.depth_v, c.depth_u, c.contrastive_depth
    );
    println!(
        "global tokens     {}",
        if c.has_global_tokens() {
            "yes (cls_token_a, cls_token_v)"
        } else {
            "no (global = mean of final tokens)"
        }
    );
    println!("register tokens   {} per modality", c.registers);
    println!(
        "audio input       L = {} fbank frames x 128 mel bins -> {} x {} = {} patches",
        c.audio_length,
        c.audio_rows(),
        c.audio_cols(),
        c.audio_patches()
    );
    println!(
        "visual input      {0} x {0} -> {1} x {1} = {2} patches (patch {3})",
        c.image_size,
        c.visual_grid(),
        c.visual_patches(),
        c.patch
    );
    match c.decoder {
        Some(d) => println!(
            "decoder           dim {}, depth {}, MLP {}",
            d.dim, d.depth, d.mlp_hidden
        ),
        None => println!("decoder           absent"),
    }
    println!("parameters        encoder {}", c.encoder_parameters());
    println!("                  decoder {}", c.decoder_parameters());
    println!("                  total   {}", ck.num_parameters());
    Ok(())
}
