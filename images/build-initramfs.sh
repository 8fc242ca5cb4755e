#!/usr/bin/env bash
# Builds images/out/initramfs.cpio.gz: a static vmpod-agent as /init, the
# directories it mounts on, and /dev/console and /dev/null (Linux 6.1 does
# not mount devtmpfs before running /init from an initramfs, and without
# /dev/console the agent would start with no stdio).
#
# The archive is written with the kernel tree's usr/gen_init_cpio, so no
# root or mknod is needed, and it is reproducible: the same agent binary
# gives the same bytes.
set -euo pipefail

# shellcheck source=images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TARGET=x86_64-unknown-linux-gnu
# A target dir of its own: a different RUSTFLAGS would otherwise rebuild the
# host build's crates, and its lock would serialise with the main build.
GUEST_TARGET_DIR="$REPO_ROOT/target/guest"
AGENT="$GUEST_TARGET_DIR/$TARGET/release/vmpod-agent"

lock_cache
mkdir -p "$OUT_DIR"

step "building vmpod-agent (static, release, $TARGET)"
(
    cd "$REPO_ROOT"
    CARGO_TARGET_DIR="$GUEST_TARGET_DIR" \
        RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --quiet -p vmpod-agent --target "$TARGET"
) || die "cargo build of vmpod-agent failed"
[ -x "$AGENT" ] || die "cargo did not produce $AGENT"

# The kernel has no dynamic loader to offer: a PT_INTERP header means /init
# could never start.
if readelf -lW "$AGENT" | grep -q 'INTERP'; then
    die "$AGENT is dynamically linked (has PT_INTERP); it must be static"
fi
case "$(file -b "$AGENT")" in
*"statically linked"* | *"static-pie linked"*) ;;
*) die "$AGENT is not static: $(file -b "$AGENT")" ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Symbols only help a debugger; the unstripped binary stays in target/guest.
strip --strip-all -o "$work/init" "$AGENT"
touch -d @0 "$work/init"

# gen_init_cpio is one C file of the kernel tree; build it once per version.
source_version="$(kernel_source_version)"
gen="$CACHE_DIR/tools/$source_version/gen_init_cpio"
if [ ! -x "$gen" ]; then
    src="$(ensure_kernel_source "$source_version")"
    step "building gen_init_cpio from $KERNEL_SOURCE_PKG $source_version"
    mkdir -p "$(dirname "$gen")"
    gcc -O2 -o "$gen.tmp" "$src/usr/gen_init_cpio.c"
    mv -f "$gen.tmp" "$gen"
fi

case "$work" in
*[[:space:]]*) die "temporary dir $work contains whitespace, which gen_init_cpio cannot take" ;;
esac
cat >"$work/list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
nod /dev/null 0666 0 0 c 1 3
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 1777 0 0
dir /etc 0755 0 0
dir /mnt 0755 0 0
file /init $work/init 0755 0 0
LIST

step "packing initramfs"
"$gen" -t 0 "$work/list" >"$work/initramfs.cpio"
gzip -9 -n <"$work/initramfs.cpio" >"$work/initramfs.cpio.gz"
install_if_changed "$work/initramfs.cpio.gz" "$OUT_DIR/initramfs.cpio.gz"
step "initramfs: $OUT_DIR/initramfs.cpio.gz ($(du -h --apparent-size "$OUT_DIR/initramfs.cpio.gz" | cut -f1); agent $(du -h --apparent-size "$work/init" | cut -f1) stripped)"
