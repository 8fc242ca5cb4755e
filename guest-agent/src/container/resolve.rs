//! Paths inside a container root that cannot lead out of it.
//!
//! The root is the image's content, which may hold symlinks such as
//! `etc/passwd -> /etc/shadow` or `data -> ../../..`. Every lookup goes
//! through openat2(2) with `RESOLVE_IN_ROOT`, so the kernel treats the root
//! as `/` for `..` and absolute links; what is created is created with
//! `*at` calls on a directory fd that was resolved the same way.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What to create at the end of a path that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds NUL"))
}

/// openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS).
pub fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c = cstr(rel)?;
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid fd, NUL-terminated path, and a correctly sized struct.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just gave us this fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; retry.
        if err.raw_os_error() != Some(libc::EAGAIN) && err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Opens a directory (the container root) as an O_PATH fd.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(&path.to_string_lossy())?;
    // SAFETY: NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a file inside `root`, at most `max` bytes; `None` if it does not
/// exist.
pub fn read_in_root(root: &Path, path: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsFd;
    let dir = open_dir(root)?;
    let fd = match open_in_root(dir.as_fd(), path, libc::O_RDONLY | libc::O_NOCTTY) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    File::from(fd).take(max as u64).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// The path of an fd for calls that only take paths (mount(2)): the
/// magic link resolves to exactly the object the fd holds.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Resolves `path` inside `root`, creating missing directories (mode
/// 0755) and, if `leaf` is `File`, an empty file at the end. Returns an
/// O_PATH fd of the result.
pub fn mkdir_all_in_root(root: BorrowedFd<'_>, path: &str, leaf: Leaf) -> io::Result<OwnedFd> {
    let want_dir = |is_last: bool| !is_last || leaf == Leaf::Dir;
    if let Ok(fd) = open_in_root(root, path, libc::O_PATH) {
        return Ok(fd);
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut parent = open_in_root(root, "/", libc::O_PATH | libc::O_DIRECTORY)?;
    for (i, comp) in comps.iter().enumerate() {
        let is_last = i + 1 == comps.len();
        let prefix = comps[..=i].join("/");
        let dir_flag = if want_dir(is_last) {
            libc::O_DIRECTORY
        } else {
            0
        };
        match open_in_root(root, &prefix, libc::O_PATH | dir_flag) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let name = cstr(comp)?;
        let rc = if want_dir(is_last) {
            // SAFETY: valid dirfd and name.
            unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }
        } else {
            // SAFETY: valid dirfd and name; O_EXCL|O_NOFOLLOW never follows
            // a link planted at the name.
            let fd = unsafe {
                libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                // SAFETY: fresh fd, closed right away.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                0
            } else {
                -1
            }
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::AlreadyExists {
                // A dangling symlink: following it stays in the root but
                // leads nowhere; refuse rather than create its target.
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{prefix} is a dangling symlink or changed under us"),
                ));
            }
            return Err(err);
        }
        parent = open_in_root(root, &prefix, libc::O_PATH | dir_flag)?;
    }
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn symlinks_stay_inside() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("secret"), "outside").unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("secret"), "inside").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        let got = read_in_root(&root, "/etc/passwd", 100).unwrap().unwrap();
        assert_eq!(got, b"inside");
        assert_eq!(read_in_root(&root, "/nope", 100).unwrap(), None);

        // Creating through an absolute link lands inside the root.
        let dir = open_dir(&root).unwrap();
        mkdir_all_in_root(dir.as_fd(), "/up/new/dir", Leaf::Dir).unwrap();
        assert!(root.join("new/dir").is_dir());
        mkdir_all_in_root(dir.as_fd(), "/up/f/file", Leaf::File).unwrap();
        assert!(root.join("f/file").is_file());
        // Existing paths come back as they are.
        mkdir_all_in_root(dir.as_fd(), "etc", Leaf::Dir).unwrap();
        assert!(!outer.path().join("new").exists());
    }
}
