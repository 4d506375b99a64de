#!/usr/bin/env bash
# What distillation from a published-size teacher costs on this machine: a random-weight
# checkpoint of the published layout (768-dim, 11 + 1 blocks, 8 registers, L = 416) as the
# teacher, the `tiny` student, 8 synthetic clips, 5 steps of 8 pairs. Prints the teacher-cache
# time per pair, the seconds per step and the peak memory (kept in models/demo-student/fullsize.log).
# Also writes that teacher's f32 bundle, which scripts/make_demo_student.sh times beside the students.
#
#   WORK=/tmp/cavsync-demo bash scripts/distill_fullsize.sh      # files in $WORK/fullsize
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/cavsync-demo}/fullsize
EXPORT=target/release/cavsync-export
mkdir -p "$WORK"
cargo build -q --release -p cavsync-export
exec > >(tee models/demo-student/fullsize.log) 2>&1
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
[ -f "$WORK/full.safetensors" ] || $EXPORT random-checkpoint --out "$WORK/full.safetensors" --seed 7
[ -f "$WORK/data/datafile.json" ] || $EXPORT synth --out "$WORK/data" --clips 8 --seed 77
cat > "$WORK/full.toml" <<'TOML'
[student]
dim = 64
depth = 1
joint_depth = 1
registers = 2
mlp_ratio = 4

[optim]
steps = 5
batch_size = 8
warmup_steps = 1

[data]
frames_per_clip = 2

[run]
seed = 1
checkpoint_every = 5
TOML
rm -rf "$WORK/run"
$EXPORT inspect --checkpoint "$WORK/full.safetensors" | grep -E "embedding|depth|parameters"
$EXPORT distill --teacher "$WORK/full.safetensors" --data "$WORK/data" --config "$WORK/full.toml" --out "$WORK/run/student.safetensors"
[ -f "$WORK/bundle-f32/manifest.toml" ] || $EXPORT convert --checkpoint "$WORK/full.safetensors" --out "$WORK/bundle-f32"
