//! A run update as it may be written: secret values redacted and every field within its
//! cap, so that no update is ever too large for the status topic.

use crate::model::{truncate, RunUpdate};

/// Largest `summary` of a run update, in bytes; longer ones are cut with a marker.
pub const MAX_SUMMARY: usize = 4 * 1024;
/// Largest log `message`.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Largest `response`, as compact JSON; a larger one is replaced by its head.
pub const MAX_RESPONSE: usize = 256 * 1024;
/// Largest `status_label`, `external_run_id` and single link.
const MAX_SHORT: usize = 2 * 1024;
/// Most links kept.
const MAX_LINKS: usize = 32;

/// The update as it may be written: secret values redacted, every field within its cap
/// (a cut field says so), so that no update is ever too large for the status topic.
pub fn sanitized(u: &RunUpdate) -> std::borrow::Cow<'_, RunUpdate> {
    use std::borrow::Cow;
    let text = |s: &Option<String>, max: usize| -> Option<Option<String>> {
        let v = s.as_deref()?;
        let r = crate::secrets::redact(v);
        match (&r, v.len() > max) {
            (Cow::Borrowed(_), false) => None,
            _ => Some(Some(truncate(&r, max))),
        }
    };
    let summary = text(&u.summary, MAX_SUMMARY);
    let message = text(&u.message, MAX_MESSAGE);
    let label = text(&u.status_label, MAX_SHORT);
    let external = text(&u.external_run_id, MAX_SHORT);
    let links = u.link.as_ref().and_then(|links| {
        let changed = links.len() > MAX_LINKS
            || links
                .iter()
                .any(|l| l.len() > MAX_SHORT || matches!(crate::secrets::redact(l), Cow::Owned(_)));
        changed.then(|| {
            links
                .iter()
                .take(MAX_LINKS)
                .map(|l| truncate(&crate::secrets::redact(l), MAX_SHORT))
                .collect::<Vec<_>>()
        })
    });
    let response = u.response.as_ref().and_then(|r| {
        let mut r = r.clone();
        let redacted = crate::secrets::redact_value(&mut r);
        let size = serde_json::to_vec(&r).map_or(usize::MAX, |b| b.len());
        if size > MAX_RESPONSE {
            let head = truncate(&r.to_string(), 4 * 1024);
            Some(serde_json::json!({"truncated": true, "bytes": size, "head": head}))
        } else {
            redacted.then_some(r)
        }
    });
    if summary.is_none()
        && message.is_none()
        && label.is_none()
        && external.is_none()
        && links.is_none()
        && response.is_none()
    {
        return Cow::Borrowed(u);
    }
    let mut out = u.clone();
    if let Some(v) = summary {
        out.summary = v;
    }
    if let Some(v) = message {
        out.message = v;
    }
    if let Some(v) = label {
        out.status_label = v;
    }
    if let Some(v) = external {
        out.external_run_id = v;
    }
    if let Some(v) = links {
        out.link = Some(v);
    }
    if let Some(v) = response {
        out.response = Some(v);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_with_a_marker_and_fit_their_caps() {
        let mut u = RunUpdate::status("r", crate::model::RunStatus::Failure)
            .with_summary("é".repeat(10_000));
        u.response = Some(serde_json::json!({"big": "x".repeat(400_000)}));
        u.link = Some(vec!["https://a/".to_owned(); 100]);
        let s = sanitized(&u);
        let summary = s.summary.as_deref().unwrap();
        assert!(summary.len() <= MAX_SUMMARY, "{}", summary.len());
        assert!(summary.ends_with("[truncated: 20000 bytes]"), "{summary}");
        assert_eq!(s.response.as_ref().unwrap()["truncated"], true);
        assert_eq!(s.link.as_ref().unwrap().len(), MAX_LINKS);
        let small = RunUpdate::status("r", crate::model::RunStatus::Success).with_summary("ok");
        assert!(matches!(sanitized(&small), std::borrow::Cow::Borrowed(_)));
    }
}
