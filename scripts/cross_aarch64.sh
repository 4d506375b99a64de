#!/usr/bin/env bash
# Cross build for the boards (aarch64: Raspberry Pi 4/5, Jetson Orin): the release binary
# target/aarch64-unknown-linux-gnu/release/cavsync and the runtime's test suite, built once.
#
# Then (unless --no-tests), under qemu user-mode emulation, once per CPU — Cortex-A76 (Pi 5: fp16
# and SDOT int8 kernels) and Cortex-A72 (Pi 4: plain NEON, SMLAL int8):
# 1. the runtime's test suite (cavsync, cavsync-cli, cavsync-core, cavsync-device, cavsync-live;
#    with --ci only the numeric crates core, device and live, see below), started as if native:
#    binfmt_misc hands them, and the `cavsync` binary the CLI tests start, to qemu;
# 2. the aarch64 binary against the x86 one: `embed` of one frame pair of the demo clip per bundle
#    (f32, int8 in both schemes, and f16 where the core computes it) and `localize` on the demo clip.
#
# Skipped under emulation, by name (qemu runs the demo visual encoder in about 1.8 s a frame):
# - runtime/tests/live.rs: a_live_run_equals_offline_localization_and_tracks_the_sounding_objects,
#   audio_faults_are_flagged_counted_and_never_encoded, sigterm_stops_within_a_second_with_outputs_flushed,
#   sources_away_for_a_while_come_back_in_step: they need real time (a 30 fps source, frames
#   processed as they arrive); the live run's other tests (absent sources, reopening) run;
# - runtime/live/tests/alloc.rs: the_steady_state_allocates_nothing: too long
#   (240 frames through both encoders, about 7 minutes per core); what it counts is the
#   allocator's, not the CPU's.
# --ci runs the suite of the numeric crates only (fbank, image preprocessing, localization, the
# row operators and every precision's kernels, the live pipeline's pieces, ALSA capture): the
# CLI's own tests check argument handling and messages, the same code on both architectures,
# and step 2 runs the aarch64 CLI end to end.
#
# The aarch64 programs run on Debian's arm64 multiarch C library (libc6:arm64, which arm64
# libasound needs anyway), never on the cross toolchain's copy in /usr/aarch64-linux-gnu: the
# cross loader with the multiarch libc (qemu -L /usr/aarch64-linux-gnu once both are installed)
# hangs in pthread_create, which is why this suite did not run here before 2026-12-04.
#
# usage: scripts/cross_aarch64.sh [--no-tests] [--ci] [--cpus "cortex-a76 cortex-a72"]
# --ci: the numeric crates' suite only (above); and when the aarch64 standard library, the
# cross packages or binfmt_misc cannot be had (rustup's server is not a package registry), say
# so loudly and stop (or skip the suite) without failing; a build or a check that fails still fails.
# needs: network for rustup and Debian's packages (arm64 libasound through multiarch), python3,
# root for binfmt_misc.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=1
ci=0
cpus="cortex-a76 cortex-a72"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-tests) tests=0 ;;
        --ci) ci=1 ;;
        --cpus) cpus=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
target=aarch64-unknown-linux-gnu

# Tools: the Rust target, the cross linker, qemu, and arm64 libasound (Debian multiarch).
if ! rustup target list --installed | grep -qx "$target" && ! rustup target add "$target"; then
    if [ "$ci" = 1 ]; then
        echo "!! SKIPPED the aarch64 build and emulated checks: rustup could not fetch the $target standard library" >&2
        exit 0
    fi
    exit 1
fi
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
# The cross C library's headers (bindgen reads sys/time.h through the V4L2 header): only a
# recommendation of the cross gcc, which --no-install-recommends leaves out.
dpkg -s libc6-dev-arm64-cross >/dev/null 2>&1 || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
dpkg -s libasound2-dev:arm64 >/dev/null 2>&1 || need+=(libasound2-dev:arm64)
dpkg -s libc6:arm64 >/dev/null 2>&1 || need+=(libc6:arm64)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
        if [ "$ci" = 1 ]; then
            echo "!! SKIPPED the aarch64 build and emulated checks: could not install ${need[*]}" >&2
            exit 0
        fi
        exit 1
    fi
fi

# shellcheck source=scripts/aarch64_env.sh
. scripts/aarch64_env.sh
# Host (x86) builds and runs below must not see the aarch64 pkg-config settings.
host() { env -u PKG_CONFIG_PATH -u PKG_CONFIG_LIBDIR -u PKG_CONFIG_ALLOW_CROSS "$@"; }

# The runtime's crates: their tests and the `cavsync` binary build together, in one release build.
crates=(-p cavsync -p cavsync-cli -p cavsync-core -p cavsync-device -p cavsync-live)
suite=("${crates[@]}")
[ "$ci" = 1 ] && suite=(-p cavsync-core -p cavsync-device -p cavsync-live)
skips=(--skip a_live_run_equals_offline_localization_and_tracks_the_sounding_objects
    --skip audio_faults_are_flagged_counted_and_never_encoded
    --skip sigterm_stops_within_a_second_with_outputs_flushed
    --skip sources_away_for_a_while_come_back_in_step
    --skip the_steady_state_allocates_nothing)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$tests" = 0 ]; then
    echo "== release build of cavsync for $target"
    cargo build --release --locked --target "$target" -p cavsync
else
    echo "== release build of cavsync and the runtime's tests for $target"
    cargo test --release --locked --target "$target" --no-run --message-format=json-render-diagnostics \
        "${crates[@]}" > "$work/build.jsonl"
fi
file "target/$target/release/cavsync" 2>/dev/null || ls -l "target/$target/release/cavsync"
[ "$tests" = 1 ] || exit 0
# The test programs of the suite's crates, as "directory program" lines: run directly, as cargo
# would (from the crate's directory), since a `cargo test` of fewer crates than were built would
# unify features differently and rebuild much of tract.
python3 - "$work/build.jsonl" "${suite[@]}" > "$work/programs" <<'PY'
import json, os, sys
wanted = set(sys.argv[3::2])
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test") or not m.get("executable"):
        continue
    url, _, fragment = m["package_id"].partition("#")  # path+file:///dir#name@version, or #version when dir is the name
    name = fragment.split("@")[0] if "@" in fragment else url.rstrip("/").split("/")[-1]
    if name in wanted:
        print(os.path.dirname(m["manifest_path"]), m["executable"])
PY
[ -s "$work/programs" ] || { echo "no test programs found in the build" >&2; exit 1; }

# aarch64 programs run as if native: binfmt_misc hands them to qemu (QEMU_CPU names the core), so
# the programs a test starts (the `cavsync` binary) are emulated too.
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/qemu-aarch64" ]; then
    [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
    [ -w "$binfmt/register" ] && cat /usr/lib/binfmt.d/qemu-aarch64.conf > "$binfmt/register" 2>/dev/null || true
fi
run_suite=1
if [ ! -e "$binfmt/qemu-aarch64" ]; then
    if [ "$ci" = 1 ]; then
        echo "!! SKIPPED the aarch64 test suite: binfmt_misc cannot hand aarch64 programs to qemu here (needs root)" >&2
        run_suite=0
    else
        echo "binfmt_misc cannot hand aarch64 programs to qemu here (needs root and /proc/sys/fs/binfmt_misc)" >&2
        exit 1
    fi
fi

# Runs an aarch64 program under qemu as CPU (QEMU_CPU also reaches the programs it starts,
# through binfmt_misc). tract reads fp16 support from /proc/cpuinfo, which under qemu-user is the
# host's; name the core so it picks the kernels the board would (SDOT comes from the emulated HWCAP).
emulate() {
    local cpu=$1 kind=$1
    shift
    [ "$cpu" = cortex-a76 ] && kind=cortex-a75  # the nearest core tract knows with fp16 and SDOT (a Pi 5 reports asimdhp itself)
    QEMU_CPU=$cpu TRACT_CPU_AARCH64_KIND=$kind qemu-aarch64-static -cpu "$cpu" "$@"
}
if [ "$run_suite" = 1 ]; then
    for cpu in $cpus; do
        echo "== the runtime's tests under qemu -cpu $cpu"
        while read -r dir program; do
            echo "-- $(basename "$program")"
            (cd "$dir" && emulate "$cpu" "$program" "${skips[@]}" < /dev/null)
        done < "$work/programs"
    done
fi

# The host's (x86) `cavsync-export` and `cavsync`, debug builds: the README's test command
# builds both with exactly these features, so after it (as in CI) this builds nothing; a
# `cargo build -p` of either would rebuild much of the workspace with other features.
host cargo test --workspace --locked --no-run -q
target/debug/cavsync-export quantize --bundle models/demo/bundle --out "$work/int8" --per-channel
target/debug/cavsync-export quantize --bundle models/demo/bundle --out "$work/int8-static" --per-channel \
    --calibration models/demo/clip/datafile.json
target/debug/cavsync-export convert --checkpoint models/demo/run/demo.pth --heads 2 --precision f16 \
    --localization models/demo/run/activity.toml --out "$work/f16"

# The same outputs as on x86: the aarch64 binary's embeddings of one frame pair of the demo clip
# against the x86 binary's, per bundle, largest absolute difference of any output value: f32 and
# int8 (dynamic, and static calibrated on the demo clip: the committed boards' scheme, whose
# plans run cavsync_device::intops) within 1e-4 and 1e-3 (measured 0 on both cores on 2026-12-04:
# the integer products are exact on both, and the row operators compute softmax, layer norm and
# GELU in the same order on every CPU); f16 within 2e-2: x86 computes f16 products in f32, the A76's fp16 kernels accumulate
# in fp16 over at most 128 terms (the writer's F16_SUM_CHUNK; longer sums are added in f32), so
# the two round differently (measured 1.1e-2 to 1.3e-2 on frames 0, 3, 5, 8, 12, 15 on 2026-12-04;
# 3.4e-2 when the patch embedding and fc2 summed 768 and 512 terms in fp16). Then `localize` on
# the demo clip must find the same strongest peak and activity in every frame.
# The bundle and the bound of each precision.
pick() {
    case "$1" in
        f32) bundle=models/demo/bundle; tol=1e-4 ;;
        int8) bundle="$work/int8"; tol=1e-3 ;;
        int8-static) bundle="$work/int8-static"; tol=1e-3 ;;
        f16) bundle="$work/f16"; tol=2e-2 ;;
    esac
}
frame=(--wav models/demo/clip/audio/s2001_00000.wav --frame 5
    --image models/demo/clip/frames/frame_5/s2001_00000.jpg)
args=(--datafile models/demo/clip/datafile.json --no-overlays --summary-only)
# The x86 outputs, once for every core.
for precision in f32 int8 int8-static f16; do
    pick "$precision"
    RUST_LOG=warn target/debug/cavsync embed --bundle "$bundle" "${frame[@]}" --out "$work/x86-$precision"
done
RUST_LOG=warn target/debug/cavsync localize --bundle models/demo/bundle "${args[@]}" --out "$work/loc-x86" >/dev/null
for cpu in $cpus; do
    case "$cpu" in
        cortex-a76) list="f32 int8 int8-static f16" ;;
        *) list="f32 int8 int8-static" ;;  # the Pi 4 profile refuses f16: the A72 has no fp16
    esac
    for precision in $list; do
        pick "$precision"
        RUST_LOG=warn emulate "$cpu" "target/$target/release/cavsync" embed --bundle "$bundle" "${frame[@]}" \
            --out "$work/$cpu-$precision"
        python3 - "$work/x86-$precision" "$work/$cpu-$precision" "$tol" "$cpu $precision" <<'PY'
import ast, struct, sys
def npy(path):
    data = open(path, "rb").read()
    header_len = struct.unpack("<H", data[8:10])[0]
    header = ast.literal_eval(data[10:10 + header_len].decode())
    assert header["descr"] == "<f4", header
    return struct.unpack(f"<{(len(data) - 10 - header_len) // 4}f", data[10 + header_len:])
x86, arm, tol, what = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
worst = 0.0
for name in ["audio_global", "audio_tokens", "visual_global", "visual_tokens"]:
    a, b = npy(f"{x86}/{name}.npy"), npy(f"{arm}/{name}.npy")
    assert len(a) == len(b), name
    worst = max(worst, max(abs(p - q) for p, q in zip(a, b)))
print(f"{what}: max |aarch64 - x86| over both embeddings {worst:.2e} (bound {tol:.0e})")
if worst > tol:
    sys.exit(f"{what}: aarch64 and x86 embeddings differ by {worst}")
PY
    done
    RUST_LOG=warn emulate "$cpu" "target/$target/release/cavsync" localize --bundle models/demo/bundle \
        "${args[@]}" --out "$work/loc-$cpu" >/dev/null
    python3 - "$work/loc-x86/localization.jsonl" "$work/loc-$cpu/localization.jsonl" "$cpu" <<'PY'
import json, sys
read = lambda p: [json.loads(line) for line in open(p)]
x86, arm = read(sys.argv[1]), read(sys.argv[2])
assert len(x86) == len(arm) == 16, (len(x86), len(arm))
differ = [a["frame"] for a, b in zip(x86, arm)
          if [(p["x"], p["y"]) for p in a["peaks"][:1]] != [(p["x"], p["y"]) for p in b["peaks"][:1]]
          or a["active"] != b["active"]]
print(f"{sys.argv[3]} localize: strongest peak and activity as on x86 in {16 - len(differ)} of 16 frames")
if differ:
    sys.exit(f"frames {differ} differ")
PY
done
