//! Who a container process runs as, resolved from the container's own
//! `/etc/passwd` and `/etc/group` (read inside its root, see resolve.rs).
//!
//! The rules are those of the `User` message: a name must exist; a
//! numeric uid need not, and then takes gid 0 unless one is given; a
//! group name must exist; supplementary groups are the given ones, plus
//! (unless strict) those /etc/group lists the user in.

use std::path::Path;

use tonic::Status;
use vmpod_agent_proto::v1::User;

use super::resolve;

/// Enough for any real passwd file; bounds what a hostile image costs us.
const MAX_DB_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From the passwd entry, if there is one.
    pub home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read_db(root: &Path, path: &str) -> Result<String, Status> {
    match resolve::read_in_root(root, path, MAX_DB_BYTES) {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(Status::failed_precondition(format!(
            "cannot read {path} in the container root: {e}"
        ))),
    }
}

/// Resolves `user` against the databases in `root`.
pub fn resolve(root: &Path, user: &User) -> Result<Resolved, Status> {
    let passwd = parse_passwd(&read_db(root, "/etc/passwd")?);
    let needs_groups = !user.groupname.is_empty() || !user.strict_groups;
    let groups = if needs_groups {
        parse_group(&read_db(root, "/etc/group")?)
    } else {
        Vec::new()
    };
    resolve_with(&passwd, &groups, user)
}

fn resolve_with(
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    user: &User,
) -> Result<Resolved, Status> {
    // A numeric "username" is a uid (CRI only sends names, but be kind).
    let numeric_name = user.username.parse::<u32>().ok();
    let entry = if !user.username.is_empty() && numeric_name.is_none() {
        Some(
            passwd
                .iter()
                .find(|e| e.name == user.username)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "process.user.username: no user {:?} in the container's /etc/passwd",
                        user.username
                    ))
                })?,
        )
    } else {
        let uid = user.uid.or(numeric_name).unwrap_or(0);
        passwd.iter().find(|e| e.uid == uid)
    };
    let uid = entry.map_or(user.uid.or(numeric_name).unwrap_or(0), |e| e.uid);

    let gid = if !user.groupname.is_empty() {
        match user.groupname.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|g| g.name == user.groupname)
                .map(|g| g.gid)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "process.user.groupname: no group {:?} in the container's /etc/group",
                        user.groupname
                    ))
                })?,
        }
    } else {
        user.gid.or(entry.map(|e| e.gid)).unwrap_or(0)
    };

    let mut additional: Vec<u32> = Vec::new();
    if !user.strict_groups
        && let Some(e) = entry
    {
        for g in groups {
            if g.members.contains(&e.name) && !additional.contains(&g.gid) {
                additional.push(g.gid);
            }
        }
    }
    for gid in &user.additional_gids {
        if !additional.contains(gid) {
            additional.push(*gid);
        }
    }
    Ok(Resolved {
        uid,
        gid,
        additional_gids: additional,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n\
        broken:x:notanumber:1:::\n\
        nohome:x:1002:1002::\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1001:\naudio:x:29: app \n";

    fn r(user: User) -> Result<Resolved, Status> {
        resolve_with(&parse_passwd(PASSWD), &parse_group(GROUP), &user)
    }

    #[test]
    fn by_name() {
        let got = r(User {
            username: "app".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            got,
            Resolved {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10, 29],
                home: Some("/home/app".into())
            }
        );
    }

    #[test]
    fn strict_groups_and_extra() {
        let got = r(User {
            username: "app".into(),
            strict_groups: true,
            additional_gids: vec![5, 5],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(got.additional_gids, vec![5]);
    }

    #[test]
    fn numeric_uids() {
        let got = r(User {
            uid: Some(1000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((got.uid, got.gid), (1000, 1001));
        let got = r(User {
            uid: Some(4242),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((got.uid, got.gid, got.home), (4242, 0, None));
        let got = r(User {
            uid: Some(4242),
            gid: Some(7),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((got.uid, got.gid), (4242, 7));
        let got = r(User::default()).unwrap();
        assert_eq!(
            (got.uid, got.gid, got.home.as_deref()),
            (0, 0, Some("/root"))
        );
    }

    #[test]
    fn names_must_exist() {
        let e = r(User {
            username: "ghost".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("\"ghost\""), "{}", e.message());
        let e = r(User {
            username: "app".into(),
            groupname: "nogroup".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message().contains("\"nogroup\""));
        let got = r(User {
            username: "app".into(),
            groupname: "wheel".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(got.gid, 10);
    }
}
