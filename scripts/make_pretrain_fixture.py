#!/usr/bin/env python3
"""Reference losses of the official CAV-MAE Sync pretraining `forward` for the trainer's parity test.

Builds the official `CAVMAE` class (src/models/cav_mae_sync.py of a checkout of
edsonroteia/cav-mae-sync, passed with --official-src) with global tokens, registers,
contrastive heads, two joint blocks and a decoder, perturbs every parameter, and runs
`forward` (mask ratio 0.75 on both modalities) with the masking noise fixed, in four
settings: {global-only, global_local_losses} x {plain, norm_pix_loss} targets. Writes:

  checkpoint.pth                 state dict with `module.` prefixes
  audio_input.npy (4, 64, 128), image_input.npy (4, 3, 224, 224)
  noise_a.npy (4, 32), noise_v.npy (4, 196)   the uniform noise the masking argsorts
  losses.json                    per setting: loss_mae_a, loss_mae_v, nce (loss_c / weight), c_acc

Not part of CI: run by hand after `pip install torch "timm==0.4.5" numpy`.
"""

import argparse
import contextlib
import json
import os
import sys

import numpy as np
import torch

KWARGS = dict(embed_dim=64, modality_specific_depth=10, num_heads=1, decoder_embed_dim=64,
              decoder_depth=1, decoder_num_heads=2, num_register_tokens=2, cls_token=True,
              contrastive_heads=True)
AUDIO_LENGTH = 64
BATCH = 4
CONTRAST_WEIGHT = 0.01


@contextlib.contextmanager
def fixed_masking_noise(noise_a, noise_v):
    """Makes `torch.rand` return the given masking noise when the official masking asks for its shape."""
    real_rand = torch.rand

    def fixed_rand(*size, **kw):
        for noise in (noise_a, noise_v):
            if noise.shape == tuple(size):
                return noise.clone()
        return real_rand(*size, **kw)

    torch.rand = fixed_rand
    try:
        yield
    finally:
        torch.rand = real_rand


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", required=True, help="the `src` folder of a cav-mae-sync checkout")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.official_src))
    from models.cav_mae_sync import CAVMAE  # noqa: E402  (the official class)

    torch.manual_seed(args.seed)
    model = CAVMAE(audio_length=AUDIO_LENGTH, **KWARGS).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    audio = torch.randn(BATCH, AUDIO_LENGTH, 128)
    image = torch.randn(BATCH, 3, 224, 224)
    noise_a = torch.rand(BATCH, model.patch_embed_a.num_patches)
    noise_v = torch.rand(BATCH, model.patch_embed_v.num_patches)

    results = {}
    for global_local in (False, True):
        for norm_pix in (False, True):
            model.global_local_losses = global_local
            model.norm_pix_loss = norm_pix
            with fixed_masking_noise(noise_a, noise_v), torch.no_grad():
                out = model(audio, image, mask_ratio_a=0.75, mask_ratio_v=0.75,
                            mae_loss_weight=1.0, contrast_loss_weight=CONTRAST_WEIGHT)
            loss_mae_a, loss_mae_v, loss_c, c_acc = out[2], out[3], out[4], out[7]
            key = f"global_local={str(global_local).lower()},norm_pix={str(norm_pix).lower()}"
            results[key] = dict(loss_mae_a=float(loss_mae_a), loss_mae_v=float(loss_mae_v),
                                nce=float(loss_c) / CONTRAST_WEIGHT, c_acc=float(c_acc))
            print(key, results[key])

    os.makedirs(args.out, exist_ok=True)
    state = {"module." + k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(args.out, "checkpoint.pth"))
    for name, t in [("audio_input", audio), ("image_input", image), ("noise_a", noise_a), ("noise_v", noise_v)]:
        np.save(os.path.join(args.out, name + ".npy"), t.numpy().astype("<f4"))
    with open(os.path.join(args.out, "losses.json"), "w") as f:
        json.dump(dict(kwargs=KWARGS, audio_length=AUDIO_LENGTH, seed=args.seed, torch=torch.__version__,
                       contrast_weight=CONTRAST_WEIGHT, results=results), f, indent=1)


if __name__ == "__main__":
    main()
