#!/usr/bin/env bash
# Long live run (not in CI: it takes real time). `cavsync run` for MINUTES (default 60) on the
# video scripts/live_check.sh made (6 clips, 60 s, so the source also ends and is reopened every
# minute), while the world misbehaves on a schedule:
#   - sources vanish: every 4 minutes the video file is moved away for 20 s and both ffmpeg
#     source processes are killed (reopened with backoff once it is back);
#   - network clients: every 15 s a TCP client joins the results server, reads for 5 s and drops;
#     a second one connects and never reads (it must be disconnected, never waited for); the live
#     page and its MJPEG stream are fetched for 3 s;
#   - the output disk fills: results go to a 128 MiB tmpfs; every 6 minutes a filler file takes
#     all its free space for 2 minutes, then is deleted so space returns (needs root for the
#     mount; without it, this part is skipped and said so).
# Resident memory is sampled every 10 s. At the end it prints frames processed, dropped and why,
# reconnects, what could not be written, RSS after 1 min, after 10 min and at the end, and checks:
# the process exited 0, no panic in the log, RSS from 10 min to the end within 5 MiB, results
# written again after every disk-full stretch. Exit status 1 if a check fails.
#
# usage: scripts/live_soak.sh LIVE_CHECK_DIR [MINUTES (default 60)] [MODE (causal)]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: live_soak.sh LIVE_CHECK_DIR [MINUTES] [MODE]}
minutes=${2:-60}
mode=${3:-causal}
dir=$(cd "$dir" && pwd)
[ -f "$dir/live.avi" ] || { echo "$dir/live.avi missing: run scripts/live_check.sh $dir first" >&2; exit 1; }
cargo build --release -q -p cavsync
seconds=$((minutes * 60))
soak="$dir/soak"
rm -rf "$soak"
mkdir -p "$soak/disk"
video="$soak/source.avi"
cp "$dir/live.avi" "$video"

disk_ok=0
if mount -t tmpfs -o size=128m tmpfs "$soak/disk" 2>/dev/null; then
    disk_ok=1
    trap 'umount "$soak/disk" 2>/dev/null || true' EXIT
else
    echo "soak: cannot mount a tmpfs here (not root?); the disk-full part is skipped"
fi

tcp_port=$((20000 + RANDOM % 20000))
http_port=$((tcp_port + 1))
target/release/cavsync run --threads 2 --mode "$mode" --duration "$seconds" \
    --config "$dir/camera.toml" --video "ffmpeg:$video" --audio "ffmpeg:$video" \
    --out "file:$soak/disk/results.jsonl" --out "tcp://127.0.0.1:$tcp_port" \
    --http "127.0.0.1:$http_port" --summary "$soak/summary.json" \
    --report-every 60 2> "$soak/run.log" &
pid=$!
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
events="$soak/events.log"
: > "$events"
note() { echo "$(elapsed) s: $*" >> "$events"; }

# Memory.
(
    echo "seconds,rss_kib" > "$soak/rss.csv"
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$(elapsed),$rss" >> "$soak/rss.csv"
        sleep 10
    done
) &
sampler=$!

# Sources vanishing and returning.
(
    sleep 120
    while kill -0 "$pid" 2>/dev/null; do
        mv "$video" "$video.away"
        pkill -f -- "-i $video" || true
        note "sources vanished (file moved away, ffmpeg sources killed)"
        sleep 20
        mv "$video.away" "$video"
        note "source file back"
        sleep 220
    done
) &
vanish=$!

# Network clients.
(
    sleep 20
    n=0
    while kill -0 "$pid" 2>/dev/null; do
        timeout 5 bash -c "cat < /dev/tcp/127.0.0.1/$tcp_port > /dev/null" 2>/dev/null || true
        # A client that connects and never reads.
        exec 7<>"/dev/tcp/127.0.0.1/$tcp_port" 2>/dev/null && { sleep 5; exec 7>&-; } || true
        curl -s -o /dev/null --max-time 3 "http://127.0.0.1:$http_port/" || true
        curl -s -o /dev/null --max-time 3 "http://127.0.0.1:$http_port/stream.mjpg" || true
        n=$((n + 1))
        [ $((n % 20)) -eq 0 ] && note "$n rounds of network clients"
        sleep 5
    done
) &
clients=$!

# The output disk filling up and emptying.
if [ "$disk_ok" = 1 ]; then
    (
        sleep 180
        while kill -0 "$pid" 2>/dev/null; do
            dd if=/dev/zero of="$soak/disk/filler" bs=4k 2>/dev/null || true
            note "disk full (results.jsonl at $(stat -c %s "$soak/disk/results.jsonl") bytes)"
            sleep 120
            rm -f "$soak/disk/filler"
            sleep 5
            size=$(stat -c %s "$soak/disk/results.jsonl")
            note "disk space back (results.jsonl at $size bytes)"
            echo "$size" >> "$soak/space_back"
            sleep 240
        done
    ) &
    filler=$!
fi

status=0
wait "$pid" || status=$?
kill "$vanish" "$clients" "$sampler" ${filler:-} 2>/dev/null || true
wait 2>/dev/null || true
[ -f "$video.away" ] && mv "$video.away" "$video"

python3 - "$soak" "$status" "$disk_ok" <<'PY'
import csv, json, os, sys
soak, status, disk_ok = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
failures = []
rows = [(int(r["seconds"]), int(r["rss_kib"])) for r in csv.DictReader(open(f"{soak}/rss.csv"))]
at = lambda s: min(rows, key=lambda r: abs(r[0] - s))
one, ten, last = at(60), at(600), rows[-1]
print(f"RSS: {one[1] / 1024:.1f} MiB after {one[0]} s, {ten[1] / 1024:.1f} MiB after {ten[0]} s, "
      f"{last[1] / 1024:.1f} MiB at the end ({last[0]} s); from 10 min to the end {(last[1] - ten[1]) / 1024:+.1f} MiB; "
      f"peak {max(r[1] for r in rows) / 1024:.1f} MiB")
if last[0] >= 600 and abs(last[1] - ten[1]) > 5 * 1024:
    failures.append("RSS moved more than 5 MiB between 10 minutes and the end")
log = open(f"{soak}/run.log", errors="replace").read()
print(open(f"{soak}/events.log").read().rstrip())
if status != 0:
    failures.append(f"cavsync exited with status {status}")
if "panicked" in log:
    failures.append("a panic in the log")
count = lambda text: log.count(text)
print(f"log: {count('TCP client connected')} TCP clients connected, "
      f"{count('TCP client too slow or gone')} disconnected as too slow or gone, "
      f"{count('cannot write; lines are dropped')} disk-full stretches, {count('writing again')} recoveries")
if os.path.exists(f"{soak}/summary.json"):
    s = json.load(open(f"{soak}/summary.json"))
    c = s["counters"]
    lat = dict(s["latency"])
    print(f"{s['seconds']:.0f} s: {c['frames_captured']} frames captured, {c['frames_processed']} processed "
          f"({s['fps']:.2f}/s); dropped {c['frames_dropped']} (a newer frame was ready), late {c['frames_late']} "
          f"(their audio never came: sources away), {c['frames_audio_fault']} not encoded for a faulty or missing "
          f"audio segment; reopens audio {c['audio_reopens']} video {c['video_reopens']}; "
          f"{c['audio_gap_samples'] / 16000:.1f} s of audio gaps; {s['output_lines_unwritten']} result lines not written; "
          f"p50 / p99 capture-to-output {lat['total']['p50']:.1f} / {lat['total']['p99']:.1f} ms")
else:
    failures.append("no summary written")
if disk_ok:
    if count("writing again") < 1:
        failures.append("results were never written again after the disk filled")
    results = f"{soak}/disk/results.jsonl"
    backs = [int(x) for x in open(f"{soak}/space_back")] if os.path.exists(f"{soak}/space_back") else []
    if backs and os.path.getsize(results) <= backs[-1]:
        failures.append("nothing written after the last disk-full stretch")
    lines = 0
    for i, line in enumerate(open(results, errors="replace")):
        lines += 1
        try:
            json.loads(line)
        except ValueError:
            failures.append(f"results.jsonl line {i + 1} is not a whole JSON record")
            break
    print(f"results.jsonl: {lines} whole records, {os.path.getsize(results)} bytes")
for f in failures:
    print("FAILED:", f)
print("soak: all checks passed" if not failures else f"soak: {len(failures)} checks failed")
sys.exit(1 if failures else 0)
PY
