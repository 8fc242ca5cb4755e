#!/usr/bin/env bash
# Builds a previous revision's vmpod, vmpod-shim and guest initramfs into
# OUTDIR, for `vmpod bench container --baseline OUTDIR`: the old and the
# new code measured in the same run, on the same kernel.
#
#   scripts/build-baseline.sh REV OUTDIR
#
# Debug builds, like the target/debug binaries the bench compares them
# with. Cached: a second run for the same revision returns at once.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 REV OUTDIR" >&2; exit 2; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rev="$(git -C "$repo" rev-parse --verify "$1^{commit}")" || { echo "unknown revision: $1" >&2; exit 2; }
out="$2"
short="${rev:0:12}"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$rev" ]; then
    echo "baseline $short: cached in $out"
    exit 0
fi

src="/tmp/vmpod-baseline-src-$short"
target="/tmp/vmpod-baseline-target"
step() { printf '==> %s\n' "$*"; }

if [ ! -d "$src" ]; then
    step "worktree of $short at $src"
    git -C "$repo" worktree add --detach "$src" "$rev" >/dev/null
fi
step "building vmpod and vmpod-shim ($short, debug)"
(cd "$src" && CARGO_TARGET_DIR="$target" cargo build --quiet -p vmpod -p vmpod-shim)
step "building the guest initramfs of $short"
(cd "$src" && ./images/build-initramfs.sh)

mkdir -p "$out"
cp "$target/debug/vmpod" "$target/debug/vmpod-shim" "$src/images/out/initramfs.cpio.gz" "$out/"
echo "$rev" > "$out/stamp"
step "baseline $short in $out"
