#!/usr/bin/env bash
# Builds the standalone built-in VMM the way it is benchmarked: static
# (no ld.so, no libc.so pages: about 1.3 MiB less resident) and optimised
# for size (the `vmm` profile: its text is most of its resident memory, and
# it spends its time in KVM, not in its own code). `vmpod bench vmm` picks
# it up from here. Idempotent: cargo rebuilds only what changed. Prints the
# binary's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo rustc --locked --quiet --profile vmm -p vmpod-vmm --bin vmpod-vmm \
    --target "$triple" -- -C target-feature=+crt-static >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/$triple/vmm/vmpod-vmm"
