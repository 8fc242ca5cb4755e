#!/usr/bin/env bash
# Builds the vmpod guest kernel: Debian's linux-source-6.1, `make tinyconfig`,
# plus images/kernel/vmpod.config, everything built in.
#
# Output: images/out/vmlinux (an ELF with a PVH note, for -kernel) and
# images/out/vmlinux.version (the kernel release, `uname -r` in the guest).
#
# The result is cached under ${VMPOD_CACHE_DIR:-$HOME/.cache/vmpod}/kernel,
# keyed by sha256 of the fragment, the source package version and these
# scripts; an unchanged rebuild only copies the cached image. One build tree
# per source version is kept, so a changed fragment rebuilds incrementally.
set -euo pipefail

# shellcheck source=images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FRAGMENT="$IMAGES_DIR/kernel/vmpod.config"
LOCALVERSION_SUFFIX="-vmpod"
JOBS="${VMPOD_KERNEL_JOBS:-$(nproc)}"

[ -r "$FRAGMENT" ] || die "missing kernel config fragment $FRAGMENT"
source_version="$(kernel_source_version)"
key="$(
    {
        printf 'fragment\n'
        cat "$FRAGMENT"
        printf 'source %s %s\n' "$KERNEL_SOURCE_PKG" "$source_version"
        printf 'scripts\n'
        cat "$IMAGES_DIR/build-kernel.sh" "$IMAGES_DIR/lib.sh"
    } | sha256sum | cut -d' ' -f1
)"
result="$CACHE_DIR/kernel/images/$key"
mkdir -p "$OUT_DIR"

publish() {
    install_if_changed "$result/vmlinux" "$OUT_DIR/vmlinux"
    install_if_changed "$result/vmlinux.version" "$OUT_DIR/vmlinux.version"
    step "kernel $(cat "$OUT_DIR/vmlinux.version"): $OUT_DIR/vmlinux ($(du -h "$OUT_DIR/vmlinux" | cut -f1))"
}

# Fails listing every option of the fragment that did not end up as asked.
verify_config() {
    local config="$1" line opt missing=() unwanted=()
    while IFS= read -r line; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=y$ ]]; then
            opt="${BASH_REMATCH[1]}"
            grep -qx "$opt=y" "$config" || missing+=("$opt")
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            opt="${BASH_REMATCH[1]}"
            if grep -q "^$opt=" "$config"; then unwanted+=("$opt"); fi
        elif [[ -n "$line" && ! "$line" =~ ^# ]]; then
            die "$FRAGMENT: unsupported line (only CONFIG_X=y and '# CONFIG_X is not set'): $line"
        fi
    done <"$FRAGMENT"
    if [ "${#missing[@]}" -gt 0 ] || [ "${#unwanted[@]}" -gt 0 ]; then
        for opt in "${missing[@]}"; do
            printf 'error: %s=y was dropped by Kconfig (now: %s); a dependency is missing\n' \
                "$opt" "$(grep -E "^$opt=|^# $opt is not set" "$config" || echo 'absent')" >&2
        done
        for opt in "${unwanted[@]}"; do
            printf 'error: %s should be off but is %s\n' "$opt" "$(grep "^$opt=" "$config")" >&2
        done
        die "kernel config does not match $FRAGMENT (see above); fix the fragment"
    fi
}

lock_cache

if [ -f "$result/vmlinux" ] && [ -f "$result/vmlinux.version" ]; then
    step "kernel cache hit ($key)"
    publish
    exit 0
fi

step "kernel cache miss ($key): building $KERNEL_SOURCE_PKG $source_version"
src="$(ensure_kernel_source "$source_version")"
build="$CACHE_DIR/kernel/build/$source_version"
mkdir -p "$build"

# Fixed build identity, so the same inputs give the same `uname -v` and the
# cache key is visible inside the guest.
kmake() {
    make -C "$src" O="$build" ARCH=x86_64 \
        LOCALVERSION="$LOCALVERSION_SUFFIX" \
        KBUILD_BUILD_USER=vmpod KBUILD_BUILD_HOST=vmpod \
        KBUILD_BUILD_VERSION=1 KBUILD_BUILD_TIMESTAMP="vmpod-${key:0:12}" \
        "$@"
}

step "configuring: tinyconfig + $(basename "$FRAGMENT")"
kmake -s tinyconfig >"$build/merge.log" 2>&1 ||
    { cat "$build/merge.log" >&2; die "make tinyconfig failed"; }
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$FRAGMENT" >>"$build/merge.log" 2>&1 ||
    { cat "$build/merge.log" >&2; die "merge_config.sh failed"; }
kmake -s olddefconfig >>"$build/merge.log" 2>&1 ||
    { cat "$build/merge.log" >&2; die "make olddefconfig failed"; }
verify_config "$build/.config"
step "config verified: every option of the fragment is set as asked"

step "building vmlinux with $JOBS jobs (a few minutes on 2 cores; log: $build/build.log)"
started=$SECONDS
if ! kmake -j"$JOBS" vmlinux >"$build/build.log" 2>&1; then
    tail -n 40 "$build/build.log" >&2
    die "kernel build failed; full log in $build/build.log"
fi
release="$(kmake -s kernelrelease)"
case "$release" in
*"$LOCALVERSION_SUFFIX") ;;
*) die "kernel release '$release' does not end in $LOCALVERSION_SUFFIX" ;;
esac
step "built $release in $((SECONDS - started)) s"

tmp="$result.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$build/vmlinux" "$tmp/vmlinux"
cp "$build/.config" "$tmp/config"
printf '%s\n' "$release" >"$tmp/vmlinux.version"
rm -rf "$result"
mv "$tmp" "$result"
publish
