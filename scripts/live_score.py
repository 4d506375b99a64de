#!/usr/bin/env python3
"""Score a `cavsync run` JSON-lines output against the annotations of the synthetic clips it was made from.

The video is the clips of a `synth` datafile played one after another, each clip's 16 frames
held 0.625 s at the video's frame rate. For every processed frame on which an object sounds:
pointing of the live map's strongest peak (the live path equals offline localization of the
same frame and segment, tests/live.rs) and of the tracks (the track with the highest
activity); for every sounding episode (an object sounding in consecutive frames) the id
switches of the track nearest it. Also rates, drops and latency from the summary.

usage: live_score.py OUT.jsonl ANNOTATIONS.json DATAFILE.json FPS [SUMMARY.json]
"""
import json
import sys


def inside(x, y, b):
    return b[0] <= x < b[2] and b[1] <= y < b[3]


def main():
    out, annotations, datafile, fps = sys.argv[1:5]
    fps = float(fps)
    ann = json.load(open(annotations))
    clips = {c["video_id"]: c for c in ann["clips"]}
    order = [e["video_id"] for e in json.load(open(datafile))["data"]]
    recs = [json.loads(line) for line in open(out)]
    sounding = peak_hits = track_hits = 0
    nearest = {}  # (clip, class) episode key -> list of (frame, id)
    episodes = []
    last_seen = {}
    for r in recs:
        t = r["timeStamp"] / fps
        i = int(t // 10.0)
        if i >= len(order):
            continue
        frames = clips[order[i]]["frames"]
        k = min(len(frames) - 1, int((t - 10.0 * i) / 0.625))
        objs = frames[k]["sounding"]
        if not objs:
            continue
        sounding += 1
        if r["peak"] and any(inside(*r["peak"], o["bbox"]) for o in objs):
            peak_hits += 1
        if r["src"]:
            best = max(r["src"], key=lambda s: s["activity"])
            if any(inside(best["x"], best["y"], o["bbox"]) for o in objs):
                track_hits += 1
        for o in objs:
            key = (i, o["class"])
            seq = r["timeStamp"]
            if key not in last_seen or seq - last_seen[key] > fps:
                episodes.append([])
                nearest[key] = episodes[-1]
            last_seen[key] = seq
            b = o["bbox"]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            cands = [s for s in r["src"] if inside(s["x"], s["y"], b)]
            if cands:
                s = min(cands, key=lambda s: (s["x"] - cx) ** 2 + (s["y"] - cy) ** 2)
                nearest[key].append(s["id"])
    switches = []
    for ids in episodes:
        if ids:
            switches.append(sum(1 for a, b in zip(ids, ids[1:]) if a != b))
    n = max(sounding, 1)
    print(f"frames processed {len(recs)}, sounding {sounding}")
    print(f"pointing: live peaks (= offline) {100 * peak_hits / n:.1f}%, tracks {100 * track_hits / n:.1f}%"
          f" (difference {100 * (track_hits - peak_hits) / n:+.1f} points)")
    if switches:
        ok = sum(1 for s in switches if s <= 1)
        print(f"episodes with a track {len(switches)} of {len(episodes)}: id switches mean {sum(switches) / len(switches):.2f},"
              f" max {max(switches)}, episodes with <= 1 switch {100 * ok / len(switches):.1f}%")
    if len(sys.argv) > 5:
        s = json.load(open(sys.argv[5]))
        c = s["counters"]
        lat = dict((k, v) for k, v in s["latency"])
        print(f"summary: {s['seconds']:.1f} s, {c['frames_captured']} captured, {c['frames_processed']} processed"
              f" ({s['fps']:.2f}/s), dropped {c['frames_dropped']}, late {c['frames_late']},"
              f" capture-to-output p50 {lat['total']['p50']:.2f} p95 {lat['total']['p95']:.2f} p99 {lat['total']['p99']:.2f} ms")


if __name__ == "__main__":
    main()
