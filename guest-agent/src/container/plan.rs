//! What the agent hands its helper process: a fully resolved description
//! of the container, so the helper only executes it.
//!
//! Everything that can fail because of the request (validation, user
//! names, capability names, seccomp profiles) is done by the agent before
//! any process exists; the helper does only what needs the new process
//! (namespaces, mounts, credentials). The plan is a prost message because
//! prost is already linked into the agent and the encoding is compact.

use std::collections::BTreeMap;

/// How a helper enters a namespace kind (pid or ipc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum NsAction {
    /// Stay in the agent's (the guest's) namespace.
    Keep = 0,
    /// Make a new one.
    New = 1,
    /// Join the one at `path` (the pod's, held by the pause process).
    Join = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NsPlan {
    #[prost(enumeration = "NsAction", tag = "1")]
    pub action: i32,
    #[prost(string, tag = "2")]
    pub path: String,
}

/// Creates a container's init (`__vmpod-container-init`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InitPlan {
    /// The container root in the guest.
    #[prost(string, tag = "1")]
    pub rootfs: String,
    #[prost(bool, tag = "2")]
    pub readonly_rootfs: bool,
    /// The container's cgroup directory (absolute, guest view).
    #[prost(string, tag = "3")]
    pub cgroup_dir: String,
    #[prost(message, optional, tag = "4")]
    pub pid_ns: Option<NsPlan>,
    #[prost(message, optional, tag = "5")]
    pub ipc_ns: Option<NsPlan>,
    #[prost(message, repeated, tag = "6")]
    pub mounts: Vec<MountPlan>,
    /// Already defaulted: empty means none.
    #[prost(string, repeated, tag = "7")]
    pub masked_paths: Vec<String>,
    #[prost(string, repeated, tag = "8")]
    pub readonly_paths: Vec<String>,
    #[prost(btree_map = "string, string", tag = "9")]
    pub sysctls: BTreeMap<String, String>,
    /// Read-write /sys and /sys/fs/cgroup.
    #[prost(bool, tag = "10")]
    pub privileged: bool,
    #[prost(bool, tag = "11")]
    pub tty: bool,
    #[prost(message, optional, tag = "12")]
    pub process: Option<ProcessPlan>,
    /// Written to /proc/self/oom_score_adj before exec.
    #[prost(int32, optional, tag = "13")]
    pub oom_score_adj: Option<i32>,
}

/// One mount of the spec, with options already turned into flags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountPlan {
    #[prost(string, tag = "1")]
    pub source: String,
    /// Absolute, inside the container.
    #[prost(string, tag = "2")]
    pub destination: String,
    /// Empty for a bind mount.
    #[prost(string, tag = "3")]
    pub fstype: String,
    /// MS_* flags for the mount itself (MS_BIND / MS_REC for binds).
    #[prost(uint64, tag = "4")]
    pub flags: u64,
    #[prost(string, tag = "5")]
    pub data: String,
    #[prost(bool, tag = "6")]
    pub readonly: bool,
    #[prost(bool, tag = "7")]
    pub recursive_readonly: bool,
    /// MS_PRIVATE, MS_SLAVE or MS_SHARED (applied with MS_REC).
    #[prost(uint64, tag = "8")]
    pub propagation: u64,
}

/// The process part, shared by a container's init and ExecSync.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessPlan {
    #[prost(string, repeated, tag = "1")]
    pub args: Vec<String>,
    /// Final environment (PATH and HOME filled in).
    #[prost(string, repeated, tag = "2")]
    pub env: Vec<String>,
    /// Absolute; created if missing.
    #[prost(string, tag = "3")]
    pub cwd: String,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    #[prost(uint32, repeated, tag = "6")]
    pub additional_gids: Vec<u32>,
    /// Bounding = permitted = effective; inheritable and ambient are empty.
    #[prost(uint64, tag = "7")]
    pub capabilities: u64,
    #[prost(bool, tag = "8")]
    pub no_new_privs: bool,
    /// Compiled classic-BPF programs (8 bytes per instruction), installed in
    /// this order; a profile needs one per action (see `seccomp`). None
    /// means unconfined.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub seccomp_bpf: Vec<Vec<u8>>,
    /// The process gets the tty on fds 0-2 as its controlling terminal.
    #[prost(bool, tag = "10")]
    pub tty: bool,
}

/// Runs one command in a running container (`__vmpod-container-exec`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecPlan {
    /// The container's init, in the agent's pid namespace.
    #[prost(int32, tag = "1")]
    pub target_pid: i32,
    #[prost(string, tag = "2")]
    pub cgroup_dir: String,
    #[prost(message, optional, tag = "3")]
    pub process: Option<ProcessPlan>,
}
