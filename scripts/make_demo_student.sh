#!/usr/bin/env bash
# Rebuilds the demo student (models/demo-student/) from the demo teacher (models/demo/bundle):
# distillation (resumable), conversion, activity calibration, int8 quantization, and the
# held-out comparison with the teacher. Every number in models/demo-student/RECORD.md was
# printed by this script (its output is kept in models/demo-student/record.log).
#
#   WORK=/tmp/cavsync-demo bash scripts/make_demo_student.sh [CONFIG] [NAME]
#
# WORK holds the data folders scripts/make_demo_model.sh makes (train, calib, test-textures,
# test-photos; they are synthesised here when absent). CONFIG defaults to
# models/demo-student/distill.toml and NAME (the output folder under models/) to demo-student.
# Not part of CI: the distillation takes about 40 minutes on a 2-core machine; rerunning the
# script continues an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/cavsync-demo}
CONFIG=${1:-models/demo-student/distill.toml}
NAME=${2:-demo-student}
OUT=models/$NAME
RUN="$WORK/$NAME"
EXPORT=${EXPORT:-target/release/cavsync-export}   # prebuilt binaries may be given instead
RUNTIME=${RUNTIME:-target/release/cavsync}
mkdir -p "$WORK" "$OUT" "$RUN"
LOG=$OUT/record.log
exec > >(tee "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
step() { echo; echo "\$ $*"; "$@"; }
[ "$EXPORT$RUNTIME" != target/release/cavsync-exporttarget/release/cavsync ] || cargo build -q --release -p cavsync-export -p cavsync

# The demo world's data: the teacher's training clips, calibration clips and the two held-out sets.
[ -f "$WORK/train/datafile.json" ] || step $EXPORT synth --out "$WORK/train" --clips 2000 --seed 1 --backgrounds assets/backgrounds/train --photo-share 0.3
[ -f "$WORK/calib/datafile.json" ] || step $EXPORT synth --out "$WORK/calib" --clips 60 --seed 3 --backgrounds assets/backgrounds/train --photo-share 0.3
[ -f "$WORK/test-textures/datafile.json" ] || step $EXPORT synth --out "$WORK/test-textures" --clips 100 --seed 1001
[ -f "$WORK/test-photos/datafile.json" ] || step $EXPORT synth --out "$WORK/test-photos" --clips 100 --seed 1002 --backgrounds assets/backgrounds/heldout

# Distillation from the teacher bundle (its outputs cached once beside the checkpoint).
CKPT="$RUN/student.safetensors"
if [ -f "$CKPT.state.json" ]; then
  step $EXPORT distill --resume --data "$WORK/train" --out "$CKPT"
else
  step $EXPORT distill --teacher models/demo/bundle --data "$WORK/train" --config "$CONFIG" --out "$CKPT"
fi
step $EXPORT inspect --checkpoint "$CKPT"

# Activity calibration on the calibration clips, then the f32 and int8 bundles.
step $EXPORT convert --checkpoint "$CKPT" --out "$RUN/bundle-uncalibrated"
step $RUNTIME localize --bundle "$RUN/bundle-uncalibrated" --threads 2 --datafile "$WORK/calib/datafile.json" \
  --annotations "$WORK/calib/annotations.json" --out "$RUN/calib-results" --no-overlays --summary-only
step $RUNTIME calibrate --results "$RUN/calib-results/localization.jsonl" --out "$RUN/activity.toml"
step $EXPORT convert --checkpoint "$CKPT" --out "$OUT/bundle" --localization "$RUN/activity.toml"
step $EXPORT quantize --bundle "$OUT/bundle" --calibration "$WORK/calib/datafile.json" --per-channel --out "$OUT/bundle-int8"
step $EXPORT convert --checkpoint "$CKPT" --out "$OUT/bundle-f16" --precision f16 --localization "$RUN/activity.toml"

# Held-out: each model's localization beside its baselines, retrieval, and the side-by-side
# comparison with the teacher (agreement, metrics and latency of every model in one run).
for set in test-textures test-photos; do
  for b in bundle bundle-int8; do
    step $RUNTIME localize --bundle "$OUT/$b" --threads 2 --datafile "$WORK/$set/datafile.json" \
      --annotations "$WORK/$set/annotations.json" --out "$RUN/$set-$b" --no-overlays --summary-only
    step $RUNTIME retrieve --bundle "$OUT/$b" --threads 2 --datafile "$WORK/$set/datafile.json"
  done
  step $RUNTIME eval --reference models/demo/bundle --candidate "$OUT/bundle" --candidate "$OUT/bundle-int8" \
    --datafile "$WORK/$set/datafile.json" --annotations "$WORK/$set/annotations.json" \
    --report "$RUN/eval-$set" --threads 2 --iterations 50
done

# Keep the checkpoint and its history (the teacher cache and optimiser state stay in $WORK).
cp "$CKPT" "$CKPT.state.json" "$CKPT.distill.toml" "$OUT/"
# Latency of the int8 student against the teacher and a published-size f32 bundle (random
# weights; scripts/distill_fullsize.sh makes its checkpoint), same run, same threads.
if [ -f "$WORK/fullsize/bundle-f32/manifest.toml" ]; then
  step $RUNTIME bench --bundle "$OUT/bundle-int8" --threads 2 --iterations 30 \
    --compare "$OUT/bundle" --compare models/demo/bundle --compare "$WORK/fullsize/bundle-f32"
else
  step $RUNTIME bench --bundle "$OUT/bundle-int8" --threads 2 --iterations 30 --compare "$OUT/bundle" --compare models/demo/bundle
fi
du -sh "$OUT"/bundle "$OUT"/bundle-int8 "$OUT"/bundle-f16 "$OUT"/student.safetensors
