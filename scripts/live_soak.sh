#!/usr/bin/env bash
# Long live run (not in CI): `cavsync run` for MINUTES on the video that scripts/live_check.sh
# made, which ends every minute and is reopened (the source vanishing and returning), with
# resident memory sampled every 10 s; prints RSS after 1 minute and at the end, and the summary.
#
# usage: scripts/live_soak.sh LIVE_CHECK_DIR [MINUTES (default 11)] [MODE (causal)]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: live_soak.sh LIVE_CHECK_DIR [MINUTES] [MODE]}
minutes=${2:-11}
mode=${3:-causal}
dir=$(cd "$dir" && pwd)
[ -f "$dir/live.avi" ] || { echo "$dir/live.avi missing: run scripts/live_check.sh $dir first" >&2; exit 1; }
cargo build --release -q -p cavsync
seconds=$((minutes * 60))
target/release/cavsync run --threads 2 --mode "$mode" --duration "$seconds" \
    --config "$dir/camera.toml" --video "ffmpeg:$dir/live.avi" --audio "ffmpeg:$dir/live.avi" \
    --out "file:$dir/soak.jsonl" --out tcp://127.0.0.1:0 --summary "$dir/soak_summary.json" \
    --report-every 60 2> "$dir/soak.log" &
pid=$!
echo "seconds,rss_kib" > "$dir/soak_rss.csv"
t=0
while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$t,$rss" >> "$dir/soak_rss.csv"
    sleep 10
    t=$((t + 10))
done
wait "$pid"
python3 - "$dir/soak_rss.csv" "$dir/soak_summary.json" <<'PY'
import csv, json, sys
rows = [(int(r["seconds"]), int(r["rss_kib"])) for r in csv.DictReader(open(sys.argv[1]))]
at = lambda s: min(rows, key=lambda r: abs(r[0] - s))
one, last = at(60), rows[-1]
print(f"RSS after {one[0]} s: {one[1] / 1024:.1f} MiB; after {last[0]} s: {last[1] / 1024:.1f} MiB; "
      f"difference {(last[1] - one[1]) / 1024:+.1f} MiB; peak {max(r[1] for r in rows) / 1024:.1f} MiB")
s = json.load(open(sys.argv[2]))
c = s["counters"]
lat = dict(s["latency"])
print(f"{s['seconds']:.0f} s: {c['frames_processed']} frames ({s['fps']:.2f}/s), dropped {c['frames_dropped']}, "
      f"late {c['frames_late']}, reopens audio {c['audio_reopens']} video {c['video_reopens']}, "
      f"p99 capture-to-output {lat['total']['p99']:.2f} ms")
PY
