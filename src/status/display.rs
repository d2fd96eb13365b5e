//! Run updates as a person wants to read them: one line each.

use crate::model::{RunStatus, RunUpdate, UpdateKind};

/// `10:00:01.250  r_8f2c  SUCCESS  HTTP 200 in 84 ms  https://…`
pub fn line(u: &RunUpdate, color: bool) -> String {
    let time = u.at.get(11..23).unwrap_or(&u.at);
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text:<11}\x1b[0m")
        } else {
            format!("{text:<11}")
        }
    };
    let (tag, detail) = match u.kind {
        UpdateKind::Status => {
            let status = u.status.unwrap_or(RunStatus::InProgress);
            let code = match status {
                RunStatus::InProgress => "33",
                RunStatus::Success => "32",
                RunStatus::Failure => "31",
            };
            let mut d = u.summary.clone().unwrap_or_default();
            if let Some(label) = &u.status_label {
                d = format!("[{label}] {d}");
            }
            if let Some(links) = &u.link {
                d = format!("{d}  {}", links.join(" "));
            }
            if let Some(r) = &u.response {
                d = format!("{d}  response {r}");
            }
            (paint(code, status.as_str()), d)
        }
        UpdateKind::Log => (paint("36", "log"), u.message.clone().unwrap_or_default()),
        UpdateKind::Response => (
            paint("35", "response"),
            u.response
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default(),
        ),
    };
    format!("{time}  {:<18} {tag} {detail}", u.run_id)
}
