//! Unpacker tests. They build layers byte by byte where `tar::Builder`
//! would refuse the hostile names under test, and they need root (mknod of
//! whiteouts, trusted.* xattrs, chown, and the overlay mount).

use std::ffi::CString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

/// A tar stream assembled header by header.
#[derive(Default)]
struct Tar(Vec<u8>);

struct Opts {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const DEFAULT: Opts = Opts {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_600_000_000,
};

impl Tar {
    /// Appends a GNU header with `name` and `link` written as raw bytes, so
    /// names like `../x` that `tar::Builder` rejects can be expressed.
    fn raw(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
        o: &Opts,
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(o.mode);
        h.set_uid(o.uid);
        h.set_gid(o.gid);
        h.set_mtime(o.mtime);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        let rem = self.0.len() % 512;
        if rem != 0 {
            self.0.resize(self.0.len() + 512 - rem, 0);
        }
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), b"", data, &DEFAULT)
    }

    fn file_with(&mut self, name: &str, data: &[u8], o: &Opts) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), b"", data, o)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(
            EntryType::Directory,
            name.as_bytes(),
            b"",
            b"",
            &Opts {
                mode: 0o755,
                ..DEFAULT
            },
        )
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            name.as_bytes(),
            target.as_bytes(),
            b"",
            &Opts {
                mode: 0o777,
                ..DEFAULT
            },
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Link,
            name.as_bytes(),
            target.as_bytes(),
            b"",
            &DEFAULT,
        )
    }

    /// A PAX extended header ('x') applying `records` to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let base = key.len() + value.len() + 3;
            let mut len = base + 1;
            while len != base + len.to_string().len() {
                len = base + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw(EntryType::XHeader, b"PaxHeaders/x", b"", &data, &DEFAULT)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&[0; 1024]);
        out
    }
}

/// A temp dir holding `dest` and an `outside` sibling that must stay empty.
struct Env {
    _tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("dest");
        let outside = tmp.path().join("outside");
        fs::create_dir(&dest).expect("mkdir dest");
        fs::create_dir(&outside).expect("mkdir outside");
        Env {
            _tmp: tmp,
            dest,
            outside,
        }
    }

    fn unpack(&self, tar: &[u8]) -> Result<Unpacked, UnpackError> {
        unpack(tar, Compression::None, &self.dest, &Limits::default())
    }

    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside).expect("read outside").collect();
        assert!(
            names.is_empty(),
            "something was written outside dest: {names:?}"
        );
        let parent: Vec<_> = fs::read_dir(self.dest.parent().expect("parent"))
            .expect("read parent")
            .map(|e| e.expect("dirent").file_name())
            .collect();
        assert_eq!(parent.len(), 2, "unexpected files beside dest: {parent:?}");
    }
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn media_types() {
    use Compression as C;
    let cases = [
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(C::Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(C::Zstd)),
        ("application/vnd.oci.image.layer.v1.tar", Some(C::None)),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(C::Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Some(C::Gzip),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Some(C::Gzip),
        ),
        ("application/vnd.oci.image.config.v1+json", None),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
    ];
    for (mt, want) in cases {
        assert_eq!(Compression::from_media_type(mt), want, "{mt}");
    }
}

#[test]
fn files_dirs_modes_owners_mtimes() {
    let env = Env::new();
    let tar = Tar::default()
        .raw(
            EntryType::Directory,
            b"./",
            b"",
            b"",
            &Opts {
                mode: 0o755,
                ..DEFAULT
            },
        )
        .raw(
            EntryType::Directory,
            b"etc/",
            b"",
            b"",
            &Opts {
                mode: 0o750,
                uid: 1,
                gid: 2,
                mtime: 1000,
            },
        )
        .file_with(
            "etc/app.conf",
            b"hello",
            &Opts {
                mode: 0o4755,
                uid: 1000,
                gid: 1001,
                mtime: 2000,
            },
        )
        .file_with(
            "./usr/bin/tool",
            b"#!/bin/sh\n",
            &Opts {
                mode: 0o2711,
                uid: 0,
                gid: 50,
                mtime: 3000,
            },
        )
        .raw(
            EntryType::Directory,
            b"tmp",
            b"",
            b"",
            &Opts {
                mode: 0o1777,
                ..DEFAULT
            },
        )
        .finish();
    let got = env.unpack(&tar).expect("unpack");
    assert_eq!(got.entries, 5);
    assert_eq!(got.bytes, 15);

    let etc = fs::metadata(env.dest.join("etc")).unwrap();
    assert!(etc.is_dir());
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!((etc.uid(), etc.gid()), (1, 2));
    // Set after app.conf was written into it.
    assert_eq!(etc.mtime(), 1000);

    let conf = env.dest.join("etc/app.conf");
    assert_eq!(fs::read(&conf).unwrap(), b"hello");
    let m = fs::metadata(&conf).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(m.mtime(), 2000);

    let tool = fs::metadata(env.dest.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o2711, "setgid survives chown");
    assert_eq!(tool.gid(), 50);
    // Parents the layer never listed.
    assert_eq!(
        fs::metadata(env.dest.join("usr")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(env.dest.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    env.assert_outside_untouched();
}

#[test]
fn pax_mtime_and_long_names() {
    let env = Env::new();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let mut tar = b.into_inner().unwrap();
    // Builder ends with two zero blocks; splice a PAX-timed entry before them.
    tar.truncate(tar.len() - 1024);
    let mut t = Tar(tar);
    t.pax(&[("mtime", b"1234567890.5"), ("path", b"pax/named/file")])
        .file("short-name-ignored", b"x");
    let got = env.unpack(&t.finish()).expect("unpack");
    assert_eq!(got.entries, 2);
    assert_eq!(fs::read(env.dest.join(&long)).unwrap(), b"abc");
    let m = fs::metadata(env.dest.join("pax/named/file")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 500_000_000));
    assert!(!env.dest.join("short-name-ignored").exists());
}

#[test]
fn parse_pax_times() {
    let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
    assert_eq!(t("12"), Some((12, 0)));
    assert_eq!(t("12.000000001"), Some((12, 1)));
    assert_eq!(t("12.1234567899"), Some((12, 123_456_789)));
    assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(t("x"), None);
    assert_eq!(t("1.2.3"), None);
    assert_eq!(t(""), None);
}

#[test]
fn symlinks_are_stored_verbatim() {
    let env = Env::new();
    let tar = Tar::default()
        .symlink("abs", "/etc/passwd")
        .symlink("dir/rel", "../../..")
        .raw(
            EntryType::Symlink,
            b"owned",
            b"target",
            b"",
            &Opts {
                mode: 0o777,
                uid: 7,
                gid: 8,
                mtime: 4000,
            },
        )
        .finish();
    env.unpack(&tar).expect("unpack");
    assert_eq!(
        fs::read_link(env.dest.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(env.dest.join("dir/rel")).unwrap(),
        Path::new("../../..")
    );
    let m = fs::symlink_metadata(env.dest.join("owned")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!((m.uid(), m.gid(), m.mtime()), (7, 8, 4000));
    env.assert_outside_untouched();
}

#[test]
fn hard_links_inside_the_layer() {
    let env = Env::new();
    let tar = Tar::default()
        .file("a", b"data")
        .hardlink("b", "a")
        .hardlink("sub/c", "./a")
        .hardlink("abs", "/a")
        .finish();
    env.unpack(&tar).expect("unpack");
    let ino = fs::metadata(env.dest.join("a")).unwrap().ino();
    for n in ["b", "sub/c", "abs"] {
        assert_eq!(fs::metadata(env.dest.join(n)).unwrap().ino(), ino, "{n}");
    }
    assert_eq!(fs::metadata(env.dest.join("a")).unwrap().nlink(), 4);
}

#[test]
fn hard_links_outside_or_missing_are_rejected() {
    let outside_file = |env: &Env| {
        let p = env.outside.join("secret");
        fs::write(&p, b"host").unwrap();
        p
    };
    // `..` in the target.
    let env = Env::new();
    let tar = Tar::default().hardlink("b", "../outside/secret").finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::BadLinkTarget { .. }), "{err}");

    // An absolute target means a path in the layer, not on the host.
    let env = Env::new();
    let secret = outside_file(&env);
    let tar = Tar::default()
        .hardlink("b", secret.to_str().unwrap())
        .finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);

    // A target reached through a symlink the layer planted.
    let env = Env::new();
    let secret = outside_file(&env);
    let tar = Tar::default()
        .symlink("s", env.outside.to_str().unwrap())
        .hardlink("b", "s/secret")
        .finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);

    // Missing and directory targets.
    let env = Env::new();
    let err = env
        .unpack(&Tar::default().hardlink("b", "nope").finish())
        .unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    let env = Env::new();
    let err = env
        .unpack(&Tar::default().dir("d/").hardlink("b", "d").finish())
        .unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
}

#[test]
fn dotdot_names_are_rejected_and_nothing_escapes() {
    for name in [
        "../outside/escape",
        "a/../../outside/escape",
        "./..",
        "x/..",
    ] {
        let env = Env::new();
        let tar = Tar::default()
            .file("ok", b"1")
            .file(name, b"pwned")
            .finish();
        let err = env.unpack(&tar).unwrap_err();
        match &err {
            UnpackError::BadName { path, reason } => {
                assert_eq!(path, name);
                assert!(reason.contains(".."), "{reason}");
            }
            e => panic!("{name}: unexpected {e}"),
        }
        assert!(
            err.to_string().contains(name),
            "error names the entry: {err}"
        );
        env.assert_outside_untouched();
    }
}

#[test]
fn bad_names_are_rejected() {
    let env = Env::new();
    let err = env
        .unpack(&Tar::default().file("", b"x").finish())
        .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::BadName {
                reason: "empty name",
                ..
            }
        ),
        "{err}"
    );

    let env = Env::new();
    let tar = Tar::default()
        .pax(&[("path", b"a\0b")])
        .file("x", b"")
        .finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::BadName { .. }), "{err}");

    let env = Env::new();
    let long = "n/".repeat(2100);
    let tar = Tar::default()
        .pax(&[("path", long.as_bytes())])
        .file("x", b"")
        .finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                limit: Limit::PathLength,
                ..
            }
        ),
        "{err}"
    );

    // The layer root as a file. ("/" with its trailing slash would be an
    // old-style directory entry, which is fine.)
    let env = Env::new();
    let err = env
        .unpack(&Tar::default().file("./.", b"x").finish())
        .unwrap_err();
    assert!(matches!(err, UnpackError::BadName { .. }), "{err}");
}

#[test]
fn oversized_metadata_is_refused() {
    let env = Env::new();
    let huge = vec![b'a'; 2 << 20];
    let tar = Tar::default()
        .pax(&[("comment", &huge)])
        .file("x", b"")
        .finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{err}");

    // GNU long names are buffered the same way.
    let env = Env::new();
    let mut t = Tar::default();
    t.raw(
        EntryType::GNULongName,
        b"././@LongLink",
        b"",
        &huge,
        &DEFAULT,
    )
    .file("x", b"");
    let err = env.unpack(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{err}");

    // Large file data is not metadata.
    let env = Env::new();
    let tar = Tar::default().file("big", &huge).finish();
    assert_eq!(env.unpack(&tar).expect("unpack").bytes, huge.len() as u64);
}

#[test]
fn absolute_names_are_contained() {
    let env = Env::new();
    let tar = Tar::default()
        .file("/etc/x", b"inside")
        .file("//twice", b"2")
        .finish();
    env.unpack(&tar).expect("unpack");
    assert_eq!(fs::read(env.dest.join("etc/x")).unwrap(), b"inside");
    assert_eq!(fs::read(env.dest.join("twice")).unwrap(), b"2");
    env.assert_outside_untouched();
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    type AddEntry = fn(&mut Tar) -> &mut Tar;
    let cases: [(&str, AddEntry); 5] = [
        ("file", |t| t.file("link/pwned", b"x")),
        ("dir", |t| t.dir("link/pwned/")),
        ("symlink", |t| t.symlink("link/pwned", "x")),
        ("whiteout", |t| t.file("link/.wh.pwned", b"")),
        ("opaque", |t| t.file("link/.wh..wh..opq", b"")),
    ];
    for (what, add) in cases {
        let env = Env::new();
        let mut t = Tar::default();
        t.symlink("link", env.outside.to_str().unwrap());
        add(&mut t);
        let err = env.unpack(&t.finish()).unwrap_err();
        match &err {
            UnpackError::UnsafeParent {
                component,
                what: kind,
                ..
            } => {
                assert_eq!(component, "link", "{what}");
                assert_eq!(*kind, "a symlink", "{what}");
            }
            e => panic!("{what}: unexpected {e}"),
        }
        env.assert_outside_untouched();
        assert_eq!(
            lgetxattr(&env.outside, "trusted.overlay.opaque"),
            None,
            "{what}"
        );
    }
}

#[test]
fn writing_through_a_dotdot_symlink_is_refused() {
    for target in ["..", "../..", "../outside", "."] {
        let env = Env::new();
        let tar = Tar::default()
            .symlink("up", target)
            .file("up/pwned", b"x")
            .finish();
        let err = env.unpack(&tar).unwrap_err();
        assert!(
            matches!(err, UnpackError::UnsafeParent { .. }),
            "{target}: {err}"
        );
        env.assert_outside_untouched();
        assert!(!env.dest.join("pwned").exists());
    }
}

#[test]
fn whiteouts_become_char_devices() {
    let env = Env::new();
    let tar = Tar::default()
        .file(".wh.gone", b"")
        .file("dir/.wh.x", b"")
        .file(".wh..wh.plnk", b"")
        .finish();
    env.unpack(&tar).expect("unpack");
    for p in ["gone", "dir/x"] {
        let m = fs::symlink_metadata(env.dest.join(p)).unwrap();
        assert!(m.file_type().is_char_device(), "{p}");
        assert_eq!(m.rdev(), 0, "{p}");
    }
    let names: Vec<_> = fs::read_dir(&env.dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no .wh.* files written: {names:?}");
}

#[test]
fn opaque_marker_sets_xattr() {
    let env = Env::new();
    let tar = Tar::default()
        .dir("dir/")
        .file("dir/.wh..wh..opq", b"")
        .file("dir/new", b"n")
        .file("implicit/.wh..wh..opq", b"")
        .finish();
    env.unpack(&tar).expect("unpack");
    assert_eq!(
        lgetxattr(&env.dest.join("dir"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        lgetxattr(&env.dest.join("implicit"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!env.dest.join("dir/.wh..wh..opq").exists());
    assert_eq!(fs::read_dir(env.dest.join("dir")).unwrap().count(), 1);
}

#[test]
fn layer_overlay_xattrs_are_dropped() {
    let env = Env::new();
    let tar = Tar::default()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.overlay.metacopy", b""),
            ("SCHILY.xattr.user.note", b"kept"),
            ("SCHILY.xattr.trusted.other", b"\x00\x01bin"),
        ])
        .dir("d/")
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.origin", b"x"),
            ("SCHILY.xattr.user.f", b"v"),
        ])
        .file("d/f", b"")
        .finish();
    env.unpack(&tar).expect("unpack");
    let d = env.dest.join("d");
    assert_eq!(lgetxattr(&d, "trusted.overlay.redirect"), None);
    assert_eq!(lgetxattr(&d, "trusted.overlay.opaque"), None);
    assert_eq!(lgetxattr(&d, "user.overlay.metacopy"), None);
    assert_eq!(lgetxattr(&d, "user.note").as_deref(), Some(&b"kept"[..]));
    assert_eq!(
        lgetxattr(&d, "trusted.other").as_deref(),
        Some(&b"\x00\x01bin"[..])
    );
    let f = d.join("f");
    assert_eq!(lgetxattr(&f, "trusted.overlay.origin"), None);
    assert_eq!(lgetxattr(&f, "user.f").as_deref(), Some(&b"v"[..]));
}

fn sample_layer() -> Vec<u8> {
    let mut tar = Tar::default()
        .dir("app/")
        .file("app/bin", &vec![7u8; 100_000])
        .symlink("app/link", "bin")
        .finish();
    // GNU tar pads to a 10 KiB record; diff_id must cover that too.
    tar.resize(tar.len().div_ceil(10240) * 10240, 0);
    tar
}

#[test]
fn all_compressions_give_the_raw_tar_digest() {
    let tar = sample_layer();
    let want = sha256_hex(&tar);

    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut multi = gz(&tar[..5000]);
    multi.extend(gz(&tar[5000..]));
    let zst = zstd::encode_all(&tar[..], 3).unwrap();

    for (what, blob, c) in [
        ("none", tar.clone(), Compression::None),
        ("gzip", gz(&tar), Compression::Gzip),
        ("multi-member gzip", multi, Compression::Gzip),
        ("zstd", zst, Compression::Zstd),
    ] {
        let env = Env::new();
        let got = unpack(&blob[..], c, &env.dest, &Limits::default())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.diff_id, want, "{what}");
        assert_eq!(got.entries, 3, "{what}");
        assert_eq!(got.bytes, 100_000, "{what}");
        assert_eq!(
            fs::read(env.dest.join("app/bin")).unwrap().len(),
            100_000,
            "{what}"
        );
    }
}

#[test]
fn truncated_streams_are_errors() {
    let tar = sample_layer();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    let gz = e.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();

    // Cut only the trailer: every tar entry decodes, so only draining to EOF
    // notices.
    for (what, blob, c) in [
        ("gzip trailer", &gz[..gz.len() - 4], Compression::Gzip),
        ("gzip body", &gz[..gz.len() / 2], Compression::Gzip),
        ("zstd end", &zst[..zst.len() - 3], Compression::Zstd),
        ("tar mid-file", &tar[..2048], Compression::None),
    ] {
        let env = Env::new();
        let err = unpack(blob, c, &env.dest, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Stream { .. } | UnpackError::Truncated { .. }
            ),
            "{what}: {err}"
        );
    }
}

#[test]
fn entries_replace_earlier_entries_of_another_type() {
    let env = Env::new();
    let tar = Tar::default()
        // file -> directory
        .file("x", b"file")
        .dir("x/")
        .file("x/child", b"c")
        // directory tree -> file
        .dir("y/")
        .file("y/inner/f", b"f")
        .symlink("y/inner/l", "/etc")
        .file("y", b"now a file")
        // file -> symlink
        .file("z", b"z")
        .symlink("z", "t")
        // symlink -> file: replaces the link, does not write through it
        .symlink("w", env.outside.to_str().unwrap())
        .file("w", b"w")
        // whiteout then directory: deleted and recreated, so opaque
        .file(".wh.d", b"")
        .dir("d/")
        // overwriting a hard-linked name leaves the other name alone
        .file("a", b"original")
        .hardlink("b", "a")
        .file("b", b"replaced")
        // a whiteout after an entry of the same layer keeps the entry
        .file("kept", b"k")
        .file(".wh.kept", b"")
        .finish();
    env.unpack(&tar).expect("unpack");
    let d = &env.dest;
    assert_eq!(fs::read(d.join("x/child")).unwrap(), b"c");
    assert_eq!(fs::read(d.join("y")).unwrap(), b"now a file");
    assert_eq!(fs::read_link(d.join("z")).unwrap(), Path::new("t"));
    assert!(fs::symlink_metadata(d.join("w")).unwrap().is_file());
    assert!(fs::symlink_metadata(d.join("d")).unwrap().is_dir());
    assert_eq!(
        lgetxattr(&d.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(d.join("a")).unwrap(), b"original");
    assert_eq!(fs::read(d.join("b")).unwrap(), b"replaced");
    assert_eq!(fs::read(d.join("kept")).unwrap(), b"k");
    env.assert_outside_untouched();
}

#[test]
fn devices_and_fifos() {
    let env = Env::new();
    let mut t = Tar::default();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Char);
    h.set_path("dev/null").unwrap();
    h.set_mode(0o666);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    t.0.extend_from_slice(h.as_bytes());
    t.raw(
        EntryType::Fifo,
        b"run/fifo",
        b"",
        b"",
        &Opts {
            mode: 0o620,
            ..DEFAULT
        },
    );
    env.unpack(&t.finish()).expect("unpack");
    let null = fs::symlink_metadata(env.dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let fifo = fs::symlink_metadata(env.dest.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
}

#[test]
fn unknown_entry_types_are_refused() {
    let env = Env::new();
    let tar = Tar::default()
        .raw(EntryType::new(b'V'), b"label", b"", b"", &DEFAULT)
        .finish();
    let err = env.unpack(&tar).unwrap_err();
    assert!(
        matches!(err, UnpackError::UnsupportedType { kind: 'V', .. }),
        "{err}"
    );
}

/// Unmounts on drop so a failed assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Stacks two unpacked layers with a real overlayfs mount: the proof that
/// the whiteout and opaque translations are in the format the kernel reads.
#[test]
fn layers_stack_in_overlayfs() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper, mnt) = (
        tmp.path().join("lower"),
        tmp.path().join("upper"),
        tmp.path().join("mnt"),
    );
    for d in [&lower, &upper, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let base = Tar::default()
        .file("a", b"a")
        .file("keep", b"keep")
        .file("d/old", b"old")
        .file("d/sub/deep", b"deep")
        .file("e/stays", b"s")
        .finish();
    let top = Tar::default()
        .file(".wh.a", b"")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new")
        .file("e/.wh.stays", b"")
        .file("e/added", b"+")
        .finish();
    unpack(&base[..], Compression::None, &lower, &Limits::default()).expect("lower");
    unpack(&top[..], Compression::None, &upper, &Limits::default()).expect("upper");

    let opts = format!("lowerdir={}:{}", upper.display(), lower.display());
    nix::mount::mount(
        Some("overlay"),
        &mnt,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("mount overlay (needs root)");
    let _guard = Mounted(mnt.clone());

    let ls = |p: &str| {
        let mut v: Vec<String> = fs::read_dir(mnt.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ls(""), ["d", "e", "keep"], "whiteout hides a");
    assert_eq!(ls("d"), ["new"], "opaque dir hides lower contents");
    assert_eq!(ls("e"), ["added"], "whiteout in a merged dir");
    assert_eq!(fs::read(mnt.join("keep")).unwrap(), b"keep");
}

/// Appends a GNU sparse entry: `data` at `offset`, holes elsewhere up to
/// `real_size`.
fn sparse(t: &mut Tar, name: &str, real_size: u64, offset: u64, data: &[u8]) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    let g = h.as_gnu_mut().expect("gnu header");
    g.sparse[0].set_offset(offset);
    g.sparse[0].set_length(data.len() as u64);
    // GNU tar ends the map with an empty chunk at the real size.
    g.sparse[1].set_offset(real_size);
    g.sparse[1].set_length(0);
    g.set_real_size(real_size);
    h.set_cksum();
    t.0.extend_from_slice(h.as_bytes());
    t.0.extend_from_slice(data);
    t.pad();
}

#[test]
fn sparse_files_keep_their_holes() {
    let env = Env::new();
    let mut t = Tar::default();
    sparse(&mut t, "lastlog", 64 << 20, 1 << 20, b"data");
    let got = env.unpack(&t.finish()).expect("unpack");
    let p = env.dest.join("lastlog");
    let m = fs::metadata(&p).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert_eq!(got.bytes, 64 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "holes were written as zeros: {} blocks",
        m.blocks()
    );
    let content = fs::read(&p).unwrap();
    assert_eq!(&content[1 << 20..(1 << 20) + 4], b"data");
    assert!(content[..1 << 20].iter().all(|&b| b == 0));
}

#[test]
fn sparse_hole_bomb_is_refused() {
    // One 512-byte header declaring an exabyte of holes.
    let env = Env::new();
    let mut t = Tar::default();
    sparse(&mut t, "bomb", 1 << 60, 0, b"x");
    let err = env.unpack(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::SparseTooLarge { .. }), "{err}");
    assert!(!env.dest.join("bomb").exists());
}

/// Hands out at most `max` bytes per read, like network chunks do.
struct Trickle<'a> {
    data: &'a [u8],
    max: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.max).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn big_files_from_small_reads_are_written_whole() {
    // Bigger than the writeback chunk and not a multiple of the copy
    // buffer, in pieces of an odd size: the gathering into whole buffers
    // and the writeback hints must not lose, reorder or repeat a byte.
    let mut data = vec![0u8; (9 << 20) + 12_345];
    let mut x: u32 = 1;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        *b = (x >> 24) as u8;
    }
    let tar = Tar::default()
        .file("big.bin", &data)
        .file("small", b"tail")
        .finish();
    let env = Env::new();
    let got = unpack(
        Trickle {
            data: &tar,
            max: 7_001,
        },
        Compression::None,
        &env.dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(got.diff_id, sha256_hex(&tar));
    assert_eq!(got.bytes, data.len() as u64 + 4);
    assert!(fs::read(env.dest.join("big.bin")).unwrap() == data);
    assert_eq!(fs::read(env.dest.join("small")).unwrap(), b"tail");
}

/// Default limits with some replaced, and a fresh image budget.
fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

fn limit_of(err: &UnpackError) -> Option<Limit> {
    match err {
        UnpackError::Limit { limit, .. } => Some(*limit),
        _ => None,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn entry_limit_counts_entries_and_implied_parents() {
    let l = limits(|l| l.max_layer_entries = 5);
    let mut t = Tar::default();
    for i in 0..5 {
        t.file(&format!("f{i}"), b"");
    }
    let env = Env::new();
    assert_eq!(
        unpack(&t.finish()[..], Compression::None, &env.dest, &l)
            .expect("five entries fit")
            .entries,
        5
    );

    let mut t = Tar::default();
    for i in 0..6 {
        t.file(&format!("f{i}"), b"");
    }
    let env = Env::new();
    let err = unpack(&t.finish()[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::LayerEntries), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("registry.max-layer-entries") && msg.contains("= 5") && msg.contains("f5"),
        "{msg}"
    );
    assert!(!env.dest.join("f5").exists());

    // One entry whose name implies four directories is five inodes.
    let env = Env::new();
    let tar = Tar::default().file("a/b/c/d/f", b"").finish();
    let l4 = limits(|l| l.max_layer_entries = 4);
    let err = unpack(&tar[..], Compression::None, &env.dest, &l4).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::LayerEntries), "{err}");
    let env = Env::new();
    unpack(&tar[..], Compression::None, &env.dest, &l).expect("five inodes fit");
}

#[test]
fn layer_bytes_are_counted_on_the_decompressed_stream() {
    // A gzip bomb: files each under the limit, 8 MiB decompressed in all,
    // from a few KiB of gzip.
    let zeros = vec![0u8; 512 << 10];
    let mut t = Tar::default();
    for i in 0..16 {
        t.file(&format!("z{i}"), &zeros);
    }
    let gz = gzip(&t.finish());
    assert!(gz.len() < 64 << 10, "{}", gz.len());
    let l = limits(|l| l.max_layer_bytes = 1 << 20);
    let env = Env::new();
    let err = unpack(&gz[..], Compression::Gzip, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::LayerBytes), "{err}");
    assert!(
        err.to_string()
            .contains("registry.max-layer-bytes = 1048576"),
        "{err}"
    );
    // Stopped at the limit: at most a copy buffer past it was written.
    let written: u64 = fs::read_dir(&env.dest)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(written <= (1 << 20) + COPY_BUF as u64, "{written}");

    // What follows the end of the archive counts too.
    let mut tar = Tar::default().file("x", b"x").finish();
    tar.resize(4 << 20, 0);
    let env = Env::new();
    let err = unpack(&gzip(&tar)[..], Compression::Gzip, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::LayerBytes), "{err}");

    // Just under the limit is fine.
    let tar = Tar::default().file("z", &zeros).finish();
    let env = Env::new();
    unpack(&gzip(&tar)[..], Compression::Gzip, &env.dest, &l).expect("under the limit");
}

#[test]
fn a_file_declared_past_the_limit_is_refused_before_it_is_written() {
    // Only the header: the declared 2 MiB never arrive, and need not.
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_path("big").unwrap();
    h.set_size(2 << 20);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let l = limits(|l| l.max_layer_bytes = 1 << 20);
    let env = Env::new();
    let err = unpack(&h.as_bytes()[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::LayerBytes), "{err}");
    assert!(err.to_string().contains("\"big\""), "{err}");
    assert!(!env.dest.join("big").exists());
}

#[test]
fn image_bytes_are_shared_by_the_layers_of_an_image() {
    let image = Arc::new(ImageBytes::new(3 << 20));
    let l = limits(|l| l.image = image.clone());
    let layer = Tar::default().file("f", &vec![1u8; 2 << 20]).finish();
    let env = Env::new();
    unpack(&layer[..], Compression::None, &env.dest, &l).expect("first layer fits");
    let env = Env::new();
    let err = unpack(&layer[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::ImageBytes), "{err}");
    assert!(
        err.to_string().contains("registry.max-image-bytes"),
        "{err}"
    );
    // Another image has its own budget.
    let env = Env::new();
    unpack(&layer[..], Compression::None, &env.dest, &Limits::default()).expect("other image");
}

#[test]
fn path_length_limit_covers_names_and_link_targets() {
    let l = limits(|l| l.max_path_length = 100);
    let ok = "d/".repeat(49) + "ok"; // 100 bytes
    let long = "d/".repeat(50) + "x"; // 101 bytes
    let env = Env::new();
    let tar = Tar::default()
        .pax(&[("path", ok.as_bytes())])
        .file("ignored", b"")
        .finish();
    unpack(&tar[..], Compression::None, &env.dest, &l).expect("100 bytes fit");
    assert!(env.dest.join(&ok).is_file());

    let env = Env::new();
    let tar = Tar::default()
        .pax(&[("path", long.as_bytes())])
        .file("ignored", b"")
        .finish();
    let err = unpack(&tar[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::PathLength), "{err}");
    assert!(
        err.to_string().contains("registry.max-path-length = 100"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&env.dest).unwrap().count(), 0);

    let env = Env::new();
    let tar = Tar::default()
        .file("t", b"")
        .pax(&[("linkpath", long.as_bytes())])
        .hardlink("h", "ignored")
        .finish();
    let err = unpack(&tar[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::PathLength), "{err}");
}

#[test]
fn path_depth_limit() {
    let l = limits(|l| l.max_path_depth = 4);
    let env = Env::new();
    // `.` and empty components are not levels.
    let tar = Tar::default().file("./a//b/c/d", b"").finish();
    unpack(&tar[..], Compression::None, &env.dest, &l).expect("depth 4 fits");

    let env = Env::new();
    let tar = Tar::default().dir("a/").file("a/b/c/d/e", b"").finish();
    let err = unpack(&tar[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::PathDepth), "{err}");
    assert!(
        err.to_string().contains("registry.max-path-depth = 4"),
        "{err}"
    );
    // Refused before any parent was made.
    assert!(!env.dest.join("a/b").exists());

    let env = Env::new();
    let tar = Tar::default()
        .file("t", b"")
        .hardlink("h", "a/b/c/d/e")
        .finish();
    let err = unpack(&tar[..], Compression::None, &env.dest, &l).unwrap_err();
    assert_eq!(limit_of(&err), Some(Limit::PathDepth), "{err}");
}

#[test]
fn deferred_directories_spill_to_a_file_and_replay_in_order() {
    let env = Env::new();
    let mut d = DeferredDirs::new(&env.dest, 256);
    let mut want = Vec::new();
    for i in 0..1000u32 {
        let comps: Vec<Vec<u8>> = match i % 3 {
            0 => Vec::new(),
            1 => vec![format!("d{i}").into_bytes()],
            _ => vec![b"a".to_vec(), format!("b{i}").into_bytes(), b"c".to_vec()],
        };
        let mtime = TimeSpec::new(1_600_000_000 + i64::from(i), i64::from(i) * 1000);
        d.push(&comps, 0o700 + i % 8, &mtime).unwrap();
        want.push((comps, 0o700 + i % 8, mtime));
    }
    assert!(d.file.is_some(), "1000 records are past 256 bytes");
    assert!(d.buf.len() < 256 + DEFERRED_HEADER + 16);
    let mut got = Vec::new();
    d.replay(|r| {
        got.push((r.comps, r.mode, r.mtime));
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want);
    // The temp file is unnamed: dest shows nothing of it.
    assert_eq!(fs::read_dir(&env.dest).unwrap().count(), 0);
}

#[test]
fn repeated_directory_entries_keep_memory_flat() {
    // 200,000 entries for the same directory: each is a deferred record,
    // 4.8 MB of them, so they pass the in-memory threshold and spill; the
    // last one's mode and mtime win, as in tar.
    let mut t = Tar::default();
    for i in 0..200_000u64 {
        t.raw(
            EntryType::Directory,
            b"d/",
            b"",
            b"",
            &Opts {
                mode: if i == 199_999 { 0o711 } else { 0o755 },
                mtime: 1_000 + i,
                ..DEFAULT
            },
        );
    }
    let env = Env::new();
    let got = unpack(
        &t.finish()[..],
        Compression::None,
        &env.dest,
        &Limits::default(),
    )
    .expect("unpack");
    assert_eq!(got.entries, 200_000);
    let m = fs::metadata(env.dest.join("d")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o711);
    assert_eq!(m.mtime(), 1_000 + 199_999);
    assert_eq!(fs::read_dir(&env.dest).unwrap().count(), 1);
}

#[test]
fn a_big_directory_replaced_by_a_file_is_removed_whole() {
    let mut t = Tar::default();
    t.dir("big/").dir("big/sub/");
    for i in 0..3000 {
        t.file(&format!("big/f{i}"), b"");
        t.file(&format!("big/sub/g{i}"), b"");
    }
    t.file("big", b"now a file");
    let env = Env::new();
    unpack(
        &t.finish()[..],
        Compression::None,
        &env.dest,
        &Limits::default(),
    )
    .expect("unpack");
    assert_eq!(fs::read(env.dest.join("big")).unwrap(), b"now a file");
}
