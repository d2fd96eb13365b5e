//! HTTP with switchyard's limits, for every peer (backends, the schema registry, Port's
//! API): a body is read up to a cap, never more.

/// Largest response body read; the rest is discarded.
pub const MAX_BODY: usize = 1024 * 1024;

/// Read a response body, at most `max` bytes: a peer cannot make switchyard buffer
/// more. Past `max` the body is cut (and the caller sees a truncated document).
pub async fn read_capped(mut response: reqwest::Response, max: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// Largest certificate file read (a CA bundle is a few hundred KiB).
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// CA certificates to trust on top of the system store: each path is a PEM file, or a
/// directory whose `*.crt` and `*.pem` files (and those one level down, as
/// `/usr/share/ca-certificates/mozilla/`) are read. `SSL_CERT_FILE` is added too (the
/// system store honours it already; reading it here makes the rule explicit). Missing
/// paths are skipped; an unreadable certificate is a warning.
pub fn extra_roots(paths: &[String]) -> Vec<reqwest::Certificate> {
    let mut files = Vec::new();
    let env_file = std::env::var("SSL_CERT_FILE")
        .ok()
        .filter(|f| !f.is_empty());
    for path in paths.iter().map(String::as_str).chain(env_file.as_deref()) {
        collect_pem_files(std::path::Path::new(path), 1, &mut files);
    }
    let mut roots = Vec::new();
    for file in files {
        let read = std::fs::metadata(&file)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if m.len() > MAX_CA_FILE {
                    Err(format!("larger than {MAX_CA_FILE} bytes"))
                } else {
                    std::fs::read(&file).map_err(|e| e.to_string())
                }
            })
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string()));
        match read {
            Ok(certs) => roots.extend(certs),
            Err(e) => tracing::warn!(file = %file.display(), error = %e,
                "CA certificate not read; it is not trusted"),
        }
    }
    if !roots.is_empty() {
        tracing::debug!(certificates = roots.len(), "extra CA certificates trusted");
    }
    roots
}

fn collect_pem_files(path: &std::path::Path, depth: u8, out: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        out.push(path.to_owned());
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let mut found: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    found.sort();
    for p in found {
        if p.is_dir() && depth > 0 {
            collect_pem_files(&p, depth - 1, out);
        } else if p.is_file()
            && p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("crt") || x.eq_ignore_ascii_case("pem"))
        {
            out.push(p);
        }
    }
}
