//! The container executor with runc, against real programs (busybox) and hostile ones: no
//! network, a read-only root, capped memory, processes, output and time, nothing followed
//! out of `/out`, images checked before they are used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn_runtime::container::{self, image};
use cairn_runtime::{ContainerConfig, ContainerExecutor, Executor as _, RunError, TaskRun};
use cairn_types::{ContentId, Limits, OutputBundle};

use crate::scratch;

/// runc and a static busybox, installed from Debian on first use (as the README's test command
/// runs on a fresh machine as root).
fn tools() -> PathBuf {
    static BUSYBOX: OnceLock<PathBuf> = OnceLock::new();
    BUSYBOX
        .get_or_init(|| {
            let found = image::find_busybox;
            if found().is_none()
                || !container::available(Path::new("runc"))
                || !container::egress::available()
            {
                let ok = Command::new("apt-get")
                    .args(["install", "-y", "-q", "runc", "busybox-static", "slirp4netns"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(
                    ok,
                    "the container tests need root and `apt-get install runc busybox-static slirp4netns`"
                );
            }
            assert!(container::available(Path::new("runc")), "runc does not run here (root needed)");
            found().expect("busybox")
        })
        .clone()
}

/// A busybox root filesystem image: its bytes and id (built once per test run).
pub(crate) fn busybox_image() -> (Vec<u8>, ContentId) {
    static IMAGE: OnceLock<(Vec<u8>, ContentId)> = OnceLock::new();
    IMAGE.get_or_init(build_busybox_image).clone()
}

fn build_busybox_image() -> (Vec<u8>, ContentId) {
    let busybox = tools();
    let dir = scratch("busybox-rootfs");
    image::busybox_tree(&busybox, &dir).unwrap();
    // A symlink in the image pointing at a host path resolves inside the container only.
    std::os::unix::fs::symlink("/etc/shadow", dir.join("etc/host-shadow")).unwrap();
    let bytes = image::build(&dir).unwrap();
    assert_eq!(image::build(&dir).unwrap(), bytes, "images build reproducibly");
    let id = ContentId::of(&bytes);
    (bytes, id)
}

fn executor(name: &str) -> (ContainerExecutor, ContentId, PathBuf) {
    let (bytes, id) = busybox_image();
    let dir = scratch(name);
    let exec = ContainerExecutor::new(ContainerConfig::in_dir(&dir)).unwrap();
    exec.prepare(&id, &bytes).unwrap();
    (exec, id, dir)
}

fn sh(id: ContentId, script: &str) -> TaskRun {
    let limits = Limits { wall_ms: 20_000, output_bytes: 1 << 20, ..Limits::default() };
    TaskRun { memory_mb: 64, cpu_millis: 1_000, ..TaskRun::new(id, limits) }
        .arg("/bin/sh")
        .arg("-c")
        .arg(script)
}

fn text(b: &OutputBundle, name: &str) -> String {
    String::from_utf8_lossy(b.files.get(name).map(Vec::as_slice).unwrap_or_default()).trim().to_string()
}

#[test]
fn a_container_reads_its_inputs_writes_its_outputs_and_reruns_to_the_same_bundle() {
    let (exec, id, dir) = executor("container-io");
    let input = dir.join("data.txt");
    std::fs::write(&input, "granite\nbasalt\n").unwrap();
    let task =
        sh(id, "sha256sum /in/data.txt > /out/sum && id -u > /out/uid && echo \"task $CAIRN_TASK_INDEX\"")
            .input("data.txt", &input);
    let a = exec.run(&task).unwrap();
    assert_eq!(a.bundle.exit(), Some("ok"), "{}", text(&a.bundle, OutputBundle::STDERR));
    assert!(text(&a.bundle, "sum").starts_with("29f26e7c20dbddbc"), "{}", text(&a.bundle, "sum"));
    assert_eq!(text(&a.bundle, "uid"), "65534", "an unprivileged user");
    assert_eq!(text(&a.bundle, OutputBundle::STDOUT), "task 0");
    let b = exec.run(&task).unwrap();
    assert_eq!(a.bundle, b.bundle, "a deterministic program reruns to the same bundle");
    // A failing program is a result, not an error.
    let failed = exec.run(&sh(id, "echo oops >&2; exit 3")).unwrap();
    assert_eq!(
        (failed.bundle.exit(), text(&failed.bundle, OutputBundle::STDERR).as_str()),
        (Some("exit 3"), "oops")
    );
    // A program the image does not have fails the same way every time.
    let missing = TaskRun { memory_mb: 64, ..TaskRun::new(id, Limits::default()) }.arg("/bin/nope");
    let (m1, m2) = (exec.run(&missing).unwrap(), exec.run(&missing).unwrap());
    assert_ne!(m1.bundle.exit(), Some("ok"));
    assert_eq!(m1.bundle, m2.bundle, "{:?}", m1.bundle);
}

/// An image of installed Debian packages (here `coreutils` and the libraries it links) runs a
/// dynamically linked program in the sandbox; a package that is not installed is refused.
#[test]
fn an_image_of_debian_packages_runs_its_dynamically_linked_programs() {
    tools();
    let dir = scratch("debian-rootfs");
    let tree = container::debian::debian_tree(&["coreutils"], &dir.join("root")).unwrap();
    assert!(tree.packages.iter().any(|p| p == "libc6"), "{:?}", tree.packages);
    assert!(!dir.join("root/usr/share/doc").exists(), "documentation is left out");
    let bytes = image::build(&dir.join("root")).unwrap();
    let id = ContentId::of(&bytes);
    let exec = ContainerExecutor::new(ContainerConfig::in_dir(dir.join("exec"))).unwrap();
    exec.prepare(&id, &bytes).unwrap();
    let input = dir.join("words.txt");
    std::fs::write(&input, "schist\nbasalt\ngranite\n").unwrap();
    let limits = Limits { wall_ms: 20_000, output_bytes: 1 << 20, ..Limits::default() };
    let task = TaskRun { memory_mb: 64, cpu_millis: 1_000, ..TaskRun::new(id, limits) }
        .arg("/usr/bin/sort")
        .arg("-o")
        .arg("/out/sorted.txt")
        .arg("/in/words.txt")
        .input("words.txt", &input);
    let r = exec.run(&task).unwrap();
    assert_eq!(r.bundle.exit(), Some("ok"), "{}", text(&r.bundle, OutputBundle::STDERR));
    assert_eq!(text(&r.bundle, "sorted.txt"), "basalt\ngranite\nschist");
    let missing = container::debian::debian_tree(&["cairn-no-such-package"], &dir.join("none"));
    assert!(matches!(missing, Err(RunError::InvalidWorkload(m)) if m.contains("not installed")));
}

#[test]
fn the_sandbox_has_no_network_a_read_only_root_and_no_way_out_through_proc_or_links() {
    let (exec, id, dir) = executor("container-walls");
    let script = "ls /sys/class/net > /out/ifaces; \
                  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 1.1.1.1 80 > /out/page; echo $? > /out/wget; \
                  touch /bin/planted 2>/dev/null; echo $? > /out/root_write; \
                  echo x > /in/planted 2>/dev/null; echo $? > /out/in_write; \
                  cat /etc/host-shadow > /out/shadow 2>/dev/null; echo $? > /out/shadow_read; \
                  cat /proc/kcore > /dev/null 2>&1; head -c 1 /proc/kcore | wc -c > /out/kcore; \
                  echo b > /proc/sysrq-trigger 2>/dev/null; echo $? > /out/sysrq; \
                  ls /proc | grep -c '^[0-9]' > /out/pids";
    let r = exec.run(&sh(id, script)).unwrap();
    let b = &r.bundle;
    assert_eq!(text(b, "ifaces"), "lo", "only loopback");
    assert_ne!(text(b, "wget"), "0", "no route out");
    assert_ne!(text(b, "root_write"), "0", "the root is read-only");
    assert!(!dir.join("images").join(id.to_string()).join("rootfs/bin/planted").exists());
    assert_ne!(text(b, "in_write"), "0", "inputs are read-only");
    assert_ne!(text(b, "shadow_read"), "0", "an image's link to a host path resolves inside the image");
    assert_eq!(text(b, "kcore"), "0", "/proc/kcore is masked");
    assert_ne!(text(b, "sysrq"), "0", "/proc/sysrq-trigger is read-only");
    assert!(text(b, "pids").parse::<u32>().unwrap() <= 5, "its own process namespace: {}", text(b, "pids"));
    // A link left in /out is refused, never followed.
    match exec.run(&sh(id, "ln -s /etc/passwd /out/leak")) {
        Err(RunError::BadOutput(m)) => assert!(m.contains("leak"), "{m}"),
        other => panic!("a link in /out must be refused: {other:?}"),
    }
}

#[test]
fn memory_processes_output_and_time_are_capped() {
    let (exec, id, _dir) = executor("container-caps");
    // A memory hog is killed at its cap.
    let hog = exec.run(&sh(id, "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived")).unwrap();
    assert!(hog.bundle.exit().is_some_and(|e| e != "ok"), "{:?}", hog.bundle.exit());
    assert!(!text(&hog.bundle, OutputBundle::STDOUT).contains("survived"));
    // A fork bomb stops at the process cap, and the task ends.
    let bomb = exec.run(&sh(id, "i=0; while [ $i -lt 1000 ]; do sleep 5 & i=$((i+1)); done; echo forked"));
    match bomb {
        Ok(r) => assert!(!text(&r.bundle, OutputBundle::STDOUT).contains("forked"), "{:?}", r.bundle.exit()),
        Err(e) => assert!(matches!(e, RunError::WallTimeout(_)), "{e}"),
    }
    // Output past the limit cannot be written: /out is a tmpfs of the limit.
    let mut big = sh(id, "head -c 5000000 /dev/zero > /out/big; echo $? > /out/status");
    big.limits.output_bytes = 1 << 20;
    match exec.run(&big) {
        Ok(r) => {
            let written = r.bundle.files.get("big").map_or(0, Vec::len);
            assert!(written <= 1 << 20, "{written}");
            assert_ne!(text(&r.bundle, "status"), "0", "the write past the limit failed in the container");
        }
        Err(e) => assert!(matches!(e, RunError::OutputTooLarge(_)), "{e}"),
    }
    // A program that runs past the wall clock is killed, and nothing is left behind.
    let mut slow = sh(id, "sleep 60");
    slow.limits.wall_ms = 1_000;
    let started = std::time::Instant::now();
    assert!(matches!(exec.run(&slow), Err(RunError::WallTimeout(1_000))));
    assert!(started.elapsed().as_secs() < 10);
    let ok = exec.run(&sh(id, "echo still fine")).unwrap();
    assert_eq!(text(&ok.bundle, OutputBundle::STDOUT), "still fine");
}

#[test]
fn images_are_checked_before_use() {
    let (bytes, id) = busybox_image();
    let dir = scratch("container-images");
    let exec = ContainerExecutor::new(ContainerConfig::in_dir(&dir)).unwrap();
    // Bytes that do not hash to the announced id.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 2000;
    tampered[last] ^= 1;
    assert!(matches!(exec.prepare(&id, &tampered), Err(RunError::WorkloadMismatch { .. })));
    assert!(!exec.is_prepared(&id));
    // An entry that climbs out of the image, and a device node.
    for (name, kind) in [("../escape", tar::EntryType::Regular), ("dev/sda", tar::EntryType::Block)] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let evil = b.into_inner().unwrap();
        let evil_id = ContentId::of(&evil);
        match exec.prepare(&evil_id, &evil) {
            Err(RunError::InvalidWorkload(m)) => assert!(m.contains("image"), "{m}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(!dir.join("escape").exists() && !dir.join("images/escape").exists());
    }
    // Not a tar at all.
    let junk = b"not an image".to_vec();
    assert!(exec.prepare(&ContentId::of(&junk), &junk).is_err());
    exec.prepare(&id, &bytes).unwrap();
    assert!(exec.is_prepared(&id));
}

/// This machine's first non-loopback IPv4 address, if it has one.
fn host_address() -> Option<String> {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" lo "))
        .find_map(|l| l.split_whitespace().nth(3)?.split('/').next().map(str::to_string))
}

#[test]
fn outbound_network_only_when_asked_and_never_to_the_providers_loopback() {
    use std::io::{Read as _, Write as _};
    assert!(container::egress::available(), "slirp4netns is installed with the container tools");
    let (exec, id, _dir) = executor("egress");
    // A server on the host, on every address: it answers "pong".
    let server = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in server.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\npong");
        }
    });
    let fetch = |addr: &str, network: bool| {
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {port} > /out/got; if grep -q pong /out/got; then echo reached; else echo blocked; fi"
        );
        let run = TaskRun { network, ..sh(id, &script) };
        text(&exec.run(&run).unwrap().bundle, OutputBundle::STDOUT)
    };
    if let Some(host) = host_address() {
        assert_eq!(fetch(&host, false).trim(), "blocked", "no network unless the job asks");
        assert_eq!(fetch(&host, true).trim(), "reached", "network: true reaches out");
    }
    // The provider's own loopback services stay out of reach, through the NAT's host alias too.
    assert_eq!(fetch("10.0.2.2", true).trim(), "blocked");
    assert_eq!(fetch("127.0.0.1", true).trim(), "blocked");
    let leftover = Command::new("ip").args(["netns", "list"]).output().unwrap().stdout;
    assert!(!String::from_utf8_lossy(&leftover).contains("cn"), "the job's namespace is removed");
}
