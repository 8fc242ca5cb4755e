//! Directory-fd primitives for the unpacker.
//!
//! Everything here works relative to an open directory fd and a single path
//! component, so the kernel never resolves a symlink on our behalf: a path
//! string handed to a syscall is a second chance for the layer to redirect
//! us, and an fd plus one component is not.

use std::cell::Cell;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstatat, mkdirat, mknodat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Flags for opening a directory we are about to write into. O_NOFOLLOW is
/// the point: a symlink where we expect a directory fails with ELOOP instead
/// of taking us wherever it points.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Why a walk stopped.
#[derive(Debug)]
pub(super) enum WalkError {
    /// `comps[..=index]` exists but is not a plain directory.
    NotDir { index: usize, what: &'static str },
    /// A syscall failed for another reason.
    Sys { op: &'static str, errno: Errno },
    /// A directory is missing and the budget of directories to create is
    /// spent.
    Budget,
}

/// Opens the caller's destination. This is the one place a path is resolved
/// normally: `dest` comes from our own configuration, not from the layer.
pub(super) fn open_root(dest: &Path) -> nix::Result<OwnedFd> {
    openat(
        nix::fcntl::AT_FDCWD,
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory `root/comps[0]/.../comps[n-1]` one component at a
/// time without following symlinks. With `create`, missing components are
/// made (0755, like tar does for parents the archive never listed), at most
/// as many as the cell holds, which is decremented for each: a parent the
/// archive never listed is still an inode on disk, and one short entry name
/// can imply hundreds of them.
pub(super) fn walk(
    root: &OwnedFd,
    comps: &[Vec<u8>],
    create: Option<&Cell<u64>>,
) -> Result<OwnedFd, WalkError> {
    let mut cur = root.try_clone().map_err(|e| WalkError::Sys {
        op: "duplicate root fd",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    for (index, comp) in comps.iter().enumerate() {
        let comp = comp.as_slice();
        cur = match openat(&cur, comp, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create.is_some() => {
                if let Some(left) = create {
                    if left.get() == 0 {
                        return Err(WalkError::Budget);
                    }
                    left.set(left.get() - 1);
                }
                match mkdirat(&cur, comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => {
                        return Err(WalkError::Sys {
                            op: "create parent directory",
                            errno,
                        });
                    }
                }
                let fd = openat(&cur, comp, DIR_FLAGS, Mode::empty())
                    .map_err(|errno| classify(&cur, comp, index, errno))?;
                // mkdir's mode is filtered through the umask; parents the
                // layer never listed should look the same on every host.
                fchmod(&fd, Mode::from_bits_truncate(0o755)).map_err(|errno| WalkError::Sys {
                    op: "chmod parent directory",
                    errno,
                })?;
                fd
            }
            Err(errno) => return Err(classify(&cur, comp, index, errno)),
        };
    }
    Ok(cur)
}

/// Turns an open failure into "this component is a symlink / not a dir"
/// when that is what happened, so the error names the real problem.
fn classify(dir: &OwnedFd, comp: &[u8], index: usize, errno: Errno) -> WalkError {
    if !matches!(errno, Errno::ELOOP | Errno::ENOTDIR) {
        return WalkError::Sys {
            op: "open parent directory",
            errno,
        };
    }
    let what = match stat_at(dir, comp) {
        Ok(Some(st)) if file_type(&st) == SFlag::S_IFLNK => "a symlink",
        _ => "not a directory",
    };
    WalkError::NotDir { index, what }
}

/// lstat relative to `dir`; `None` when nothing is there.
pub(super) fn stat_at(dir: &impl AsFd, name: &[u8]) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// An overlayfs whiteout is a character device with device number 0:0.
pub(super) fn is_whiteout(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Opens an existing directory entry of `parent` as a directory, refusing
/// symlinks.
pub(super) fn open_dir(parent: &impl AsFd, name: &[u8]) -> nix::Result<OwnedFd> {
    openat(parent, name, DIR_FLAGS, Mode::empty())
}

/// Creates the overlayfs whiteout for `name`.
pub(super) fn mknod_whiteout(parent: &impl AsFd, name: &[u8]) -> nix::Result<()> {
    mknodat(parent, name, SFlag::S_IFCHR, Mode::empty(), 0)
}

/// Removes whatever is at `parent/name` (a directory recursively), never
/// following symlinks. Returns what was there.
pub(super) fn clear_slot(parent: &impl AsFd, name: &[u8]) -> nix::Result<Option<FileStat>> {
    let Some(st) = stat_at(parent, name)? else {
        return Ok(None);
    };
    if file_type(&st) == SFlag::S_IFDIR {
        remove_tree(parent, name)?;
    } else {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(Some(st))
}

/// Recursive delete through directory fds. Only reached when a layer
/// replaces its own directory with a non-directory, so the tree is one this
/// unpack created; still, a path-based delete could be steered by a symlink
/// the layer planted inside it.
///
/// Children are removed while the directory is read, as `rm -r` and std's
/// `remove_dir_all` do, instead of collecting their names first: one
/// directory may hold as many entries as the layer has, and what this holds
/// is one open directory stream per level, which the path depth limit
/// bounds. A filesystem whose readdir skips entries when others are removed
/// mid-stream is handled by reading again until the directory is empty.
fn remove_tree(parent: &impl AsFd, name: &[u8]) -> nix::Result<()> {
    /// Passes over one directory before giving up: each pass removes every
    /// entry it sees, so a second is already unusual.
    const PASSES: usize = 8;
    let mut dir = Dir::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    // The removals go through the stream's own fd while its iterator
    // borrows `dir`: nothing is looked up by path, and each level of the
    // recursion holds one fd, not two.
    // SAFETY: `dir` owns the fd and outlives every use of `at` below; `at`
    // only names the directory in *at calls and is never closed.
    let at = unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) };
    for _ in 0..PASSES {
        let mut removed = false;
        // Each iterator starts at the beginning: it rewinds when dropped.
        for ent in dir.iter() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            match stat_at(&at, n)? {
                Some(st) if file_type(&st) == SFlag::S_IFDIR => remove_tree(&at, n)?,
                Some(_) => unlinkat(at, n, UnlinkatFlags::NoRemoveDir)?,
                None => continue,
            }
            removed = true;
        }
        match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
            Err(Errno::ENOTEMPTY) if removed => continue,
            r => return r,
        }
    }
    Err(Errno::ENOTEMPTY)
}

/// fsetxattr on an fd we opened (regular files and directories).
pub(super) fn fset_xattr(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> nix::Result<()> {
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: key is NUL-terminated, value is a valid slice for its length.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// lsetxattr on `parent/name` for entries we must not open (symlinks,
/// devices, FIFOs: opening a device or FIFO has side effects, and O_PATH fds
/// do not take xattrs). The path goes through the /proc magic link of the
/// parent fd, so the only component the kernel looks up is `name`, and
/// lsetxattr does not follow it.
pub(super) fn lset_xattr_at(
    parent: &impl AsFd,
    name: &[u8],
    key: &[u8],
    value: &[u8],
) -> nix::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", parent.as_fd().as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated, value is a valid slice.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}
