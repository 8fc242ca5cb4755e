#!/usr/bin/env bash
# Installs what vmpod needs on a Debian 12 host. Idempotent: each step checks
# before it acts, so a second run takes seconds.
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: the QEMU backend, kernel build tools and source, the C
# libraries virtiofsd links against, mkfs.ext4 for containers' writable
# layers, CNI plugins (and the iptables they call), and the test registry.
APT_PACKAGES=(
  qemu-system-x86 e2fsprogs
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils
  libcap-ng-dev libseccomp-dev pkg-config
  containernetworking-plugins iproute2 iptables
  docker-registry busybox-static skopeo apache2-utils zstd jq file
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# vhost-user helper daemons, pinned to the versions verified with our guest.
cargo_install() {
  local crate=$1 version=$2 bin=$3
  if command -v "$bin" >/dev/null 2>&1 && "$bin" --version 2>/dev/null | grep -q "$version"; then
    log "cargo: $crate $version present"
    return
  fi
  log "cargo: installing $crate $version (about 90 s)"
  cargo install --locked --quiet "$crate" --version "$version"
}
cargo_install virtiofsd 1.14.0 virtiofsd
cargo_install vhost-device-vsock 0.3.0 vhost-device-vsock
