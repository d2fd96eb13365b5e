//! The pool's layers with paused time and a scripted backend: each test runs in
//! milliseconds of real time, however long the virtual waits are.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Map;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::backends::AttemptFuture;
use crate::model::TriggerEvent;

/// A backend that answers from a script: each attempt takes the next (delay, report);
/// past the script's end it succeeds at once.
struct Scripted {
    script: Mutex<VecDeque<(Duration, Report)>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = (Duration, Report)>) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: Mutex::new(steps.into_iter().collect()),
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Backend for Scripted {
    fn kind(&self) -> &'static str {
        "TEST"
    }

    fn attempt<'a>(&'a self, _req: &'a Request) -> AttemptFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self.script.lock().unwrap().pop_front();
        Box::pin(async move {
            match step {
                Some((delay, report)) => {
                    tokio::time::sleep(delay).await;
                    report
                }
                None => Report::new(Outcome::Succeeded, "HTTP 200"),
            }
        })
    }

    fn destination(&self, _req: &Request) -> Option<String> {
        Some("deploy.example:443".into())
    }
}

fn http(code: u16) -> Report {
    let outcome = match code {
        200..=299 => Outcome::Succeeded,
        401 | 403 => Outcome::CredentialsRejected,
        _ => Outcome::Permanent, // the pool reclassifies with retry_statuses
    };
    let mut r = Report::new(outcome, format!("HTTP {code}: body"));
    r.http_status = (code >= 300).then_some(code);
    r
}

fn now(r: Report) -> (Duration, Report) {
    (Duration::ZERO, r)
}

fn request() -> Request {
    let event: TriggerEvent = serde_json::from_value(serde_json::json!({
        "run": {"id": "r_1"},
        "action": {"identifier": "deploy", "invocationMethod": {"type": "TEST"}}
    }))
    .unwrap();
    Request {
        run_id: "r_1".into(),
        invocation: Map::new(),
        event: Arc::new(event),
    }
}

fn config() -> PoolConfig {
    let mut cfg = PoolConfig {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    cfg.retry.max_attempts = 4;
    cfg.retry.initial_backoff = Duration::from_secs(1);
    cfg.retry.max_backoff = Duration::from_secs(8);
    cfg.retry.credentials_pause = Duration::from_secs(30);
    cfg.retry.credentials_max_wait = Duration::from_secs(300);
    cfg.breaker.enabled = false;
    cfg
}

/// Run once; returns the result, the notices and the virtual time it took.
async fn run(pool: &Pool, backend: &Scripted) -> (Option<Attempted>, Vec<RunUpdate>, Duration) {
    let mut notices = Vec::new();
    let start = Instant::now();
    let done = pool
        .run(backend, &request(), &CancellationToken::new(), &mut notices)
        .await;
    (done, notices, start.elapsed())
}

fn messages(notices: &[RunUpdate]) -> Vec<String> {
    notices
        .iter()
        .map(|u| u.message.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_capped_backoff_and_announced() {
    let pool = Pool::new("TEST", &config());
    let backend = Scripted::new([now(http(503)), now(http(502))]);
    let (done, notices, took) = run(&pool, &backend).await;
    let done = done.unwrap();
    assert_eq!(done.report.outcome, Outcome::Succeeded);
    assert_eq!((done.attempt, backend.calls()), (3, 3));
    let texts = messages(&notices);
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].starts_with("attempt 2/4 after HTTP 503, waiting "),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("attempt 3/4 after HTTP 502, waiting "),
        "{texts:?}"
    );
    // Full jitter below 1 s, then below 2 s.
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn attempts_run_out_and_permanent_failures_are_not_retried() {
    let pool = Pool::new("TEST", &config());
    let backend = Scripted::new((0..10).map(|_| now(http(503))));
    let (done, notices, _) = run(&pool, &backend).await;
    let done = done.unwrap();
    assert_eq!(done.report.outcome, Outcome::Retryable);
    assert_eq!((done.attempt, backend.calls(), notices.len()), (4, 4, 3));

    let backend = Scripted::new([now(http(404))]);
    let (done, notices, took) = run(&pool, &backend).await;
    assert_eq!(done.unwrap().report.outcome, Outcome::Permanent);
    assert_eq!(
        (backend.calls(), notices.len(), took),
        (1, 0, Duration::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_capped() {
    let pool = Pool::new("TEST", &config());
    let mut slow_down = http(429);
    slow_down.retry_after = Some(Duration::from_secs(3));
    let backend = Scripted::new([now(slow_down)]);
    let (done, notices, took) = run(&pool, &backend).await;
    assert_eq!(done.unwrap().attempt, 2);
    assert_eq!(took, Duration::from_secs(3));
    assert!(
        messages(&notices)[0].ends_with("waiting 3.0 s"),
        "{notices:?}"
    );

    let mut too_long = http(503);
    too_long.retry_after = Some(Duration::from_secs(3600));
    let backend = Scripted::new([now(too_long)]);
    let (_, _, took) = run(&pool, &backend).await;
    assert_eq!(took, Duration::from_secs(8), "capped at max_backoff");
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_as_a_retryable_failure() {
    let mut cfg = config();
    cfg.retry.max_attempts = 1;
    let pool = Pool::new("TEST", &cfg);
    let backend = Scripted::new([(Duration::from_secs(60), http(200))]);
    let (done, _, took) = run(&pool, &backend).await;
    let report = done.unwrap().report;
    assert_eq!(report.outcome, Outcome::Retryable);
    assert_eq!(report.error_class, Some("timeout"));
    assert_eq!(report.summary, "TEST attempt timed out after 5s");
    assert_eq!(took, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_pause_the_destination_and_the_run_probes_again() {
    let pool = Pool::new("TEST", &config());
    let backend = Scripted::new([now(http(401))]);
    let (done, notices, took) = run(&pool, &backend).await;
    let done = done.unwrap();
    assert_eq!(done.report.outcome, Outcome::Succeeded);
    assert_eq!(took, Duration::from_secs(30), "one credentials_pause");
    assert_eq!(
        messages(&notices),
        ["deploy.example:443 paused: credentials rejected (HTTP 401); retrying in 30 s"]
    );
    assert_eq!(notices[0].level, Some(LogLevel::Error));
    assert_eq!(
        pool.paused(),
        0,
        "the accepted probe resumed the destination"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_stops_waiting_on_credentials_after_credentials_max_wait() {
    let mut cfg = config();
    cfg.retry.credentials_max_wait = Duration::from_secs(75);
    let pool = Pool::new("TEST", &cfg);
    let backend = Scripted::new((0..10).map(|_| now(http(403))));
    let (done, notices, took) = run(&pool, &backend).await;
    let report = done.unwrap().report;
    assert_eq!(report.outcome, Outcome::CredentialsRejected);
    assert_eq!(took, Duration::from_secs(75));
    // Probes at 0, 30 and 60 s; the third waits the remaining 15 s.
    assert_eq!(backend.calls(), 3);
    assert!(
        messages(&notices)[2].ends_with("retrying in 15 s"),
        "{notices:?}"
    );
    assert!(
        report.summary.ends_with(
            "(credentials still rejected after 75 s; retry.credentials_max_wait is 75s)"
        ),
        "{}",
        report.summary
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_without_a_request_until_its_probe() {
    let mut cfg = config();
    cfg.retry.max_attempts = 1;
    cfg.breaker.enabled = true;
    cfg.breaker.failures = 2;
    cfg.breaker.open_for = Duration::from_secs(10);
    let pool = Pool::new("TEST", &cfg);
    let backend = Scripted::new([now(http(503)), now(http(503))]);
    run(&pool, &backend).await;
    run(&pool, &backend).await;
    assert_eq!(backend.calls(), 2);
    let (done, _, took) = run(&pool, &backend).await;
    let report = done.unwrap().report;
    assert_eq!(backend.calls(), 2, "refused without a request");
    assert_eq!(report.error_class, Some("circuit_open"));
    assert_eq!(
        report.summary,
        "circuit open for deploy.example:443 after 2 consecutive failures"
    );
    assert_eq!(took, Duration::ZERO);
    tokio::time::advance(Duration::from_secs(10)).await;
    let (done, _, _) = run(&pool, &backend).await;
    assert_eq!(
        done.unwrap().report.outcome,
        Outcome::Succeeded,
        "the probe"
    );
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_run_refused_by_the_breaker_retries_after_the_probe_wait() {
    let mut cfg = config();
    cfg.breaker.enabled = true;
    cfg.breaker.failures = 1;
    cfg.breaker.open_for = Duration::from_secs(4);
    let pool = Pool::new("TEST", &cfg);
    let backend = Scripted::new([now(http(503))]);
    // Attempt 1 fails and opens the breaker; attempt 2 after jitter < 1 s is refused
    // with Retry-After = the rest of the 4 s; attempt 3 is the probe and succeeds.
    let (done, _, took) = run(&pool, &backend).await;
    let done = done.unwrap();
    assert_eq!(done.report.outcome, Outcome::Succeeded);
    assert_eq!((done.attempt, backend.calls()), (3, 2));
    assert_eq!(took, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_spaces_attempts() {
    let mut cfg = config();
    cfg.rate_limit.per_second = 2.0;
    cfg.rate_limit.burst = Some(1);
    let pool = Pool::new("TEST", &cfg);
    let backend = Scripted::new([]);
    let start = Instant::now();
    for _ in 0..5 {
        run(&pool, &backend).await;
    }
    assert_eq!(start.elapsed(), Duration::from_secs(2), "4 waits of 500 ms");
    assert_eq!(backend.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_held_only_while_an_attempt_runs() {
    let mut cfg = config();
    cfg.concurrency = 1;
    let pool = Arc::new(Pool::new("TEST", &cfg));
    // Run A fails at once and waits out its backoff; run B's 1 s attempt goes meanwhile.
    let a = Scripted::new([now(http(503))]);
    let b = Scripted::new([(Duration::from_secs(1), http(200))]);
    let start = Instant::now();
    let (ra, rb) = tokio::join!(run(&pool, &a), run(&pool, &b));
    assert_eq!(ra.0.unwrap().attempt, 2);
    assert_eq!(rb.0.unwrap().attempt, 1);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn abandoning_ends_the_wait_and_returns_none() {
    let pool = Pool::new("TEST", &config());
    let backend = Scripted::new([now(http(401))]);
    let abandon = CancellationToken::new();
    let cancel = abandon.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cancel.cancel();
    });
    let mut notices = Vec::new();
    let start = Instant::now();
    let done = pool
        .run(backend.as_ref(), &request(), &abandon, &mut notices)
        .await;
    assert!(done.is_none());
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "not the 30 s pause"
    );
    assert_eq!(notices.len(), 1);
}

#[test]
fn the_pool_future_stays_small() {
    // One state machine for all the layers, and notices boxed: the future a lane holds
    // per run stays small (it is held for every in-flight run).
    let pool = Pool::new("TEST", &config());
    let backend = Scripted::new([]);
    let req = request();
    let abandon = CancellationToken::new();
    let mut notices = Vec::new();
    let fut = pool.run(backend.as_ref(), &req, &abandon, &mut notices);
    let size = std::mem::size_of_val(&fut);
    println!("pool future: {size} bytes");
}
