//! `switchyard bench`: end-to-end throughput and latency of switchyard against the pipe
//! limit of the same machine, broker and sink.
//!
//! The parent process owns the broker (the given one, or librdkafka's mock cluster), a
//! webhook sink on loopback (axum/hyper, keep-alive, a fixed latency), the producer of
//! trigger events and the reader of the status topic. Each system under test runs as a
//! child process, so its CPU time and peak RSS are its own:
//! - `switchyard run` with a generated configuration;
//! - the pipe (`switchyard bench-pipe`): consume → the same HTTP request with the same
//!   concurrency → one status record per event (idempotent producer, `acks=all`), with no
//!   templates, router, pools, ordering or offset tracking.
//!
//! Throughput is measured from the first trigger's timestamp to the last terminal
//! update's; end-to-end latency per event is the terminal update's record timestamp minus
//! the trigger's. Every loop is bounded by count and by `--timeout`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;

mod automations;
mod board;
mod measure;
mod pipe;
mod templates;

use measure::measure;
pub use pipe::pipe;
use pipe::Sink;
use templates::templates;

/// What to measure: the `bench` command's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Broker to use; unset starts librdkafka's in-process mock cluster.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Trigger events to send (throughput mode).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Partitions of the triggers and status topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Hot keys (0: every event its own key).
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Latency of the webhook sink, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub sink_latency_ms: u64,
    /// Webhook concurrency of both systems.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Offered rate in events/s for --duration (latency mode) instead of --events.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Length of a latency-mode run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Systems to measure, in order (comma-separated): pipe, switchyard, board
    /// (switchyard with its run board on, no clients) and board-sse (the same with
    /// --board-clients Server-Sent Events clients reading it throughout).
    #[arg(long, default_value = "pipe,switchyard", value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Event-stream clients of the board-sse system.
    #[arg(long, default_value_t = 50)]
    pub board_clients: usize,
    /// Give up on a system after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// `fetch.wait.max.ms` of both systems' consumers (librdkafka's default is 500, and
    /// the mock cluster holds every fetch that long).
    #[arg(long, default_value_t = 10)]
    pub fetch_wait_ms: u64,
    /// Also print each system's latency per second of sending (p50, p99, max), to show
    /// when a run's latency changes, e.g. as a broker slows while it fills.
    #[arg(long)]
    pub timeline: bool,
    /// switchyard members in the consumer group (the pipe is always one): throughput of
    /// the group; CPU summed over the members; peak RSS of the largest member.
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// TOML appended to the switchyard members' configuration, to measure a setting
    /// (e.g. `--switchyard-toml '[dispatch]
    /// in_progress_after = "0s"'`).
    #[arg(long, default_value = "")]
    pub switchyard_toml: String,
    /// Print each system's resident set size (VmRSS, summed over its members) every
    /// this many seconds of the run, to show memory settling (0: off).
    #[arg(long, default_value_t = 0)]
    pub rss_every_s: u64,
    /// Measure only the cost of rendering a run's templates, this many renders per
    /// case: in-process plain paths, and jq programs in the sandbox's worker processes.
    #[arg(long)]
    pub templates: Option<usize>,
    /// Measure only the automations engine: --events entity changes evaluated with this
    /// many automations loaded (BENCHMARKS.md).
    #[arg(long)]
    pub automations: Option<usize>,
}

/// One system's measurements.
#[derive(Debug, Clone)]
pub struct Measured {
    pub system: String,
    pub events: usize,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Printed last in the row, so that scripts reading fields by position still work.
    pub p999_ms: f64,
    pub peak_rss_mb: f64,
    pub cpu_s_per_10k: f64,
    /// Latency by the second (from the first send) in which each event was sent.
    pub timeline: Vec<Second>,
}

/// The latency of the events sent in one second of a run.
#[derive(Debug, Clone)]
pub struct Second {
    pub second: usize,
    pub events: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn run(opts: Options) -> anyhow::Result<Vec<Measured>> {
    let exe = std::env::current_exe().context("locating the switchyard binary")?;
    if let Some(n) = opts.templates {
        templates(n, exe).await?;
        return Ok(Vec::new());
    }
    if let Some(n) = opts.automations {
        automations::automations(n, &opts, &exe).await?;
        return Ok(Vec::new());
    }
    let cluster = match &opts.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1).context("starting the mock cluster")?),
    };
    let brokers = match (&opts.brokers, &cluster) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.bootstrap_servers(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let sink = Sink::start(opts.sink_latency_ms).await?;
    println!(
        "bench: brokers {brokers}{}, sink http://{} ({} ms), {} partitions, keys {}, concurrency {}, fetch.wait.max.ms {}, switchyard members {}{}",
        if opts.brokers.is_none() { " (mock cluster)" } else { "" },
        sink.addr,
        opts.sink_latency_ms,
        opts.partitions,
        if opts.keys == 0 { "distinct".to_owned() } else { opts.keys.to_string() },
        opts.concurrency,
        opts.fetch_wait_ms,
        opts.members.max(1),
        if opts.switchyard_toml.is_empty() {
            String::new()
        } else {
            format!(", switchyard config + {:?}", opts.switchyard_toml)
        }
    );
    let mut results = Vec::new();
    for system in &opts.systems {
        let m = measure(&exe, &brokers, cluster.as_ref(), &sink, &opts, system).await?;
        print_row(&m);
        if opts.timeline {
            print_timeline(&m);
        }
        results.push(m);
    }
    if let (Some(s), Some(p)) = (
        results.iter().find(|m| m.system == "switchyard"),
        results.iter().find(|m| m.system == "pipe"),
    ) {
        println!(
            "ratio switchyard / pipe limit: throughput {:.2}, p50 {:+.1} ms, p99 {:+.1} ms, cpu/10k {:.2}",
            s.throughput / p.throughput,
            s.p50_ms - p.p50_ms,
            s.p99_ms - p.p99_ms,
            s.cpu_s_per_10k / p.cpu_s_per_10k
        );
    }
    Ok(results)
}

fn print_row(m: &Measured) {
    println!(
        "{:<10} events {:>7}  {:>7.2} s  {:>9.0} ev/s  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  peak RSS {:>6.1} MB  cpu {:>5.2} s/10k  p999 {:.1} ms",
        m.system, m.events, m.seconds, m.throughput, m.p50_ms, m.p99_ms, m.max_ms, m.peak_rss_mb, m.cpu_s_per_10k, m.p999_ms
    );
}

fn print_timeline(m: &Measured) {
    for w in &m.timeline {
        println!(
            "{:<10}   second {:>3}  events {:>6}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            m.system, w.second, w.events, w.p50_ms, w.p99_ms, w.max_ms
        );
    }
}

/// Nearest-rank percentile `p` (0..=1) of sorted `v` (not empty).
fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies grouped by the second of the run (from `first`, the first send) in which
/// each event was sent.
fn timeline(first: i64, sent_at: &[i64], done_at: &HashMap<usize, i64>) -> Vec<Second> {
    let mut by_second: Vec<Vec<f64>> = Vec::new();
    for (n, done) in done_at {
        let sent = sent_at[*n];
        let s = ((sent - first) / 1000) as usize;
        if by_second.len() <= s {
            by_second.resize_with(s + 1, Vec::new);
        }
        by_second[s].push((done - sent) as f64);
    }
    by_second
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(second, mut v)| {
            v.sort_by(f64::total_cmp);
            Second {
                second,
                events: v.len(),
                p50_ms: percentile(&v, 0.50),
                p99_ms: percentile(&v, 0.99),
                max_ms: percentile(&v, 1.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_groups_latency_by_the_second_of_sending() {
        // Sent at 0, 400, 1,100 and 3,000 ms after the first; done 10, 20, 50 and 5 ms later.
        let sent_at = [1_000, 1_400, 2_100, 4_000];
        let done_at: HashMap<usize, i64> = [(0, 1_010), (1, 1_420), (2, 2_150), (3, 4_005)].into();
        let t = timeline(1_000, &sent_at, &done_at);
        let rows: Vec<_> = t
            .iter()
            .map(|s| (s.second, s.events, s.p50_ms, s.max_ms))
            .collect();
        assert_eq!(
            rows,
            [(0, 2, 20.0, 20.0), (1, 1, 50.0, 50.0), (3, 1, 5.0, 5.0)],
            "second 2 had no events and is left out"
        );
    }
}
