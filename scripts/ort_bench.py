#!/usr/bin/env python3
"""onnxruntime side of scripts/bench_vs_onnxruntime.sh: latency of a bundle's graphs, and parity with cavsync.

  python3 scripts/ort_bench.py BUNDLE --threads 2 --iterations 20            # latency
  python3 scripts/ort_bench.py BUNDLE --parity AUDIO.npy IMAGE.npy OUTDIR    # outputs vs cavsync embed
"""

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--parity", nargs=3, metavar=("AUDIO_NPY", "IMAGE_NPY", "CAVSYNC_OUT"))
    args = ap.parse_args()
    audio = session(os.path.join(args.bundle, "audio.onnx"), args.threads)
    visual = session(os.path.join(args.bundle, "visual.onnx"), args.threads)
    a_in = audio.get_inputs()[0]
    v_in = visual.get_inputs()[0]

    if args.parity:
        a_batch, v_batch, out = np.load(args.parity[0]), np.load(args.parity[1]), args.parity[2]
        for name, sess, inp, batch in [("audio", audio, a_in, a_batch), ("visual", visual, v_in, v_batch)]:
            outs = [sess.run(None, {inp.name: item[None].astype(np.float32)}) for item in batch]
            g = np.concatenate([o[0] for o in outs])
            t = np.concatenate([o[1] for o in outs])
            for kind, ours in [("global", g), ("tokens", t)]:
                theirs = np.load(os.path.join(out, f"{name}_{kind}.npy"))
                print(f"parity {name}_{kind}: max abs |onnxruntime - cavsync| = {np.abs(ours - theirs).max():.3e}")
        return

    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_in.shape).astype(np.float32)
    v = rng.standard_normal(v_in.shape).astype(np.float32)
    for _ in range(2):
        audio.run(None, {a_in.name: a})
        visual.run(None, {v_in.name: v})
    ta, tv, tp = [], [], []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        audio.run(None, {a_in.name: a})
        t1 = time.perf_counter()
        visual.run(None, {v_in.name: v})
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tv.append(t2 - t1)
        tp.append(t2 - t0)
    print(f"onnxruntime {ort.__version__}, threads {args.threads}, {args.iterations} iterations")
    print(f"audio encoder     {1e3 * statistics.median(ta):10.2f} ms")
    print(f"visual encoder    {1e3 * statistics.median(tv):10.2f} ms")
    print(f"frame pair        {1e3 * statistics.median(tp):10.2f} ms")


if __name__ == "__main__":
    main()
