#!/usr/bin/env bash
# Builds the VMM test guests into ${VMPOD_GUESTS_OUT:-<target dir>/guests}:
# the assembly ones (tests/guests/*.S) with gcc/GNU as, and the Rust ones
# (tests/guests/rust, one <name>.elf per binary) with cargo. Idempotent: an
# assembly guest is rebuilt only when its source, the shared include, the
# linker script or this script is newer than the output; the Rust guests rely
# on cargo's own freshness check and are copied only when they changed.
# Prints the output directory on stdout and nothing else (cargo's progress
# goes to stderr).
set -euo pipefail

src="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$src/../../target}"
out="${VMPOD_GUESTS_OUT:-$target/guests}"
mkdir -p "$out"

stale() { # stale OUTPUT INPUT...
    local o="$1"; shift
    [[ -e "$o" ]] || return 0
    local i
    for i in "$@"; do [[ "$i" -nt "$o" ]] && return 0; done
    return 1
}

common=("$src/lib64.inc" "$src/guest.ld" "$src/build.sh")
cflags=(-nostdlib -static -no-pie -ffreestanding -Wa,-I"$src"
        -Wl,-T,"$src/guest.ld" -Wl,--build-id=none -Wl,-z,max-page-size=0x1000
        -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments)

for g in elf64 pvh smp hostile; do
    if stale "$out/$g.elf" "$src/$g.S" "${common[@]}"; then
        gcc "${cflags[@]}" -o "$out/$g.elf.tmp" "$src/$g.S"
        mv "$out/$g.elf.tmp" "$out/$g.elf"
    fi
done

# The virtio-blk guest, and its hostile variant from the same source.
if stale "$out/blk.elf" "$src/blk.S" "${common[@]}"; then
    gcc "${cflags[@]}" -o "$out/blk.elf.tmp" "$src/blk.S"
    mv "$out/blk.elf.tmp" "$out/blk.elf"
fi
if stale "$out/blk_hostile.elf" "$src/blk.S" "${common[@]}"; then
    gcc "${cflags[@]}" -DHOSTILE -o "$out/blk_hostile.elf.tmp" "$src/blk.S"
    mv "$out/blk_hostile.elf.tmp" "$out/blk_hostile.elf"
fi

# The bzImage guest is a flat file: the setup header at its fixed offsets,
# then the payload, exactly as a Linux bzImage is laid out.
if stale "$out/bzimage.bin" "$src/bzimage.S" "${common[@]}"; then
    gcc -c -Wa,-I"$src" -o "$out/bzimage.o" "$src/bzimage.S"
    objcopy -O binary -j .text "$out/bzimage.o" "$out/bzimage.bin.tmp"
    mv "$out/bzimage.bin.tmp" "$out/bzimage.bin"
    rm -f "$out/bzimage.o"
fi

# The Rust guests: their own workspace and lock file, built for bare metal by
# the flags in rust/.cargo/config.toml, which RUSTFLAGS from the environment
# would replace, hence the env -u.
rust_target="$target/guest-rust"
(
    cd "$src/rust"
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
        -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR \
        "${CARGO:-cargo}" build --release --locked --quiet --target-dir "$rust_target"
) >&2
for bin in "$src"/rust/src/bin/*.rs; do
    g="$(basename "$bin" .rs)"
    built="$rust_target/x86_64-unknown-linux-gnu/release/$g"
    if ! cmp -s "$built" "$out/$g.elf"; then
        cp "$built" "$out/$g.elf.tmp"
        mv "$out/$g.elf.tmp" "$out/$g.elf"
    fi
done

# A file that is neither ELF nor bzImage, for the loader's error path.
[[ -e "$out/garbage.bin" ]] || head -c 4096 /dev/zero | tr '\0' 'x' > "$out/garbage.bin"

echo "$out"
