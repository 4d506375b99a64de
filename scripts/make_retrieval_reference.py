#!/usr/bin/env python3
"""Reference outputs of the official CAV-MAE Sync retrieval evaluation for `runtime/tests/retrieval.rs`.

Loads `get_similarity`, `get_agg_sim_mat` and `compute_metrics` from the official
`src/retrieval.py` (a checkout of edsonroteia/cav-mae-sync, passed with --official-src) at run
time: the file is parsed with `ast` and only those functions and its numpy imports are executed,
because importing the module pulls in torch, the data loaders and the models.

The inputs are fed exactly as `get_retrieval_result` feeds them: per-frame global tokens,
L2-normalised in float32 the way `torch.nn.functional.normalize` does it (x / max(|x|, 1e-12)),
shaped (clips, frames, dim); audio->visual is `get_agg_sim_mat(audio, visual)`, visual->audio is
`get_agg_sim_mat(visual, audio)`, and each similarity matrix goes through `compute_metrics`.

Writes, per case, under --out/<case>/:

  audio.npy, visual.npy           (clips, frames, dim) float32, raw (not normalised)
  sim_<strategy>_<direction>.npy  (clips, clips) float64, as get_agg_sim_mat returns it
  metrics.npy                     (4, 2, 4) float64: strategy x direction x [R1, R5, R10, MR]

with strategies in the order max, mean, diagonal_mean, diagonal_max and directions a2v, v2a.
Cases: `random` (37 clips, 16 frames, 24 dims), `ties` (exact duplicate clips, so that rows hold
exact ties with the true pair) and `small` (many rows with an even number of matches, so that
median ranks end in .5).

Run: python3 scripts/make_retrieval_reference.py --official-src /path/to/cav-mae-sync/src
"""

import argparse
import ast
import contextlib
import io
import os

import numpy as np

STRATEGIES = ["max", "mean", "diagonal_mean", "diagonal_max"]
DIRECTIONS = ["a2v", "v2a"]
OFFICIAL_FUNCTIONS = {"get_similarity", "get_agg_sim_mat", "compute_metrics"}


def load_official(src_dir):
    """Execute the needed functions of the official retrieval.py, with its numpy imports only."""
    path = os.path.join(src_dir, "retrieval.py")
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)

    def is_numpy_import(node):
        if isinstance(node, ast.Import):
            return all(alias.name.split(".")[0] == "numpy" for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            return (node.module or "").split(".")[0] == "numpy"
        return False

    imports = [node for node in tree.body if is_numpy_import(node)]
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in OFFICIAL_FUNCTIONS]
    missing = OFFICIAL_FUNCTIONS - {node.name for node in functions}
    if missing:
        raise SystemExit(f"{path}: missing functions {sorted(missing)}")
    namespace = {}
    exec(compile(ast.Module(body=imports + functions, type_ignores=[]), path, "exec"), namespace)
    return namespace


def torch_normalize(x):
    """torch.nn.functional.normalize(x, dim=-1) in float32."""
    x = x.astype(np.float32)
    denom = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))
    return (x / denom).astype(np.float32)


def make_case(name, rng):
    """Raw (audio, visual) embeddings of one case, float32 (clips, frames, dim)."""
    if name == "random":
        n, t, d = 37, 16, 24
        # A clip-level signal (seen by every strategy) plus a frame-aligned one (what the
        # diagonal strategies pick up), under independent noise.
        clip_signal = rng.standard_normal((n, 1, d))
        frame_signal = rng.standard_normal((n, t, d))
        audio = clip_signal + 1.5 * frame_signal + 4.0 * rng.standard_normal((n, t, d))
        visual = 0.8 * clip_signal + 1.5 * frame_signal + 4.5 * rng.standard_normal((n, t, d))
    elif name == "ties":
        n, t, d = 14, 5, 6
        shared = rng.standard_normal((n, 1, d))
        audio = shared + 1.2 * rng.standard_normal((n, t, d))
        visual = shared + 1.2 * rng.standard_normal((n, t, d))
    elif name == "small":
        n, t, d = 10, 2, 3
        audio = rng.standard_normal((n, t, d))
        visual = rng.standard_normal((n, t, d))
    else:
        raise ValueError(name)
    # Per-frame scales spanning two decades: the similarity must not depend on them.
    audio = audio * np.exp(rng.uniform(-2.3, 2.3, (n, t, 1)))
    visual = visual * np.exp(rng.uniform(-2.3, 2.3, (n, t, 1)))
    audio = audio.astype(np.float32)
    visual = visual.astype(np.float32)
    if name == "ties":
        # Exact copies (and a power-of-two multiple, which normalises to the same bits) give rows
        # whose true pair ties with other candidates, in both directions.
        visual[5] = visual[2]
        visual[9] = visual[2] * np.float32(4.0)
        audio[7] = audio[11]
        audio[3] = audio[0]
        visual[12] = visual[1]
    if name == "small":
        audio[4] = audio[6]
        visual[8] = visual[3]
    return audio, visual


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", required=True, help="the `src` folder of a cav-mae-sync checkout")
    ap.add_argument("--out", default="runtime/core/tests/data/retrieval", help="output folder (one sub-folder per case)")
    ap.add_argument("--seed", type=int, default=20250)
    args = ap.parse_args()

    official = load_official(args.official_src)
    rng = np.random.default_rng(args.seed)
    for case in ["random", "ties", "small"]:
        audio, visual = make_case(case, rng)
        out = os.path.join(args.out, case)
        os.makedirs(out, exist_ok=True)
        np.save(os.path.join(out, "audio.npy"), audio)
        np.save(os.path.join(out, "visual.npy"), visual)
        a_feat, v_feat = torch_normalize(audio), torch_normalize(visual)
        metrics = np.zeros((len(STRATEGIES), len(DIRECTIONS), 4), dtype=np.float64)
        for s, strategy in enumerate(STRATEGIES):
            for k, direction in enumerate(DIRECTIONS):
                queries, candidates = (a_feat, v_feat) if direction == "a2v" else (v_feat, a_feat)
                sim = official["get_agg_sim_mat"](queries, candidates, strategy=strategy)
                np.save(os.path.join(out, f"sim_{strategy}_{direction}.npy"), sim.astype(np.float64))
                with contextlib.redirect_stdout(io.StringIO()):
                    result = official["compute_metrics"](sim)
                metrics[s, k] = [result["R1"], result["R5"], result["R10"], result["MR"]]
                print(
                    f"{case:6} {strategy:13} {direction}: R@1 {100 * result['R1']:7.3f}%  "
                    f"R@5 {100 * result['R5']:7.3f}%  R@10 {100 * result['R10']:7.3f}%  "
                    f"MR {float(result['MR']):g}"
                )
        np.save(os.path.join(out, "metrics.npy"), metrics)


if __name__ == "__main__":
    main()
