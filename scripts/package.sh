#!/usr/bin/env bash
# Debian packages of cavsync (cargo-deb; what they hold: [package.metadata.deb] in
# runtime/Cargo.toml): amd64 built here, installed, run and removed; arm64 from the cross
# build, its control fields and binary checked (an aarch64 ELF).
#
#   bash scripts/package.sh [--arch amd64|arm64|both] [--no-install] [--out DIR]
#
# Installing needs root (dpkg -i / dpkg -r on this machine); --no-install only builds and
# inspects. Needs cargo-deb (`cargo install cargo-deb --locked`), and for arm64 what
# scripts/cross_aarch64.sh needs. Not part of CI (a release build per architecture).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=both
install=1
out=target/debian
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=$2; shift ;;
        --no-install) install=0 ;;
        --out) out=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
command -v cargo-deb >/dev/null 2>&1 || { echo "cargo-deb is required: cargo install cargo-deb --locked" >&2; exit 1; }
mkdir -p "$out"

if [ "$arch" = amd64 ] || [ "$arch" = both ]; then
    echo "== amd64 package"
    deb=$(cargo deb -p cavsync --locked -o "$out" | tail -n 1)
    dpkg-deb -f "$deb" Package Version Architecture Depends
    if [ "$install" = 1 ]; then
        echo "== install, run, remove"
        dpkg -i "$deb"
        cavsync --version
        (cd /usr/share/cavsync && cavsync info --bundle models/demo-student/bundle-int8)
        (cd /usr/share/cavsync && cavsync bench --bundle models/demo-student/bundle-int8 --iterations 3 --compare models/demo/bundle)
        test -f /lib/systemd/system/cavsync@.service
        dpkg -r cavsync
        if [ -e /usr/bin/cavsync ] || [ -e /usr/share/cavsync ] || dpkg -s cavsync >/dev/null 2>&1; then
            echo "cavsync is still installed after dpkg -r" >&2
            exit 1
        fi
        echo "removed cleanly"
    fi
fi

if [ "$arch" = arm64 ] || [ "$arch" = both ]; then
    echo "== arm64 package"
    bash scripts/cross_aarch64.sh --no-tests
    # shellcheck source=scripts/aarch64_env.sh
    . scripts/aarch64_env.sh
    deb=$(cargo deb -p cavsync --locked --no-build --target aarch64-unknown-linux-gnu -o "$out" | tail -n 1)
    dpkg-deb -f "$deb" Package Version Architecture Depends
    [ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || { echo "$deb: not an arm64 package" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    dpkg-deb -x "$deb" "$tmp"
    file "$tmp/usr/bin/cavsync"
    file "$tmp/usr/bin/cavsync" | grep -q "ARM aarch64" || { echo "usr/bin/cavsync is not an aarch64 ELF" >&2; exit 1; }
    ls "$tmp/usr/share/cavsync/models/demo-student/bundle-int8"
fi
