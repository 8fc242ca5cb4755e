//! CreateContainer's host half: validating the daemon's request and
//! assembling what the guest will see under `share/containers/<id>`:
//!
//! ```text
//! share/containers/<id>/rootfs/     overlay of the image layers (guest: spec.rootfs)
//! share/containers/<id>/mounts/<n>  bind of the n-th host mount (guest: its Mount's source)
//! writable/<id>.img, writable/<id>/{upper,work}   the overlay's writable layer (host-only)
//! ```
//!
//! The mount points are made in the host-only skeleton and the mounts
//! attached through fds resolved beneath the read-only share
//! ([`crate::share`]); nothing here follows a path the guest can write.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use tonic::Status;
use vmpod_agent_proto::SHARE_MOUNTPOINT;
use vmpod_agent_proto::v1::{ContainerSpec, Mount, Propagation};
use vmpod_shim_api::v1::{CreateContainerRequest, HostMount};

use super::id::{CONTAINERS_DIR, check_id};
use super::rootfs;
use super::teardown::remove_container;
use super::volumes::{self, BindOptions, Target};
use super::writable::{self, Writable};
use crate::share::PodShare;

/// A request that passed validation.
#[derive(Debug)]
pub struct Plan {
    pub id: String,
    pub layers: Vec<PathBuf>,
    /// Quota of the writable layer.
    pub writable_bytes: u64,
    pub volumes: Vec<Volume>,
    pub log_path: Option<PathBuf>,
    pub spec: ContainerSpec,
}

#[derive(Debug)]
pub struct Volume {
    pub host_path: PathBuf,
    pub container_path: String,
    pub options: BindOptions,
}

/// Checks everything that can be checked before anything is mounted, with
/// errors that name the offending value: INVALID_ARGUMENT for a malformed
/// request, NOT_FOUND for a path that does not exist.
pub fn validate(req: CreateContainerRequest) -> Result<Plan, Status> {
    let spec = req
        .spec
        .ok_or_else(|| Status::invalid_argument("spec is required"))?;
    check_id(&spec.id).map_err(Status::invalid_argument)?;
    if req.layers.is_empty() {
        return Err(Status::invalid_argument(
            "an image needs at least one layer",
        ));
    }
    let layers = req
        .layers
        .iter()
        .map(|l| check_layer(l))
        .collect::<Result<Vec<_>, _>>()?;
    let volumes = req
        .mounts
        .iter()
        .enumerate()
        .map(|(n, m)| check_mount(n, m))
        .collect::<Result<Vec<_>, _>>()?;
    let log_path = match req.log_path.as_str() {
        "" => None,
        p => Some(check_log_path(p)?),
    };
    let writable_bytes = match req.writable_layer_bytes {
        0 => writable::DEFAULT_BYTES,
        n if !(writable::MIN_BYTES..=writable::MAX_BYTES).contains(&n) => {
            return Err(Status::invalid_argument(format!(
                "writable_layer_bytes {n} is out of range {}..={}",
                writable::MIN_BYTES,
                writable::MAX_BYTES
            )));
        }
        n => n,
    };
    Ok(Plan {
        id: spec.id.clone(),
        layers,
        writable_bytes,
        volumes,
        log_path,
        spec,
    })
}

fn check_layer(layer: &str) -> Result<PathBuf, Status> {
    let path = PathBuf::from(layer);
    // ':' and ',' separate overlay options.
    if !path.is_absolute() || layer.contains([':', ',', '\0']) {
        return Err(Status::invalid_argument(format!(
            "layer {layer:?} must be an absolute path without ':', ',' or NUL"
        )));
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(Status::invalid_argument(format!(
            "layer {layer} is not a directory"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Status::not_found(format!("layer {layer} does not exist")))
        }
        Err(e) => Err(Status::invalid_argument(format!("layer {layer}: {e}"))),
    }
}

fn check_mount(n: usize, m: &HostMount) -> Result<Volume, Status> {
    let host = &m.host_path;
    if !Path::new(host).is_absolute() || host.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "mount {n}: host_path {host:?} must be an absolute path"
        )));
    }
    match std::fs::metadata(host) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Status::not_found(format!(
                "mount {n}: host path {host} does not exist"
            )));
        }
        Err(e) => {
            return Err(Status::invalid_argument(format!(
                "mount {n}: host path {host}: {e}"
            )));
        }
    }
    let dest = &m.container_path;
    let dest_path = Path::new(dest);
    if !dest_path.is_absolute()
        || dest.contains('\0')
        || dest_path.components().any(|c| c == Component::ParentDir)
    {
        return Err(Status::invalid_argument(format!(
            "mount {n}: container_path {dest:?} must be an absolute path without '..'"
        )));
    }
    if dest_path.components().all(|c| c == Component::RootDir) {
        return Err(Status::invalid_argument(format!(
            "mount {n}: container_path {dest:?} would hide the container's root"
        )));
    }
    let propagation = Propagation::try_from(m.propagation).map_err(|_| {
        Status::invalid_argument(format!("mount {n}: unknown propagation {}", m.propagation))
    })?;
    if m.recursive_readonly && !m.readonly {
        return Err(Status::invalid_argument(format!(
            "mount {n} ({dest}): recursive_readonly requires readonly"
        )));
    }
    // A mount propagating in later would not be read-only.
    if m.recursive_readonly && propagation != Propagation::Private {
        return Err(Status::invalid_argument(format!(
            "mount {n} ({dest}): recursive_readonly requires private propagation, not {}",
            propagation.as_str_name()
        )));
    }
    Ok(Volume {
        host_path: PathBuf::from(host),
        container_path: dest.clone(),
        options: BindOptions {
            readonly: m.readonly,
            recursive_readonly: m.recursive_readonly,
            propagation,
        },
    })
}

fn check_log_path(p: &str) -> Result<PathBuf, Status> {
    let path = PathBuf::from(p);
    if !path.is_absolute() || p.contains('\0') || path.file_name().is_none() {
        return Err(Status::invalid_argument(format!(
            "log_path {p:?} must be an absolute file path"
        )));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(Status::not_found(format!(
            "log directory {} does not exist",
            parent.display()
        )));
    }
    Ok(path)
}

/// The guest path of `rel` inside container `id`'s dir.
pub fn guest_path(id: &str, rel: &str) -> String {
    format!("{SHARE_MOUNTPOINT}/{CONTAINERS_DIR}/{id}/{rel}")
}

/// Makes the writable layer, mounts the root and the volumes, and returns
/// the spec with their guest paths filled in, and the writable layer (for
/// host-measured stats). On error everything is undone.
pub fn assemble(pod: &PodShare, plan: Plan) -> Result<(ContainerSpec, Writable)> {
    let Plan {
        id,
        layers,
        writable_bytes,
        volumes,
        mut spec,
        ..
    } = plan;
    let made = (|| {
        // Even a read-only root gets a writable layer on the host: the
        // agent must be able to create mount points (`/proc`, volume
        // targets) the image lacks before it makes the container's root
        // read-only in the guest, as runc does with an OCI `root.readonly`.
        let w = writable::create(&pod.writable, &id, writable_bytes)?;
        rootfs::mount_rootfs(pod, &id, &layers, Some(&w))?;
        let mounts = bind_volumes(pod, &id, &volumes)?;
        Ok((w, mounts))
    })();
    match made {
        Ok((w, mounts)) => {
            spec.rootfs = guest_path(&id, "rootfs");
            // Writable bytes are measured on the host, never asked of the guest.
            spec.writable_dir = String::new();
            spec.mounts.extend(mounts);
            Ok((spec, w))
        }
        Err(e) => {
            if let Err(undo) = remove_container(pod, &id) {
                tracing::error!(container = %id, "undoing a failed assembly: {undo:#}");
            }
            Err(e)
        }
    }
}

fn bind_volumes(pod: &PodShare, id: &str, volumes: &[Volume]) -> Result<Vec<Mount>> {
    let mut mounts = Vec::with_capacity(volumes.len());
    if volumes.is_empty() {
        return Ok(mounts);
    }
    let rel = rootfs::relative_dir(id).join("mounts");
    let base = pod.skeleton.join(&rel);
    std::fs::create_dir(&base).with_context(|| format!("creating {}", base.display()))?;
    for (n, v) in volumes.iter().enumerate() {
        let name = n.to_string();
        volumes::create_mountpoint(&v.host_path, &base.join(&name))?;
        let target = Target::beneath(&pod.share, &rel.join(&name))?;
        volumes::bind(&v.host_path, &target, &v.options).with_context(|| {
            format!("binding {} for {}", v.host_path.display(), v.container_path)
        })?;
        mounts.push(Mount {
            source: guest_path(id, &format!("mounts/{n}")),
            destination: v.container_path.clone(),
            r#type: "bind".to_owned(),
            options: Vec::new(),
            readonly: v.options.readonly,
            recursive_readonly: v.options.recursive_readonly,
            propagation: v.options.propagation as i32,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        layer: PathBuf,
        pod: PodShare,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let layer = root.join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/hostname"), b"image").unwrap();
        let pod = PodShare::of(&root.join("pod"));
        pod.prepare().expect("share (root)");
        std::fs::create_dir_all(root.join("vol")).unwrap();
        std::fs::write(root.join("vol/data"), b"data").unwrap();
        std::fs::write(root.join("file"), b"file").unwrap();
        std::fs::create_dir_all(root.join("logs")).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            layer,
            pod,
        }
    }

    impl Fixture {
        fn no_mounts_but_the_share(&self) -> bool {
            vmpod_shim_api::mounts::mounts_under(self.pod.share.parent().unwrap())
                == vec![self.pod.share.to_string_lossy().into_owned()]
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = vmpod_shim_api::mounts::remove_unmounted(self.pod.share.parent().unwrap());
        }
    }

    fn request(f: &Fixture) -> CreateContainerRequest {
        CreateContainerRequest {
            layers: vec![f.layer.to_string_lossy().into_owned()],
            mounts: vec![
                HostMount {
                    host_path: f.root.join("vol").to_string_lossy().into_owned(),
                    container_path: "/data".into(),
                    readonly: true,
                    ..Default::default()
                },
                HostMount {
                    host_path: f.root.join("file").to_string_lossy().into_owned(),
                    container_path: "/etc/file".into(),
                    ..Default::default()
                },
            ],
            log_path: f.root.join("logs/c1.log").to_string_lossy().into_owned(),
            writable_layer_bytes: 8 << 20,
            spec: Some(ContainerSpec {
                id: "c1".into(),
                mounts: vec![Mount {
                    source: "tmpfs".into(),
                    destination: "/tmp".into(),
                    r#type: "tmpfs".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn refused(req: CreateContainerRequest) -> Status {
        validate(req).expect_err("request should be refused")
    }

    #[test]
    fn a_good_request_validates() {
        let f = fixture();
        let plan = validate(request(&f)).unwrap();
        assert_eq!(plan.id, "c1");
        assert_eq!(plan.volumes.len(), 2);
        assert!(plan.volumes[0].options.readonly);
        assert_eq!(plan.log_path, Some(f.root.join("logs/c1.log")));
    }

    #[test]
    fn bad_requests_are_refused_naming_the_value() {
        let f = fixture();
        type Edit = Box<dyn Fn(&mut CreateContainerRequest)>;
        let cases: Vec<(Edit, Code, &str)> = vec![
            (Box::new(|r| r.spec = None), Code::InvalidArgument, "spec"),
            (
                Box::new(|r| r.spec.as_mut().unwrap().id = "../x".into()),
                Code::InvalidArgument,
                "../x",
            ),
            (
                Box::new(|r| r.layers.clear()),
                Code::InvalidArgument,
                "layer",
            ),
            (
                Box::new(|r| r.layers = vec!["rel/layer".into()]),
                Code::InvalidArgument,
                "rel/layer",
            ),
            (
                Box::new(|r| r.layers = vec!["/no/such/layer".into()]),
                Code::NotFound,
                "/no/such/layer",
            ),
            (
                Box::new(|r| r.mounts[0].host_path = "vol".into()),
                Code::InvalidArgument,
                "\"vol\"",
            ),
            (
                Box::new(|r| r.mounts[1].host_path = "/no/such/volume".into()),
                Code::NotFound,
                "/no/such/volume",
            ),
            (
                Box::new(|r| r.mounts[0].container_path = "data".into()),
                Code::InvalidArgument,
                "\"data\"",
            ),
            (
                Box::new(|r| r.mounts[0].container_path = "/a/../../etc".into()),
                Code::InvalidArgument,
                "/a/../../etc",
            ),
            (
                Box::new(|r| r.mounts[0].container_path = "/".into()),
                Code::InvalidArgument,
                "root",
            ),
            (
                Box::new(|r| r.mounts[0].propagation = 9),
                Code::InvalidArgument,
                "propagation 9",
            ),
            (
                Box::new(|r| {
                    r.mounts[1].recursive_readonly = true;
                }),
                Code::InvalidArgument,
                "requires readonly",
            ),
            (
                Box::new(|r| {
                    r.mounts[0].recursive_readonly = true;
                    r.mounts[0].propagation = Propagation::HostToContainer as i32;
                }),
                Code::InvalidArgument,
                "private propagation",
            ),
            (
                Box::new(|r| r.log_path = "c1.log".into()),
                Code::InvalidArgument,
                "c1.log",
            ),
            (
                Box::new(|r| r.log_path = "/no/such/dir/c1.log".into()),
                Code::NotFound,
                "/no/such/dir",
            ),
        ];
        for (n, (edit, code, needle)) in cases.into_iter().enumerate() {
            let mut req = request(&f);
            edit(&mut req);
            let s = refused(req);
            assert_eq!(s.code(), code, "case {n}: {}", s.message());
            assert!(
                s.message().contains(needle),
                "case {n}: {:?} lacks {needle:?}",
                s.message()
            );
        }
    }

    #[test]
    fn assembly_fills_guest_paths_and_undo_leaves_nothing() {
        let f = fixture();
        let (spec, w) = assemble(&f.pod, validate(request(&f)).unwrap()).expect("assemble (root)");
        let dir = f.pod.share.join("containers/c1");
        let check = std::panic::catch_unwind(|| {
            assert_eq!(spec.rootfs, "/run/vmpod/share/containers/c1/rootfs");
            assert_eq!(
                spec.writable_dir, "",
                "writable bytes are the host's to measure"
            );
            assert!(w.upper().is_dir());
            assert_eq!(
                spec.mounts.len(),
                3,
                "the daemon's tmpfs, then the two volumes"
            );
            assert_eq!(spec.mounts[0].destination, "/tmp");
            let data = &spec.mounts[1];
            assert_eq!(data.source, "/run/vmpod/share/containers/c1/mounts/0");
            assert_eq!((data.destination.as_str(), data.readonly), ("/data", true));
            assert_eq!(
                spec.mounts[2].source,
                "/run/vmpod/share/containers/c1/mounts/1"
            );
            assert_eq!(
                std::fs::read(dir.join("rootfs/etc/hostname")).unwrap(),
                b"image"
            );
            assert_eq!(std::fs::read(dir.join("mounts/0/data")).unwrap(), b"data");
            assert_eq!(std::fs::read(dir.join("mounts/1")).unwrap(), b"file");
            let e = std::fs::write(dir.join("mounts/0/x"), b"x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        });
        remove_container(&f.pod, "c1").unwrap();
        check.unwrap();
        assert!(!dir.exists());
        assert!(!w.image.exists());
        assert!(f.no_mounts_but_the_share());
        assert_eq!(
            std::fs::read(f.root.join("vol/data")).unwrap(),
            b"data",
            "volume intact"
        );
        assert_eq!(std::fs::read(f.root.join("file")).unwrap(), b"file");
    }

    #[test]
    fn readonly_root_still_gets_an_upper_for_mount_points() {
        let f = fixture();
        let mut req = request(&f);
        req.mounts.clear();
        req.spec.as_mut().unwrap().readonly_rootfs = true;
        let (spec, w) = assemble(&f.pod, validate(req).unwrap()).expect("assemble (root)");
        let writable = w.upper().is_dir();
        remove_container(&f.pod, "c1").unwrap();
        assert!(writable, "no upper dir");
        assert!(
            spec.readonly_rootfs,
            "the guest must still make the root read-only"
        );
        assert_eq!(spec.writable_dir, "");
    }

    #[test]
    fn a_failed_bind_undoes_the_root_and_earlier_binds() {
        let f = fixture();
        let mut plan = validate(request(&f)).unwrap();
        // Passed validation, gone by the time it is bound.
        plan.volumes[1].host_path = f.root.join("vanished");
        let e = assemble(&f.pod, plan).unwrap_err();
        assert!(format!("{e:#}").contains("vanished"), "{e:#}");
        assert!(!f.pod.skeleton.join("containers/c1").exists());
        assert_eq!(std::fs::read_dir(&f.pod.writable).unwrap().count(), 0);
        assert!(f.no_mounts_but_the_share());
        assert_eq!(std::fs::read(f.root.join("vol/data")).unwrap(), b"data");
    }
}
