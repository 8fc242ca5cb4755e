//! Linux capabilities: names, the default set, and setting them in the
//! helper before exec.
//!
//! The default set is containerd's (and Docker's). `ALL` in `add` starts
//! from every capability, `ALL` in `drop` from none; individual adds and
//! then drops apply on top, so `add: [ALL], drop: [CHOWN]` means "all but
//! CHOWN". The result is the bounding, permitted and effective set;
//! inheritable and ambient stay empty (CVE-2022-24769), so a non-root
//! user ends up with no effective capabilities after exec, as with runc.

use std::io;

use tonic::Status;
use vmpod_agent_proto::v1::Security;

/// Index = capability number.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

#[cfg(test)]
pub const SYS_ADMIN: u32 = 21;

/// containerd's default capabilities.
const DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The capability number of `CAP_X` or `X`, any case.
pub fn parse(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

pub fn bit(cap: u32) -> u64 {
    1u64 << cap
}

/// The highest capability this kernel knows (older kernels reject
/// unknown ones in capset).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(NAMES.len() as u32 - 1, |c| c.min(NAMES.len() as u32 - 1))
}

/// Every capability the kernel has.
pub fn all() -> u64 {
    let last = last_cap();
    if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    }
}

/// The container's capability set from its security settings.
pub fn compute(security: Option<&Security>) -> Result<u64, Status> {
    let default: u64 = DEFAULT
        .iter()
        .filter_map(|n| parse(n))
        .fold(0, |acc, c| acc | bit(c));
    let Some(s) = security else {
        return Ok(default & all());
    };
    if s.privileged {
        return Ok(all());
    }
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    let mut set = default;
    if s.add_capabilities.iter().any(is_all) {
        set = all();
    }
    if s.drop_capabilities.iter().any(is_all) {
        set = 0;
    }
    for (field, names, add) in [
        ("security.add_capabilities", &s.add_capabilities, true),
        ("security.drop_capabilities", &s.drop_capabilities, false),
    ] {
        for name in names.iter().filter(|n| !is_all(n)) {
            let cap = parse(name).ok_or_else(|| {
                Status::invalid_argument(format!("{field}: unknown capability {name:?}"))
            })?;
            if add {
                set |= bit(cap);
            } else {
                set &= !bit(cap);
            }
        }
    }
    Ok(set & all())
}

/// Drops every capability outside `keep` from the bounding set. Needs
/// CAP_SETPCAP, so it runs while the helper is still full root.
pub fn drop_bounding(keep: u64) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if keep & bit(cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets permitted = effective = `set`, inheritable empty, and clears the
/// ambient set.
pub fn set_process_caps(set: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let lo = set as u32;
    let hi = (set >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: header and a two-element data array, as capset(2) wants for
    // version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities has none to clear.
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse("CAP_SYS_ADMIN"), Some(SYS_ADMIN));
        assert_eq!(parse("net_admin"), Some(12));
        assert_eq!(parse("CAP_NOPE"), None);
    }

    #[test]
    fn add_and_drop() {
        let default = compute(None).unwrap();
        assert_ne!(default & bit(parse("CHOWN").unwrap()), 0);
        assert_eq!(default & bit(SYS_ADMIN), 0);

        let s = Security {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CAP_CHOWN".into()],
            ..Default::default()
        };
        let got = compute(Some(&s)).unwrap();
        assert_ne!(got & bit(12), 0);
        assert_eq!(got & bit(0), 0);

        let s = Security {
            add_capabilities: vec!["ALL".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        };
        assert_eq!(compute(Some(&s)).unwrap(), all() & !bit(0));

        let s = Security {
            add_capabilities: vec!["KILL".into()],
            drop_capabilities: vec!["all".into()],
            ..Default::default()
        };
        assert_eq!(compute(Some(&s)).unwrap(), bit(5));

        let s = Security {
            add_capabilities: vec!["FLY".into()],
            ..Default::default()
        };
        let e = compute(Some(&s)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("security.add_capabilities:"));

        let s = Security {
            privileged: true,
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        };
        assert_eq!(compute(Some(&s)).unwrap(), all());
    }
}
