//! Where things live in a pod's directory. The names shared with the daemon
//! come from `vmpod_shim_api::layout`; the sockets under `run/` are private
//! to the shim and its helpers.

use std::path::{Path, PathBuf};

use vmpod_shim_api::layout;

#[derive(Debug, Clone)]
pub struct PodDir {
    pub dir: PathBuf,
}

impl PodDir {
    pub fn new(dir: PathBuf) -> Self {
        PodDir { dir }
    }

    pub fn spec(&self) -> PathBuf {
        self.dir.join(layout::SPEC)
    }
    pub fn shim_socket(&self) -> PathBuf {
        self.dir.join(layout::SHIM_SOCKET)
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join(layout::SHIM_PID)
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join(layout::CONSOLE_LOG)
    }
    pub fn share(&self) -> PathBuf {
        self.dir.join(layout::SHARE_DIR)
    }
    pub fn run(&self) -> PathBuf {
        self.dir.join(layout::RUN_DIR)
    }
    /// vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vsock_backend_socket(&self) -> PathBuf {
        self.run().join("vsock.sock")
    }
    /// Hybrid-vsock socket: host side of the guest's vsock.
    pub fn hybrid_vsock(&self) -> PathBuf {
        self.run().join("vm.vsock")
    }
    /// vhost-user socket between the VMM and virtiofsd.
    pub fn virtiofs_socket(&self) -> PathBuf {
        self.run().join("vfs.sock")
    }
    /// stdout+stderr of a helper or of the VMM itself.
    pub fn process_log(&self, name: &str) -> PathBuf {
        self.run().join(format!("{name}.log"))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}
