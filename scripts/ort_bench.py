#!/usr/bin/env python3
"""onnxruntime side of scripts/bench_vs_onnxruntime.sh: latency of a bundle's graphs, and parity with cavsync.

  python3 scripts/ort_bench.py BUNDLE --threads 2 --iterations 20            # latency
  python3 scripts/ort_bench.py BUNDLE --parity AUDIO.npy IMAGE.npy OUTDIR    # outputs vs cavsync embed
  python3 scripts/ort_bench.py F32_BUNDLE --quantize dynamic|static         # onnxruntime's own int8 of the same graphs

The frame pair is timed two ways, as cavsync runs it: the encoders one after the other with
--threads each, and (with 2 threads or more) side by side on two Python threads (onnxruntime
releases the GIL while it runs), each session with half the threads; `frame pair` is the faster
of the two, and both are printed.

--quantize times onnxruntime's own int8 quantization of the f32 graphs: `quantize_dynamic` (int8
weights, MatMulInteger) or `quantize_static` in the QOperator format (QLinearMatMul), per
channel, calibrated on 8 normally distributed inputs (enough for a latency comparison, not for
accuracy).
"""

import argparse
import os
import statistics
import threading
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def quantized(path, scheme):
    """onnxruntime's int8 version of the graph at `path`, written beside it in a temporary folder."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    out = os.path.join(tempfile.mkdtemp(prefix="ort-int8-"), os.path.basename(path))
    if scheme == "dynamic":
        quantize_dynamic(path, out, weight_type=QuantType.QInt8, per_channel=True)
        return out
    inp = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()[0]

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.items = iter([{inp.name: rng.standard_normal(inp.shape).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(path, out, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--parity", nargs=3, metavar=("AUDIO_NPY", "IMAGE_NPY", "CAVSYNC_OUT"))
    ap.add_argument("--quantize", choices=["dynamic", "static"])
    args = ap.parse_args()
    paths = {m: os.path.join(args.bundle, f"{m}.onnx") for m in ("audio", "visual")}
    if args.quantize:
        paths = {m: quantized(p, args.quantize) for m, p in paths.items()}
    audio = session(paths["audio"], args.threads)
    visual = session(paths["visual"], args.threads)
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
    pairs = {"one after the other": statistics.median(tp)}
    if args.threads >= 2:
        half = args.threads // 2
        pairs[f"side by side, {half} thread(s) each"] = side_by_side(
            session(paths["audio"], half), session(paths["visual"], half), a, v, args.iterations)
    kind = f"int8 {args.quantize}" if args.quantize else "as given"
    print(f"onnxruntime {ort.__version__} ({kind}), threads {args.threads}, {args.iterations} iterations")
    print(f"audio encoder     {1e3 * statistics.median(ta):10.2f} ms")
    print(f"visual encoder    {1e3 * statistics.median(tv):10.2f} ms")
    for how, t in pairs.items():
        print(f"pair, {how}: {1e3 * t:.2f} ms")
    print(f"frame pair        {1e3 * min(pairs.values()):10.2f} ms")


def side_by_side(audio, visual, a, v, iterations):
    """Median pair latency with the audio session on a worker thread while the visual one runs on this one."""
    a_name, v_name = audio.get_inputs()[0].name, visual.get_inputs()[0].name
    go, done = threading.Semaphore(0), threading.Semaphore(0)
    stop = []

    def worker():
        while True:
            go.acquire()
            if stop:
                return
            audio.run(None, {a_name: a})
            done.release()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    times = []
    for i in range(iterations + 2):
        t0 = time.perf_counter()
        go.release()
        visual.run(None, {v_name: v})
        done.acquire()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    stop.append(True)
    go.release()
    t.join()
    return statistics.median(times)

if __name__ == "__main__":
    main()
