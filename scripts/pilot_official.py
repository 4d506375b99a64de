#!/usr/bin/env python3
"""Recipe pilots with the official CAV-MAE Sync code: quick training runs on synthetic data.

The burn trainer (`cavsync-export train`) reproduces the official pretraining `forward` (see
tests/pretrain_parity.rs), but the official PyTorch class trains about 8x faster on this
2-core CPU, so recipe choices for the demo model (lambda_c, bidirectional InfoNCE, ...) are
piloted here first and the chosen recipe is then trained with `cavsync-export train`.

  prep   --data DIR --out CACHE      fbank (via `cavsync fbank`) and decoded frames of a synth set
  train  --train CACHE --eval NAME=CACHE:ANNOTATIONS ... --name RUN --out DIR [recipe flags]
  retrieve --checkpoint RUN.pth --eval NAME=CACHE ...    A->V / V->A R@1 among the clips, diagonal_mean

`train` prints, every --every steps, the mean losses and, per evaluation set (first 30 clips),
pointing, cIoU@0.5 and mean cIoU of the min-max normalised, bilinearly upsampled cosine map
between the audio global token and the visual patch tokens (boxes rounded to pixels: close to,
not exactly, `cavsync localize --annotations`), and act = P(max patch cosine of a sounding frame
> that of a silent frame). Not part of CI: needs `pip install torch "timm==0.4.5" numpy pillow`
and an official checkout's `src` (--official-src).
"""

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CLIP_FRAMES, SEGMENT, FRAMES = 1024, 64, 16
NORM_MEAN, NORM_STD = -5.081, 4.4849


def segment_start(k):
    """Start row of frame k's centred segment in the 1024-row clip (DESIGN.md section 2)."""
    return min(max(0, round(k * CLIP_FRAMES / FRAMES) - SEGMENT // 2), CLIP_FRAMES - SEGMENT)


def prep(args):
    from PIL import Image

    rows = json.load(open(os.path.join(args.data, "datafile.json")))["data"]
    os.makedirs(args.out, exist_ok=True)

    def fbank(row):
        tmp = os.path.join(args.out, f"fb_{row['video_id']}.npy")
        subprocess.run([args.cavsync, "fbank", "--wav", row["wav"], "--out", tmp], check=True, capture_output=True)
        raw = np.load(tmp)
        os.remove(tmp)
        clip = np.zeros((CLIP_FRAMES, 128), np.float32)
        n = min(CLIP_FRAMES, len(raw))
        clip[:n] = raw[:n]
        return (clip - NORM_MEAN) / NORM_STD

    with ThreadPoolExecutor(2) as ex:
        fb = list(ex.map(fbank, rows))
    np.save(os.path.join(args.out, "fbank.npy"), np.stack(fb).astype(np.float16))
    images = np.zeros((len(rows), FRAMES, 224, 224, 3), np.uint8)
    for i, row in enumerate(rows):
        for k in range(FRAMES):
            path = os.path.join(row["video_path"], f"frame_{k}", row["video_id"] + ".jpg")
            images[i, k] = np.asarray(Image.open(path).convert("RGB"))
    np.save(os.path.join(args.out, "images.npy"), images)
    json.dump([r["video_id"] for r in rows], open(os.path.join(args.out, "ids.json"), "w"))
    print(f"{len(rows)} clips -> {args.out}")


def build(args):
    import torch

    sys.path.insert(0, os.path.abspath(args.official_src))
    from models.cav_mae_sync import CAVMAE  # the official class

    model = CAVMAE(audio_length=SEGMENT, embed_dim=args.dim, modality_specific_depth=args.depth,
                   num_heads=args.dim // 64, decoder_embed_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
                   decoder_num_heads=2, num_register_tokens=args.registers, cls_token=True,
                   contrastive_heads=False, global_local_losses=bool(args.global_local),
                   norm_pix_loss=bool(args.norm_pix))
    # The official class always has 12 - depth joint blocks; the demo model has one.
    model.blocks_u = model.blocks_u[:1]
    if getattr(args, "bidirectional", 0):
        # The official forward never passes bidirect_contrast; the option exists in forward_contrastive.
        model.forward_contrastive = functools.partial(model.forward_contrastive, bidirect_contrast=True)
    return model


class Cache:
    def __init__(self, folder):
        self.fbank = np.load(os.path.join(folder, "fbank.npy"), mmap_mode="r")
        self.images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
        self.ids = json.load(open(os.path.join(folder, "ids.json")))

    def batch(self, clips, frames):
        import torch

        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        a = np.stack([self.fbank[c, segment_start(k):segment_start(k) + SEGMENT] for c, k in zip(clips, frames)])
        v = np.stack([self.images[c, k] for c, k in zip(clips, frames)])
        v = torch.from_numpy(v).permute(0, 3, 1, 2).float() / 255.0
        return torch.from_numpy(a.astype(np.float32)), (v - mean) / std


def localization(model, cache, annotations, clips=30):
    import torch
    import torch.nn.functional as F

    points, cious, sounding_max, silent_max = [], [], [], []
    model.eval()
    with torch.no_grad():
        for c in range(min(clips, len(cache.ids))):
            a, v = cache.batch([c] * FRAMES, list(range(FRAMES)))
            _, patches, global_a, _ = model.forward_feat(a, v)
            cos = F.cosine_similarity(patches, global_a[:, None, :], dim=-1).view(FRAMES, 1, 14, 14)
            peak = cos.view(FRAMES, -1).max(1).values
            maps = F.interpolate(cos, size=(224, 224), mode="bilinear", align_corners=False).view(FRAMES, -1)
            lo, hi = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
            maps = ((maps - lo) / (hi - lo + 1e-12)).view(FRAMES, 224, 224).numpy()
            for k, frame in enumerate(annotations[cache.ids[c]]["frames"]):
                if not frame["sounding"]:
                    silent_max.append(peak[k].item())
                    continue
                sounding_max.append(peak[k].item())
                truth = np.zeros((224, 224), bool)
                for obj in frame["sounding"]:
                    x0, y0, x1, y1 = [int(round(t * 224)) for t in obj["bbox"]]
                    truth[y0:y1, x0:x1] = True
                m = maps[k]
                pred = m >= np.sort(m.ravel())[m.size // 2]
                cious.append((pred & truth).sum() / (truth.sum() + (pred & ~truth).sum()))
                y, x = np.unravel_index(m.argmax(), m.shape)
                points.append(bool(truth[y, x]))
    model.train()
    s, q = np.array(sounding_max), np.array(silent_max)
    act = float((s[:, None] > q[None, :]).mean()) if len(q) else float("nan")
    return f"pt {np.mean(points):.2f} c5 {np.mean(np.array(cious) >= 0.5):.2f} mc {np.mean(cious):.2f} act {act:.2f}"


def mil_loss(model, a, v, temperature):
    """EZ-VSL's multiple-instance InfoNCE (not part of the paper's objective): a clip's audio global token against
    each frame's best-matching unmasked patch token, both directions, so that the sounding object's patches learn to
    match its sound."""
    import torch
    import torch.nn.functional as F

    _, patches, global_a, _ = model.forward_feat(a, v)
    sim = torch.einsum("id,jpd->ijp", F.normalize(global_a, dim=-1), F.normalize(patches, dim=-1)).max(-1).values
    target = torch.arange(len(sim))
    return (F.cross_entropy(sim / temperature, target) + F.cross_entropy(sim.t() / temperature, target)) / 2


def load_weights(path):
    """State dict of a `.pth` (official, `module.` prefixes) or `.safetensors` (cavsync-export train) checkpoint."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path)
    return {k.removeprefix("module."): t for k, t in state.items()}


def train(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build(args)
    if args.init:
        model.load_state_dict(load_weights(args.init))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    data = Cache(args.train)
    evals = []
    for spec in args.eval:
        name, rest = spec.split("=", 1)
        folder, ann = rest.split(":", 1)
        clips = {c["video_id"]: c for c in json.load(open(ann))["clips"]}
        evals.append((name, Cache(folder), clips))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * p))

    print(json.dumps(vars(args)), flush=True)
    start, history, first = time.time(), [], 0
    state_path = os.path.join(args.out, args.name + ".state.pt")
    if args.resume and os.path.exists(state_path):
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        first, history = state["step"], state["history"]
        print(f"resumed at step {first}", flush=True)
    for step in range(first, min(args.steps, args.stop_after or args.steps)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        a, v = data.batch(rng.integers(0, len(data.ids), args.batch), rng.integers(0, FRAMES, args.batch))
        out = model(a, v, mask_ratio_a=0.75, mask_ratio_v=0.75, contrast_loss_weight=args.contrastive_weight)
        loss = out[0]
        if args.mil_weight:
            loss = loss + args.mil_weight * mil_loss(model, a, v, args.mil_temperature)
        loss.backward()
        opt.step()
        opt.zero_grad()
        history.append([out[0].item(), out[2].item(), out[3].item(), out[4].item() / args.contrastive_weight, float(out[7])])
        if (step + 1) % args.every == 0 or step + 1 in (args.steps, args.stop_after):
            r = np.mean(history[-args.every:], 0)
            line = (f"step {step + 1} t={time.time() - start:.0f}s loss {r[0]:.3f} mae_a {r[1]:.3f} mae_v {r[2]:.3f} "
                    f"nce {r[3]:.3f} acc {r[4]:.3f}")
            print(line + "".join(f" | {n}: {localization(model, c, a)}" for n, c, a in evals), flush=True)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            os.makedirs(args.out, exist_ok=True)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                     "numpy_rng": rng.bit_generator.state, "step": step + 1, "history": history}
            torch.save(state, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
    os.makedirs(args.out, exist_ok=True)
    final = os.path.join(args.out, args.name + ".pth")
    torch.save({"module." + k: t for k, t in model.state_dict().items()}, final + ".tmp")
    os.replace(final + ".tmp", final)


def retrieve(args):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    model = build(args)
    model.load_state_dict(load_weights(args.checkpoint))
    model.eval()
    for spec in args.eval:
        name, folder = spec.split("=", 1)
        cache = Cache(folder)
        ga, gv = [], []
        with torch.no_grad():
            for c in range(len(cache.ids)):
                a, v = cache.batch([c] * FRAMES, list(range(FRAMES)))
                _, _, global_a, global_v = model.forward_feat(a, v)
                ga.append(F.normalize(global_a, dim=-1))
                gv.append(F.normalize(global_v, dim=-1))
        sim = torch.einsum("ikd,jkd->ij", torch.stack(ga), torch.stack(gv)) / FRAMES
        target = torch.arange(len(sim))
        a2v = (sim.argmax(1) == target).float().mean().item()
        v2a = (sim.argmax(0) == target).float().mean().item()
        print(f"{name}: {len(sim)} clips, A->V R@1 {a2v:.2f}, V->A R@1 {v2a:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep", help="cache fbank and frames of a synth set")
    p.add_argument("--data", required=True, help="synth output folder (datafile.json)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--cavsync", default="target/release/cavsync", help="the cavsync binary (for `fbank`)")
    for name in ("train", "retrieve"):
        p = sub.add_parser(name)
        p.add_argument("--official-src", required=True, help="the `src` folder of a cav-mae-sync checkout")
        p.add_argument("--eval", nargs="*", default=[],
                       help="train: NAME=CACHE:ANNOTATIONS_JSON; retrieve: NAME=CACHE")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--dim", type=int, default=128)
        p.add_argument("--depth", type=int, default=3, help="modality-specific blocks (one joint block)")
        p.add_argument("--registers", type=int, default=2)
        p.add_argument("--decoder-dim", type=int, default=64)
        p.add_argument("--decoder-depth", type=int, default=1)
        p.add_argument("--global-local", type=int, default=1)
        p.add_argument("--norm-pix", type=int, default=0)
        p.add_argument("--bidirectional", type=int, default=0)
    t = sub.choices["train"]
    t.add_argument("--train", required=True, help="cache folder of the training set")
    t.add_argument("--name", required=True)
    t.add_argument("--out", required=True, help="folder for NAME.pth")
    t.add_argument("--steps", type=int, default=950)
    t.add_argument("--stop-after", type=int, default=0, help="stop at this step (the schedule still spans --steps)")
    t.add_argument("--batch", type=int, default=48)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--min-lr", type=float, default=1e-5)
    t.add_argument("--warmup", type=int, default=60)
    t.add_argument("--contrastive-weight", type=float, default=0.01)
    t.add_argument("--every", type=int, default=100)
    t.add_argument("--mil-weight", type=float, default=0.0,
                   help="weight of EZ-VSL's multiple-instance audio-to-patch InfoNCE on unmasked inputs (0: the paper's objective only)")
    t.add_argument("--mil-temperature", type=float, default=0.07)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable state (NAME.state.pt) every N steps")
    t.add_argument("--resume", action="store_true", help="continue from NAME.state.pt in --out when it exists")
    t.add_argument("--init", help="start from this checkpoint's weights instead of the official initialisation")
    sub.choices["retrieve"].add_argument("--checkpoint", required=True)
    args = ap.parse_args()
    {"prep": prep, "train": train, "retrieve": retrieve}[args.cmd](args)


if __name__ == "__main__":
    main()
