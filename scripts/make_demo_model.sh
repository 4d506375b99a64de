#!/usr/bin/env bash
# Rebuilds models/demo/ from nothing: synthetic data, training with the CAV-MAE Sync objective (plus
# a multiple-instance localization term),
# bundle, activity-threshold calibration, held-out evaluation and the demo clip. Every number in
# models/demo/RECORD.md was printed by this script (its output is kept in models/demo/record.log).
#
#   bash scripts/make_demo_model.sh            # WORK=/tmp/cavsync-demo by default
#
# Not part of CI: it trains for about 45 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/cavsync-demo}
PROFILE_FLAG=${PROFILE_FLAG:-}            # e.g. --release
EXPORT="cargo run -q $PROFILE_FLAG -p cavsync-export --"
RUNTIME="cargo run -q $PROFILE_FLAG -p cavsync --"
mkdir -p "$WORK" models/demo
LOG=models/demo/record.log
exec > >(tee "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores"
step() { echo; echo "\$ $*"; "$@"; }

# Data (the hard world, synth's default): training clips (30% with training photographs),
# calibration clips, and two held-out test sets (seeds never used for training): procedural
# textures, and held-out photographs.
[ -f "$WORK/train/datafile.json" ] || step $EXPORT synth --out "$WORK/train" --clips 2000 --seed 1 --backgrounds assets/backgrounds/train --photo-share 0.3
[ -f "$WORK/val/datafile.json" ] || step $EXPORT synth --out "$WORK/val" --clips 30 --seed 4 --backgrounds assets/backgrounds/train --photo-share 0.3
[ -f "$WORK/calib/datafile.json" ] || step $EXPORT synth --out "$WORK/calib" --clips 60 --seed 3 --backgrounds assets/backgrounds/train --photo-share 0.3
[ -f "$WORK/test-textures/datafile.json" ] || step $EXPORT synth --out "$WORK/test-textures" --clips 100 --seed 1001
[ -f "$WORK/test-photos/datafile.json" ] || step $EXPORT synth --out "$WORK/test-photos" --clips 100 --seed 1002 --backgrounds assets/backgrounds/heldout

# Training: the official CAV-MAE Sync class (PyTorch, CPU) with the paper's objective plus
# EZ-VSL's multiple-instance audio-to-patch InfoNCE (see models/demo/RECORD.md for why: with the
# paper's objective alone the model does not localize in this world at this size). Needs
# `pip install torch "timm==0.4.5" numpy pillow` and an official checkout (OFFICIAL_SRC, its
# `src` folder). Resumable: rerunning continues from $WORK/run/demo.state.pt.
OFFICIAL_SRC=${OFFICIAL_SRC:?set OFFICIAL_SRC to the src folder of an edsonroteia/cav-mae-sync checkout}
cargo build -q --release -p cavsync
for set in train val; do
  [ -f "$WORK/cache-$set/ids.json" ] || step python3 scripts/pilot_official.py prep --data "$WORK/$set" --out "$WORK/cache-$set" --cavsync target/release/cavsync
done
step python3 scripts/pilot_official.py train --official-src "$OFFICIAL_SRC" --train "$WORK/cache-train" \
  --eval "val=$WORK/cache-val:$WORK/val/annotations.json" --name demo --out "$WORK/run" --steps 2000 \
  --warmup 100 --every 250 --threads 2 --seed 1 --contrastive-weight 0.1 --mil-weight 1.0 \
  --checkpoint-every 250 --resume
CKPT="$WORK/run/demo.pth"
step $EXPORT inspect --checkpoint "$CKPT" --heads 2

# Calibrate activity (the head over score, contrast and audio level) on the calibration clips
# with an uncalibrated bundle.
step $EXPORT convert --checkpoint "$CKPT" --heads 2 --out "$WORK/bundle-uncalibrated"
step $RUNTIME localize --bundle "$WORK/bundle-uncalibrated" --datafile "$WORK/calib/datafile.json" \
  --annotations "$WORK/calib/annotations.json" --out "$WORK/calib-results" --no-overlays --summary-only
step $RUNTIME calibrate --results "$WORK/calib-results/localization.jsonl" --out "$WORK/activity.toml"
step $EXPORT convert --checkpoint "$CKPT" --heads 2 --out models/demo/bundle --localization "$WORK/activity.toml"

# Held-out evaluation: localization and retrieval.
for set in test-textures test-photos; do
  step $RUNTIME localize --bundle models/demo/bundle --threads 2 --datafile "$WORK/$set/datafile.json" \
    --annotations "$WORK/$set/annotations.json" --out "$WORK/$set-results" --no-overlays --summary-only
  step $RUNTIME retrieve --bundle models/demo/bundle --threads 2 --datafile "$WORK/$set/datafile.json"
done

# The demo clip the README's first command localizes (held-out photograph background).
rm -rf models/demo/clip
step $EXPORT synth --out models/demo/clip --clips 1 --seed 2001 --backgrounds assets/backgrounds/heldout
step $RUNTIME localize --bundle models/demo/bundle --datafile models/demo/clip/datafile.json \
  --annotations models/demo/clip/annotations.json --out "$WORK/demo-clip-results" --no-overlays --summary-only

# Keep the checkpoint (official keys, `module.` prefixes as the official code saves them); the
# optimiser state stays in $WORK (models/demo/ must stay under 25 MB).
mkdir -p models/demo/run
cp "$CKPT" models/demo/run/
du -sh models/demo/bundle models/demo/clip models/demo/run
