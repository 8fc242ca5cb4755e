//! Pseudo-terminals, for containers and exec sessions with a tty.
//!
//! Both ends are opened close-on-exec from the start: the agent spawns
//! helpers from several tasks at once, and a pty fd leaked into another
//! session's helper would keep that pty open (no EOF on its master) for as
//! long as that helper lives.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use tonic::Status;
use vmpod_agent_proto::v1::TerminalSize;

/// A new pty: the agent keeps `master`, the process gets `slave` on fds 0-2.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a new pty pair.
pub fn open() -> io::Result<Pty> {
    // std opens with O_CLOEXEC.
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let slave = match peer(&master) {
        Ok(fd) => fd,
        // Kernels before 4.13: by name, under /dev/pts.
        Err(_) => {
            let mut n: libc::c_uint = 0;
            // SAFETY: TIOCGPTN writes an unsigned int.
            if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
                return Err(io::Error::last_os_error());
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(format!("/dev/pts/{n}"))?
                .into()
        }
    };
    Ok(Pty { master, slave })
}

/// The slave of `master`, opened through the master (TIOCGPTPEER), so it
/// is the right one whatever is mounted on /dev/pts.
fn peer(master: &OwnedFd) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u16,
    pub height: u16,
}

impl Size {
    /// Checks a size from the host; `None` for 0x0 (unset).
    pub fn from_proto(field: &str, size: &TerminalSize) -> Result<Option<Size>, Status> {
        if size.width == 0 && size.height == 0 {
            return Ok(None);
        }
        let cells = |name: &str, v: u32| {
            u16::try_from(v).map_err(|_| {
                Status::invalid_argument(format!("{field}.{name}: {v} is over {} cells", u16::MAX))
            })
        };
        Ok(Some(Size {
            width: cells("width", size.width)?,
            height: cells("height", size.height)?,
        }))
    }
}

/// TIOCSWINSZ on a pty master: the terminal's size changes and its
/// foreground process group gets SIGWINCH.
pub fn set_size(master: &impl AsFd, size: Size) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize.
    if unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// TIOCGWINSZ: the terminal's size.
#[cfg(test)]
pub fn size(fd: &impl AsFd) -> io::Result<Size> {
    // SAFETY: all-zero is a valid winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Size {
        width: ws.ws_col,
        height: ws.ws_row,
    })
}

/// What a tty reads as end of input at the start of a line (VEOF, ^D).
/// Closing the master instead would hang the terminal up.
pub const EOF_BYTE: u8 = 0x04;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_reads_back_on_both_ends() {
        let pty = open().unwrap();
        let size = Size {
            width: 132,
            height: 43,
        };
        set_size(&pty.master, size).unwrap();
        assert_eq!(self::size(&pty.master).unwrap(), size);
        assert_eq!(self::size(&pty.slave).unwrap(), size);
    }

    #[test]
    fn both_ends_are_close_on_exec() {
        let pty = open().unwrap();
        for fd in [&pty.master, &pty.slave] {
            // SAFETY: fcntl on an owned fd.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        // SAFETY: isatty on an owned fd.
        assert_eq!(unsafe { libc::isatty(pty.slave.as_raw_fd()) }, 1);
    }

    #[test]
    fn sizes_from_the_host_are_checked() {
        let ts = |width, height| TerminalSize { width, height };
        assert_eq!(Size::from_proto("resize", &ts(0, 0)).unwrap(), None);
        assert_eq!(
            Size::from_proto("resize", &ts(80, 24)).unwrap(),
            Some(Size {
                width: 80,
                height: 24
            })
        );
        let e = Size::from_proto("start.size", &ts(70000, 24)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "start.size.width: 70000 is over 65535 cells");
        let e = Size::from_proto("resize", &ts(80, 1 << 20)).unwrap_err();
        assert!(
            e.message().starts_with("resize.height: "),
            "{}",
            e.message()
        );
    }
}
