#!/usr/bin/env bash
# Installs vmpod on this host: dependencies, the guest image, the binaries.
# With --serve it then runs `vmpod serve` in the foreground with the embedded
# defaults (no config file needed). Idempotent and cached: a second run with
# nothing changed takes seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
SERVE=0
for arg in "$@"; do
  case "$arg" in
    --serve) SERVE=1 ;;
    -h|--help) echo "usage: $0 [--serve]   (env PREFIX, default /usr/local)"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

./scripts/install-deps.sh
./images/build.sh

log "building vmpod and vmpod-shim (release)"
cargo build --release --locked -p vmpod -p vmpod-shim

log "installing to $PREFIX"
install -d "$PREFIX/bin" "$PREFIX/share/vmpod"
install -m 0755 target/release/vmpod target/release/vmpod-shim "$PREFIX/bin/"
install -m 0644 images/out/vmlinux images/out/initramfs.cpio.gz "$PREFIX/share/vmpod/"

"$PREFIX/bin/vmpod" check || log "vmpod check reports problems (see above)"

if [ "$SERVE" = 1 ]; then
  log "starting vmpod serve (Ctrl-C stops it)"
  exec "$PREFIX/bin/vmpod" serve
fi
