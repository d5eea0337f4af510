//! `scaleot serve`: the model owner's way to hand out the page and an emulator on localhost (or
//! a LAN). Static files only: the page's build (`dist/`), `emulator.json` and
//! `emulator.safetensors` (without `--emulator`, the page alone: users pick emulator files). Every response carries the page's Content-Security-Policy, which
//! also governs the worker (a worker takes its policy from its own response, not the page's
//! meta tag). Nothing here accepts uploads: anything but GET/HEAD is refused and logged.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use tiny_http::{Header, Method, Request, Response, Server};

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
    let server = Server::http((a.host.as_str(), a.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", a.host, a.port))?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("no IP address to listen on")?;
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
    let routes = std::sync::Arc::new(routes);
    for request in server.incoming_requests() {
        let routes = routes.clone();
        // One thread per request: a slow emulator download must not block the page's assets.
        std::thread::spawn(move || routes.answer(request));
    }
    Ok(())
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
    fn answer(&self, request: Request) {
        let method = request.method().clone();
        let url = request.url().to_string();
        let path = url.split(['?', '#']).next().unwrap_or("/").to_string();
        let (status, file) = if !matches!(method, Method::Get | Method::Head) {
            (405, None)
        } else {
            match self.resolve(&path) {
                Some(p) => match File::open(&p) {
                    Ok(f) => (200, Some((f, p))),
                    Err(_) => (404, None),
                },
                None => (404, None),
            }
        };
        // Request paths are the client's bytes: escaped, so they cannot write to the terminal.
        eprintln!("{method} {} -> {status}", url.escape_debug());
        let result = match file {
            Some((f, p)) => {
                let len = f.metadata().map(|m| m.len() as usize).ok();
                let resp = Response::new(200.into(), headers(content_type(&p)), f, len, None);
                request.respond(resp)
            }
            None => {
                let body = if status == 405 {
                    "this server only hands out the page and the emulator; it accepts no data\n"
                } else {
                    "not found\n"
                };
                let resp = Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header("Content-Type", "text/plain; charset=utf-8"));
                let resp = headers("").into_iter().fold(resp, |r, h| r.with_header(h));
                request.respond(resp)
            }
        };
        if let Err(e) = result {
            eprintln!("{}: answering failed: {e}", url.escape_debug());
        }
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

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// The headers of every response; `content_type` empty leaves it to the caller.
fn headers(content_type: &str) -> Vec<Header> {
    let mut h = vec![
        header("Content-Security-Policy", CSP),
        header("X-Content-Type-Options", "nosniff"),
        header("Referrer-Policy", "no-referrer"),
        header("Cross-Origin-Resource-Policy", "same-origin"),
        header("Cache-Control", "no-cache"),
    ];
    if !content_type.is_empty() {
        h.push(header("Content-Type", content_type));
    }
    h
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
}
