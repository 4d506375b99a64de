#!/usr/bin/env python3
"""Reference gradients of the official CAV-MAE Sync pretraining loss for the trainer's parity test.

Loads the fixture written by make_pretrain_fixture.py (checkpoint, inputs, masking noise), runs
the official `CAVMAE.forward` with global_local_losses on and plain MAE targets (the demo
model's objective), back-propagates the total loss (MAE audio + MAE visual + 0.01 InfoNCE) and
writes the gradient of every trainable parameter, zeros where the loss does not reach it, as
`grads.pth` (official key names, no `module.` prefix) into the fixture folder.

Not part of CI: run by hand after `pip install torch "timm==0.4.5" numpy`.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

from make_pretrain_fixture import fixed_masking_noise


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", required=True, help="the `src` folder of a cav-mae-sync checkout")
    ap.add_argument("--fixture", default="tests/data/pretrain", help="folder written by make_pretrain_fixture.py")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.official_src))
    from models.cav_mae_sync import CAVMAE  # noqa: E402  (the official class)

    meta = json.load(open(os.path.join(args.fixture, "losses.json")))
    model = CAVMAE(audio_length=meta["audio_length"], **meta["kwargs"]).train()
    state = torch.load(os.path.join(args.fixture, "checkpoint.pth"))
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    load = lambda name: torch.from_numpy(np.load(os.path.join(args.fixture, name + ".npy")))
    audio, image, noise_a, noise_v = (load(n) for n in ("audio_input", "image_input", "noise_a", "noise_v"))

    model.global_local_losses = True
    model.norm_pix_loss = False
    with fixed_masking_noise(noise_a, noise_v):
        out = model(audio, image, mask_ratio_a=0.75, mask_ratio_v=0.75,
                    mae_loss_weight=1.0, contrast_loss_weight=meta["contrast_weight"])
    out[0].backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for name, p in model.named_parameters() if p.requires_grad}
    torch.save(grads, os.path.join(args.fixture, "grads.pth"))
    print(f"loss {out[0].item():.7f}; {len(grads)} gradients, "
          f"{sum(1 for p in model.parameters() if p.requires_grad and p.grad is None)} of them zero")


if __name__ == "__main__":
    main()
