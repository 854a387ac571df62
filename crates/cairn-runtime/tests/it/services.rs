//! Services in the container sandbox: a real HTTP server (busybox httpd) reachable from the
//! host over its own link, cut off from other services, capped, and gone without a trace when
//! stopped.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_runtime::container::service::{ServiceHost, ServiceRun};
use cairn_runtime::{ContainerConfig, ContainerExecutor, Executor as _};

use crate::container::busybox_image;
use crate::scratch;

pub(crate) fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: svc\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Whether `addr` still answers `path` with `needle`. (A bare connect proves nothing here: the
/// machine's own network may accept any outbound connection once the service's link is gone.)
fn serves(addr: SocketAddr, path: &str, needle: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: svc\r\n\r\n").is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).contains(needle)
}

/// Whether the host still has a link leading to `addr` (the service's veth pair), waiting up to
/// two seconds for the kernel to finish removing a deleted namespace's link.
fn linked(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let out = std::process::Command::new("ip").args(["-o", "addr"]).output().unwrap().stdout;
        let SocketAddr::V4(v4) = addr else { return false };
        let o = v4.ip().octets();
        let host_side = format!("inet {}.{}.{}.{}/30", o[0], o[1], o[2], o[3] - 1);
        if !String::from_utf8_lossy(&out).contains(&host_side) || Instant::now() > deadline {
            return String::from_utf8_lossy(&out).contains(&host_side);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The network namespaces of the host whose directory is `dir` (by their names: other tests
/// running meanwhile add and remove their own, which also renumbers the ids `ip` shows).
fn netns_list(dir: &std::path::Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let h = cairn_types::hash_domain("cairn service host tag v1", &[dir.to_string_lossy().as_bytes()]);
    let prefix: String =
        std::iter::once("cs".to_string()).chain(h.iter().take(3).map(|b| format!("{b:02x}"))).collect();
    String::from_utf8_lossy(
        &std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout,
    )
    .lines()
    .filter_map(|l| l.split_whitespace().next())
    .filter(|n| n.starts_with(&prefix))
    .map(str::to_string)
    .collect()
}

#[test]
fn a_service_serves_http_over_its_own_link_and_nothing_else_reaches_out() {
    let (bytes, image) = busybox_image();
    let dir = scratch("services");
    let exec = Arc::new(ContainerExecutor::new(ContainerConfig::in_dir(dir.join("containers"))).unwrap());
    exec.prepare(&image, &bytes).unwrap();
    let host = ServiceHost::new(exec, dir.join("services")).unwrap();
    let page = dir.join("index.html");
    std::fs::write(&page, "<h1>hello from a lease</h1>\n").unwrap();
    let run = |name: &str, args: &[&str]| ServiceRun {
        name: name.into(),
        image,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        inputs: vec![("index.html".into(), page.clone())],
        port: 8080,
        memory_mb: 64,
        cpu_millis: 500,
        network: false,
        volume: None,
    };
    let started = Instant::now();
    let web = host.start(&run("web", &["/bin/httpd", "-f", "-p", "8080", "-h", "/in"])).unwrap();
    let start_ms = started.elapsed().as_millis();
    assert!(start_ms < 3_000, "a busybox service listens within the 3 s start target, took {start_ms} ms");
    let reply = get(web, "/index.html");
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("hello from a lease"), "{reply}");
    assert_eq!(host.addr("web"), Some(web));

    // A second service tries the first one and the outside world, then serves what it found.
    // (busybox's static wget cannot run in a bare image; nc speaks HTTP just as well, and the
    // outbound-network container test shows it reaching what it may.)
    let probe = format!(
        "for t in '{} 8080' '1.1.1.1 80'; do if printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $t | grep -q hello; then echo reached $t; else echo blocked $t; fi; done > /tmp/net.txt; exec httpd -f -p 8080 -h /tmp",
        web.ip()
    );
    let snoop = host.start(&run("snoop", &["/bin/sh", "-c", &probe])).unwrap();
    let net = get(snoop, "/net.txt");
    assert!(
        net.contains(&format!("blocked {} 8080", web.ip())) && net.contains("blocked 1.1.1.1 80"),
        "{net}"
    );
    assert!(!net.contains("reached"), "{net}");

    // A service that never listens fails to start with its own words, and leaves nothing.
    let before = netns_list(&dir.join("services"));
    let err = host.start(&run("mute", &["/bin/sh", "-c", "echo no port for you >&2; exit 3"])).unwrap_err();
    assert!(err.to_string().contains("no port for you"), "{err}");
    assert_eq!(netns_list(&dir.join("services")), before);
    assert!(host.addr("mute").is_none());

    // Stopping removes the container, the namespace and the link.
    let names_before = netns_list(&dir.join("services")).len();
    assert_eq!(names_before, 2, "web and snoop");
    assert!(linked(web) && linked(snoop));
    host.stop("web");
    assert!(!serves(web, "/index.html", "hello from a lease"));
    assert!(!linked(web), "the stopped service's link is gone");
    assert_eq!(netns_list(&dir.join("services")).len(), names_before - 1);
    assert!(serves(snoop, "/net.txt", "blocked"), "the other service still serves");
    drop(host);
    assert!(!serves(snoop, "/net.txt", "blocked"));
    assert!(!linked(snoop));
}
