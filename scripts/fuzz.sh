#!/usr/bin/env bash
# Fuzz cavsync's parsers of outside data with cargo-fuzz (libFuzzer); run by hand, never by CI.
#
#   bash scripts/fuzz.sh [TARGET...] [--seconds N]
#
# TARGET: any of the targets in fuzz/Cargo.toml (manifest bundle_onnx wav image npy datafile
# annotations board_profile run_config checkpoint yuyv mjpeg live_pcm); all of them when none
# is given. Each runs for N seconds (default 300), one fuzzing process at a time, without a
# sanitizer (the parsers are safe Rust; overflow checks and debug assertions stay on), with
# a 2 GiB RSS limit and the input-size cap below. Installs cargo-fuzz and the nightly
# toolchain when missing.
#
# Each run starts from the committed minimized corpus fuzz/corpus/TARGET, works in
# fuzz/corpus-full/TARGET (ignored by git), and at the end merges what added coverage back
# into fuzz/corpus/TARGET. Crashes land in fuzz/artifacts/TARGET/: fix the parser, then copy
# the input to tests/data/fuzz/TARGET/ so `cargo test --test fuzz_regressions` keeps it
# fixed (that test also replays fuzz/corpus). fuzz/RESULTS.md records the last campaign.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds=300
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds)
            seconds="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,18p' "$0"
            exit 0
            ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done

# Largest input libFuzzer generates, per target (bytes).
declare -A max_len=(
    [manifest]=8192
    [bundle_onnx]=16384
    [wav]=16384
    [image]=32768
    [npy]=8192
    [datafile]=4096
    [annotations]=8192
    [board_profile]=4096
    [run_config]=2048
    [checkpoint]=16384
    [yuyv]=4096
    [mjpeg]=16384
    [live_pcm]=16384
)

if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(printf '%s\n' "${!max_len[@]}" | sort)
fi
for t in "${targets[@]}"; do
    [[ -n "${max_len[$t]:-}" ]] || {
        echo "unknown fuzz target: $t (known: ${!max_len[*]})" >&2
        exit 2
    }
done

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz

cd fuzz
build=(--sanitizer none --codegen-units 16)
cargo +nightly fuzz build "${build[@]}"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "corpus-full/$t"
    cp -n "corpus/$t"/* "corpus-full/$t"/ 2> /dev/null || true
    echo "== $t: ${seconds}s"
    limits=(-rss_limit_mb=2048 -max_len="${max_len[$t]}")
    cargo +nightly fuzz run "${build[@]}" "$t" "corpus-full/$t" -- \
        -max_total_time="$seconds" "${limits[@]}" -timeout=10 -print_final_stats=1
    cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" "corpus-full/$t" -- -merge=1 "${limits[@]}"
done
