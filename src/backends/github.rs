//! GITHUB: dispatch a workflow, then follow its run (Port fields `org`, `repo`,
//! `workflow`, `workflowInputs`, `reportWorkflowStatus`).
//!
//! - `POST {api}/repos/{org}/{repo}/actions/workflows/{workflow}/dispatches` with
//!   `{ref, inputs, return_run_details: true}`. `ref` is the `ref` key of
//!   `workflowInputs`, else `backends.github.default_ref`, else the repository's default
//!   branch (`GET /repos/{org}/{repo}`). Non-string inputs are sent as JSON text; more
//!   than 10 inputs (GitHub's limit) fail before any call.
//! - The run's `html_url` becomes the link and its id the `externalRunId`.
//! - A server that answers 204 without run details (older GHES) gets a fallback: the
//!   earliest `workflow_dispatch` run of that workflow created at or after the dispatch.
//!   Two dispatches of one workflow within the same second can be matched to each
//!   other's runs; use `orderingKey` to serialise them where that matters.
//! - With `reportWorkflowStatus` (default true) the run is followed
//!   (`GET /repos/{org}/{repo}/actions/runs/{id}`): `queued`/`in_progress`/… become
//!   `statusLabel`; a `completed` run with conclusion success, skipped or neutral is
//!   SUCCESS, any other conclusion FAILURE. `x-ratelimit-*` and secondary limits
//!   (403/429 with `Retry-After`) delay the next poll.
//! - Auth: a GitHub App (`app_id` + `app_private_key_secret`, see `github_auth`) or a
//!   token secret (`token_secret`), sent as a bearer token.

use std::time::{Duration, SystemTime};

use reqwest::RequestBuilder;
use serde_json::{json, Map, Value};

use super::github_auth::{App, Auth};
use super::http::enc;
use super::{
    flag, http, required_str, AttemptFuture, Backend, FollowFuture, Invalid, Outcome, Report,
    Request,
};
use crate::backends::Progress;
use crate::config::GithubConfig;
use crate::model::RunStatus;

/// GitHub's limit on `workflow_dispatch` inputs.
const MAX_INPUTS: usize = 10;
/// Longest wait a rate-limit hint can impose on one poll.
const MAX_WAIT: Duration = Duration::from_secs(900);

pub struct Github {
    client: reqwest::Client,
    api: String,
    auth: Auth,
    default_ref: Option<String>,
}

impl Github {
    pub fn new(cfg: &GithubConfig, secrets: &Map<String, Value>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let api = cfg.api_url.trim_end_matches('/').to_owned();
        let secret = |n: &Option<String>| super::secret(secrets, n.as_ref());
        let auth = match (
            &cfg.app_id,
            secret(&cfg.app_private_key_secret),
            secret(&cfg.token_secret),
        ) {
            (Some(id), Some(pem), _) => {
                Auth::App(Box::new(App::new(id, &pem, client.clone(), &api)?))
            }
            (_, _, Some(token)) => Auth::Token(token),
            _ => Auth::None,
        };
        Ok(Github {
            client,
            api,
            auth,
            default_ref: cfg.default_ref.clone(),
        })
    }

    /// `req` with GitHub's headers and the credentials for `org/repo`.
    async fn call(
        &self,
        req: RequestBuilder,
        org: &str,
        repo: &str,
    ) -> Result<RequestBuilder, Report> {
        self.auth.apply(req, &format!("{org}/{repo}")).await
    }
}

impl Backend for Github {
    fn kind(&self) -> &'static str {
        "GITHUB"
    }

    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a> {
        Box::pin(self.dispatch(req))
    }

    fn destination(&self, _req: &Request) -> Option<String> {
        super::host_port(&self.api)
    }

    fn follow<'a>(&'a self, state: &'a Value) -> FollowFuture<'a> {
        Box::pin(self.poll(state))
    }
}

/// Dispatch inputs as GitHub takes them: strings, with non-strings as JSON text.
fn inputs(raw: Option<&Value>) -> Result<(Option<String>, Map<String, Value>), Invalid> {
    let mut out = Map::new();
    let mut git_ref = None;
    match raw {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if k == "ref" {
                    git_ref = Some(text);
                } else {
                    out.insert(k.clone(), Value::String(text));
                }
            }
        }
        Some(other) => {
            return Err(Invalid::new(
                "workflowInputs",
                format!("expected object, got {other}"),
            ))
        }
    }
    if out.len() > MAX_INPUTS {
        return Err(Invalid::new(
            "workflowInputs",
            format!(
                "{} inputs; GitHub accepts at most {MAX_INPUTS} for workflow_dispatch",
                out.len()
            ),
        ));
    }
    Ok((git_ref, out))
}

impl Github {
    async fn dispatch(&self, req: &Request) -> Report {
        let inv = &req.invocation;
        let names = (
            required_str(inv, "org"),
            required_str(inv, "repo"),
            required_str(inv, "workflow"),
        );
        let (org, repo, workflow) = match names {
            (Ok(o), Ok(r), Ok(w)) => (o, r, w),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into(),
        };
        let (input_ref, inputs) = match inputs(inv.get("workflowInputs")) {
            Ok(x) => x,
            Err(invalid) => return invalid.into(),
        };
        let follow = match inv.get("reportWorkflowStatus") {
            None | Some(Value::Null) => true,
            v => match flag(v) {
                Ok(b) => b,
                Err(e) => return Report::invalid("reportWorkflowStatus", e),
            },
        };
        let full = format!("{org}/{repo}");
        let git_ref = match input_ref.or_else(|| self.default_ref.clone()) {
            Some(r) => r,
            None => match self.default_branch(org, repo).await {
                Ok(b) => b,
                Err(r) => return *r,
            },
        };
        let url = format!(
            "{}/repos/{}/{}/actions/workflows/{}/dispatches",
            self.api,
            enc(org),
            enc(repo),
            enc(workflow)
        );
        let body = json!({"ref": git_ref, "inputs": inputs, "return_run_details": true});
        let dispatched_at = SystemTime::now() - Duration::from_secs(2);
        let request = match self.call(self.client.post(&url), org, repo).await {
            Ok(r) => r.header("Idempotency-Key", &req.run_id).json(&body),
            Err(r) => return r,
        };
        let ex = match http::exchange(request, &format!("GitHub {full}")).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        if !ex.status.is_success() {
            if ex.status.as_u16() == 401 {
                self.auth.rejected(&full);
            }
            return http::failure(&ex, &format!("GitHub {full} {workflow}: "));
        }
        let resp = ex.body;
        let details: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
        let run = match details.get("workflow_run_id").and_then(Value::as_u64) {
            Some(id) => Some((
                id,
                details
                    .get("html_url")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )),
            None => self.find_run(org, repo, workflow, dispatched_at).await,
        };
        let mut r = Report::new(
            Outcome::Accepted,
            format!("dispatched {workflow} on {full}@{git_ref}"),
        );
        match run {
            Some((id, link)) => {
                r.log = Some(format!(
                    "dispatched {workflow} on {full}@{git_ref}: workflow run {id}"
                ));
                r.link = link.into_iter().collect();
                r.external_run_id = Some(id.to_string());
                if follow {
                    r.follow = Some(json!({"org": org, "repo": repo, "run": id}));
                }
            }
            None => {
                r.log = Some(format!(
                    "dispatched {workflow} on {full}@{git_ref}; the workflow run could not be identified, so it is not followed"
                ));
            }
        }
        r
    }

    async fn default_branch(&self, org: &str, repo: &str) -> Result<String, Box<Report>> {
        let url = format!("{}/repos/{}/{}", self.api, enc(org), enc(repo));
        let target = format!("GitHub {org}/{repo}");
        let request = self
            .call(self.client.get(&url), org, repo)
            .await
            .map_err(Box::new)?;
        let ex = http::exchange(request, &target).await.map_err(Box::new)?;
        if !ex.status.is_success() {
            let r = http::failure(&ex, &format!("GitHub {org}/{repo}: "));
            return Err(Box::new(r));
        }
        let body = ex.body;
        let repo_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(repo_json
            .get("default_branch")
            .and_then(Value::as_str)
            .unwrap_or("main")
            .to_owned())
    }

    /// Fallback for servers without run details: the earliest `workflow_dispatch` run of
    /// the workflow created at or after the dispatch (up to 5 tries, a second apart).
    async fn find_run(
        &self,
        org: &str,
        repo: &str,
        workflow: &str,
        since: SystemTime,
    ) -> Option<(u64, Option<String>)> {
        let since_text = httpdate_to_rfc3339(since);
        let url = format!(
            "{}/repos/{}/{}/actions/workflows/{}/runs?event=workflow_dispatch&created=%3E%3D{}",
            self.api,
            enc(org),
            enc(repo),
            enc(workflow),
            since_text
        );
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Ok(request) = self.call(self.client.get(&url), org, repo).await else {
                continue;
            };
            let Ok(resp) = request.send().await else {
                continue;
            };
            let Ok(bytes) = super::http::read_capped(resp, super::http::MAX_BODY).await else {
                continue;
            };
            let Ok(list) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let runs = list.get("workflow_runs").and_then(Value::as_array)?;
            let earliest = runs
                .iter()
                .filter(|r| {
                    r.get("created_at")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c >= since_text.as_str())
                })
                .min_by_key(|r| {
                    r.get("created_at")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            if let Some(run) = earliest {
                let id = run.get("id").and_then(Value::as_u64)?;
                let link = run
                    .get("html_url")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Some((id, link));
            }
        }
        None
    }

    async fn poll(&self, state: &Value) -> Progress {
        let (Some(org), Some(repo), Some(id)) = (
            state.get("org").and_then(Value::as_str),
            state.get("repo").and_then(Value::as_str),
            state.get("run").and_then(Value::as_u64),
        ) else {
            return Progress::Finished {
                status: RunStatus::Failure,
                summary: format!("cannot follow GitHub workflow run: bad state {state}"),
            };
        };
        let url = format!(
            "{}/repos/{}/{}/actions/runs/{id}",
            self.api,
            enc(org),
            enc(repo)
        );
        let request = match self.call(self.client.get(&url), org, repo).await {
            Ok(r) => r,
            Err(r) => return Progress::Failed(r.summary),
        };
        let (run, wait) = match http::poll_json(request, "GitHub", MAX_WAIT).await {
            Ok(x) => x,
            Err((progress, status)) => {
                if status == Some(401) {
                    self.auth.rejected(&format!("{org}/{repo}"));
                }
                return progress;
            }
        };
        let state = run
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if state != "completed" {
            return Progress::Running {
                label: state.to_owned(),
                wait,
            };
        }
        concluded(id, run.get("conclusion").and_then(Value::as_str))
    }
}

/// A completed run: success, skipped and neutral are SUCCESS, anything else FAILURE.
fn concluded(id: u64, conclusion: Option<&str>) -> Progress {
    match conclusion {
        Some(c @ ("success" | "skipped" | "neutral")) => Progress::Finished {
            status: RunStatus::Success,
            summary: format!("workflow run {id} concluded {c}"),
        },
        other => Progress::Finished {
            status: RunStatus::Failure,
            summary: format!(
                "workflow run {id} concluded {}",
                other.unwrap_or("without a conclusion")
            ),
        },
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for GitHub's `created` filter.
fn httpdate_to_rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&fmt)
        .expect("formatting a UTC timestamp with a static description cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_stringified_and_ref_is_taken_out() {
        let (r, m) = inputs(Some(
            &json!({"ref": "dev", "n": 3, "o": {"a": 1}, "s": "x"}),
        ))
        .unwrap();
        assert_eq!(r.as_deref(), Some("dev"));
        assert_eq!(
            Value::Object(m),
            json!({"n": "3", "o": "{\"a\":1}", "s": "x"})
        );
    }

    #[test]
    fn conclusions_map_to_port_statuses() {
        for c in ["success", "skipped", "neutral"] {
            assert!(matches!(
                concluded(1, Some(c)),
                Progress::Finished {
                    status: RunStatus::Success,
                    ..
                }
            ));
        }
        for c in [
            "failure",
            "cancelled",
            "timed_out",
            "action_required",
            "stale",
        ] {
            let Progress::Finished { status, summary } = concluded(7, Some(c)) else {
                panic!()
            };
            assert_eq!(status, RunStatus::Failure);
            assert_eq!(summary, format!("workflow run 7 concluded {c}"));
        }
    }

    #[test]
    fn more_than_ten_inputs_fail_naming_the_limit() {
        let many: Map<String, Value> = (0..11).map(|i| (format!("i{i}"), json!(i))).collect();
        let err = Report::from(inputs(Some(&Value::Object(many))).unwrap_err());
        assert_eq!(
            err.summary,
            "invocationMethod.workflowInputs: 11 inputs; GitHub accepts at most 10 for workflow_dispatch"
        );
    }
}
