//! A container's stdin as Attach writes it: the write end of its stdin
//! pipe, or a dup of its pty master, made when the container is created
//! and kept for its life. Every attach writes through this one writer, one
//! message at a time.

use std::os::fd::OwnedFd;

use tracing::debug;

use super::fdio::FdWriter;
use super::pty;

/// The write end of a container's stdin, shared by its attaches.
pub struct ContainerStdin {
    /// None: created without stdin, or closed for good (stdin_once).
    writer: tokio::sync::Mutex<Option<FdWriter>>,
    /// Whether the container was created with stdin at all.
    pub(super) created: bool,
    /// A pty master: closing means writing ^D.
    tty: bool,
}

impl ContainerStdin {
    /// Registers `fd` (the write end of the stdin pipe, or a dup of the pty
    /// master) with the runtime; must run inside it.
    pub fn new(fd: Option<OwnedFd>, tty: bool) -> std::io::Result<Self> {
        let created = fd.is_some();
        Ok(Self {
            writer: tokio::sync::Mutex::new(fd.map(FdWriter::new).transpose()?),
            created,
            tty,
        })
    }

    /// Writes one message's bytes whole. False when stdin is closed or the
    /// container no longer reads it (EPIPE), so the bytes went nowhere.
    pub(super) async fn write(&self, data: &[u8]) -> bool {
        let guard = self.writer.lock().await;
        let Some(w) = guard.as_ref() else {
            return false;
        };
        match w.write_all(data).await {
            Ok(()) => true,
            Err(e) => {
                debug!("container stdin: {e}");
                false
            }
        }
    }

    /// Closes stdin for good: the process reads EOF (a tty reads ^D).
    pub(super) async fn close(&self) {
        let mut guard = self.writer.lock().await;
        if let Some(w) = guard.take()
            && self.tty
        {
            let _ = w.write_all(&[pty::EOF_BYTE]).await;
        }
    }

    pub(super) async fn is_open(&self) -> bool {
        self.writer.lock().await.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stdin_close_writes_eof_on_a_tty_and_is_for_good() {
        let p = pty::open().unwrap();
        let stdin = ContainerStdin::new(Some(p.master.try_clone().unwrap()), true).unwrap();
        assert!(stdin.write(b"hi").await);
        stdin.close().await;
        assert!(!stdin.is_open().await);
        assert!(!stdin.write(b"more").await);
        // In canonical mode a line without a newline only reaches a reader
        // once ^D ends it: a non-blocking read on the slave gets "hi".
        super::super::fdio::set_nonblocking(&p.slave).unwrap();
        let mut slave = std::fs::File::from(p.slave);
        let mut buf = [0u8; 8];
        let n = std::io::Read::read(&mut slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
    }
}
