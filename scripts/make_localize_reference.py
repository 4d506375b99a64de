#!/usr/bin/env python3
"""Reference outputs of torch's bilinear interpolation for the localization tests.

Writes runtime/core/tests/data/localize/*.npy (float32), each case as a pair
`<name>.input.npy` (h_in, w_in) and `<name>.output.npy`, computed with
`torch.nn.functional.interpolate(x[None, None], size=(h, w), mode='bilinear',
align_corners=False)` (half-pixel centres, edge clamp, no antialias):

  up_2x2_4x4       2x2 -> 4x4
  up_3x5_7x11      3x5 -> 7x11 (non-integer, different scales per axis)
  down_5x7_3x4     5x7 -> 3x4 (downscaling without antialias)
  up_14x14_224     14x14 -> 224x224, stored as five 16x16 blocks of the output
                   (top-left, top-right, bottom-left, bottom-right, centre rows/cols
                   104..120), shape (5, 16, 16), to keep the file small

Not part of CI: run by hand after `pip install torch numpy`, from the repository root.
"""

import os

import numpy as np
import torch

OUT = os.path.join("runtime", "tests", "data", "localize")


def interpolate(x, h, w):
    t = torch.from_numpy(x)[None, None]
    y = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return y[0, 0].numpy().astype(np.float32)


def save(name, x, y):
    np.save(os.path.join(OUT, name + ".input.npy"), x.astype(np.float32))
    np.save(os.path.join(OUT, name + ".output.npy"), y.astype(np.float32))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20250501)

    x = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    save("up_2x2_4x4", x, interpolate(x, 4, 4))

    x = rng.standard_normal((3, 5)).astype(np.float32)
    save("up_3x5_7x11", x, interpolate(x, 7, 11))

    x = rng.standard_normal((5, 7)).astype(np.float32)
    save("down_5x7_3x4", x, interpolate(x, 3, 4))

    x = rng.uniform(-0.2, 0.6, (14, 14)).astype(np.float32)
    y = interpolate(x, 224, 224)
    blocks = np.stack([y[:16, :16], y[:16, -16:], y[-16:, :16], y[-16:, -16:], y[104:120, 104:120]])
    save("up_14x14_224", x, blocks)


if __name__ == "__main__":
    main()
