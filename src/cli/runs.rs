//! `switchyard runs tail` and `switchyard runs get`: the status topic for people.

use std::io::Write;
use std::time::Duration;

use rdkafka::message::Message;

use switchyard::codec::avro::Codec;
use switchyard::config::{Config, KafkaConfig};
use switchyard::kafka::tail::TopicTail;
use switchyard::model::{RunStatus, RunUpdate};
use switchyard::status::view::{RunState, RunView};

/// After the end offsets read at start are reached, keep reading until the topic has
/// been quiet this long (watermarks of some brokers trail the log end a little).
const QUIET: Duration = Duration::from_millis(500);

/// Read the status topic from the beginning, calling `each` for every update (of `run`
/// when given). Stops at the end, or never with `follow`.
async fn scan(
    kafka: &KafkaConfig,
    codec: &Codec,
    run: Option<&str>,
    follow: bool,
    mut each: impl FnMut(&RunUpdate),
) -> anyhow::Result<()> {
    let mut tail = TopicTail::open(kafka, &kafka.status_topic, "runs-cli", &[]).await?;
    loop {
        let caught_up = tail.caught_up();
        // Before the end: wait as long as it takes (bounded by the broker).
        let idle = if follow || !caught_up {
            Duration::from_secs(3600)
        } else {
            QUIET
        };
        match tail.next(idle).await? {
            Some(m) => {
                let Some(u) = codec.decode_update(m.payload().unwrap_or_default()).await else {
                    continue;
                };
                if run.is_none_or(|r| r == u.run_id) {
                    each(&u);
                }
            }
            None if caught_up => return Ok(()),
            None => {}
        }
    }
}

/// Print run updates, one line each.
pub async fn tail(
    cfg: &Config,
    run: Option<&str>,
    follow: bool,
    color: bool,
) -> anyhow::Result<()> {
    let kafka = &cfg.own_topics_kafka().map_err(anyhow::Error::msg)?;
    let codec = Codec::from_config(cfg);
    let mut out = std::io::stdout().lock();
    let mut n = 0usize;
    scan(kafka, &codec, run, follow, |u| {
        n += 1;
        let _ = writeln!(out, "{}", switchyard::status::display::line(u, color));
    })
    .await?;
    if n == 0 {
        match run {
            Some(r) => eprintln!("no updates of run {r} on {}", kafka.status_topic),
            None => eprintln!("{} is empty", kafka.status_topic),
        }
    }
    Ok(())
}

/// One run's state, folded from the status topic; `None` when it has no updates.
pub async fn get(cfg: &Config, run: &str) -> anyhow::Result<Option<RunState>> {
    let view = RunView::new(1, 10_000);
    let codec = Codec::from_config(cfg);
    let kafka = cfg.own_topics_kafka().map_err(anyhow::Error::msg)?;
    scan(&kafka, &codec, Some(run), false, |u| view.observe(u)).await?;
    Ok(view.get(run))
}

/// A run's state for people.
pub fn describe(r: &RunState, color: bool) -> String {
    let status = r.status.as_str();
    let status = if color {
        let code = match r.status {
            RunStatus::InProgress => "33",
            RunStatus::Success => "32",
            RunStatus::Failure => "31",
        };
        format!("\x1b[{code}m{status}\x1b[0m")
    } else {
        status.to_owned()
    };
    let mut s = format!("run       {}\nstatus    {status}", r.id);
    let mut field = |name: &str, value: Option<&str>| {
        if let Some(v) = value {
            s.push_str(&format!("\n{name:<9} {v}"));
        }
    };
    field("label", r.status_label.as_deref());
    field("summary", r.summary.as_deref());
    let links = r.link.join(" ");
    field("link", (!links.is_empty()).then_some(links.as_str()));
    field("external", r.external_run_id.as_deref());
    field("backend", r.backend.as_deref());
    field("created", Some(&r.created_at));
    field("updated", Some(&r.updated_at));
    field("ended", r.ended_at.as_deref());
    let response = r.response.as_ref().map(|v| v.to_string());
    field("response", response.as_deref());
    if !r.logs.is_empty() {
        s.push_str("\nlogs");
        for l in &r.logs {
            let time = l.at.get(11..23).unwrap_or(&l.at);
            s.push_str(&format!("\n  {time}  {}", l.message));
        }
    }
    s
}
