#!/usr/bin/env bash
# Builds the OCI image layouts that the image-service tests push to a
# loopback registry. See images/test/README.md for what each image is for.
#
# Output: ${VMPOD_CACHE_DIR:-$HOME/.cache/vmpod}/test-images/<key>/, one OCI
# layout per image (<key>/<name>/{oci-layout,index.json,blobs/sha256/...}),
# each index.json holding one descriptor annotated
# org.opencontainers.image.ref.name=<name>, so `oci:<key>/<name>:<name>` (or
# just `oci:<key>/<name>`) names it. <key>/digests.json maps each name to the
# digest of its top-level manifest (or image index, for multiarch).
#
# <key> hashes this script, /bin/busybox, sysprobe.c and the C toolchain's
# versions, so changing any of them rebuilds; an existing <key> dir is reused
# as is. Output is deterministic (fixed mtimes, uid/gid 0 unless stated, fixed
# entry order, gzip mtime 0), so digests are stable on a given host. The last line of stdout is the output dir.
#
# Needs: python3 (stdlib only), zstd, /bin/busybox from busybox-static, gcc
# and glibc's static libc (build-essential) for sysprobe.
set -euo pipefail

BUSYBOX=/bin/busybox
for tool in python3 zstd sha256sum gcc getconf; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-test-images: $tool not found (run scripts/install-deps.sh)" >&2; exit 1; }
done
if [ ! -x "$BUSYBOX" ] || [ "$(head -c 4 "$BUSYBOX" | tail -c 3)" != "ELF" ]; then
  echo "build-test-images: $BUSYBOX is missing or not an ELF binary (apt-get install busybox-static)" >&2
  exit 1
fi

script_path=$(readlink -f "${BASH_SOURCE[0]}")
probe_src=$(dirname "$script_path")/sysprobe.c
key=$({ cat "$script_path" "$BUSYBOX" "$probe_src"; gcc -dumpfullversion; getconf GNU_LIBC_VERSION; } |
  sha256sum | cut -c1-16)
cache_root=${VMPOD_CACHE_DIR:-$HOME/.cache/vmpod}/test-images
out=$cache_root/$key

if [ -f "$out/digests.json" ]; then
  echo "build-test-images: cached in $out" >&2
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "build-test-images: building in $tmp" >&2
# Static, stripped and without a build path in it, so the same toolchain
# gives the same bytes; it goes into no image's layout dir.
probe_bin=$tmp/.sysprobe
gcc -O2 -s -static -o "$probe_bin" "$probe_src"
python3 - "$tmp" "$BUSYBOX" "$probe_bin" <<'PY'
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile

OUT, BUSYBOX, SYSPROBE = sys.argv[1], sys.argv[2], sys.argv[3]

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_GZIP = MT_TAR + "+gzip"
MT_ZSTD = MT_TAR + "+zstd"
CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200  # CREATED as a Unix time
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """One OCI image layout directory."""

    def __init__(self, name):
        self.name = name
        self.dir = os.path.join(OUT, name)
        os.makedirs(os.path.join(self.dir, "blobs", "sha256"))
        with open(os.path.join(self.dir, "oci-layout"), "wb") as f:
            f.write(canonical({"imageLayoutVersion": "1.0.0"}))

    def blob(self, media_type, data, **extra):
        digest = sha256(data)
        path = os.path.join(self.dir, "blobs", "sha256", digest[7:])
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        desc.update(extra)
        return desc

    def finish(self, top):
        top = dict(top)
        top["annotations"] = {"org.opencontainers.image.ref.name": self.name}
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [top]}
        with open(os.path.join(self.dir, "index.json"), "wb") as f:
            f.write(canonical(index))
        return top["digest"]


# --- layer tars --------------------------------------------------------------
# Entries are (kind, path, extra) and are written in the order given: parents
# before children, a hard link after its target.

def entry(kind, path, mode=0o644, data=b"", link="", uid=0, gid=0):
    ti = tarfile.TarInfo(path)
    ti.mtime = MTIME
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mode = mode
    if kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif kind == "file":
        ti.type = tarfile.REGTYPE
        ti.size = len(data)
    elif kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = link
        ti.mode = 0o777
    elif kind == "hardlink":
        ti.type = tarfile.LNKTYPE
        ti.linkname = link
    else:
        raise ValueError(kind)
    return ti, data


def make_tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def gzip_bytes(data, level=6):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as gz:
        gz.write(data)
    return buf.getvalue()


def zstd_bytes(data):
    return subprocess.run(["zstd", "-q", "-c", "-3", "--no-progress"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout


with open(BUSYBOX, "rb") as f:
    busybox_bin = f.read()

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
          b"app:x:1000:1000::/home/app:/bin/sh\n")
GROUP = b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"
APPLETS = ["cat", "dd", "echo", "env", "false", "grep", "head", "hostname", "id", "kill", "ls", "mkdir", "ps", "pwd", "readlink", "rm", "sh", "sleep", "touch", "true", "uname", "wc"]

busybox_tar = make_tar(
    [entry("dir", "bin", 0o755), entry("file", "bin/busybox", 0o755, busybox_bin)]
    + [entry("symlink", "bin/" + a, link="busybox") for a in APPLETS]
    + [entry("dir", "etc", 0o755),
       entry("file", "etc/group", 0o644, GROUP),
       entry("file", "etc/passwd", 0o644, PASSWD),
       entry("dir", "home", 0o755),
       entry("dir", "home/app", 0o755, uid=1000, gid=1000),
       entry("dir", "root", 0o700),
       entry("dir", "tmp", 0o1777)])

layer2_tar = make_tar([
    entry("dir", "data", 0o755),
    entry("dir", "data/dir", 0o755),
    entry("file", "data/dir/x", data=b"x\n"),
    entry("file", "data/gone", data=b"gone\n"),
    entry("file", "data/keep", data=b"keep\n"),
    entry("dir", "links", 0o755),
    entry("file", "links/target", data=b"target\n"),
    entry("hardlink", "links/hard", link="links/target"),
    entry("symlink", "links/sym", link="target"),
    entry("dir", "opaque", 0o755),
    entry("file", "opaque/old1", data=b"old1\n"),
    entry("dir", "opaque/sub", 0o755),
    entry("file", "opaque/sub/old2", data=b"old2\n"),
])

layer3_tar = make_tar([
    entry("dir", "data", 0o755),
    entry("file", "data/.wh.gone"),
    entry("file", "data/added", data=b"added\n"),
    entry("dir", "opaque", 0o755),
    entry("file", "opaque/.wh..wh..opq"),
    entry("file", "opaque/new", data=b"new\n"),
])

arm64_tar = make_tar([entry("file", "arch", data=b"arm64\n")])

with open(SYSPROBE, "rb") as f:
    sysprobe_tar = make_tar([entry("dir", "bin", 0o755),
                             entry("file", "bin/sysprobe", 0o755, f.read())])


def image(layout, layers, config=None, arch="amd64", platform=False):
    """Writes layers, config and manifest into layout; returns the manifest
    descriptor. layers: list of (tar bytes, media type, blob bytes)."""
    layer_descs = [layout.blob(mt, blob) for (_tar, mt, blob) in layers]
    cfg = {
        "created": CREATED,
        "architecture": arch,
        "os": "linux",
        "config": config if config is not None else {"Env": [PATH_ENV], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for (t, _mt, _b) in layers]},
        "history": [{"created": CREATED, "created_by": "images/test/build-test-images.sh"}
                    for _ in layers],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": layout.blob(MT_CONFIG, canonical(cfg)),
        "layers": layer_descs,
    }
    extra = {"platform": {"architecture": arch, "os": "linux"}} if platform else {}
    return layout.blob(MT_MANIFEST, canonical(manifest), **extra)


busybox_gz = gzip_bytes(busybox_tar)
BUSYBOX_LAYER = (busybox_tar, MT_GZIP, busybox_gz)
digests = {}

lay = Layout("busybox")
digests["busybox"] = lay.finish(image(lay, [BUSYBOX_LAYER]))

lay = Layout("multilayer")
digests["multilayer"] = lay.finish(image(lay, [
    BUSYBOX_LAYER,
    (layer2_tar, MT_GZIP, gzip_bytes(layer2_tar)),
    (layer3_tar, MT_GZIP, gzip_bytes(layer3_tar)),
]))

lay = Layout("config")
digests["config"] = lay.finish(image(lay, [BUSYBOX_LAYER], config={
    "User": "app",
    "Env": [PATH_ENV, "GREETING=hello"],
    "WorkingDir": "/home/app",
    "Entrypoint": ["/bin/echo"],
    "Cmd": ["from-image"],
    "StopSignal": "SIGINT",
    "Labels": {"org.vmpod.test": "config"},
}))

lay = Layout("multiarch")
amd64 = image(lay, [BUSYBOX_LAYER], platform=True)
arm64 = image(lay, [(arm64_tar, MT_GZIP, gzip_bytes(arm64_tar))],
              config={"Env": [PATH_ENV], "Cmd": ["/bin/sh"]}, arch="arm64", platform=True)
nested = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [amd64, arm64]}
digests["multiarch"] = lay.finish(lay.blob(MT_INDEX, canonical(nested)))

lay = Layout("zstd")
digests["zstd"] = lay.finish(image(lay, [(busybox_tar, MT_ZSTD, zstd_bytes(busybox_tar))]))

lay = Layout("uncompressed")
digests["uncompressed"] = lay.finish(image(lay, [(busybox_tar, MT_TAR, busybox_tar)]))

lay = Layout("sysprobe")
digests["sysprobe"] = lay.finish(image(lay, [
    BUSYBOX_LAYER,
    (sysprobe_tar, MT_GZIP, gzip_bytes(sysprobe_tar)),
]))

lay = Layout("big")
big_layers = []
for i in range(5):
    data = random.Random(f"vmpod-big-{i}").randbytes(20 * 1000 * 1000)
    t = make_tar([entry("dir", "big", 0o755), entry("file", f"big/{i}.bin", data=data)])
    big_layers.append((t, MT_GZIP, gzip_bytes(t, level=1)))
digests["big"] = lay.finish(image(lay, big_layers))

with open(os.path.join(OUT, "digests.json"), "w") as f:
    json.dump(digests, f, indent=2, sort_keys=True)
    f.write("\n")
for name, d in sorted(digests.items()):
    print(f"  {name:13} {d}", file=sys.stderr)
PY

rm -f "$probe_bin"
if mv -T "$tmp" "$out" 2>/dev/null; then
  trap - EXIT
elif [ -f "$out/digests.json" ]; then
  echo "build-test-images: another build finished first; using it" >&2
else
  echo "build-test-images: cannot move $tmp to $out" >&2
  exit 1
fi
echo "$out"
