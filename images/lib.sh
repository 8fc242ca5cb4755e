# Shared helpers for the images/ build scripts. Sourced, not executed.
# shellcheck shell=bash

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGES_DIR/.." && pwd)"
OUT_DIR="$IMAGES_DIR/out"
CACHE_DIR="${VMPOD_CACHE_DIR:-$HOME/.cache/vmpod}"
KERNEL_SOURCE_PKG="linux-source-6.1"
KERNEL_SOURCE_TARBALL="/usr/src/$KERNEL_SOURCE_PKG.tar.xz"

step() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# The Debian version of linux-source-6.1, e.g. 6.1.192-2; part of cache keys.
kernel_source_version() {
    local v
    v="$(dpkg-query -W -f='${Version}' "$KERNEL_SOURCE_PKG" 2>/dev/null)" ||
        die "$KERNEL_SOURCE_PKG is not installed (apt-get install $KERNEL_SOURCE_PKG)"
    [ -n "$v" ] || die "$KERNEL_SOURCE_PKG has no version in dpkg"
    [ -r "$KERNEL_SOURCE_TARBALL" ] || die "$KERNEL_SOURCE_TARBALL is missing; reinstall $KERNEL_SOURCE_PKG"
    printf '%s\n' "$v"
}

# Extracts the kernel source once per package version and prints its path.
ensure_kernel_source() {
    local version="$1"
    local dir="$CACHE_DIR/kernel/src/$version"
    if [ ! -e "$dir/.extracted" ]; then
        step "extracting $KERNEL_SOURCE_TARBALL ($version) into $dir (about a minute)"
        rm -rf "$dir"
        mkdir -p "$dir"
        tar -xJf "$KERNEL_SOURCE_TARBALL" -C "$dir"
        [ -f "$dir/$KERNEL_SOURCE_PKG/Makefile" ] || die "unexpected layout in $KERNEL_SOURCE_TARBALL"
        touch "$dir/.extracted"
    fi
    printf '%s\n' "$dir/$KERNEL_SOURCE_PKG"
}

# Serialises builds that share the cache (e.g. setup.sh and test.sh at once).
lock_cache() {
    mkdir -p "$CACHE_DIR"
    exec 9>"$CACHE_DIR/.build.lock"
    if ! flock -n 9; then
        step "waiting for another images/ build holding $CACHE_DIR/.build.lock"
        flock 9
    fi
}

# Copies $1 to $2 unless identical, so unchanged outputs keep their mtime.
install_if_changed() {
    if ! cmp -s "$1" "$2"; then
        install -m 0644 "$1" "$2.tmp"
        mv -f "$2.tmp" "$2"
    fi
}
