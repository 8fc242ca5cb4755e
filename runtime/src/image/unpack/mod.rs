//! Unpacks one OCI image layer into a directory that overlayfs can use as a
//! lower layer.
//!
//! # Threat model
//!
//! Layer blobs come from registries we do not control. The digest check the
//! caller does proves we received the blob the manifest named, not that the
//! blob is benign: anyone can push an image. The daemon unpacks as root on
//! the host, so a single entry written outside `dest` is a host compromise,
//! and a layer that makes us allocate or write without bound takes the node
//! down. Everything in the tar header is therefore treated as hostile input.
//!
//! Why the defences are shaped the way they are:
//!
//! - **Names are normalised lexically, `..` is refused, and a leading `/` is
//!   dropped.** Absolute names are common in real layers and harmless once
//!   made relative; `..` has no legitimate use in a layer and refusing it is
//!   simpler than reasoning about where it lands.
//! - **No path is ever resolved by the kernel with symlink following.** A
//!   lexical check is not enough on its own: an earlier entry may plant
//!   `a -> /etc` (or `a -> ../..`) and a later one write `a/passwd`. Parents
//!   are opened component by component with `O_NOFOLLOW | O_DIRECTORY`
//!   relative to a directory fd, and every create/chown/utime/xattr call
//!   names a single component relative to such an fd with the no-follow
//!   flavour of the syscall. A symlink where a directory is expected is an
//!   error, not something to resolve "safely": stored symlinks are for the
//!   container to follow, never for us. (`openat2(RESOLVE_BENEATH)` would
//!   give the same guarantee in one call, but the walk is needed anyway to
//!   create missing parents, and it works on every kernel.)
//! - **Files are unlinked and recreated with `O_EXCL`, never truncated in
//!   place.** An earlier hard link in the layer would otherwise make a later
//!   write land in another file's inode.
//! - **Hard links must name an entry this layer already extracted**, found
//!   by the same no-follow walk, because `linkat` to an arbitrary path would
//!   hand the container a link to a host file.
//! - **`trusted.overlay.*` (and `user.overlay.*`) xattrs from the layer are
//!   dropped.** overlayfs trusts them (`redirect`, `metacopy`, `origin`) to
//!   look up other paths; only our own whiteout translation sets them.
//! - **Memory and disk are bounded.** The `tar` crate buffers PAX and GNU
//!   long-name records whole, so the stream is metered and at most
//!   [`MAX_METADATA_BYTES`] may be read between two entries; file data is
//!   streamed, never held; GNU sparse entries, whose 512-byte header can
//!   declare exabytes of holes, share a per-layer hole budget and are
//!   written with real holes. A few KiB of gzip can expand to terabytes, and
//!   a few MiB to millions of 512-byte headers, so the [`Limits`] (the
//!   `registry.max-*` keys of the daemon config) are checked as the stream
//!   is read, before the disk fills: decompressed bytes per layer and per
//!   image, inodes per layer (entries plus the parents they imply), and the
//!   length and depth of every name. Nothing is kept per entry in memory:
//!   the one per-entry record the unpack needs until the end (a directory's
//!   mode and mtime, see [`DeferredDirs`]) goes to an unnamed temp file once
//!   it passes [`DEFERRED_DIRS_IN_MEMORY`], and what is held at any time is
//!   that buffer, one entry's name and metadata (at most
//!   [`MAX_METADATA_BYTES`]) and one open directory per path component.
//! - **Device nodes are only made when running as root** (and skipped where
//!   even root may not, such as in a user namespace), because a container
//!   gets its `/dev` from the runtime anyway; whiteouts are the exception,
//!   since dropping one would resurrect a file the image deleted.
//!
//! The diff_id is hashed over the decompressed bytes as they stream past,
//! including the end-of-archive padding after the last entry, because the
//! image config's `rootfs.diff_ids` hash the whole uncompressed tar and the
//! caller compares against them. That comparison is not optional: an
//! uncompressed layer cut exactly at an entry boundary parses as a shorter
//! but valid archive (tar has no trailer checksum), and only the digest
//! notices. Compressed layers also fail here, on the missing trailer.
//!
//! OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) are translated to overlayfs
//! form (0:0 character device, `trusted.overlay.opaque=y`) here, so the
//! result can be stacked directly with `lowerdir=`.

mod fsops;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, makedev, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat, unlinkat};
use sha2::{Digest, Sha256};
use tar::EntryType;

use fsops::WalkError;

/// Longest symlink or hard-link target accepted.
pub const MAX_LINK_TARGET_LEN: usize = 4096;
/// Most bytes the tar parser may consume between two entries: headers, PAX
/// records and GNU long names. The `tar` crate reads those into memory whole.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Most bytes of holes all GNU sparse entries of one layer may declare.
pub const MAX_SPARSE_HOLE_BYTES: u64 = 64 << 30;
/// Bytes of deferred directory records kept in memory before they go to a
/// temp file. A real layer's directories fit (50,000 directories with
/// 60-byte paths are about 4 MiB), so the file is only made for layers
/// that are mostly directory entries.
pub const DEFERRED_DIRS_IN_MEMORY: usize = 4 << 20;

/// Default `registry.max-layer-entries`. The biggest real layers (a full
/// distro with toolchains, node_modules trees) have a few hundred thousand
/// files; a million is past them and still a bounded amount of work.
pub const DEFAULT_MAX_LAYER_ENTRIES: u64 = 1_000_000;
/// Default `registry.max-layer-bytes`: 16 GiB. CUDA/ML base layers are a
/// few GiB uncompressed; a layer past this is a bomb or belongs on a volume.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 16 << 30;
/// Default `registry.max-image-bytes`: 64 GiB over all layers unpacked by
/// one pull, so that many layers just under the per-layer limit cannot add
/// up to a full disk either.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 64 << 30;
/// Default `registry.max-path-length`: PATH_MAX. Longer names cannot be
/// used by a container anyway: most syscalls refuse them.
pub const DEFAULT_MAX_PATH_LENGTH: u64 = 4096;
/// Default `registry.max-path-depth`. Deeply nested node_modules reach a
/// few dozen components; 256 leaves room and bounds the directories one
/// name can make us create and hold open.
pub const DEFAULT_MAX_PATH_DEPTH: u64 = 256;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS bookkeeping names (`.wh..wh.plnk`, ...) share this prefix.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
const COPY_BUF: usize = 128 * 1024;
/// File data written between two writeback kicks (see [`start_writeback`]).
const WRITEBACK_CHUNK: u64 = 8 << 20;
/// Files at least this big get their tail's writeback started when done.
const WRITEBACK_MIN_FILE: u64 = 1 << 20;

/// A limit a hostile layer can run into, named by its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    LayerEntries,
    LayerBytes,
    ImageBytes,
    PathLength,
    PathDepth,
}

impl Limit {
    /// The config key that sets it, so an operator who meets it with a
    /// legitimate image knows what to raise.
    pub fn key(self) -> &'static str {
        match self {
            Limit::LayerEntries => "registry.max-layer-entries",
            Limit::LayerBytes => "registry.max-layer-bytes",
            Limit::ImageBytes => "registry.max-image-bytes",
            Limit::PathLength => "registry.max-path-length",
            Limit::PathDepth => "registry.max-path-depth",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Limit::LayerEntries => "entries and implied parent directories",
            Limit::LayerBytes => "decompressed bytes",
            Limit::ImageBytes => "decompressed bytes of the image's new layers",
            Limit::PathLength => "bytes of name",
            Limit::PathDepth => "name components",
        }
    }
}

/// What one layer (and one image) may make the unpacker do; see the
/// `registry.max-*` keys in the daemon config.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Inodes per layer: tar entries plus the parent directories their
    /// names imply without listing them.
    pub max_layer_entries: u64,
    /// Decompressed tar stream per layer, padding and trailing garbage
    /// included.
    pub max_layer_bytes: u64,
    /// Entry and hard-link target names, in bytes after PAX / GNU
    /// long-name expansion.
    pub max_path_length: u64,
    /// Entry and hard-link target names, in components.
    pub max_path_depth: u64,
    /// Shared by the layers of one image that are unpacked concurrently.
    pub image: Arc<ImageBytes>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_entries: DEFAULT_MAX_LAYER_ENTRIES,
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            max_path_length: DEFAULT_MAX_PATH_LENGTH,
            max_path_depth: DEFAULT_MAX_PATH_DEPTH,
            image: Arc::new(ImageBytes::new(DEFAULT_MAX_IMAGE_BYTES)),
        }
    }
}

/// Decompressed bytes one image's layers have used so far, across the
/// layers that unpack in parallel. Layers whose snapshot already exists
/// cost nothing and are not counted: the limit is about what a pull adds.
#[derive(Debug)]
pub struct ImageBytes {
    used: AtomicU64,
    max: u64,
}

impl ImageBytes {
    pub fn new(max: u64) -> ImageBytes {
        ImageBytes {
            used: AtomicU64::new(0),
            max,
        }
    }

    /// Counts `n` more bytes; false once the total is past the limit.
    fn take(&self, n: u64) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        before.saturating_add(n) <= self.max
    }

    /// Whether `n` more bytes would still fit, without counting them.
    fn fits(&self, n: u64) -> bool {
        self.used.load(Ordering::Relaxed).saturating_add(n) <= self.max
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI/Docker layer media type, e.g.
    /// `application/vnd.oci.image.layer.v1.tar+gzip`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`, `...tar+zstd`,
    /// `...tar`. `None` for unknown types, so the caller can refuse a blob
    /// it does not know how to read rather than guess.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        // Media types are case-insensitive (RFC 6838); parameters are not
        // used for layers.
        let mt = media_type.trim().to_ascii_lowercase();
        match mt.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// What one unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar stream, to compare with the
    /// image config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// Tar entries processed (PAX and GNU long-name records not counted).
    pub entries: u64,
    /// File content bytes written.
    pub bytes: u64,
}

/// Why a layer could not be unpacked. Entry paths are shown as in the
/// archive (lossily decoded, Debug-quoted so control characters are visible).
/// On any error `dest` holds a partial tree and should be discarded.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open unpack destination {}: {source}", path.display())]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Decompression failed, the tar framing is corrupt, or the stream ended
    /// early.
    #[error("layer stream unreadable after {after}: {source}")]
    Stream {
        after: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "tar metadata (headers, PAX records, GNU long names) after {after} exceeds {MAX_METADATA_BYTES} bytes"
    )]
    MetadataTooLarge { after: String },
    /// The layer (or the image) is larger, in some way, than a limit of the
    /// daemon config allows. `at` names where the unpack was.
    #[error("exceeds {} = {max} {} at {at}", .limit.key(), .limit.unit())]
    Limit { limit: Limit, max: u64, at: String },
    #[error("entry {path:?}: bad name: {reason}")]
    BadName { path: String, reason: &'static str },
    #[error("entry {path:?}: bad link target {target:?}: {reason}")]
    BadLinkTarget {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("entry {path:?}: bad header field {field}: {source}")]
    BadHeader {
        path: String,
        field: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("entry {path:?}: unsupported entry type {kind:?}")]
    UnsupportedType { path: String, kind: char },
    #[error("entry {path:?}: parent {component:?} is {what}; refusing to write through it")]
    UnsafeParent {
        path: String,
        component: String,
        what: &'static str,
    },
    #[error("entry {path:?}: hard link target {target:?} {reason}")]
    BadHardLink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("entry {path:?}: data ends after {got} of {expected} bytes")]
    Truncated {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "entry {path:?}: sparse holes exceed the layer budget of {MAX_SPARSE_HOLE_BYTES} bytes"
    )]
    SparseTooLarge { path: String },
    #[error(
        "entry {path:?}: {op} needs privileges this process lacks (the daemon must run as root): {source}"
    )]
    PrivilegeRequired {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("entry {path:?}: set xattr {name:?} ({len} bytes): {source}")]
    Xattr {
        path: String,
        name: String,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Unpacks one layer into `dest`, an existing empty directory, as an
/// overlayfs-ready diff, within `limits`.
pub fn unpack(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let root = fsops::open_root(dest).map_err(|e| UnpackError::Destination {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;
    let meter = Meter {
        in_data: Cell::new(false),
        meta_bytes: Cell::new(0),
        stream_bytes: Cell::new(0),
        tripped: Cell::new(None),
        max_layer_bytes: limits.max_layer_bytes,
        image: &limits.image,
    };
    let mut u = Unpacker {
        root,
        privileged: nix::unistd::geteuid().is_root(),
        meter: &meter,
        limits,
        dirs: DeferredDirs::new(dest, DEFERRED_DIRS_IN_MEMORY),
        entries: 0,
        parents_made: Cell::new(0),
        bytes: 0,
        sparse_holes: 0,
        last: None,
        buf: vec![0; COPY_BUF],
    };
    let decoder = match compression {
        Compression::None => Decoder::Plain(reader),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(reader))),
        // The zstd decoder keeps its default window limit (128 MiB), which
        // bounds what a hostile frame header can make it allocate.
        Compression::Zstd => {
            Decoder::Zstd(zstd::stream::read::Decoder::new(reader).map_err(|e| u.stream_error(e))?)
        }
    };
    let mut stream = HashingReader {
        inner: decoder,
        hasher: Sha256::new(),
        meter: &meter,
    };

    {
        let mut archive = tar::Archive::new(&mut stream);
        let entries = archive.entries().map_err(|e| u.stream_error(e))?;
        for entry in entries {
            let entry = entry.map_err(|e| u.stream_error(e))?;
            meter.meta_bytes.set(0);
            u.entry(entry)?;
        }
    }

    // The archive ends at the first zero block; the rest of the stream
    // (the second zero block, blocking-factor padding, gzip trailer) is
    // still part of what diff_id covers, and reading it is what surfaces a
    // truncated or corrupt compressed stream.
    meter.in_data.set(true);
    io::copy(&mut stream, &mut io::sink()).map_err(|e| u.stream_error(e))?;

    u.finish_dirs()?;
    let digest = stream.hasher.finalize();
    let mut diff_id = String::with_capacity(7 + 64);
    diff_id.push_str("sha256:");
    for b in digest {
        let _ = write!(diff_id, "{b:02x}");
    }
    Ok(Unpacked {
        diff_id,
        entries: u.entries,
        bytes: u.bytes,
    })
}

enum Decoder<R: Read> {
    Plain(R),
    /// Boxed: with the zlib-rs backend (which the SPDY crate needs for
    /// header dictionaries) the decoder's state is large.
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<R>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// Tells the stream who is reading. Bytes read while `in_data` is false are
/// the tar parser's own (headers, padding, PAX and long-name records); they
/// are counted so a hostile record cannot make the parser buffer gigabytes.
/// Every byte counts against the layer's and the image's byte limits.
struct Meter<'l> {
    in_data: Cell<bool>,
    meta_bytes: Cell<u64>,
    /// Decompressed bytes so far.
    stream_bytes: Cell<u64>,
    /// Which budget the stream ran out of, if it did: its read error is
    /// only a way to stop the tar parser and names no limit.
    tripped: Cell<Option<Tripped>>,
    max_layer_bytes: u64,
    image: &'l ImageBytes,
}

#[derive(Clone, Copy)]
enum Tripped {
    Metadata,
    Limit(Limit),
}

impl Meter<'_> {
    fn trip(&self, why: Tripped) -> io::Error {
        self.tripped.set(Some(why));
        io::Error::other("layer limit exceeded")
    }
}

/// Hashes the decompressed stream for diff_id and enforces the budgets of
/// [`Meter`]. It sits between the decompressor and the tar parser, so a
/// gzip or zstd bomb is stopped after at most one read past the limit,
/// whatever the tar inside says.
struct HashingReader<'m, 'l, R> {
    inner: R,
    hasher: Sha256,
    meter: &'m Meter<'l>,
}

impl<R: Read> Read for HashingReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let total = self.meter.stream_bytes.get().saturating_add(n as u64);
        self.meter.stream_bytes.set(total);
        if total > self.meter.max_layer_bytes {
            return Err(self.meter.trip(Tripped::Limit(Limit::LayerBytes)));
        }
        if !self.meter.image.take(n as u64) {
            return Err(self.meter.trip(Tripped::Limit(Limit::ImageBytes)));
        }
        if !self.meter.in_data.get() {
            let total = self.meter.meta_bytes.get().saturating_add(n as u64);
            self.meter.meta_bytes.set(total);
            if total > MAX_METADATA_BYTES {
                return Err(self.meter.trip(Tripped::Metadata));
            }
        }
        Ok(n)
    }
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Directories whose mode and mtime are applied after all entries: writing
/// children changes a directory's mtime, and a read-only mode would block
/// the children of an unprivileged unpack.
///
/// This is the one thing the unpack remembers per entry, and a layer can be
/// nothing but directory entries, so it must not live in memory: records
/// (mode, mtime, `/`-joined path) are appended to a buffer, and once that
/// passes [`DEFERRED_DIRS_IN_MEMORY`] to an unnamed temp file in `dest`
/// (`O_TMPFILE`: nothing to clean up, freed when the unpack ends however it
/// ends). Memory is therefore at most that buffer; the file is smaller than
/// the decompressed stream (each record is 24 bytes plus a name that took
/// at least a 512-byte header to carry), which `registry.max-layer-bytes`
/// bounds.
struct DeferredDirs {
    buf: Vec<u8>,
    file: Option<File>,
    /// Where the temp file goes: the snapshot's own filesystem.
    dir: PathBuf,
    /// [`DEFERRED_DIRS_IN_MEMORY`], smaller in tests.
    in_memory: usize,
}

/// mode u32, mtime seconds i64, nanoseconds i64, path length u32.
const DEFERRED_HEADER: usize = 4 + 8 + 8 + 4;

/// One record read back by [`DeferredDirs::replay`].
struct DeferredDir {
    comps: Vec<Vec<u8>>,
    mode: u32,
    mtime: TimeSpec,
}

impl DeferredDirs {
    fn new(dest: &Path, in_memory: usize) -> DeferredDirs {
        DeferredDirs {
            buf: Vec::new(),
            file: None,
            dir: dest.to_path_buf(),
            in_memory,
        }
    }

    fn push(&mut self, comps: &[Vec<u8>], mode: u32, mtime: &TimeSpec) -> io::Result<()> {
        let len: usize = comps.iter().map(|c| c.len() + 1).sum::<usize>();
        let len = u32::try_from(len.saturating_sub(1))
            .map_err(|_| io::Error::other("directory name too long to record"))?;
        self.buf.extend_from_slice(&mode.to_le_bytes());
        self.buf.extend_from_slice(&mtime.tv_sec().to_le_bytes());
        self.buf.extend_from_slice(&mtime.tv_nsec().to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        for (i, c) in comps.iter().enumerate() {
            if i > 0 {
                self.buf.push(b'/');
            }
            self.buf.extend_from_slice(c);
        }
        if self.buf.len() >= self.in_memory {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile_in(&self.dir)?),
        };
        file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Calls `apply` for every record, in the order they were pushed.
    fn replay(
        &mut self,
        mut apply: impl FnMut(DeferredDir) -> Result<(), UnpackError>,
    ) -> Result<(), UnpackError> {
        let spill_err = |e: io::Error| io_err("(deferred directories)", "read back", e);
        let mut reader: Box<dyn BufRead + '_> = match &mut self.file {
            None => Box::new(self.buf.as_slice()),
            Some(file) => {
                file.write_all(&self.buf).map_err(spill_err)?;
                self.buf = Vec::new();
                file.seek(SeekFrom::Start(0)).map_err(spill_err)?;
                Box::new(io::BufReader::with_capacity(COPY_BUF, file))
            }
        };
        let mut head = [0u8; DEFERRED_HEADER];
        loop {
            if reader.fill_buf().map_err(spill_err)?.is_empty() {
                return Ok(());
            }
            reader.read_exact(&mut head).map_err(spill_err)?;
            let (mode, rest) = head.split_at(4);
            let (sec, rest) = rest.split_at(8);
            let (nsec, len) = rest.split_at(8);
            // The slices have the lengths just split off.
            let le4 = |b: &[u8]| <[u8; 4]>::try_from(b).unwrap_or_default();
            let le8 = |b: &[u8]| <[u8; 8]>::try_from(b).unwrap_or_default();
            let len = u32::from_le_bytes(le4(len)) as usize;
            let mut path = vec![0u8; len];
            reader.read_exact(&mut path).map_err(spill_err)?;
            let comps = if path.is_empty() {
                Vec::new()
            } else {
                path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
            };
            apply(DeferredDir {
                comps,
                mode: u32::from_le_bytes(le4(mode)),
                mtime: TimeSpec::new(i64::from_le_bytes(le8(sec)), i64::from_le_bytes(le8(nsec))),
            })?;
        }
    }
}

struct Unpacker<'m, 'l> {
    root: OwnedFd,
    privileged: bool,
    meter: &'m Meter<'l>,
    limits: &'l Limits,
    dirs: DeferredDirs,
    /// Tar entries so far (PAX and GNU long-name records not counted).
    entries: u64,
    /// Parent directories created because a name implied them: they cost
    /// an inode each like an entry, and count against the same limit.
    parents_made: Cell<u64>,
    bytes: u64,
    sparse_holes: u64,
    /// Name of the last entry seen, for errors about the stream itself.
    last: Option<String>,
    buf: Vec<u8>,
}

/// Which way to apply metadata to a non-directory.
enum Target<'a> {
    /// An fd we opened for writing (regular files).
    Fd(BorrowedFd<'a>),
    /// An entry we must not open: symlinks and special files.
    At {
        parent: &'a OwnedFd,
        name: &'a [u8],
        symlink: bool,
    },
}

impl Unpacker<'_, '_> {
    fn stream_error(&self, source: io::Error) -> UnpackError {
        let after = match &self.last {
            Some(p) => format!("entry {p:?}"),
            None => "(start of layer)".to_string(),
        };
        match self.meter.tripped.get() {
            Some(Tripped::Metadata) => UnpackError::MetadataTooLarge { after },
            Some(Tripped::Limit(limit)) => UnpackError::Limit {
                limit,
                max: self.limit_of(limit),
                at: after,
            },
            None => UnpackError::Stream { after, source },
        }
    }

    fn limit_of(&self, limit: Limit) -> u64 {
        match limit {
            Limit::LayerEntries => self.limits.max_layer_entries,
            Limit::LayerBytes => self.limits.max_layer_bytes,
            Limit::ImageBytes => self.limits.image.max,
            Limit::PathLength => self.limits.max_path_length,
            Limit::PathDepth => self.limits.max_path_depth,
        }
    }

    fn limit_err(&self, limit: Limit, path: &str) -> UnpackError {
        UnpackError::Limit {
            limit,
            max: self.limit_of(limit),
            at: format!("entry {path:?}"),
        }
    }

    /// Inodes this layer may still create: entries and implied parents
    /// share `registry.max-layer-entries`.
    fn inodes_left(&self) -> u64 {
        self.limits
            .max_layer_entries
            .saturating_sub(self.entries)
            .saturating_sub(self.parents_made.get())
    }

    /// Splits an entry or hard-link target name, within the name limits.
    fn parse_name(&self, raw: &[u8], path: &str) -> Result<Vec<Vec<u8>>, NameError> {
        parse_name(raw, self.limits.max_path_length, self.limits.max_path_depth).map_err(
            |e| match e {
                NameError::Limit(l) => NameError::Err(self.limit_err(l, path)),
                e => e,
            },
        )
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let path = show(&raw);
        self.last = Some(path.clone());
        if self.inodes_left() == 0 {
            return Err(self.limit_err(Limit::LayerEntries, &path));
        }
        self.entries += 1;
        let kind = entry.header().entry_type();
        let comps = self.parse_name(&raw, &path).map_err(|e| match e {
            NameError::Bad(reason) => UnpackError::BadName {
                path: path.clone(),
                reason,
            },
            NameError::Err(e) => e,
            NameError::Limit(l) => self.limit_err(l, &path),
        })?;

        if comps.last().is_some_and(|c| c.starts_with(WHITEOUT_PREFIX)) {
            self.whiteout(&comps, &path)?;
            return self.drain(&mut entry);
        }
        if comps.is_empty()
            && !(kind.is_dir() || (kind == EntryType::Regular && raw.ends_with(b"/")))
        {
            return Err(UnpackError::BadName {
                path,
                reason: "a non-directory entry names the layer root",
            });
        }

        match kind {
            EntryType::Directory => self.directory(&mut entry, &comps, &path)?,
            // Pre-POSIX archives mark directories only by a trailing slash.
            EntryType::Regular if raw.ends_with(b"/") => {
                self.directory(&mut entry, &comps, &path)?
            }
            EntryType::Regular | EntryType::Continuous => {
                self.file(&mut entry, &comps, &path, false)?
            }
            EntryType::GNUSparse => self.file(&mut entry, &comps, &path, true)?,
            EntryType::Symlink => self.symlink(&mut entry, &comps, &path)?,
            EntryType::Link => self.hard_link(&entry, &comps, &path)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.special(&mut entry, kind, &comps, &path)?
            }
            EntryType::XGlobalHeader => {
                tracing::debug!(entry = %path, "ignoring PAX global header");
            }
            other => {
                return Err(UnpackError::UnsupportedType {
                    path,
                    kind: other.as_byte() as char,
                });
            }
        }
        self.drain(&mut entry)
    }

    /// Reads whatever is left of an entry's data. Every data byte goes
    /// through here or [`Self::copy_data`] with the meter in data mode, so
    /// the parser's own reads are only ever metadata.
    fn drain<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        loop {
            match read_data(self.meter, entry, &mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        }
    }

    fn directory<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[Vec<u8>],
        path: &str,
    ) -> Result<(), UnpackError> {
        let meta = read_meta(entry, path)?;
        let mut opaque = false;
        let fd = match comps.split_last() {
            // "./" or "/": the layer's own root, which is `dest`.
            None => self
                .root
                .try_clone()
                .map_err(|e| io_err(path, "duplicate root fd", e))?,
            Some((name, parents)) => {
                let parent = self.walk(parents, true, comps, path)?;
                let existing = fsops::stat_at(&parent, name)
                    .map_err(|e| io_err(path, "stat existing entry", e))?;
                match existing {
                    // An existing directory keeps its contents, as tar does.
                    Some(st) if fsops::file_type(&st) == SFlag::S_IFDIR => {}
                    other => {
                        if let Some(st) = other {
                            // A directory replacing this layer's own whiteout
                            // means "deleted, then recreated empty": in
                            // overlay terms, an opaque directory.
                            opaque = fsops::is_whiteout(&st);
                            unlinkat(
                                &parent,
                                name.as_slice(),
                                nix::unistd::UnlinkatFlags::NoRemoveDir,
                            )
                            .map_err(|e| io_err(path, "remove existing entry", e))?;
                        }
                        mkdirat(&parent, name.as_slice(), Mode::from_bits_truncate(0o700))
                            .map_err(|e| io_err(path, "create directory", e))?;
                    }
                }
                fsops::open_dir(&parent, name).map_err(|e| io_err(path, "open directory", e))?
            }
        };
        if self.privileged {
            fchown(
                &fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| io_err(path, "chown", e))?;
        }
        for (key, value) in &meta.xattrs {
            apply_xattr(key, value, path, || {
                fsops::fset_xattr(fd.as_fd(), key, value)
            })?;
        }
        if opaque {
            set_opaque(&fd, path)?;
        }
        self.dirs
            .push(comps, meta.mode, &meta.mtime)
            .map_err(|e| io_err(path, "record directory metadata", e))
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[Vec<u8>],
        path: &str,
        sparse: bool,
    ) -> Result<(), UnpackError> {
        let meta = read_meta(entry, path)?;
        let expected = entry.size();
        let stored = entry
            .header()
            .entry_size()
            .map_err(|source| bad_header(path, "size", source))?;
        // The data is still to come through the stream, which would stop
        // it at the limit anyway; refusing on the declared size fails
        // before the first byte is written, and names the file.
        let streamed = self.meter.stream_bytes.get().saturating_add(stored);
        if streamed > self.limits.max_layer_bytes {
            return Err(self.limit_err(Limit::LayerBytes, path));
        }
        if !self.limits.image.fits(stored) {
            return Err(self.limit_err(Limit::ImageBytes, path));
        }
        if sparse {
            self.sparse_holes = self
                .sparse_holes
                .saturating_add(expected.saturating_sub(stored));
            if self.sparse_holes > MAX_SPARSE_HOLE_BYTES {
                return Err(UnpackError::SparseTooLarge {
                    path: path.to_string(),
                });
            }
        }
        let (parent, name) = self.parent_of(comps, path)?;
        fsops::clear_slot(&parent, name).map_err(|e| io_err(path, "remove existing entry", e))?;
        let fd = openat(
            &parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(path, "create file", e))?;
        let mut file = File::from(fd);
        let got = self.copy_data(entry, &mut file, sparse, path)?;
        if got != expected {
            return Err(UnpackError::Truncated {
                path: path.to_string(),
                expected,
                got,
            });
        }
        if sparse {
            // Trailing holes were skipped with seek; set_len makes them real.
            file.set_len(got)
                .map_err(|e| io_err(path, "set sparse file length", e))?;
        }
        self.bytes = self.bytes.saturating_add(got);
        self.apply_meta(Target::Fd(file.as_fd()), &meta, path)
    }

    /// Streams an entry's data into `file`. Sparse entries turn all-zero
    /// reads into holes, so their declared size costs no disk. Other data
    /// is gathered into whole buffers first: the stream hands out network
    /// chunk-sized pieces (tens of KiB), and one write per buffer instead
    /// of one per piece saves most of the syscalls of a big file.
    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        sparse: bool,
        path: &str,
    ) -> Result<u64, UnpackError> {
        let mut total = 0u64;
        let mut kicked = 0u64;
        let mut filled = 0usize;
        loop {
            let n = match read_data(self.meter, entry, &mut self.buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_error(e)),
            };
            let end = n == 0;
            total += n as u64;
            if sparse {
                let chunk = &self.buf[..n];
                if chunk.iter().all(|&b| b == 0) {
                    file.seek(SeekFrom::Current(n as i64))
                        .map_err(|e| io_err(path, "seek over sparse hole", e))?;
                } else {
                    file.write_all(chunk)
                        .map_err(|e| io_err(path, "write file", e))?;
                }
            } else {
                filled += n;
                if (end || filled == self.buf.len()) && filled > 0 {
                    file.write_all(&self.buf[..filled])
                        .map_err(|e| io_err(path, "write file", e))?;
                    filled = 0;
                }
            }
            if end {
                if total >= WRITEBACK_MIN_FILE {
                    start_writeback(file, kicked, 0);
                }
                return Ok(total);
            }
            if total - kicked >= WRITEBACK_CHUNK {
                start_writeback(file, kicked, total - kicked);
                kicked = total;
            }
        }
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[Vec<u8>],
        path: &str,
    ) -> Result<(), UnpackError> {
        let meta = read_meta(entry, path)?;
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let bad = |reason| UnpackError::BadLinkTarget {
            path: path.to_string(),
            target: show(&target),
            reason,
        };
        // The target is stored verbatim: absolute and `..` targets are normal
        // in images and harmless here, since nothing in this module follows
        // a symlink.
        if target.is_empty() {
            return Err(bad("empty symlink target"));
        }
        if target.len() > MAX_LINK_TARGET_LEN {
            return Err(bad("longer than 4096 bytes"));
        }
        if target.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        let (parent, name) = self.parent_of(comps, path)?;
        fsops::clear_slot(&parent, name).map_err(|e| io_err(path, "remove existing entry", e))?;
        symlinkat(target.as_slice(), &parent, name)
            .map_err(|e| io_err(path, "create symlink", e))?;
        self.apply_meta(
            Target::At {
                parent: &parent,
                name,
                symlink: true,
            },
            &meta,
            path,
        )
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        comps: &[Vec<u8>],
        path: &str,
    ) -> Result<(), UnpackError> {
        let raw = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target = show(&raw);
        if raw.len() > MAX_LINK_TARGET_LEN {
            return Err(UnpackError::BadLinkTarget {
                path: path.to_string(),
                target,
                reason: "longer than 4096 bytes",
            });
        }
        // Same rules as entry names: the target is a path inside this layer.
        let tcomps = self.parse_name(&raw, path).map_err(|e| match e {
            NameError::Bad(reason) => UnpackError::BadLinkTarget {
                path: path.to_string(),
                target: target.clone(),
                reason,
            },
            NameError::Err(e) => e,
            NameError::Limit(l) => self.limit_err(l, path),
        })?;
        let bad = |reason| UnpackError::BadHardLink {
            path: path.to_string(),
            target: target.clone(),
            reason,
        };
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(bad("names the layer root"));
        };
        let tparent = match fsops::walk(&self.root, tparents, None) {
            Ok(fd) => fd,
            Err(WalkError::NotDir { .. })
            | Err(WalkError::Sys {
                errno: Errno::ENOENT,
                ..
            }) => {
                return Err(bad("is not an entry extracted earlier in this layer"));
            }
            Err(WalkError::Sys { op, errno }) => return Err(io_err(path, op, errno)),
            Err(WalkError::Budget) => unreachable!("a walk without create makes nothing"),
        };
        match fsops::stat_at(&tparent, tname).map_err(|e| io_err(path, "stat link target", e))? {
            None => return Err(bad("is not an entry extracted earlier in this layer")),
            Some(st) if fsops::file_type(&st) == SFlag::S_IFDIR => {
                return Err(bad("is a directory"));
            }
            Some(st) if fsops::is_whiteout(&st) => return Err(bad("is a whiteout")),
            Some(_) => {}
        }
        if tcomps == comps {
            tracing::debug!(entry = %path, "ignoring hard link to itself");
            return Ok(());
        }
        let (parent, name) = self.parent_of(comps, path)?;
        fsops::clear_slot(&parent, name).map_err(|e| io_err(path, "remove existing entry", e))?;
        // Flags 0: if the target is a symlink, link the symlink itself.
        linkat(&tparent, tname.as_slice(), &parent, name, AtFlags::empty())
            .map_err(|e| io_err(path, "create hard link", e))
    }

    fn special<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        comps: &[Vec<u8>],
        path: &str,
    ) -> Result<(), UnpackError> {
        let meta = read_meta(entry, path)?;
        let (sflag, dev) = match kind {
            EntryType::Fifo => (SFlag::S_IFIFO, 0),
            _ => {
                let h = entry.header();
                let major = h
                    .device_major()
                    .map_err(|source| bad_header(path, "device major", source))?
                    .unwrap_or(0);
                let minor = h
                    .device_minor()
                    .map_err(|source| bad_header(path, "device minor", source))?
                    .unwrap_or(0);
                let sflag = if kind == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                (sflag, makedev(major.into(), minor.into()))
            }
        };
        // A 0:0 character device is an overlay whiteout in its native form.
        let whiteout = sflag == SFlag::S_IFCHR && dev == 0;
        if sflag != SFlag::S_IFIFO && !self.privileged && !whiteout {
            tracing::debug!(entry = %path, "not root: skipping device node");
            return Ok(());
        }
        let (parent, name) = self.parent_of(comps, path)?;
        fsops::clear_slot(&parent, name).map_err(|e| io_err(path, "remove existing entry", e))?;
        match mknodat(&parent, name, sflag, Mode::from_bits_truncate(0o600), dev) {
            Ok(()) => {}
            // Root in a user namespace may not make devices; containers get
            // their /dev from the runtime, so that is not fatal. A whiteout
            // is: skipping it would resurrect a deleted file.
            Err(Errno::EPERM) if sflag != SFlag::S_IFIFO && !whiteout => {
                tracing::debug!(entry = %path, "mknod not permitted: skipping device node");
                return Ok(());
            }
            Err(Errno::EPERM) => {
                return Err(privilege_err(path, "create whiteout device", Errno::EPERM));
            }
            Err(e) => return Err(io_err(path, "mknod", e)),
        }
        self.apply_meta(
            Target::At {
                parent: &parent,
                name,
                symlink: false,
            },
            &meta,
            path,
        )
    }

    /// `.wh.<name>` becomes a 0:0 character device `<name>`; `.wh..wh..opq`
    /// marks its directory opaque.
    fn whiteout(&mut self, comps: &[Vec<u8>], path: &str) -> Result<(), UnpackError> {
        let Some((last, parents)) = comps.split_last() else {
            return Ok(());
        };
        if last == OPAQUE_MARKER {
            let dir = self.walk(parents, true, comps, path)?;
            return set_opaque(&dir, path);
        }
        if last.starts_with(WHITEOUT_META_PREFIX) {
            tracing::debug!(entry = %path, "ignoring AUFS metadata entry");
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::BadName {
                path: path.to_string(),
                reason: "whiteout does not name a file",
            });
        }
        let parent = self.walk(parents, true, comps, path)?;
        match fsops::stat_at(&parent, hidden)
            .map_err(|e| io_err(path, "stat whiteout target", e))?
        {
            // OCI: a whiteout only hides lower layers; an entry of this same
            // layer stays, and it hides the lower one anyway.
            Some(_) => {
                tracing::debug!(entry = %path, "whiteout of an entry in the same layer: keeping the entry");
                Ok(())
            }
            None => fsops::mknod_whiteout(&parent, hidden).map_err(|e| match e {
                Errno::EPERM => privilege_err(path, "create whiteout device", e),
                e => io_err(path, "create whiteout device", e),
            }),
        }
    }

    /// chown first, because chown clears setuid/setgid and chmod must put
    /// them back; times last, so nothing after them bumps the mtime.
    fn apply_meta(&self, target: Target<'_>, meta: &Meta, path: &str) -> Result<(), UnpackError> {
        let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        let mode = Mode::from_bits_truncate(meta.mode);
        match target {
            Target::Fd(fd) => {
                if self.privileged {
                    fchown(fd, uid, gid).map_err(|e| io_err(path, "chown", e))?;
                }
                fchmod(fd, mode).map_err(|e| io_err(path, "chmod", e))?;
                for (key, value) in &meta.xattrs {
                    apply_xattr(key, value, path, || fsops::fset_xattr(fd, key, value))?;
                }
                futimens(fd, &meta.mtime, &meta.mtime).map_err(|e| io_err(path, "set times", e))
            }
            Target::At {
                parent,
                name,
                symlink,
            } => {
                if self.privileged {
                    fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| io_err(path, "chown", e))?;
                }
                if !symlink {
                    // Linux has no no-follow chmod, but this name is the
                    // device or FIFO we just created, not a symlink.
                    fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink)
                        .map_err(|e| io_err(path, "chmod", e))?;
                }
                for (key, value) in &meta.xattrs {
                    apply_xattr(key, value, path, || {
                        fsops::lset_xattr_at(parent, name, key, value)
                    })?;
                }
                utimensat(
                    parent,
                    name,
                    &meta.mtime,
                    &meta.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| io_err(path, "set times", e))
            }
        }
    }

    /// Applies deferred directory modes and mtimes. A directory that a later
    /// entry replaced is skipped; the walk is the same no-follow walk, so a
    /// symlink planted at a directory's path is not chmod-ed through.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let root = &self.root;
        self.dirs.replay(|d| {
            let path = show(&d.comps.join(&b'/'));
            let fd = match fsops::walk(root, &d.comps, None) {
                Ok(fd) => fd,
                Err(WalkError::NotDir { .. })
                | Err(WalkError::Sys {
                    errno: Errno::ENOENT,
                    ..
                }) => {
                    return Ok(());
                }
                Err(WalkError::Sys { op, errno }) => return Err(io_err(&path, op, errno)),
                Err(WalkError::Budget) => {
                    unreachable!("a walk without create makes nothing")
                }
            };
            fchmod(&fd, Mode::from_bits_truncate(d.mode)).map_err(|e| io_err(&path, "chmod", e))?;
            futimens(&fd, &d.mtime, &d.mtime).map_err(|e| io_err(&path, "set times", e))
        })
    }

    /// Opens the directory `comps` (relative to root) without following
    /// symlinks; `full` is the whole entry name, for the error.
    fn walk(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        full: &[Vec<u8>],
        path: &str,
    ) -> Result<OwnedFd, UnpackError> {
        let left = Cell::new(self.inodes_left());
        let before = left.get();
        let r = fsops::walk(&self.root, comps, create.then_some(&left));
        self.parents_made
            .set(self.parents_made.get() + (before - left.get()));
        r.map_err(|e| match e {
            WalkError::NotDir { index, what } => UnpackError::UnsafeParent {
                path: path.to_string(),
                component: show(&full[..=index].join(&b'/')),
                what,
            },
            WalkError::Sys { op, errno } => io_err(path, op, errno),
            WalkError::Budget => self.limit_err(Limit::LayerEntries, path),
        })
    }

    /// The parent directory of a non-root entry, created if missing, and the
    /// entry's last component.
    fn parent_of<'c>(
        &self,
        comps: &'c [Vec<u8>],
        path: &str,
    ) -> Result<(OwnedFd, &'c [u8]), UnpackError> {
        let Some((name, parents)) = comps.split_last() else {
            return Err(UnpackError::BadName {
                path: path.to_string(),
                reason: "names the layer root",
            });
        };
        Ok((self.walk(parents, true, comps, path)?, name.as_slice()))
    }
}

/// Starts writeback of `len` bytes of `file` at `offset` (0: to the end)
/// without waiting for it: `sync_file_range(SYNC_FILE_RANGE_WRITE)`. This
/// is only a scheduling hint that keeps the disk busy while the layer is
/// still streaming in; durability comes from the caller's syncfs before the
/// snapshot is published, so errors are ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a valid open fd; the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Reads entry data with the meter in data mode.
fn read_data<R: Read>(
    meter: &Meter,
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    meter.in_data.set(true);
    let r = entry.read(buf);
    meter.in_data.set(false);
    r
}

/// Why a name was refused.
enum NameError {
    Bad(&'static str),
    Limit(Limit),
    /// Already turned into the error to report.
    Err(UnpackError),
}

/// Splits an entry name into components: `.` and empty components (from
/// `./`, a leading `/`, or `//`) are dropped, so absolute names land inside
/// `dest`; `..` anywhere is refused. The length is checked before anything
/// is allocated and the depth as components are collected, so a name costs
/// at most `max_len` bytes plus `max_depth` small vectors.
fn parse_name(raw: &[u8], max_len: u64, max_depth: u64) -> Result<Vec<Vec<u8>>, NameError> {
    if raw.is_empty() {
        return Err(NameError::Bad("empty name"));
    }
    if raw.len() as u64 > max_len {
        return Err(NameError::Limit(Limit::PathLength));
    }
    if raw.contains(&0) {
        return Err(NameError::Bad("contains a NUL byte"));
    }
    let mut comps = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(NameError::Bad("contains a `..` component")),
            c => {
                if comps.len() as u64 >= max_depth {
                    return Err(NameError::Limit(Limit::PathDepth));
                }
                comps.push(c.to_vec())
            }
        }
    }
    Ok(comps)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &str) -> Result<Meta, UnpackError> {
    let h = entry.header();
    let mode = h
        .mode()
        .map_err(|source| bad_header(path, "mode", source))?
        & 0o7777;
    // The tar crate has already applied PAX uid/gid overrides to the header.
    let uid = h.uid().map_err(|source| bad_header(path, "uid", source))?;
    let gid = h.gid().map_err(|source| bad_header(path, "gid", source))?;
    let out_of_range = |field| move |_| bad_header(path, field, io::Error::other("out of range"));
    let uid = u32::try_from(uid).map_err(out_of_range("uid"))?;
    let gid = u32::try_from(gid).map_err(out_of_range("gid"))?;
    let mtime = h
        .mtime()
        .map_err(|source| bad_header(path, "mtime", source))?;
    let mut mtime = TimeSpec::new(i64::try_from(mtime).map_err(out_of_range("mtime"))?, 0);
    let mut xattrs = Vec::new();
    let pax = entry
        .pax_extensions()
        .map_err(|source| bad_header(path, "PAX records", source))?;
    if let Some(pax) = pax {
        for rec in pax {
            let rec = rec.map_err(|source| bad_header(path, "PAX record", source))?;
            let key = rec.key_bytes();
            if key == b"mtime" {
                mtime = parse_pax_time(rec.value_bytes()).ok_or_else(|| {
                    bad_header(path, "PAX mtime", io::Error::other("not a decimal time"))
                })?;
            } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                    tracing::debug!(entry = %path, xattr = %show(name), "dropping overlay xattr from layer");
                    continue;
                }
                if name.is_empty() || name.contains(&0) {
                    return Err(bad_header(
                        path,
                        "PAX xattr name",
                        io::Error::other("empty or contains NUL"),
                    ));
                }
                xattrs.push((name.to_vec(), rec.value_bytes().to_vec()));
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// Parses a PAX time (`[-]seconds[.fraction]`) to a timespec.
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut sec: i64 = secs.parse().ok()?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    if neg {
        sec = -sec;
        if nsec > 0 {
            sec -= 1;
            nsec = 1_000_000_000 - nsec;
        }
    }
    Some(TimeSpec::new(sec, nsec))
}

/// Sets one layer-provided xattr. A filesystem without xattr support, or a
/// `user.*` xattr on a file type that cannot carry one, loses the attribute
/// with a warning rather than failing the image; anything else is an error.
fn apply_xattr(
    key: &[u8],
    value: &[u8],
    path: &str,
    set: impl FnOnce() -> nix::Result<()>,
) -> Result<(), UnpackError> {
    match set() {
        Ok(()) => Ok(()),
        Err(Errno::EOPNOTSUPP) => {
            tracing::warn!(entry = %path, xattr = %show(key), "filesystem does not support xattr; dropped");
            Ok(())
        }
        Err(Errno::EPERM) if key.starts_with(b"user.") => {
            tracing::warn!(entry = %path, xattr = %show(key), "user xattr not allowed on this file type; dropped");
            Ok(())
        }
        Err(e) => Err(UnpackError::Xattr {
            path: path.to_string(),
            name: show(key),
            len: value.len(),
            source: e.into(),
        }),
    }
}

fn set_opaque(dir: &OwnedFd, path: &str) -> Result<(), UnpackError> {
    fsops::fset_xattr(dir.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| match e {
        Errno::EPERM => privilege_err(path, "set trusted.overlay.opaque", e),
        e => io_err(path, "set trusted.overlay.opaque", e),
    })
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn io_err(path: &str, op: &'static str, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        path: path.to_string(),
        op,
        source: e.into(),
    }
}

fn privilege_err(path: &str, op: &'static str, e: Errno) -> UnpackError {
    UnpackError::PrivilegeRequired {
        path: path.to_string(),
        op,
        source: e.into(),
    }
}

fn bad_header(path: &str, field: &'static str, source: io::Error) -> UnpackError {
    UnpackError::BadHeader {
        path: path.to_string(),
        field,
        source,
    }
}
