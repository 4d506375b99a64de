#!/usr/bin/env bash
# Full-size CAV-MAE Sync (768 dims, 11+1 layers, 8 registers, L = 416, random weights written by
# cavsync-export): cavsync (tract) against onnxruntime on the same bundle, on this machine, in one
# run; prints both latency tables and the ratio. Also checks onnxruntime against cavsync on the
# official fixture bundle. Not part of CI (it takes minutes): run by hand.
#   pip install onnxruntime onnx numpy && bash scripts/bench_vs_onnxruntime.sh [THREADS]
# PROFILE=dev uses the test build (dependencies at opt-level 2, see Cargo.toml) instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
work=${WORK:-target/bench}
mkdir -p "$work"
profile=${PROFILE:-release}
cargo build --profile "$profile" -q -p cavsync -p cavsync-export
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")

echo "== parity: onnxruntime vs cavsync on the official fixture bundle"
fx=tests/data/official/sync_r8_cls
$bin/cavsync-export convert --checkpoint $fx/checkpoint.pth --heads 4 --out "$work/fixture" >/dev/null
$bin/cavsync embed --bundle "$work/fixture" --audio-npy $fx/audio_input.npy --image-npy $fx/image_input.npy --out "$work/fixture-out" 2>/dev/null
python3 scripts/ort_bench.py "$work/fixture" --parity $fx/audio_input.npy $fx/image_input.npy "$work/fixture-out"

echo "== committed demo bundles, $threads threads (median of 3 alternating rounds of 200 iterations each)"
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
for b in models/demo/bundle models/demo-student/bundle models/demo-student/bundle-int8 \
    models/demo-student/bundle-f16 models/demo-student-nano/bundle; do
    ts=(); os=()
    for _ in 1 2 3; do
        ts+=("$($bin/cavsync bench --bundle "$b" --threads "$threads" --iterations 200 2>/dev/null | awk '/frame pair/ {print $3}')")
        os+=("$(python3 scripts/ort_bench.py "$b" --threads "$threads" --iterations 200 | awk '/frame pair/ {print $3}')")
    done
    tp=$(median3 "${ts[@]}"); op=$(median3 "${os[@]}")
    awk -v b="$b" -v t="$tp" -v o="$op" -v tr="${ts[*]}" -v or="${os[*]}" \
        'BEGIN { printf "%-36s cavsync %8.3f ms (%s)  onnxruntime %8.3f ms (%s)  ratio %.3f\n", b, t, tr, o, or, t / o }'
done

echo "== full-size model, $threads threads"
[ -f "$work/full.safetensors" ] || $bin/cavsync-export random-checkpoint --out "$work/full.safetensors"
$bin/cavsync-export convert --checkpoint "$work/full.safetensors" --out "$work/full" >/dev/null
tract_out=$($bin/cavsync bench --bundle "$work/full" --threads "$threads" 2>/dev/null)
ort_out=$(python3 scripts/ort_bench.py "$work/full" --threads "$threads")
echo "-- cavsync (tract)"; echo "$tract_out"
echo "-- onnxruntime"; echo "$ort_out"
t=$(echo "$tract_out" | awk '/frame pair/ {print $3}')
o=$(echo "$ort_out" | awk '/frame pair/ {print $3}')
awk -v t="$t" -v o="$o" 'BEGIN { printf "ratio cavsync / onnxruntime (frame pair, median): %.3f\n", t / o }'

echo "== full-size model, int8, $threads threads"
# cavsync: the static scheme calibrated on the demo clip; onnxruntime: its own dynamic and static
# (QOperator) quantization of the same f32 graphs.
$bin/cavsync-export quantize --bundle "$work/full" --out "$work/full-int8" --per-channel \
    --calibration models/demo/clip/datafile.json >/dev/null
tract_q=$($bin/cavsync bench --bundle "$work/full-int8" --threads "$threads" 2>/dev/null)
echo "-- cavsync (tract), int8 static"; echo "$tract_q"
tq=$(echo "$tract_q" | awk '/frame pair/ {print $3}')
awk -v q="$tq" -v t="$t" 'BEGIN { printf "ratio cavsync int8 / cavsync f32 (frame pair, median): %.3f\n", q / t }'
for scheme in dynamic static; do
    ort_q=$(python3 scripts/ort_bench.py "$work/full" --threads "$threads" --quantize $scheme 2>/dev/null)
    echo "-- onnxruntime"; echo "$ort_q"
    oq=$(echo "$ort_q" | awk '/frame pair/ {print $3}')
    awk -v q="$tq" -v o="$oq" -v s="$scheme" 'BEGIN { printf "ratio cavsync int8 / onnxruntime int8 %s (frame pair, median): %.3f\n", s, q / o }'
done
