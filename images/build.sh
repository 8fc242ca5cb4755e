#!/usr/bin/env bash
# Builds the guest image into images/out: the kernel (vmlinux,
# vmlinux.version) and the initramfs with vmpod-agent as /init.
# Both steps are cached; with nothing changed this takes seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/build-kernel.sh"
"$here/build-initramfs.sh"
