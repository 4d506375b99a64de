#!/usr/bin/env python3
"""Reference outputs of the official CAV-MAE Sync PyTorch model for encoder parity tests.

Builds the official `CAVMAE` class (src/models/cav_mae_sync.py of a checkout of
edsonroteia/cav-mae-sync, passed with --official-src) in several configurations that the
shared fixtures do not cover (other dims, heads, depths, register counts, contrastive heads,
segment lengths, a safetensors f16 file), perturbs every parameter so that each LayerNorm and
token is distinguishable, runs `forward_feat`, and writes per configuration:

  checkpoint.pth | checkpoint.safetensors   state dict with `module.` prefixes
  audio_input.npy (2, L, 128), image_input.npy (2, 3, 224, 224)
  audio_tokens.npy, visual_tokens.npy, audio_global.npy, visual_global.npy
  meta.json                                 constructor arguments, including num_heads

Not part of CI: run by hand after `pip install torch "timm==0.4.5" numpy safetensors`
(timm 0.4.5 as in the official requirements.txt; newer timm has no `qk_scale`).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

CONFIGS = {
    # 3 heads of 16, two joint blocks (the official joint loop keeps the last block's
    # output), 4 registers, contrastive heads, L = 256.
    "sync_d48h3_r4_ch": dict(
        audio_length=256,
        fmt="pth",
        kwargs=dict(embed_dim=48, modality_specific_depth=10, num_heads=3, decoder_embed_dim=48,
                    decoder_depth=2, decoder_num_heads=4, num_register_tokens=4, cls_token=True,
                    contrastive_heads=True),
    ),
    # 8 heads of 8, three joint blocks, 2 registers, no contrastive heads, L = 160, saved as
    # f16 safetensors.
    "sync_d64h8_r2_f16": dict(
        audio_length=160,
        fmt="safetensors-f16",
        kwargs=dict(embed_dim=64, modality_specific_depth=9, num_heads=8, decoder_embed_dim=32,
                    decoder_depth=1, decoder_num_heads=2, num_register_tokens=2, cls_token=True,
                    contrastive_heads=False),
    ),
    # Original layout (no global tokens) with registers and contrastive heads, L = 512.
    "plain_d32_r3_ch": dict(
        audio_length=512,
        fmt="pth",
        kwargs=dict(embed_dim=32, modality_specific_depth=2, num_heads=2, decoder_embed_dim=32,
                    decoder_depth=1, decoder_num_heads=2, num_register_tokens=3, cls_token=False,
                    contrastive_heads=True),
    ),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", required=True, help="the `src` folder of a cav-mae-sync checkout")
    ap.add_argument("--out", required=True, help="output folder (one sub-folder per configuration)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    sys.path.insert(0, os.path.abspath(args.official_src))
    from models.cav_mae_sync import CAVMAE  # noqa: E402  (the official class)

    for name, cfg in CONFIGS.items():
        torch.manual_seed(args.seed)
        model = CAVMAE(audio_length=cfg["audio_length"], **cfg["kwargs"]).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            if cfg["fmt"] == "safetensors-f16":
                for p in model.parameters():
                    p.copy_(p.half().float())
        audio = torch.randn(2, cfg["audio_length"], 128)
        image = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            out = model.forward_feat(audio, image)
        if cfg["kwargs"]["cls_token"]:
            audio_tokens, visual_tokens, audio_global, visual_global = out
        else:
            audio_tokens, visual_tokens = out
            audio_global, visual_global = audio_tokens.mean(dim=1), visual_tokens.mean(dim=1)

        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        state = {"module." + k: v.detach().clone() for k, v in model.state_dict().items()}
        if cfg["fmt"] == "pth":
            torch.save(state, os.path.join(d, "checkpoint.pth"))
        else:
            from safetensors.torch import save_file
            save_file({k: v.half().contiguous() for k, v in state.items()},
                      os.path.join(d, "checkpoint.safetensors"))
        for fname, t in [("audio_input", audio), ("image_input", image),
                         ("audio_tokens", audio_tokens), ("visual_tokens", visual_tokens),
                         ("audio_global", audio_global), ("visual_global", visual_global)]:
            np.save(os.path.join(d, fname + ".npy"), t.detach().numpy().astype("<f4"))
        meta = dict(variant=name, audio_length=cfg["audio_length"], format=cfg["fmt"],
                    kwargs=cfg["kwargs"], seed=args.seed, torch=torch.__version__)
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(name, {k: tuple(v.shape) for k, v in [("audio_tokens", audio_tokens), ("visual_tokens", visual_tokens)]})


if __name__ == "__main__":
    main()
