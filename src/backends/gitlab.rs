//! GITLAB: trigger a pipeline, then follow it (Port fields `projectName`, `groupName`,
//! `defaultRef`, `pipelineVariables`).
//!
//! - `POST {base}/api/v4/projects/{url-encoded group/project}/trigger/pipeline` with form
//!   fields `token`, `ref` and `variables[KEY]` (values stringified, non-strings as
//!   compact JSON). `ref` = input `ref`, else `defaultRef`, else `main`. The trigger token
//!   is a secret: `backends.gitlab.trigger_tokens["group/project"]`, else the secret named
//!   by the path with `/` turned into `_`.
//! - The created pipeline's `web_url` becomes the run's link and its id the
//!   `externalRunId`; the run stays IN_PROGRESS.
//! - With `read_token_secret`, the pipeline is followed with
//!   `GET /api/v4/projects/:id/pipelines/:pipeline_id`: pending/running (and other
//!   unfinished states) become `statusLabel`; `success` is SUCCESS; `failed`, `canceled`
//!   and `skipped` are FAILURE. `Retry-After` and `RateLimit-Reset` are obeyed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::http::enc;
use super::{http, required_str, AttemptFuture, Backend, FollowFuture, Outcome, Report, Request};
use crate::backends::Progress;
use crate::config::GitlabConfig;
use crate::model::RunStatus;

/// Longest wait a rate-limit hint can impose on one poll.
const MAX_WAIT: Duration = Duration::from_secs(900);

pub struct Gitlab {
    client: reqwest::Client,
    base: String,
    /// Project path → trigger token value (configured mappings).
    tokens: BTreeMap<String, String>,
    /// All secrets, for the default `group_project` names.
    secrets: Map<String, Value>,
    read_token: Option<String>,
}

impl Gitlab {
    pub fn new(cfg: &GitlabConfig, secrets: &Map<String, Value>) -> anyhow::Result<Self> {
        let secret = |name: &String| super::secret(secrets, Some(name));
        Ok(Gitlab {
            client: reqwest::Client::builder()
                .connect_timeout(cfg.timeout)
                .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            tokens: cfg
                .trigger_tokens
                .iter()
                .filter_map(|(project, name)| Some((project.clone(), secret(name)?)))
                .collect(),
            secrets: secrets.clone(),
            read_token: super::secret(secrets, cfg.read_token_secret.as_ref()),
        })
    }

    fn trigger_token(&self, path: &str) -> Result<&str, String> {
        if let Some(t) = self.tokens.get(path) {
            return Ok(t);
        }
        let default = path.replace('/', "_");
        self.secrets
            .get(&default)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "no trigger token for {path}: add a secret named {default:?} or map the \
                     project in backends.gitlab.trigger_tokens"
                )
            })
    }
}

impl Backend for Gitlab {
    fn kind(&self) -> &'static str {
        "GITLAB"
    }

    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a> {
        Box::pin(self.trigger(req))
    }

    fn destination(&self, _req: &Request) -> Option<String> {
        super::host_port(&self.base)
    }

    fn follow<'a>(&'a self, state: &'a Value) -> FollowFuture<'a> {
        Box::pin(self.poll(state))
    }
}

/// A pipeline variable value as GitLab takes it: strings as they are, the rest as JSON.
fn stringify(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Gitlab {
    async fn trigger(&self, req: &Request) -> Report {
        let inv = &req.invocation;
        let (project, group) = match (
            required_str(inv, "projectName"),
            required_str(inv, "groupName"),
        ) {
            (Ok(p), Ok(g)) => (p, g.trim_matches('/')),
            (Err(e), _) | (_, Err(e)) => return e.into(),
        };
        let path = format!("{group}/{project}");
        let token = match self.trigger_token(&path) {
            Ok(t) => t,
            Err(why) => {
                let mut r = Report::new(Outcome::Permanent, why);
                r.error_class = Some("configuration");
                return r;
            }
        };
        let git_ref = req
            .event
            .inputs
            .get("ref")
            .and_then(Value::as_str)
            .or_else(|| inv.get("defaultRef").and_then(Value::as_str))
            .filter(|r| !r.is_empty())
            .unwrap_or("main")
            .to_owned();
        let mut form: Vec<(String, String)> = vec![
            ("token".into(), token.to_owned()),
            ("ref".into(), git_ref.clone()),
        ];
        match inv.get("pipelineVariables") {
            None | Some(Value::Null) => {}
            Some(Value::Object(vars)) => {
                form.extend(
                    vars.iter()
                        .map(|(k, v)| (format!("variables[{k}]"), stringify(v))),
                );
            }
            Some(other) => {
                return Report::invalid(
                    "pipelineVariables",
                    format!("expected object, got {other}"),
                )
            }
        }
        let url = format!(
            "{}/api/v4/projects/{}/trigger/pipeline",
            self.base,
            enc(&path)
        );
        let request = self.client.post(&url).form(&form);
        let ex = match http::exchange(request, &format!("GitLab {path}")).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        if !ex.status.is_success() {
            return http::failure(&ex, &format!("GitLab {path}: "));
        }
        let (status, body) = (ex.status, ex.body);
        let created: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(id) = created.get("id").and_then(Value::as_u64) else {
            let mut r = Report::new(
                Outcome::Permanent,
                format!(
                    "GitLab {path}: HTTP {} without a pipeline id",
                    status.as_u16()
                ),
            );
            r.error_class = Some("provider_response");
            return r;
        };
        let state = created
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("created");
        let mut r = Report::new(
            Outcome::Accepted,
            format!("pipeline {id} {state} on {path}@{git_ref}"),
        );
        r.log = Some(format!(
            "triggered GitLab pipeline {id} on {path}@{git_ref}"
        ));
        if let Some(link) = created.get("web_url").and_then(Value::as_str) {
            r.link = vec![link.to_owned()];
        }
        r.external_run_id = Some(id.to_string());
        if self.read_token.is_some() {
            r.follow = Some(json!({"project": path, "pipeline": id}));
        }
        r
    }

    async fn poll(&self, state: &Value) -> Progress {
        let (Some(project), Some(id)) = (
            state.get("project").and_then(Value::as_str),
            state.get("pipeline").and_then(Value::as_u64),
        ) else {
            return Progress::Finished {
                status: RunStatus::Failure,
                summary: format!("cannot follow GitLab pipeline: bad state {state}"),
            };
        };
        let url = format!(
            "{}/api/v4/projects/{}/pipelines/{id}",
            self.base,
            enc(project)
        );
        let mut request = self.client.get(&url);
        if let Some(t) = &self.read_token {
            request = request.header("PRIVATE-TOKEN", t);
        }
        let (pipeline, wait) = match http::poll_json(request, "GitLab", MAX_WAIT).await {
            Ok(x) => x,
            Err((progress, _)) => return progress,
        };
        let Some(state) = pipeline.get("status").and_then(Value::as_str) else {
            return Progress::Failed(format!("GitLab pipeline {id}: response without a status"));
        };
        match state {
            "success" => Progress::Finished {
                status: RunStatus::Success,
                summary: format!("pipeline {id} succeeded"),
            },
            "failed" | "canceled" | "skipped" => Progress::Finished {
                status: RunStatus::Failure,
                summary: format!("pipeline {id} {state}"),
            },
            // With the budget exhausted, the next poll waits for the reset.
            other => Progress::Running {
                label: other.to_owned(),
                wait,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_token_is_mapped_or_named_after_the_project_path() {
        let mut cfg = GitlabConfig::default();
        cfg.trigger_tokens
            .insert("grp/app".into(), "app_token".into());
        let secrets: Map<String, Value> = serde_json::from_value(json!({
            "app_token": "t-mapped", "grp_sub_svc": "t-default"
        }))
        .unwrap();
        let gl = Gitlab::new(&cfg, &secrets).unwrap();
        assert_eq!(gl.trigger_token("grp/app"), Ok("t-mapped"));
        assert_eq!(gl.trigger_token("grp/sub/svc"), Ok("t-default"));
        let err = gl.trigger_token("grp/none").unwrap_err();
        assert!(err.contains("\"grp_none\""), "{err}");
    }

    #[test]
    fn variables_are_stringified() {
        assert_eq!(stringify(&json!("x")), "x");
        assert_eq!(stringify(&json!(3)), "3");
        assert_eq!(stringify(&json!({"a": [1]})), r#"{"a":[1]}"#);
        assert_eq!(stringify(&json!(true)), "true");
    }
}
