//! The secret store: scoped template secrets, reloading, and redaction by value.
//!
//! - Each `[secrets]` entry says where it may go: `hosts = [...]` (names or `*.domain`,
//!   matched against the run's destination host) and/or `backends = [...]`. A template
//!   sees a secret only when the run's backend and destination match its scope.
//! - An entry with no scope is a credential for backends only: no template sees it. Nor
//!   does a template see a secret that a backend setting names (`token_secret`,
//!   `signing_secret`, …), whatever its scope.
//! - A template that names a secret it may not see fails the run, naming the secret, the
//!   destination and the scope to add, never the value.
//! - Secrets read from files are read again when the file changes (Kubernetes rotates
//!   mounted secrets) and on SIGHUP.
//! - Every configured secret value (and API tokens, the Port client secret) is replaced
//!   by `***` in run updates, DLQ headers and log lines: [`redact`] scans by value, so an
//!   error message from a library that quotes a value is covered too.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock, RwLock};

use serde_json::{Map, Value};

use crate::config::{Config, SecretSource};

/// Values shorter than this are not redacted (they would blank ordinary words).
pub const MIN_REDACTED: usize = 4;

/// One secret and where it may go.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    value: String,
    source: SecretSource,
    hosts: Vec<String>,
    backends: Vec<String>,
    /// The backend setting that names it, when it is a backend credential.
    credential: Option<String>,
}

impl Entry {
    fn visible(&self, backend: &str, host: Option<&str>) -> bool {
        if self.credential.is_some() || (self.hosts.is_empty() && self.backends.is_empty()) {
            return false;
        }
        let backend_ok = self.backends.is_empty()
            || self
                .backends
                .iter()
                .any(|b| b.eq_ignore_ascii_case(backend));
        let host_ok = self.hosts.is_empty()
            || host.is_some_and(|h| self.hosts.iter().any(|p| host_matches(p, h)));
        backend_ok && host_ok
    }
}

/// `pattern` is a host name or `*.domain`; `host` may carry a port.
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = strip_port(host).to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == pattern.trim_matches(['[', ']']),
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The secrets of `[secrets]`, shared by the pipeline and the reload task.
pub struct Store {
    entries: RwLock<Arc<Vec<Entry>>>,
}

impl Store {
    /// Read every secret. Validation has already checked that each resolves.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Store> {
        let credentials = cfg.credential_secrets();
        let mut entries = Vec::new();
        for (name, s) in &cfg.secrets {
            let value = s
                .source
                .resolve()
                .map_err(|e| anyhow::anyhow!("secrets.{name}: {e}"))?;
            entries.push(Entry {
                name: name.clone(),
                value,
                source: s.source.clone(),
                hosts: s.hosts.clone(),
                backends: s.backends.clone(),
                credential: credentials
                    .iter()
                    .find(|(_, n)| n == name)
                    .map(|(field, _)| field.clone()),
            });
        }
        let store = Store {
            entries: RwLock::new(Arc::new(entries)),
        };
        store.publish_values();
        Ok(store)
    }

    fn snapshot(&self) -> Arc<Vec<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every secret by name (for backends' credentials, read at start).
    pub fn all(&self) -> Map<String, Value> {
        self.snapshot()
            .iter()
            .map(|e| (e.name.clone(), Value::String(e.value.clone())))
            .collect()
    }

    /// The secrets a template of a run on `backend` to `host` may see, as `.secrets`.
    pub fn visible(&self, backend: &str, host: Option<&str>) -> jaq_json::Val {
        let entries = self.snapshot();
        jaq_json::Val::obj(
            entries
                .iter()
                .filter(|e| e.visible(backend, host))
                .map(|e| {
                    (
                        jaq_json::Val::from(e.name.clone()),
                        jaq_json::Val::from(e.value.clone()),
                    )
                })
                .collect(),
        )
    }

    /// The first secret that `template` names and may not see, as the run's failure.
    pub fn check_references(
        &self,
        template: &Map<String, Value>,
        backend: &str,
        host: Option<&str>,
        path: &str,
    ) -> Result<(), String> {
        let entries = self.snapshot();
        if entries.is_empty() {
            return Ok(()); // nothing configured: a reference reads null
        }
        let mut refs = Vec::new();
        collect_object_refs(template, path, &mut refs);
        for (field, name) in refs {
            let Some(e) = entries.iter().find(|e| e.name == name) else {
                continue; // not configured: it reads as null, as before
            };
            if e.visible(backend, host) {
                continue;
            }
            crate::telemetry::metrics::get()
                .refusals
                .with_label_values(&["secret_scope"])
                .inc();
            let dest = match host {
                Some(h) => format!("{backend} {}", strip_port(h)),
                None => backend.to_owned(),
            };
            return Err(match &e.credential {
                Some(setting) => format!(
                    "{field}: secret {name:?} is a backend credential ({setting}); templates never see it"
                ),
                None if e.hosts.is_empty() && e.backends.is_empty() => format!(
                    "{field}: secret {name:?} has no scope, so no template sees it; to let it go to \
                     {dest}, add hosts = [{:?}] or backends = [{backend:?}] to secrets.{name}",
                    host.map(strip_port).unwrap_or("<host>")
                ),
                None => format!(
                    "{field}: secret {name:?} may not go to {dest}; its scope is hosts = {:?}, \
                     backends = {:?} (secrets.{name})",
                    e.hosts, e.backends
                ),
            });
        }
        Ok(())
    }

    /// Read file secrets again; returns the names whose value changed.
    pub fn reload(&self) -> Vec<String> {
        let current = self.snapshot();
        let mut changed = Vec::new();
        let mut next = (*current).clone();
        for e in next.iter_mut() {
            if !matches!(e.source, SecretSource::File(_)) {
                continue;
            }
            match e.source.resolve() {
                Ok(v) if v != e.value => {
                    e.value = v;
                    changed.push(e.name.clone());
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(secret = %e.name, error = %err,
                    "re-reading a secret failed; the previous value stays"),
            }
        }
        if !changed.is_empty() {
            // The old values stay redacted too: they may still be in flight.
            add_redacted(current.iter().map(|e| e.value.clone()));
            *self.entries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
            self.publish_values();
        }
        changed
    }

    fn publish_values(&self) {
        add_redacted(self.snapshot().iter().map(|e| e.value.clone()));
    }

    /// The files to watch, with their modification times now.
    fn files(&self) -> Vec<(String, Option<std::time::SystemTime>)> {
        self.snapshot()
            .iter()
            .filter_map(|e| match &e.source {
                SecretSource::File(p) => Some((p.clone(), modified(p))),
                SecretSource::Env(_) => None,
            })
            .collect()
    }
}

fn modified(path: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reload file secrets when a file changes (checked every `every`) and on SIGHUP, until
/// `stop` fires.
pub fn watch(
    store: Arc<Store>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = store.files();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup => "SIGHUP",
                _ = tokio::time::sleep(every) => {
                    let now = store.files();
                    if now == seen {
                        continue;
                    }
                    "a secret file changed"
                }
            };
            let changed = store.reload();
            seen = store.files();
            tracing::info!(reason = why, changed = ?changed, "secrets re-read");
        }
    })
}

/// Add `.secrets.NAME` and `.secrets["NAME"]` references in the templates of `v`.
fn collect_refs(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => {
            for name in secret_refs(s) {
                out.push((path.to_owned(), name));
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                collect_refs(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => collect_object_refs(map, path, out),
        _ => {}
    }
}

/// [`collect_refs`] of an object's members, keys included.
fn collect_object_refs(map: &Map<String, Value>, path: &str, out: &mut Vec<(String, String)>) {
    for (k, x) in map {
        let field = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        for name in secret_refs(k) {
            out.push((field.clone(), name));
        }
        collect_refs(x, &field, out);
    }
}

/// The secret names a text reads as `.secrets.NAME`, `.secrets["NAME"]` or
/// `.secrets | .NAME`-free forms; dynamic reads see only the visible secrets anyway.
pub fn secret_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("secrets") {
        let after = rest[i + "secrets".len()..].trim_start();
        rest = &rest[i + "secrets".len()..];
        let name = if let Some(r) = after.strip_prefix('.') {
            let r = r.trim_start();
            if let Some(q) = r.strip_prefix('"') {
                q.split('"').next().map(str::to_owned)
            } else {
                let n = r
                    .bytes()
                    .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
                    .unwrap_or(r.len());
                (n > 0).then(|| r[..n].to_owned())
            }
        } else if let Some(r) = after.strip_prefix('[') {
            r.trim_start()
                .strip_prefix('"')
                .and_then(|q| q.split('"').next())
                .map(str::to_owned)
        } else {
            None
        };
        out.extend(name);
    }
    out
}

static REDACTED: LazyLock<RwLock<Arc<Vec<String>>>> = LazyLock::new(RwLock::default);

/// Add values to redact everywhere (secrets, API tokens, the Port client secret).
pub fn add_redacted(values: impl IntoIterator<Item = String>) {
    let mut list = REDACTED.write().unwrap_or_else(|p| p.into_inner());
    let mut next: Vec<String> = (**list).clone();
    for v in values {
        if v.len() >= MIN_REDACTED && !next.contains(&v) {
            // The JSON-escaped form too: a value with quotes or backslashes appears
            // escaped inside serialized text.
            let escaped = serde_json::to_string(&v).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_owned();
            if escaped != v && !next.contains(&escaped) {
                next.push(escaped);
            }
            next.push(v);
        }
    }
    // Longest first, so a value containing another is replaced whole.
    next.sort_by_key(|v| std::cmp::Reverse(v.len()));
    *list = Arc::new(next);
}

/// `text` with every registered secret value replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let list = REDACTED.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for v in list.iter() {
        if out.contains(v.as_str()) {
            out = Cow::Owned(out.replace(v.as_str(), "***"));
        }
    }
    out
}

/// Redact every string inside a JSON value (keys included); `true` when any changed.
pub fn redact_value(v: &mut Value) -> bool {
    match v {
        Value::String(s) => match redact(s) {
            Cow::Owned(r) => {
                *s = r;
                true
            }
            Cow::Borrowed(_) => false,
        },
        Value::Array(items) => items.iter_mut().fold(false, |acc, x| redact_value(x) | acc),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|k| matches!(redact(k), Cow::Owned(_))) {
                let old = std::mem::take(map);
                for (k, x) in old {
                    map.insert(redact(&k).into_owned(), x);
                }
                changed = true;
            }
            map.values_mut()
                .fold(changed, |acc, x| redact_value(x) | acc)
        }
        _ => false,
    }
}

/// A log writer that redacts secret values from each line it writes.
#[derive(Clone, Copy, Default)]
pub struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let clean = redact(&text);
        std::io::stderr().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(file: &std::path::Path) -> (Config, Store) {
        let mut cfg = Config::default();
        cfg.secrets.insert(
            "hook".into(),
            crate::config::SecretConfig {
                source: SecretSource::File(file.display().to_string()),
                hosts: vec!["hooks.example.com".into()],
                backends: vec![],
            },
        );
        cfg.secrets.insert(
            "cred".into(),
            crate::config::SecretConfig {
                source: SecretSource::File(file.display().to_string()),
                hosts: vec![],
                backends: vec![],
            },
        );
        let store = Store::from_config(&cfg).unwrap();
        (cfg, store)
    }

    fn visible_names(store: &Store, backend: &str, host: Option<&str>) -> Vec<String> {
        match crate::template::val_to_json(&store.visible(backend, host)) {
            Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn scopes_decide_visibility_and_file_secrets_reload() {
        let dir = std::env::temp_dir().join(format!("sy-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hook");
        std::fs::write(&file, "first-value-1\n").unwrap();
        let (_, store) = store_with(&file);
        assert_eq!(
            visible_names(&store, "WEBHOOK", Some("hooks.example.com:443")),
            ["hook"]
        );
        assert!(visible_names(&store, "WEBHOOK", Some("evil.example:443")).is_empty());
        assert!(visible_names(&store, "WEBHOOK", None).is_empty());
        let tpl: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"h": "{{ .secrets.cred }}"})).unwrap();
        let e = store
            .check_references(
                &tpl,
                "WEBHOOK",
                Some("hooks.example.com:443"),
                "invocationMethod",
            )
            .unwrap_err();
        assert!(e.contains("secret \"cred\" has no scope"), "{e}");
        assert!(!e.contains("first-value-1"));
        // Rotation: the file changes, a reload picks it up, old and new are redacted.
        std::fs::write(&file, "second-value-2\n").unwrap();
        let mut changed = store.reload();
        changed.sort();
        assert_eq!(changed, ["cred", "hook"]);
        assert_eq!(store.all()["hook"], "second-value-2");
        assert_eq!(redact("a first-value-1 b second-value-2"), "a *** b ***");
        assert!(store.reload().is_empty(), "nothing changed since");
    }

    #[test]
    fn references_are_found_in_every_spelling() {
        assert_eq!(secret_refs("{{ .secrets.gh }}"), vec!["gh"]);
        assert_eq!(
            secret_refs("Bearer {{ .secrets[\"my-key\"] }} {{.secrets. tok}}"),
            vec!["my-key", "tok"]
        );
        assert_eq!(secret_refs("{{ .secrets | keys }}"), Vec::<String>::new());
        assert_eq!(secret_refs("{{ .secrets.\"q\" }}"), vec!["q"]);
    }

    #[test]
    fn hosts_match_names_wildcards_and_ignore_ports() {
        assert!(host_matches("api.example.com", "api.example.com:443"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("api.example.com", "api.example.com.evil"));
        assert!(host_matches("::1", "[::1]:8080"));
        assert!(host_matches("127.0.0.1", "127.0.0.1:9000"));
    }

    #[test]
    fn redaction_covers_plain_and_escaped_values_and_skips_short_ones() {
        add_redacted(["tok\"en-value-1".to_owned(), "ab".to_owned()]);
        assert_eq!(redact("x tok\"en-value-1 y"), "x *** y");
        assert_eq!(redact("{\"a\":\"tok\\\"en-value-1\"}"), "{\"a\":\"***\"}");
        assert_eq!(redact("ab cd"), "ab cd");
        let mut v = serde_json::json!({"k": ["tok\"en-value-1"], "tok\"en-value-1": 1});
        assert!(redact_value(&mut v));
        assert_eq!(v, serde_json::json!({"k": ["***"], "***": 1}));
    }
}
