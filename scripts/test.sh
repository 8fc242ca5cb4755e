#!/usr/bin/env bash
# Runs vmpod's whole test suite: formatting, lints, unit tests and the
# end-to-end tests (real daemon, real QEMU/TCG VMs). Installs what the tests
# need first, idempotently, so it works on a fresh machine.
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

./scripts/install-deps.sh
./images/build.sh
# The built-in VMM's tiny test guests (vmm/tests/vmm.rs also builds them).
./tests/guests/build.sh >/dev/null

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

# VM tests under TCG are CPU-bound; more than two at once on a 2-core CI
# machine only makes each slower and risks boot timeouts.
log "cargo test"
cargo test --locked --workspace -- --test-threads="${VMPOD_TEST_THREADS:-2}"
