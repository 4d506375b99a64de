#!/usr/bin/env python3
"""Float64 torchaudio Kaldi fbank references for the fbank fixtures.

The shared golden log-mels were computed by torchaudio in float32, whose FFT rounding moves
mel energies near the log floor by up to ~1e-2 in log-mel (torchaudio float32 on another
torch build differs from the golden by 9.5e-3 on tone_chirp). Running the very same
torchaudio code in float64, on the float32 mean-subtracted waveform the official loader builds
(`waveform - waveform.mean()` on torchaudio.load's float32 samples), gives the exact value of
the algorithm on the official input, which cavsync's fbank must reproduce tightly. Writes `<name>.fbank64.npy` (float64) beside each `<name>.wav` given.

Not part of CI: `pip install torch torchaudio numpy`, then
    python3 scripts/make_fbank_f64_reference.py runtime/core/tests/data/fbank/*.wav
"""

import importlib.util
import sys
import types
import wave

import numpy as np
import torch


def load_kaldi():
    try:
        from torchaudio.compliance import kaldi
        return kaldi
    except Exception:  # torchaudio's C++ extension may not match the installed torch
        import importlib.metadata as md
        files = [f for f in md.files("torchaudio") if str(f).endswith("compliance/kaldi.py")]
        sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
        spec = importlib.util.spec_from_file_location("kaldi", files[0].locate())
        kaldi = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(kaldi)
        return kaldi


def read_pcm16_mono(path):
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit PCM")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        x = frames.reshape(-1, w.getnchannels()).astype(np.float64).mean(axis=1) / 32768.0
        x = x.astype(np.float32)
        return x, w.getframerate()


def main():
    kaldi = load_kaldi()
    for path in sys.argv[1:]:
        x, sr = read_pcm16_mono(path)
        if len(x) < 400:
            print(f"{path}: {len(x)} samples, torchaudio refuses it; skipped")
            continue
        t = torch.from_numpy(x)[None]
        t = (t - t.mean()).to(torch.float64)
        fb = kaldi.fbank(t, htk_compat=True, sample_frequency=sr, use_energy=False,
                         window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        out = path[: -len(".wav")] + ".fbank64.npy"
        np.save(out, fb.numpy().astype("<f8"))
        print(out, tuple(fb.shape))


if __name__ == "__main__":
    main()
