//! `scaleot serve`: the model owner's way to hand out the page and an emulator on localhost (or
//! a LAN). Static files only: the page's build (`dist/`), `emulator.json` and
//! `emulator.safetensors` (without `--emulator`, the page alone: users pick emulator files). Every response carries the page's Content-Security-Policy, which
//! also governs the worker (a worker takes its policy from its own response, not the page's
//! meta tag). Nothing here accepts uploads: anything but GET/HEAD is refused and logged.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::model_files::weights_beside;

/// The page's policy: its own origin only; no inline script; wasm compilation allowed.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The emulator manifest to hand out (its .safetensors beside it). Without it the page asks
    /// its users for the emulator files.
    #[arg(long)]
    emulator: Option<PathBuf>,
    /// The built page (`trunk build --release` writes it to dist/).
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// Address to listen on; 127.0.0.1 keeps it on this machine, 0.0.0.0 opens it to the LAN.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    if !a.dist.join("index.html").is_file() {
        bail!(
            "{} has no index.html: build the page first (`trunk build --release`, see docs/design.md) or pass --dist",
            a.dist.display()
        );
    }
    let emulator = a.emulator.as_deref().map(checked_emulator).transpose()?;
    let listener = TcpListener::bind((a.host.as_str(), a.port))
        .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
    let addr = listener.local_addr().context("no address to listen on")?;
    // The first stdout line is machine-readable (tests read the port from it).
    println!("serving http://{addr}/");
    match &emulator {
        Some((manifest, _, what)) => eprintln!(
            "page from {}, emulator {} ({what}); Ctrl-C stops",
            a.dist.display(),
            manifest.display()
        ),
        None => eprintln!(
            "page from {}, no emulator (users choose the files); Ctrl-C stops",
            a.dist.display()
        ),
    }
    let routes = Routes {
        dist: a.dist,
        emulator: emulator.map(|(m, w, _)| (m, w)),
    };
    run(listener, Arc::new(routes), Limits::default());
    Ok(())
}

/// What one client may take of the server: connections are answered by a fixed pool of
/// threads (a slow download must not block the page's assets, and a flood must not spawn a
/// thread each), waiting connections queue up to a bound and beyond it get 503 at once, a
/// request's head must arrive within `head_timeout` (a client that trickles it in is cut off),
/// and a stalled read or write ends the connection after `io_timeout`.
#[derive(Clone, Copy)]
struct Limits {
    workers: usize,
    queue: usize,
    head_timeout: Duration,
    io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            workers: 32,
            queue: 512,
            head_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// Accepts connections forever, handing each to the worker pool (one request per connection).
fn run(listener: TcpListener, routes: Arc<Routes>, limits: Limits) {
    let (queue, waiting) = mpsc::sync_channel::<TcpStream>(limits.queue);
    let waiting = Arc::new(Mutex::new(waiting));
    for _ in 0..limits.workers {
        let (routes, waiting) = (routes.clone(), waiting.clone());
        std::thread::spawn(move || {
            loop {
                // The lock is held only while waiting for the next connection.
                let next = waiting.lock().map(|w| w.recv());
                let Ok(Ok(stream)) = next else { return };
                routes.answer(stream, limits);
            }
        });
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(TrySendError::Full(mut stream)) = queue.try_send(stream) {
            // A few hundred bytes fit the socket's buffer; the timeout only guards the
            // accepting thread against a peer that never reads.
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = Response::status(503).send(&mut stream);
        }
    }
}

/// The manifest, its weights and a summary, after checking that they belong together.
fn checked_emulator(manifest: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let weights = weights_beside(manifest);
    for (p, what) in [
        (manifest, "emulator manifest"),
        (weights.as_path(), "emulator weights"),
    ] {
        if !p.is_file() {
            bail!(
                "the {what} {} does not exist: pass the .json that `scaleot emulator` wrote",
                p.display()
            );
        }
    }
    // Refuse to hand out a broken bundle: the page would only fail later.
    let json = std::fs::read_to_string(manifest).context("reading the emulator manifest")?;
    let m = scaleot::emulator::Emulator::read_manifest(&json)?;
    let size = std::fs::metadata(&weights)?.len();
    if size != m.weights_bytes {
        bail!(
            "{} has {size} bytes but its manifest says {}: rebuild the emulator",
            weights.display(),
            m.weights_bytes
        );
    }
    // Once at start, so the page never downloads weights it would then refuse.
    let file = File::open(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let actual =
        scaleot::sha256_hex_of(file).with_context(|| format!("reading {}", weights.display()))?;
    if actual != m.weights_sha256 {
        bail!(
            "{} is corrupted (sha256 {actual}, its manifest says {}): rebuild the emulator or copy it again",
            weights.display(),
            m.weights_sha256
        );
    }
    let what = format!("{:.1} MiB, {}", size as f64 / 1048576.0, m.method);
    Ok((manifest.to_path_buf(), weights, what))
}

struct Routes {
    dist: PathBuf,
    /// (manifest, weights) served as /emulator.json and /emulator.safetensors.
    emulator: Option<(PathBuf, PathBuf)>,
}

impl Routes {
    /// Reads one request from `stream` and answers it; a client that sends nothing usable in
    /// time is dropped.
    fn answer(&self, mut stream: TcpStream, limits: Limits) {
        let _ = stream.set_write_timeout(Some(limits.io_timeout));
        let response = match read_head(&mut stream, limits.head_timeout) {
            Ok(head) => self.respond(&head),
            Err(HeadError::Closed) => return,
            Err(HeadError::TooLarge) => Response::status(431),
            Err(HeadError::Malformed) => Response::status(400),
            Err(HeadError::TimedOut) => Response::status(408),
        };
        let _ = stream.set_read_timeout(Some(limits.io_timeout));
        if let Err(e) = response.send(&mut stream) {
            eprintln!("answering failed: {e}");
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    fn respond(&self, head: &Head) -> Response {
        let mut response = if !matches!(head.method.as_str(), "GET" | "HEAD") {
            Response::status(405)
        } else {
            match self
                .resolve(&head.path)
                .and_then(|p| File::open(&p).ok().map(|f| (f, p)))
            {
                Some((file, path)) => Response::file(file, &path, head),
                None => Response::status(404),
            }
        };
        response.head_only = head.head_only;
        eprintln!("{}", log_line(head, response.status));
        response
    }

    /// The file for a URL path; None for anything outside the served set.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        match (path, &self.emulator) {
            ("/" | "/index.html", _) => return Some(self.dist.join("index.html")),
            ("/emulator.json", e) => return e.as_ref().map(|(m, _)| m.clone()),
            ("/emulator.safetensors", e) => return e.as_ref().map(|(_, w)| w.clone()),
            _ => {}
        }
        let rel = Path::new(path.trim_start_matches('/'));
        // Only plain names below dist/: no `..`, no absolute paths, no dotfiles.
        let plain = |c: Component| match c {
            Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
            _ => false,
        };
        if !rel.components().all(plain) {
            return None;
        }
        // A symlink may point anywhere: serve only what resolves inside dist/.
        let p = self.dist.join(rel).canonicalize().ok()?;
        let root = self.dist.canonicalize().ok()?;
        (p.starts_with(&root) && p.is_file()).then_some(p)
    }
}

/// The part of a request the server looks at.
struct Head {
    method: String,
    /// The request target as sent (logged escaped).
    target: String,
    /// The target's path, without query or fragment.
    path: String,
    range: Option<String>,
    head_only: bool,
}

enum HeadError {
    /// The client went away before sending a request.
    Closed,
    TimedOut,
    TooLarge,
    Malformed,
}

/// The log line of a request. Method and path are the client's bytes: escaped, so that they
/// cannot move the cursor, recolour or clear the owner's terminal.
fn log_line(head: &Head, status: u16) -> String {
    format!(
        "{} {} -> {status}",
        head.method.escape_debug(),
        head.target.escape_debug()
    )
}

/// Longest request head accepted (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Reads a request head within `timeout` in all (not per read: a client trickling one byte at
/// a time is cut off too). A body, if any, is not read: nothing here accepts one.
fn read_head(stream: &mut TcpStream, timeout: Duration) -> Result<Head, HeadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(HeadError::TimedOut);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Closed),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let (Some(method), Some(target)) = (request.method, request.path) else {
                    return Err(HeadError::Malformed);
                };
                let range = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("range"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
                return Ok(Head {
                    head_only: method == "HEAD",
                    method: method.to_string(),
                    target: target.to_string(),
                    path,
                    range,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::TooLarge);
            }
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// A response: a short text or (part of) a file.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
    /// A HEAD request: the headers only.
    head_only: bool,
}

enum Body {
    Text(&'static str),
    /// `len` bytes of the file from `start`.
    File {
        file: File,
        start: u64,
        len: u64,
    },
}

impl Response {
    /// A status with a one-line explanation.
    fn status(status: u16) -> Self {
        let text = match status {
            404 => "not found\n",
            405 => "this server only hands out the page and the emulator; it accepts no data\n",
            408 => "the request did not arrive in time\n",
            431 => "the request's headers are too large\n",
            503 => "busy: try again in a moment\n",
            _ => "bad request\n",
        };
        let mut headers = vec![("Content-Type", "text/plain; charset=utf-8".to_string())];
        if status == 503 {
            headers.push(("Retry-After", "1".into()));
        }
        Self {
            status,
            headers,
            body: Body::Text(text),
            head_only: false,
        }
    }

    /// A file, or the byte range of it the client asked for (a browser resuming a download);
    /// a range that cannot be served gets 416 with the file's length.
    fn file(file: File, path: &Path, head: &Head) -> Self {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut headers = vec![
            ("Content-Type", content_type(path).to_string()),
            ("Accept-Ranges", "bytes".to_string()),
        ];
        let (status, start, len) = match head.range.as_deref().map(|r| byte_range(r, size)) {
            None | Some(Range::Ignored) => (200, 0, size),
            Some(Range::Bytes(first, last)) => {
                headers.push(("Content-Range", format!("bytes {first}-{last}/{size}")));
                (206, first, last - first + 1)
            }
            Some(Range::Unsatisfiable) => {
                headers.push(("Content-Range", format!("bytes */{size}")));
                let mut r = Self::status(416);
                r.body = Body::Text("");
                r.headers.extend(headers);
                return r;
            }
        };
        Self {
            status,
            headers,
            body: Body::File { file, start, len },
            head_only: false,
        }
    }

    fn send(self, out: &mut impl Write) -> std::io::Result<()> {
        let len = match &self.body {
            Body::Text(t) => t.len() as u64,
            Body::File { len, .. } => *len,
        };
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        let common = COMMON_HEADERS.iter().map(|(k, v)| (*k, v.to_string()));
        for (name, value) in common.chain(self.headers) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {len}\r\nConnection: close\r\n\r\n"
        ));
        out.write_all(head.as_bytes())?;
        if self.head_only {
            return out.flush();
        }
        match self.body {
            Body::Text(t) => out.write_all(t.as_bytes())?,
            Body::File {
                mut file,
                start,
                len,
            } => {
                file.seek(SeekFrom::Start(start))?;
                let sent = std::io::copy(&mut file.take(len), out)?;
                if sent != len {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the file shrank while being sent",
                    ));
                }
            }
        }
        out.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The headers of every response.
const COMMON_HEADERS: [(&str, &str); 5] = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-cache"),
];

#[derive(Debug, PartialEq)]
enum Range {
    /// First and last byte, inclusive.
    Bytes(u64, u64),
    Unsatisfiable,
    /// Not a single byte range (several ranges, other units, malformed): the whole file.
    Ignored,
}

/// A `Range` header's single byte range over a file of `size` bytes (RFC 9110 §14.1.2).
fn byte_range(header: &str, size: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Range::Ignored;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), number(first), number(last)) {
        // `bytes=-N`: the last N bytes.
        (true, _, Some(n)) if n > 0 && size > 0 => Range::Bytes(size.saturating_sub(n), size - 1),
        (true, _, Some(_)) => Range::Unsatisfiable,
        (false, Some(a), None) if last.trim().is_empty() && a < size => Range::Bytes(a, size - 1),
        (false, Some(a), Some(b)) if a <= b && a < size => Range::Bytes(a, b.min(size - 1)),
        (false, Some(a), Some(b)) if a <= b => Range::Unsatisfiable,
        (false, Some(_), None) if last.trim().is_empty() => Range::Unsatisfiable,
        _ => Range::Ignored,
    }
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// Only plain files inside dist/ are served: no dotfiles, nothing a symlink points to
    /// outside it, no `..`.
    #[test]
    fn only_plain_files_inside_dist_are_served() {
        let dist = std::env::temp_dir().join(format!("scaleot-serve-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dist);
        std::fs::create_dir_all(dist.join("assets")).unwrap();
        std::fs::write(dist.join("index.html"), "page").unwrap();
        std::fs::write(dist.join("assets/app.js"), "js").unwrap();
        std::fs::write(dist.join(".env"), "secret").unwrap();
        let outside = dist.with_extension("outside");
        std::fs::write(&outside, "not served").unwrap();
        std::os::unix::fs::symlink(&outside, dist.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(dist.join("index.html"), dist.join("inside.html")).unwrap();
        let routes = Routes {
            dist: dist.clone(),
            emulator: None,
        };
        assert!(routes.resolve("/").is_some());
        assert!(routes.resolve("/assets/app.js").is_some());
        assert!(routes.resolve("/inside.html").is_some());
        for refused in [
            "/.env",
            "/link.txt",
            "/../x",
            "/assets/../.env",
            "/missing.js",
        ] {
            assert!(routes.resolve(refused).is_none(), "{refused} was served");
        }
        std::fs::remove_dir_all(&dist).unwrap();
        std::fs::remove_file(&outside).unwrap();
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        let cases = [
            ("bytes=0-9", Range::Bytes(0, 9)),
            ("bytes=10-", Range::Bytes(10, 99)),
            ("bytes=-10", Range::Bytes(90, 99)),
            ("bytes=-1000", Range::Bytes(0, 99)),
            ("bytes=50-1000", Range::Bytes(50, 99)),
            ("bytes=100-", Range::Unsatisfiable),
            ("bytes=100-200", Range::Unsatisfiable),
            ("bytes=-0", Range::Unsatisfiable),
            ("bytes=9-0", Range::Ignored),
            ("bytes=0-1,5-6", Range::Ignored),
            ("items=0-1", Range::Ignored),
            ("bytes=x-1", Range::Ignored),
            ("bytes=-", Range::Ignored),
        ];
        for (header, want) in cases {
            assert_eq!(byte_range(header, 100), want, "{header}");
        }
        assert_eq!(byte_range("bytes=0-", 0), Range::Unsatisfiable);
    }

    #[test]
    fn request_lines_are_logged_escaped() {
        let head = Head {
            method: "GET".into(),
            target: "/\u{1b}[2J\u{7}x\r\n".into(),
            path: String::new(),
            range: None,
            head_only: false,
        };
        let line = log_line(&head, 404);
        assert_eq!(line, "GET /\\u{1b}[2J\\u{7}x\\r\\n -> 404");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    /// One request over a fresh connection; (status, headers, body).
    fn get(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8(all[..split].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head, all[split + 4..].to_vec())
    }

    /// Under 200 clients at once, with 40 more connections trickling their headers in and
    /// never finishing, every request is answered correctly and the trickling ones are cut
    /// off at the head timeout (loopback only; a fixed number of requests; ends by itself).
    #[test]
    fn stays_responsive_under_200_clients_and_slow_connections() {
        let dist = std::env::temp_dir().join(format!("scaleot-load-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dist);
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::write(dist.join("index.html"), "<!doctype html>page").unwrap();
        let weights: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(dist.join("weights.bin"), &weights).unwrap();
        let manifest = dist.join("index.html");
        let routes = Routes {
            dist: dist.clone(),
            emulator: Some((manifest, dist.join("weights.bin"))),
        };
        let limits = Limits {
            workers: 16,
            queue: 512,
            head_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(30),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || run(listener, Arc::new(routes), limits));

        let started = Instant::now();
        let slow: Vec<TcpStream> = (0..40)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
                s
            })
            .collect();
        let weights = Arc::new(weights);
        let clients: Vec<_> = (0..200)
            .map(|i| {
                let weights = weights.clone();
                std::thread::spawn(move || {
                    let (status, _, body) = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                    assert_eq!(
                        (status, body.as_slice()),
                        (200, &b"<!doctype html>page"[..])
                    );
                    let from = i * 4099;
                    let range = format!(
                        "GET /emulator.safetensors HTTP/1.1\r\nRange: bytes={from}-{}\r\n\r\n",
                        from + 999
                    );
                    let (status, head, body) = get(addr, &range);
                    assert_eq!(status, 206, "{head}");
                    assert!(
                        head.contains(&format!(
                            "Content-Range: bytes {from}-{}/{}",
                            from + 999,
                            1 << 20
                        )),
                        "{head}"
                    );
                    assert_eq!(body, weights[from..from + 1000]);
                    if i % 20 == 0 {
                        let (status, _, body) =
                            get(addr, "GET /emulator.safetensors HTTP/1.1\r\n\r\n");
                        assert_eq!((status, body.len()), (200, 1 << 20));
                        assert!(body == *weights);
                    }
                    let (status, _, body) = get(addr, "HEAD /missing HTTP/1.1\r\n\r\n");
                    assert_eq!((status, body.len()), (404, 0));
                })
            })
            .collect();
        for c in clients {
            c.join().expect("a client failed");
        }
        // 660 requests while 40 connections held workers: all answered, well before the
        // trickling connections could have been cut off many times over.
        let served_in = started.elapsed();
        for mut s in slow {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "took {served_in:?}"
        );
        let (status, head, _) = get(
            addr,
            "GET /emulator.safetensors HTTP/1.1\r\nRange: bytes=2000000-\r\n\r\n",
        );
        assert_eq!(status, 416);
        assert!(
            head.contains(&format!("Content-Range: bytes */{}", 1 << 20)),
            "{head}"
        );
        let (status, _, _) = get(addr, "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(status, 405);
        std::fs::remove_dir_all(&dist).unwrap();
    }
}
