//! WASM services: one WASI run per HTTP request, as CGI. The request's method, path and query
//! are `REQUEST_METHOD`, `PATH_INFO` and `QUERY_STRING` (with `CONTENT_TYPE`,
//! `CONTENT_LENGTH`, `SERVER_PROTOCOL` and each header as `HTTP_<NAME>`), its body is standard
//! input; the module writes CGI headers (`Status: 404 Not Found`, `Content-Type: …`), a blank
//! line and the body to standard output. Each run has the request's own fuel, memory and
//! wall-clock caps and sees the service's inputs read-only at `/in`; there is no network, and
//! nothing persists between requests. Services are not re-executed by auditors, so the module
//! sees the real clock and real randomness.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_types::ContentId;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::{Host, Stop, WasmExecutor, rt, store_limits};
use crate::{Result, RunError};

/// Largest response a request may write.
pub(crate) const MAX_RESPONSE: usize = 16 << 20;
/// Largest header section of a response.
const MAX_HEADERS: usize = 16 * 1024;

/// One HTTP request for a WASM service.
#[derive(Debug)]
pub struct CgiRequest<'a> {
    /// The service's module (prepared).
    pub module: ContentId,
    /// `GET`, `POST`…
    pub method: &'a str,
    /// The path below the service's root, starting with `/`.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
    /// Request headers.
    pub headers: &'a [(String, String)],
    /// Request body.
    pub body: &'a [u8],
    /// The service's arguments and environment.
    pub args: &'a [String],
    /// See `args`.
    pub env: &'a BTreeMap<String, String>,
    /// The service's inputs, seen read-only at `/in`.
    pub inputs: &'a Path,
    /// Caps per request.
    pub memory_mb: u64,
    /// See `memory_mb`.
    pub fuel: u64,
    /// See `memory_mb`.
    pub wall_ms: u64,
}

/// The module's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers (not `Status`).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

impl CgiReply {
    fn error(status: u16, message: &str) -> Self {
        CgiReply {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!("{message}\n").into_bytes(),
        }
    }
}

/// Split CGI output into status, headers and body. Output without a header section is a
/// 502: the module broke the protocol.
pub(crate) fn parse(out: &[u8]) -> CgiReply {
    let (head, body) =
        match find(out, b"\r\n\r\n").map(|i| (i, 4)).or_else(|| find(out, b"\n\n").map(|i| (i, 2))) {
            Some((i, n)) if i <= MAX_HEADERS => (&out[..i], &out[i.saturating_add(n)..]),
            _ => return CgiReply::error(502, "the service's answer has no CGI header section"),
        };
    let mut status = 200;
    let mut headers = Vec::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((k, v)) = line.split_once(':') else {
            return CgiReply::error(502, "the service's answer has a malformed CGI header");
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            match v.split_whitespace().next().and_then(|c| c.parse::<u16>().ok()) {
                Some(c) if (100..600).contains(&c) => status = c,
                _ => return CgiReply::error(502, "the service's answer has a malformed Status header"),
            }
        } else if !k.is_empty() {
            headers.push((k.to_string(), v.to_string()));
        }
    }
    CgiReply { status, headers, body: body.to_vec() }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl WasmExecutor {
    /// Answer one HTTP request with a prepared module (see the module docs).
    ///
    /// # Errors
    /// [`RunError::NotPrepared`] without the module; [`RunError::Runtime`] when the sandbox
    /// cannot be made. A module that traps, runs out of fuel or time, or breaks the protocol
    /// gets a 5xx reply, not an error.
    pub fn serve(&self, r: &CgiRequest<'_>) -> Result<CgiReply> {
        let module = self.module(&r.module).ok_or(RunError::NotPrepared(r.module))?;
        let stdout = MemoryOutputPipe::new(MAX_RESPONSE.saturating_add(MAX_HEADERS));
        let stderr = MemoryOutputPipe::new(4096);
        let mut b = WasiCtxBuilder::new();
        b.arg("service");
        for a in r.args {
            b.arg(a);
        }
        for (k, v) in r.env {
            b.env(k, v);
        }
        let cgi = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_METHOD", r.method),
            ("PATH_INFO", r.path),
            ("SCRIPT_NAME", ""),
            ("QUERY_STRING", r.query),
        ];
        for (k, v) in cgi {
            b.env(k, v);
        }
        b.env("CONTENT_LENGTH", r.body.len().to_string());
        for (k, v) in r.headers {
            let name: String = k
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                .collect();
            if name == "CONTENT_TYPE" {
                b.env("CONTENT_TYPE", v);
            } else {
                b.env(format!("HTTP_{name}"), v);
            }
        }
        b.stdin(MemoryInputPipe::new(r.body.to_vec()));
        b.stdout(stdout.clone()).stderr(stderr);
        b.preopened_dir(r.inputs, "/in", FsPerms::ReadOnly).map_err(rt)?;
        let host = Host {
            wasi: b.build_p1(),
            limits: store_limits(r.memory_mb),
            deadline: Instant::now() + Duration::from_millis(r.wall_ms),
            out_dir: r.inputs.to_path_buf(),
            out_limit: u64::MAX,
            stopped: None,
        };
        let mut store = self.store(host, r.fuel)?;
        let linker = self.linker()?;
        let ran = linker
            .instantiate(&mut store, &module)
            .and_then(|i| i.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));
        let failed = match ran {
            Ok(()) => None,
            Err(e) if e.downcast_ref::<I32Exit>().is_some_and(|c| c.0 == 0) => None,
            Err(_) if store.data().stopped == Some(Stop::Wall) => {
                Some((504, format!("the service took over {} ms", r.wall_ms)))
            }
            Err(e) if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::OutOfFuel)) => {
                Some((503, "the request ran out of fuel".to_string()))
            }
            Err(e) => Some((502, format!("the service failed: {e:#}"))),
        };
        drop(store);
        Ok(match failed {
            Some((status, message)) => CgiReply::error(status, &message),
            None => parse(&stdout.contents()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_output_splits_into_status_headers_and_body() {
        let r = parse(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        assert_eq!(r.headers, vec![("Content-Type".to_string(), "text/plain".to_string())]);
        let r = parse(b"Content-Type: text/html\n\n<h1>hi</h1>\n");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"<h1>hi</h1>\n"[..]));
        assert_eq!(parse(b"just a body").status, 502);
        assert_eq!(parse(b"Status: banana\n\nx").status, 502);
        assert_eq!(parse(b"no colon here\n\nx").status, 502);
    }
}
