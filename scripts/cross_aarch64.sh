#!/usr/bin/env bash
# Cross build for the boards (aarch64: Raspberry Pi 4/5, Jetson Orin) and the runtime's tests
# run under qemu user-mode emulation, once per CPU: Cortex-A76 (Pi 5: fp16 and SDOT int8
# kernels) and Cortex-A72 (Pi 4: plain NEON). Release binary: target/aarch64-unknown-linux-gnu/release/cavsync.
#
# Run under emulation: the libraries' unit tests and integration tests of cavsync-core,
# cavsync-device and cavsync-live, and firmware-config's. Skipped there: tests that start the
# `cavsync` binary as a child process (runtime/tests/*.rs; an aarch64 child cannot be
# executed without binfmt_misc, which containers lack) and the export side (burn, training:
# it runs on the GPU/x86 machine, never on a board).
#
# usage: scripts/cross_aarch64.sh [--no-tests] [--cpus "cortex-a76 cortex-a72"]
set -euo pipefail
cd "$(dirname "$0")/.."
tests=1
cpus="cortex-a76 cortex-a72"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-tests) tests=0 ;;
        --cpus) cpus=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
target=aarch64-unknown-linux-gnu

# Tools: the Rust target, the cross linker, qemu, and arm64 libasound (Debian multiarch).
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
dpkg -s libasound2-dev:arm64 >/dev/null 2>&1 || need+=(libasound2-dev:arm64)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig
# bindgen (V4L2 bindings) parses the aarch64 kernel headers.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--target=aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"

echo "== release build of cavsync for $target"
cargo build --release --locked --target "$target" -p cavsync
file "target/$target/release/cavsync" 2>/dev/null || ls -l "target/$target/release/cavsync"

[ "$tests" = 1 ] || exit 0
crates=(-p cavsync-core -p cavsync-device -p cavsync-live -p cavsync-firmware-config)
echo "== compiling the runtime's tests for $target"
cargo test --locked --target "$target" "${crates[@]}" --no-run
for cpu in $cpus; do
    echo "== tests under qemu -cpu $cpu"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu $cpu" \
        cargo test --locked --target "$target" "${crates[@]}"
done
