//! A small HTTP app as a Cairn WASM service. Each request runs this program once (CGI over
//! WASI): the method, path and query arrive in `REQUEST_METHOD`, `PATH_INFO` and
//! `QUERY_STRING`, headers as `HTTP_*`, the body on standard input; the response is written to
//! standard output as CGI headers (`Status:`, `Content-Type:`), a blank line, then the body.
//!
//! Routes: `/` a page listing the files under `/in`; `/health` `ok`; `/echo` the request body
//! back; `/work?n=N` N steps of a xorshift generator (work per request, capped by its fuel);
//! anything else 404.

use std::io::{Read as _, Write as _};

fn respond(status: &str, kind: &str, body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Status: {status}\r\nContent-Type: {kind}\r\n\r\n");
    let _ = out.write_all(body);
}

fn main() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let (method, path, query) = (var("REQUEST_METHOD"), var("PATH_INFO"), var("QUERY_STRING"));
    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => respond("200 OK", "text/plain", b"ok\n"),
        ("GET", "/") => {
            let mut names: Vec<String> = std::fs::read_dir("/in")
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            names.sort();
            let agent = var("HTTP_USER_AGENT");
            let page = format!(
                "<!doctype html>\n<h1>Hello from a Cairn WASM service</h1>\n<p>Inputs: {}</p>\n<p>Your client: {}</p>\n",
                names.join(", "),
                agent.replace('<', "&lt;")
            );
            respond("200 OK", "text/html", page.as_bytes());
        }
        ("POST", "/echo") => {
            let mut body = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut body);
            respond("200 OK", "application/octet-stream", &body);
        }
        ("GET", "/work") => {
            let n: u64 = query.strip_prefix("n=").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut x: u64 = 88_172_645_463_325_252;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            respond("200 OK", "text/plain", format!("{x}\n").as_bytes());
        }
        _ => respond("404 Not Found", "text/plain", format!("no route for {method} {path}\n").as_bytes()),
    }
}
