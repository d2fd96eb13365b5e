//! The command line: `validate`, `trigger`, start-up topic checks, and group rebalances.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use switchyard::model::RunStatus;

const WAIT: Duration = Duration::from_secs(60);

/// `switchyard validate --config PATH`: exit code and standard error.
fn validate(path: &std::path::Path) -> (Option<i32>, String) {
    let out = cmd()
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(text: &str) -> std::path::PathBuf {
    let path = scratch_dir().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn invalid_config_exits_78_and_lists_every_problem() {
    let path = write_config(
        r#"
[kafka]
brokers = ""
status_topic = "has space"
[dispatch]
partition_window = 0
shutdown_grace = "soon"
"#,
    );
    let (code, err) = validate(&path);
    assert_eq!(code, Some(78));
    // A type error (shutdown_grace) is reported; fix it and the rest are listed together.
    assert!(
        err.contains("shutdown_grace") || err.contains("soon"),
        "{err}"
    );

    let path = write_config(
        "[kafka]\nbrokers = \"\"\nstatus_topic = \"has space\"\nbrokerz = 1\n[dispatch]\npartition_window = 0\n",
    );
    let (code, err) = validate(&path);
    assert_eq!(code, Some(78));
    for needle in [
        "kafka.brokers",
        "kafka.status_topic",
        "kafka.brokerz: unknown field",
        "dispatch.partition_window",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }

    // The shipped configurations stay valid: the annotated example and docker compose's.
    for shipped in ["examples/switchyard.toml", "deploy/compose/switchyard.toml"] {
        let out = cmd()
            .args(["validate", "--config", shipped])
            .env("SWITCHYARD_API_TOKEN", "compose-demo-token")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn run_with_an_invalid_config_also_exits_78() {
    let path = write_config("[backends.webhook]\nconcurrency = 0\n");
    let out = cmd().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_named_when_creation_is_off() {
    let kafka = Kafka::start();
    let mut t = kafka.topics(1).await;
    t.status = unique("absent-status");
    t.dlq = unique("absent-dlq");
    let path = write_config(&config_toml(&kafka, &t, ""));
    let out = cmd().args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing topics"), "{err}");
    assert!(err.contains(&t.status) && err.contains(&t.dlq), "{err}");
    assert!(!err.contains(&t.triggers), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_command_publishes_and_prints_the_run_id() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let path = write_config(&config_toml(&kafka, &t, ""));
    let event_file = path.with_file_name("event.json");
    let ev = webhook_event("r_cli", &rx.url("/ok"), true);
    std::fs::write(&event_file, serde_json::to_vec(&ev).unwrap()).unwrap();
    let out = cmd()
        .args(["trigger", "--config"])
        .arg(&path)
        .arg("--file")
        .arg(&event_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "r_cli");

    // A malformed event is refused with the dispatcher's message unless --no-validate.
    std::fs::write(&event_file, b"{\"run\": 1}").unwrap();
    let out = cmd()
        .args(["trigger", "--config"])
        .arg(&path)
        .arg("--file")
        .arg(&event_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run.id"));

    let _d = Dispatcher::start(&kafka, &t, "");
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| u.iter().any(|u| u.is_terminal()))
        .await;
    assert_eq!(
        log.sole_terminal("r_cli").await.status,
        Some(RunStatus::Success)
    );
}

/// A second member joins mid-run: the first drains the revoked partitions, commits, and
/// every run still ends with a terminal status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_drains_revoked_partitions_and_loses_nothing() {
    let kafka = Kafka::start();
    let t = kafka.topics(4).await;
    let rx = Receiver::start().await;
    // Slow enough that the first member still has runs in flight when it is revoked.
    rx.set_default_delay(Duration::from_millis(1500));
    let extra = "[dispatch]\nshutdown_grace = \"10s\"\n";
    let first = Dispatcher::start(&kafka, &t, extra);
    let url = rx.url("/deploy");
    let runs: Vec<String> = (0..120).map(|n| format!("r_reb_{n}")).collect();
    let records: Vec<_> = runs
        .iter()
        .map(|r| record(Some(r), &webhook_event(r, &url, true)))
        .collect();
    kafka.produce(&t.triggers, &records[..60]).await;
    rx.wait_requests(10, WAIT).await;
    let second = Dispatcher::start(&kafka, &t, extra);
    let deadline = std::time::Instant::now() + WAIT;
    while !second.logs().contains("partitions assigned") {
        assert!(
            std::time::Instant::now() < deadline,
            "second member never joined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kafka.produce(&t.triggers, &records[60..]).await;

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "120 terminal runs", |u| StatusLog::finished(u) >= 120)
        .await;
    let missing: Vec<_> = runs.iter().filter(|r| log.terminal(r).is_empty()).collect();
    assert!(missing.is_empty(), "{missing:?}");
    let requests = rx.count();
    println!(
        "rebalance: 120 runs, {requests} requests ({} duplicates)",
        requests.saturating_sub(120)
    );
    assert_eq!(kafka.wait_committed(&t, 120, WAIT).await, 120);
    let logs = first.logs();
    assert!(
        logs.contains("partitions revoked; draining"),
        "no revoke:\n{logs}"
    );
    if kafka.is_real() {
        // The mock cluster refuses commits while a group rebalances (see README).
        assert!(logs.contains("committed"), "no commit on revoke:\n{logs}");
    }
}

/// `runs tail` prints a run's updates one line each; `runs get` folds them into its state
/// (text or JSON); an unknown run exits 1 and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_tail_and_get_read_the_status_topic() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    kafka
        .produce(
            &t.triggers,
            // Slower than `dispatch.in_progress_after` (1 s): IN_PROGRESS, then SUCCESS.
            &[record(
                None,
                &webhook_event("r_cli", &rx.url("/ok?delay_ms=1500"), true),
            )],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    let path = write_config(&config_toml(&kafka, &t, ""));
    let run = |args: &[&str]| {
        let out = cmd()
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["runs", "tail", "--run", "r_cli"]);
    println!("runs tail:\n{out}");
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), log.of("r_cli").len(), "{out}");
    assert!(lines[0].contains("r_cli") && lines[0].contains("IN_PROGRESS"));
    assert!(lines.last().unwrap().contains("SUCCESS"), "{out}");
    assert!(lines.last().unwrap().contains("response {"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when not a terminal");

    let (code, out, err) = run(&["runs", "get", "r_cli"]);
    println!("runs get:\n{out}");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("status    SUCCESS"), "{out}");
    assert!(out.contains("backend   WEBHOOK"), "{out}");
    let (code, out, _) = run(&["runs", "get", "r_cli", "--json"]);
    assert_eq!(code, Some(0));
    let state: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(state["status"], "SUCCESS");
    assert_eq!(state["response"]["ok"], true);

    let (code, _, err) = run(&["runs", "get", "r_nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("run r_nobody not found on"), "{err}");
}

#[test]
fn port_verify_checks_a_message_and_says_why() {
    use std::io::Write as _;
    use std::process::Stdio;
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/port/agent_run_signed.json"
    );
    let out = cmd()
        .args(["port", "verify", "--secret", "test", "--file", fixture])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "valid\n");
    // From standard input, with the secret from the agent's variable: a tampered message.
    let tampered = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("\"title\": \"Create\"", "\"title\": \"Delete\"");
    let mut child = cmd()
        .args(["port", "verify"])
        .env("PORT_CLIENT_SECRET", "test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(tampered.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "invalid: the signature does not match the message (wrong secret, or the message was changed)\n"
    );
    let out = cmd()
        .args([
            "port",
            "verify",
            "--secret",
            "test",
            "--max-age",
            "1h",
            "--file",
            fixture,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("invalid: the timestamp 1713277889 is "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// In Port mode switchyard's own topics live on `[kafka.output]`: without one, the
/// commands that read them say why they cannot, and `dlq replay` (which would publish to
/// Port's read-only cluster) is refused.
#[test]
fn port_mode_commands_name_the_read_only_cluster() {
    let agent = [
        ("PORT_ORG_ID", "org_C"),
        ("PORT_CLIENT_ID", "cid"),
        ("PORT_CLIENT_SECRET", "agent-secret"),
        ("PORT_API_BASE_URL", "http://127.0.0.1:9"),
        ("USING_LOCAL_PORT_INSTANCE", "true"),
        ("KAFKA_CONSUMER_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
    ];
    let out = cmd()
        .args(["runs", "get", "r_1"])
        .env_remove("SWITCHYARD_CONFIG")
        .envs(agent)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("without [kafka.output] has no status"),
        "{err}"
    );
    let out = cmd()
        .args(["dlq", "replay"])
        .env_remove("SWITCHYARD_CONFIG")
        .envs(agent)
        .env("SWITCHYARD_KAFKA__OUTPUT__BROKERS", "127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("read-only to switchyard"), "{err}");
}

/// `switchyard demo --board`: the four samples, then the board's URL; the board lists
/// the samples, a new sample run is published every few seconds, and Ctrl-C ends it.
#[test]
fn demo_board_keeps_publishing_until_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = cmd()
        .args(["demo", "--board"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |what: &str, within: Duration| -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what:?} within {within:?}; output:\n{}",
                    seen.join("\n")
                ),
            }
        }
    };
    let line = wait_for("the run board: http://", Duration::from_secs(90));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    wait_for("published  r_demo_0001", Duration::from_secs(15));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (page, runs) = rt.block_on(async {
        let page = reqwest::get(format!("{url}/")).await.unwrap();
        assert_eq!(page.status(), 200);
        let page = page.text().await.unwrap();
        let runs: serde_json::Value = reqwest::get(format!("{url}/v1/runs"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (page, runs)
    });
    assert!(page.contains("/board/app.js"), "{page}");
    let ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for want in ["r_demo_sync_ok", "r_demo_fails", "r_demo_async"] {
        assert!(ids.contains(&want), "{want} not on the board: {ids:?}");
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    wait_for("stopping the demo", Duration::from_secs(15));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    println!("demo --board: {url}, runs listed {ids:?}");
}
