//! A service's volume: written by the service, capped by the kernel, saved as an archive while
//! the service runs (frozen for the copy), and restored into a fresh volume on another host
//! that the next run of the service starts from. Hostile archives land nothing outside.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cairn_runtime::container::service::{ServiceHost, ServiceRun};
use cairn_runtime::container::volume::{self, VolumeRun};
use cairn_runtime::{ContainerConfig, ContainerExecutor, Executor as _};

use crate::container::busybox_image;
use crate::scratch;
use crate::services::get;

fn host(dir: &Path) -> ServiceHost {
    let (bytes, image) = busybox_image();
    let exec = Arc::new(ContainerExecutor::new(ContainerConfig::in_dir(dir.join("containers"))).unwrap());
    exec.prepare(&image, &bytes).unwrap();
    ServiceHost::new(exec, dir.join("services")).unwrap()
}

fn run(name: &str, script: &str, restore: Option<&Path>) -> ServiceRun {
    ServiceRun {
        name: name.into(),
        image: busybox_image().1,
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        inputs: Vec::new(),
        port: 8080,
        memory_mb: 64,
        cpu_millis: 500,
        network: false,
        volume: Some(VolumeRun {
            path: "/data".into(),
            max_bytes: 2 << 20,
            restore: restore.map(Path::to_path_buf),
        }),
    }
}

/// The service: on its first start it writes a random stamp, a nested file, a link and a pipe
/// into its volume and tries to go past the cap; on every start it logs a line and serves the
/// volume.
const SCRIPT: &str = "cd /data; \
    if [ ! -f stamp ]; then \
      od -An -tx8 -N8 /dev/urandom | tr -d ' ' > stamp; mkdir -p notes/deep; echo kept > notes/deep/a.txt; \
      busybox chmod 600 notes/deep/a.txt; ln -s /etc/passwd link; busybox mkfifo pipe; \
      if busybox dd if=/dev/zero of=big bs=1024 count=4096 2>/dev/null; then r=over; else r=capped; fi; rm -f big; echo $r > cap.txt; \
    fi; echo start >> starts.log; exec httpd -f -p 8080 -h /data";

#[test]
fn a_volume_is_capped_saved_live_and_restored_where_the_service_moves() {
    let dir = scratch("volumes");
    let first = host(&dir.join("a"));
    let addr = first.start(&run("svc", SCRIPT, None)).unwrap();
    let stamp = get(addr, "/stamp");
    assert!(stamp.starts_with("HTTP/1.1 200"), "{stamp}");
    let stamp = stamp.rsplit("\r\n\r\n").next().unwrap().trim().to_string();
    assert_eq!(stamp.len(), 16, "{stamp}");
    let cap = get(addr, "/cap.txt");
    assert!(cap.contains("capped"), "writes past the volume's cap fail: {cap}");

    // A restart on the same host keeps the volume.
    let fp = first.volume_fingerprint("svc").unwrap().unwrap();
    let addr = first.start(&run("svc", SCRIPT, None)).unwrap();
    assert!(get(addr, "/starts.log").ends_with("start\nstart\n"));
    // The volume's mount point is made in a root of the service's own: the image's root, which
    // batch tasks run on, stays as it was.
    let image_root = dir.join(format!("a/containers/images/{}/rootfs", busybox_image().1));
    assert!(image_root.join("bin").is_dir() && !image_root.join("data").exists());
    assert_ne!(first.volume_fingerprint("svc").unwrap().unwrap(), fp, "a write changes the fingerprint");
    let fp = first.volume_fingerprint("svc").unwrap().unwrap();
    assert_eq!(first.volume_fingerprint("svc").unwrap().unwrap(), fp, "no write, same fingerprint");

    // Saved while it runs; saved again unchanged, the same bytes.
    let archive = first.save_volume("svc").unwrap();
    assert_eq!(first.save_volume("svc").unwrap(), archive, "saves are reproducible");
    assert!(get(addr, "/stamp").contains(&stamp), "the service runs on after a save");
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    volume::unpack(&archive[..], &unpacked).unwrap();
    assert_eq!(std::fs::read_to_string(unpacked.join("notes/deep/a.txt")).unwrap(), "kept\n");
    assert_eq!(std::fs::read_link(unpacked.join("link")).unwrap(), Path::new("/etc/passwd"));
    assert!(!unpacked.join("pipe").exists(), "pipes are not state");
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(unpacked.join("notes/deep/a.txt")).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o600, 65_534));

    // Another host starts the service on the saved copy: the same stamp, the log goes on.
    let saved = dir.join("saved.tar");
    std::fs::write(&saved, &archive).unwrap();
    let second = host(&dir.join("b"));
    let moved = second.start(&run("svc", SCRIPT, Some(&saved))).unwrap();
    assert!(get(moved, "/stamp").contains(&stamp));
    assert!(get(moved, "/starts.log").ends_with("start\nstart\nstart\n"));

    // Stopping removes the volume; a new start begins empty.
    let vol_dirs = |d: &Path| {
        std::fs::read_dir(d.join("services"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("vol-"))
            .count()
    };
    assert_eq!(vol_dirs(&dir.join("a")), 1);
    first.stop("svc");
    assert_eq!(vol_dirs(&dir.join("a")), 0);
    assert!(first.volume_fingerprint("svc").is_none());
    let fresh = first.start(&run("svc", SCRIPT, None)).unwrap();
    assert!(!get(fresh, "/stamp").contains(&stamp));
    drop(first);
    drop(second);
    assert_eq!(vol_dirs(&dir.join("b")), 0, "dropping the host unmounts its volumes");
}

/// One tar entry, by hand (the `tar` crate refuses to write some of these paths).
fn entry(out: &mut Vec<u8>, path: &str, kind: u8, link: &str, body: &[u8]) {
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[test]
fn hostile_volume_archives_land_nothing_outside_the_volume() {
    let dir = scratch("volume-hostile");
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.to_str().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", {
            let mut a = Vec::new();
            entry(&mut a, "../outside/x", b'0', "", b"escaped");
            a
        }),
        ("absolute", {
            let mut a = Vec::new();
            entry(&mut a, &format!("{target}/x"), b'0', "", b"escaped");
            a
        }),
        ("file through a link", {
            let mut a = Vec::new();
            entry(&mut a, "l", b'2', target, b"");
            entry(&mut a, "l/x", b'0', "", b"escaped");
            a
        }),
        ("link through a link", {
            let mut a = Vec::new();
            entry(&mut a, "l", b'2', target, b"");
            entry(&mut a, "l/x", b'2', "/etc/passwd", b"");
            a
        }),
        ("device", {
            let mut a = Vec::new();
            entry(&mut a, "null", b'3', "", b"");
            a
        }),
        ("hard link", {
            let mut a = Vec::new();
            entry(&mut a, "h", b'1', "/etc/passwd", b"");
            a
        }),
    ];
    for (what, mut archive) in cases {
        archive.extend_from_slice(&[0u8; 1024]);
        let vol = dir.join(format!("vol-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(&vol).unwrap();
        let err = volume::unpack(&archive[..], &vol);
        assert!(err.is_err(), "{what}: refused");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{what}: nothing outside");
    }
    // A save refuses what it cannot keep within the archive's bound: a link target or a path
    // over 1,024 bytes.
    let tree = dir.join("long");
    std::fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink("x".repeat(2_000), tree.join("l")).unwrap();
    assert!(volume::pack(&tree, Vec::new()).is_err());
    std::fs::remove_file(tree.join("l")).unwrap();
    let deep: std::path::PathBuf = (0..12).map(|_| "d".repeat(100)).collect();
    std::fs::create_dir_all(tree.join(&deep)).unwrap();
    assert!(volume::pack(&tree, Vec::new()).is_err());
    // Garbage is a typed error too.
    let vol = dir.join("vol-garbage");
    std::fs::create_dir_all(&vol).unwrap();
    assert!(volume::unpack(&[b'A'; 1024][..], &vol).is_err());
}
