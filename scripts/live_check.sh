#!/usr/bin/env bash
# The live acceptance run (not in CI: it takes real time): N synthetic clips of the hard world
# played as one 30 fps video with its audio through ffmpeg sources into `cavsync run` (release,
# 2 threads, causal), the live page open in headless Chromium for a screenshot, then the
# output scored against the clips' annotations (scripts/live_score.py) and the summary printed.
#
# usage: scripts/live_check.sh OUT_DIR [CLIPS (default 6 = 60 s)] [THREADS (default 2)] [MODE (causal)] [SEED (3001)]
# BOARD=pi5 (any firmware-config profile) runs that board's profile, and its bundle, on this
# machine (the camera set to the clips' 224 x 224, sources and threads as above); BUNDLE=DIR
# another bundle (of the profile's precision).
# needs: ffmpeg, python3; chromium for the screenshot (skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: live_check.sh OUT_DIR [CLIPS] [THREADS] [MODE]}
clips=${2:-6}
threads=${3:-2}
mode=${4:-causal}
seed=${5:-3001}
mkdir -p "$out"
out=$(cd "$out" && pwd)

cargo build --release -q -p cavsync -p cavsync-export
data="$out/clips"
if [ ! -f "$data/datafile.json" ]; then
    target/release/cavsync-export synth --out "$data" --clips "$clips" --seed "$seed"
fi

# Each clip: its 16 frames at 1.6 fps, resampled to 30 fps, audio in 10 ms packets; then all joined.
list="$out/parts.txt"
: > "$list"
for id in $(python3 -c "import json,sys; print(' '.join(e['video_id'] for e in json.load(open(sys.argv[1]))['data']))" "$data/datafile.json"); do
    part="$out/$id.avi"
    if [ ! -f "$part" ]; then
        tmp=$(mktemp -d)
        for k in $(seq 0 15); do cp "$data/frames/frame_$k/$id.jpg" "$tmp/f_$k.jpg"; done
        ffmpeg -nostdin -loglevel error -y -framerate 1.6 -start_number 0 -i "$tmp/f_%d.jpg" \
            -i "$data/audio/$id.wav" -vf fps=30 -c:v mjpeg -q:v 2 -af asetnsamples=n=160 \
            -c:a pcm_s16le -t 10 "$part"
        rm -rf "$tmp"
    fi
    echo "file '$part'" >> "$list"
done
video="$out/live.avi"
ffmpeg -nostdin -loglevel error -y -f concat -safe 0 -i "$list" -c copy "$video"
seconds=$((clips * 10))

printf '[camera]\nwidth = 224\nheight = 224\nfps = 30\n' > "$out/camera.toml"
echo "== cavsync run: $seconds s, $threads threads, $mode ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
profile=(${BOARD:+--board "$BOARD"} ${BUNDLE:+--bundle "$BUNDLE"})
target/release/cavsync run "${profile[@]}" --threads "$threads" --mode "$mode" --duration "$seconds" \
    --config "$out/camera.toml" --video "ffmpeg:$video" --audio "ffmpeg:$video" \
    --out "file:$out/live.jsonl" --summary "$out/summary.json" --report-every 10
python3 scripts/live_score.py "$out/live.jsonl" "$data/annotations.json" "$data/datafile.json" 30 "$out/summary.json"

# The live page, in a second short run (a browser starting would take the CPU from the first).
if command -v chromium >/dev/null 2>&1; then
    port=18080
    target/release/cavsync run "${profile[@]}" --threads "$threads" --mode "$mode" --duration 15 \
        --config "$out/camera.toml" --video "ffmpeg:$video" --audio "ffmpeg:$video" \
        --out "file:$out/page_run.jsonl" --http "127.0.0.1:$port" 2>/dev/null &
    pid=$!
    sleep 6
    timeout 30 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=900,700 \
        --virtual-time-budget=3000 --screenshot="$out/live_page.png" "http://127.0.0.1:$port/" \
        >/dev/null 2>&1 || echo "screenshot failed"
    [ -f "$out/live_page.png" ] && echo "live page screenshot: $out/live_page.png"
    wait "$pid"
fi
