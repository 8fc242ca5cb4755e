//! Non-blocking reads and writes of pipes and pty masters on the tokio
//! runtime.
//!
//! A container or an exec'd command may stop reading its stdin or stop
//! writing its output at any time, so every fd the agent holds for one is
//! non-blocking and driven by [`AsyncFd`]: a stuck peer parks a task,
//! never a runtime thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Sets O_NONBLOCK on the open file description behind `fd` (shared with
/// its dups, not with the other end of a pipe or the slave of a pty).
pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl on a borrowed, open fd.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    set_nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the
    // same for the AsyncFd's whole life.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// Registers a pipe or pty fd with the runtime for reading, non-blocking.
/// Must run inside the runtime.
pub fn async_reader(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    register(fd, Interest::READABLE)
}

/// One read of at most `buf.len()` bytes, waiting until there is
/// something to read; 0 at EOF. EIO counts as EOF: it is what a pty
/// master reads once the last fd of its slave closed.
pub async fn read_some(afd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = afd.readable().await?;
        let res = guard.try_io(|fd| {
            // SAFETY: reading into our own buffer of that length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Err(_would_block) => continue,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(r) => return r,
        }
    }
}

/// The write side of a pipe or a pty master, non-blocking.
pub struct FdWriter(AsyncFd<OwnedFd>);

impl FdWriter {
    /// Must run inside the runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        register(fd, Interest::WRITABLE).map(Self)
    }

    /// Writes all of `data`, waiting while the pipe or the terminal's input
    /// queue is full. An error (EPIPE: the reader is gone; EIO: the
    /// terminal hung up) means nothing more can be written.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: writing from a slice of that length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_and_eof() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let reader = async_reader(r).unwrap();
        let writer = FdWriter::new(w).unwrap();
        // More than the pipe holds: the write waits for the reader.
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let write = async {
            writer.write_all(&data).await.unwrap();
            drop(writer);
        };
        let read = async {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match read_some(&reader, &mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let ((), got) = tokio::join!(write, read);
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn write_to_a_pipe_without_reader_fails() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(r);
        let writer = FdWriter::new(w).unwrap();
        let e = writer.write_all(b"x").await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
