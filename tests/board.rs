//! The run board in a real headless Chromium (Debian's), driven through
//! `board/tests/driver.mjs` (playwright-core). Each test starts the dispatcher on the
//! mock cluster (or the real broker under `real-broker`), loads the page, and checks what
//! a person would see. Built with `--features browser`; `.ci/run` installs Chromium and
//! the driver's pinned npm packages first. A missing browser fails the tests.
#![cfg(feature = "browser")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use switchyard::model::RunStatus;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(60);
const TOKENS: &str = r#"
[api]
tokens = [{ env = "SWITCHYARD_TEST_TOKEN" }, { env = "BOARD_READ_TOKEN", scopes = ["read"] }]
"#;
const READ_TOKEN: &str = "board-read-only-7f3a";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One headless Chromium page behind the JSON-lines driver.
struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Browser {
    async fn launch() -> Browser {
        let board = repo().join("board");
        assert!(
            board.join("node_modules/playwright-core").exists(),
            "board/node_modules is missing: run `npm ci` in board/ (.ci/run does)"
        );
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&chromium).exists(),
            "no Chromium at {chromium}: install Debian's chromium (.ci/run does) or set CHROMIUM"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(board.join("tests/driver.mjs"))
            .current_dir(&board)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (Node.js is needed for the browser tests)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut b = Browser {
            child,
            stdin,
            lines,
        };
        let ready = b.answer(Duration::from_secs(60)).await;
        assert_eq!(ready, Ok(json!("ready")), "the browser did not start");
        b
    }

    async fn answer(&mut self, timeout: Duration) -> Result<Value, String> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .expect("the driver answers in time")
            .expect("the driver's stdout reads")
            .expect("the driver is still running");
        let v: Value = serde_json::from_str(&line).expect("the driver writes JSON lines");
        if v["ok"] == json!(true) {
            Ok(v["value"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// Run one driver command; its error is returned.
    async fn try_do(&mut self, cmd: Value) -> Result<Value, String> {
        let timeout = Duration::from_millis(cmd["timeout"].as_u64().unwrap_or(10_000) + 30_000);
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        self.answer(timeout).await
    }

    /// Run one driver command; it must succeed.
    async fn run(&mut self, cmd: Value) -> Value {
        let what = cmd.to_string();
        match self.try_do(cmd).await {
            Ok(v) => v,
            Err(e) => {
                let errors = self.try_do(json!({"op": "errors"})).await;
                let html = self
                    .try_do(json!({"op": "eval", "js": "document.body.innerText"}))
                    .await;
                panic!("{what} failed: {e}\npage errors: {errors:?}\npage text: {html:?}")
            }
        }
    }

    async fn goto(&mut self, url: &str) {
        self.run(json!({"op": "goto", "url": url})).await;
    }

    /// Wait for `sel` to be visible; returns the browser's clock (ms) when it was.
    async fn wait(&mut self, sel: &str, timeout_ms: u64) -> i64 {
        self.run(json!({"op": "wait", "sel": sel, "timeout": timeout_ms}))
            .await
            .as_i64()
            .unwrap()
    }

    async fn wait_text(&mut self, sel: &str, text: &str) {
        self.run(json!({"op": "waitText", "sel": sel, "text": text}))
            .await;
    }

    async fn texts(&mut self, sel: &str) -> Vec<String> {
        let v = self.run(json!({"op": "texts", "sel": sel})).await;
        serde_json::from_value(v).unwrap()
    }

    async fn attrs(&mut self, sel: &str, name: &str) -> Vec<Option<String>> {
        let v = self
            .run(json!({"op": "attrs", "sel": sel, "name": name}))
            .await;
        serde_json::from_value(v).unwrap()
    }

    async fn eval(&mut self, js: &str) -> Value {
        self.run(json!({"op": "eval", "js": js})).await
    }

    async fn errors(&mut self) -> Vec<String> {
        serde_json::from_value(self.run(json!({"op": "errors"})).await).unwrap()
    }

    async fn screenshot(&mut self, name: &str) {
        let path = repo().join("docs").join(name);
        self.run(json!({"op": "screenshot", "path": path})).await;
        println!("screenshot: {}", path.display());
    }

    async fn close(mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"close\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(at: &str) -> i64 {
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{at}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn http(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Without tokens, on loopback: the board opens read-only and says so; a run published
/// after the page loaded shows within 1 s of its update; a filter narrows the list and
/// the counts; the page logs no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_is_live_filters_and_opens_read_only_on_loopback() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Setup::new(&kafka, &t)
        .config("[backends.webhook.retry]\nmax_attempts = 1\n")
        .start();
    let base = d.http_base();
    let mut b = Browser::launch().await;
    b.goto(&format!("{base}/")).await;
    b.wait("#runs", 10_000).await;
    b.wait(r#"body[data-live="1"]"#, 10_000).await;
    let notice = b.texts("#notice").await;
    assert!(
        notice[0].contains("No api.tokens are configured"),
        "{notice:?}"
    );
    // Reads answer without a token; writes are not routed.
    assert_eq!(
        http("GET", &format!("{base}/v1/runs"), None, None).await.0,
        200
    );
    for (method, path) in [
        ("POST", "/v1/dlq/replay"),
        ("PATCH", "/v1/actions/runs/r_any"),
        ("POST", "/v1/actions/runs/r_any/logs"),
    ] {
        let (code, _) = http(method, &format!("{base}{path}"), None, Some(json!({}))).await;
        assert_eq!(code, 404, "{method} {path} without tokens");
    }

    // Runs published after load: each shows within 1 s of its terminal update.
    let mut delays = Vec::new();
    for n in 0..5 {
        let run = format!("r_live_{n}");
        let started = Instant::now();
        kafka
            .produce(
                &t.triggers,
                &[record(None, &webhook_event(&run, &rx.url("/deploy"), true))],
            )
            .await;
        let shown = b
            .wait(
                &format!(r#".rows [data-run="{run}"] [data-status="SUCCESS"]"#),
                30_000,
            )
            .await;
        let (code, body) = http("GET", &format!("{base}/v1/actions/runs/{run}"), None, None).await;
        assert_eq!(code, 200, "{body}");
        let ended = epoch_ms(body["run"]["endedAt"].as_str().unwrap());
        delays.push(shown - ended);
        println!(
            "{run}: shown {} ms after its SUCCESS update was written ({} ms after publishing)",
            shown - ended,
            started.elapsed().as_millis()
        );
    }
    let worst = *delays.iter().max().unwrap();
    assert!(
        worst < 1000,
        "a run update took {worst} ms to show: {delays:?}"
    );

    // A failing run, then the filter.
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &webhook_event("r_live_bad", &rx.url("/deploy?status=503"), true),
            )],
        )
        .await;
    b.wait(
        r#".rows [data-run="r_live_bad"] [data-status="FAILURE"]"#,
        30_000,
    )
    .await;
    b.wait_text(r#"[data-count="ALL"]"#, "6 runs").await;
    b.wait_text(r#"[data-count="SUCCESS"]"#, "SUCCESS 5").await;
    b.screenshot("board.png").await;
    b.run(json!({"op": "select", "sel": "#f-status", "value": "FAILURE"}))
        .await;
    b.wait_text(r#"[data-count="ALL"]"#, "1 runs").await;
    b.wait_text(r#"[data-count="SUCCESS"]"#, "SUCCESS 0").await;
    b.run(json!({"op": "frame"})).await;
    let shown = b.attrs(".rows .row", "data-run").await;
    assert_eq!(shown, vec![Some("r_live_bad".to_owned())]);
    b.run(json!({"op": "select", "sel": "#f-status", "value": ""}))
        .await;
    b.wait_text(r#"[data-count="ALL"]"#, "6 runs").await;
    b.run(json!({"op": "fill", "sel": "#f-q", "value": "live_3"}))
        .await;
    b.wait_text(r#"[data-count="ALL"]"#, "1 runs").await;
    b.run(json!({"op": "frame"})).await;
    let shown = b.attrs(".rows .row", "data-run").await;
    assert_eq!(shown, vec![Some("r_live_3".to_owned())]);
    // The health strip names its scope.
    let strip = b.texts("#health").await;
    assert!(strip[0].contains("this instance"), "{strip:?}");
    let errors = b.errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    println!(
        "live: worst {worst} ms over {} runs ({delays:?}); console errors: 0",
        delays.len()
    );
    b.close().await;
}

/// With tokens: the page asks for one and the API answers 401 without it; with it, a
/// run's page shows its logs in `seq` order and its external link, and follows the run.
/// The token never reaches a URL or the page's markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_page_shows_its_logs_in_order_and_its_link() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let toml = Setup::new(&kafka, &t).config(TOKENS).toml();
    let d = Dispatcher::start_with_config(&toml, &[("BOARD_READ_TOKEN", READ_TOKEN)]);
    let base = d.http_base();
    for path in ["/v1/runs", "/v1/events", "/v1/dlq", "/v1/health"] {
        let (code, _) = http("GET", &format!("{base}{path}"), None, None).await;
        assert_eq!(code, 401, "GET {path} without a token");
        let (code, _) = http("GET", &format!("{base}{path}"), Some("wrong"), None).await;
        assert_eq!(code, 401, "GET {path} with a wrong token");
    }
    let mut b = Browser::launch().await;
    b.goto(&format!("{base}/")).await;
    b.wait("#login", 10_000).await;
    b.run(json!({"op": "fill", "sel": "#token", "value": "not-a-token"}))
        .await;
    b.run(json!({"op": "press", "sel": "#token", "key": "Enter"}))
        .await;
    b.wait_text("#login-error", "not valid").await;
    b.run(json!({"op": "fill", "sel": "#token", "value": READ_TOKEN}))
        .await;
    b.run(json!({"op": "press", "sel": "#token", "key": "Enter"}))
        .await;
    b.wait("#runs", 10_000).await;
    b.wait(r#"body[data-live="1"]"#, 10_000).await;

    // An async run, reported on through the API.
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &webhook_event("r_page", &rx.url("/accepted?status=202"), false),
            )],
        )
        .await;
    b.wait(r#".rows [data-run="r_page"]"#, 30_000).await;
    let run_url = format!("{base}/v1/actions/runs/r_page");
    let link = "https://github.com/acme/checkout/actions/runs/4242";
    for line in ["step one: build", "step two: test", "step three: ship"] {
        let (code, body) = http(
            "POST",
            &format!("{run_url}/logs"),
            Some(TEST_TOKEN),
            Some(json!({"message": line})),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = http(
        "PATCH",
        &run_url,
        Some(TEST_TOKEN),
        Some(json!({"link": link, "statusLabel": "shipping"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    b.eval("location.hash = '#/runs/r_page'").await;
    b.wait_text("#timeline", "step three: ship").await;
    b.wait_text("#external", link).await;
    let messages = b.texts(".step.k-log .message").await;
    let ours: Vec<&String> = messages.iter().filter(|m| m.starts_with("step ")).collect();
    assert_eq!(
        ours,
        ["step one: build", "step two: test", "step three: ship"],
        "{messages:?}"
    );
    let seqs: Vec<u64> = b
        .attrs(".step", "data-seq")
        .await
        .into_iter()
        .map(|s| s.unwrap().parse().unwrap())
        .collect();
    assert!(seqs.len() >= 5, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "seq order: {seqs:?}");
    let hrefs = b.attrs("#external a", "href").await;
    assert_eq!(hrefs, vec![Some(link.to_owned())]);
    // The page follows the run: its success shows without a reload.
    let (code, body) = http(
        "PATCH",
        &run_url,
        Some(TEST_TOKEN),
        Some(json!({"status": "SUCCESS", "summary": "shipped"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    b.wait(r#"h1 [data-status="SUCCESS"]"#, 5_000).await;
    b.screenshot("board-run.png").await;
    let page = b
        .eval("location.href + '\\n' + document.documentElement.outerHTML")
        .await;
    let page = page.as_str().unwrap();
    for secret in [READ_TOKEN, TEST_TOKEN] {
        assert!(
            !page.contains(secret),
            "a token reached the page or its URL"
        );
    }
    let errors = b.errors().await;
    // The refused token's 401 is the one error the browser logs on its own.
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !(e.contains("401") && e.contains("Unauthorized")))
        .collect();
    assert!(unexpected.is_empty(), "the page logged errors: {errors:#?}");
    println!("run page: {} steps in seq order, link {link}", seqs.len());
    b.close().await;
}

/// The DLQ page lists a dead letter with its event; a read token cannot replay (403);
/// with a write token the button previews, replays, and the run then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_replay_button_puts_the_record_back_and_the_run_succeeds() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    rx.set_default_status(503);
    let toml = Setup::new(&kafka, &t)
        .config(TOKENS)
        .config("[backends.webhook.retry]\nmax_attempts = 1\n")
        .toml();
    let d = Dispatcher::start_with_config(&toml, &[("BOARD_READ_TOKEN", READ_TOKEN)]);
    let base = d.http_base();
    // The event carries a configured secret's value (a user pasted it into an input):
    // the board must not show it.
    let mut event = webhook_event("r_dead", &rx.url("/deploy"), true);
    event["inputs"]["note"] = json!(format!("pasted {TEST_TOKEN} by mistake"));
    kafka
        .produce(&t.triggers, &[record(Some("k"), &event)])
        .await;
    read_dlq(&kafka, &t, 1, WAIT).await;
    let (code, body) = http(
        "POST",
        &format!("{base}/v1/dlq/replay"),
        Some(READ_TOKEN),
        Some(json!({"dryRun": true})),
    )
    .await;
    assert_eq!(code, 403, "a read token replays: {body}");

    let mut b = Browser::launch().await;
    b.goto(&format!("{base}/#/dlq")).await;
    b.wait("#login", 10_000).await;
    b.run(json!({"op": "fill", "sel": "#token", "value": TEST_TOKEN}))
        .await;
    b.run(json!({"op": "press", "sel": "#token", "key": "Enter"}))
        .await;
    b.wait_text("#letters", "r_dead").await;
    let letters = b.texts("#letters .letter").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].contains("http_status"), "{letters:?}");
    // The event is there, with the secret its template would have read left out.
    let event = b.texts("#letters pre.event").await;
    assert!(event[0].contains("\"r_dead\""), "{event:?}");
    assert!(event[0].contains("pasted *** by mistake"), "{event:?}");
    let page = b.eval("document.documentElement.outerHTML").await;
    assert!(
        !page.as_str().unwrap().contains(TEST_TOKEN),
        "a secret reached the page"
    );
    rx.set_default_status(200);
    b.run(json!({"op": "click", "sel": "#replay-preview"}))
        .await;
    b.wait_text("#replay-dry", "1 records would be replayed")
        .await;
    let before = rx.count();
    b.run(json!({"op": "click", "sel": "#replay-confirm"}))
        .await;
    b.wait_text("#replay-done", "Replayed 1 records").await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "the replayed run succeeds", |u| {
        u.iter()
            .any(|u| u.run_id == "r_dead" && u.status == Some(RunStatus::Success))
    })
    .await;
    assert_eq!(rx.count(), before + 1, "one dispatch after the replay");
    b.eval("location.hash = '#/runs/r_dead'").await;
    b.wait(r#"h1 [data-status="SUCCESS"]"#, 10_000).await;
    b.wait_text("#timeline", "dispatched again from").await;
    let errors = b.errors().await;
    assert!(
        errors
            .iter()
            .all(|e| e.contains("401") && e.contains("Unauthorized")),
        "the page logged errors: {errors:#?}"
    );
    println!("dlq: previewed 1, replayed 1, run r_dead SUCCESS");
    b.close().await;
}

/// 10,000 runs in the view: the list holds them all, draws only the rows in view, and
/// scrolls end to end without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_scroll_without_errors() {
    const RUNS: usize = 10_000;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    // The view folds the status topic, whoever wrote it: 10,000 finished runs.
    let mut records = Vec::with_capacity(RUNS * 2);
    for n in 0..RUNS {
        let run = format!("r_many_{n:05}");
        let at = format!(
            "2026-12-03T08:{:02}:{:02}.{:03}Z",
            n / 600 % 60,
            n / 10 % 60,
            n % 1000
        );
        for (seq, status) in [
            (1, "IN_PROGRESS"),
            (2, if n % 7 == 0 { "FAILURE" } else { "SUCCESS" }),
        ] {
            let u = json!({"runId": run, "seq": seq, "at": at, "kind": "status",
                "status": status, "backend": "WEBHOOK", "action": format!("action_{}", n % 5)});
            records.push(record(Some(&run), &u));
        }
    }
    kafka.produce(&t.status, &records).await;
    let d = Setup::new(&kafka, &t).start();
    let base = d.http_base();
    let mut b = Browser::launch().await;
    b.goto(&format!("{base}/")).await;
    b.wait_text(r#"[data-count="ALL"]"#, &format!("{RUNS} runs"))
        .await;
    let height = b
        .eval("document.querySelector('#runs .spacer').getBoundingClientRect().height")
        .await
        .as_f64()
        .unwrap();
    assert!(height >= (RUNS * 34) as f64, "spacer {height}px");
    // The order the server lists them in (newest first), which the page must follow.
    let (code, listing) = http("GET", &format!("{base}/v1/runs"), None, None).await;
    assert_eq!(code, 200);
    let order: Vec<&str> = listing["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(order.len(), RUNS);
    let mut frames = Vec::new();
    for step in 0..=20 {
        let top = (height * step as f64 / 20.0) as i64;
        let t0 = b.run(json!({"op": "now"})).await.as_i64().unwrap();
        b.run(json!({"op": "scroll", "sel": "#runs", "top": top}))
            .await;
        let t1 = b.run(json!({"op": "frame"})).await.as_i64().unwrap();
        frames.push(t1 - t0);
        let rows = b.attrs(".rows .row", "data-run").await;
        assert!(
            !rows.is_empty() && rows.len() < 80,
            "at {top}px: {} rows in the document",
            rows.len()
        );
        // The row drawn at the top is the one at that index, newest first.
        let index = (top as usize / 34).min(RUNS - 1);
        let want = order[index];
        assert!(
            rows.iter().any(|r| r.as_deref() == Some(want)),
            "at {top}px, {want} is not drawn: {:?}…",
            &rows[..3.min(rows.len())]
        );
    }
    let errors = b.errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    frames.sort_unstable();
    println!(
        "10,000 runs: 21 scroll positions, rows drawn per frame < 80, scroll-to-frame ms median {} max {}",
        frames[frames.len() / 2],
        frames[frames.len() - 1]
    );
    b.close().await;
}
