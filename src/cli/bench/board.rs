//! The board under load: Server-Sent Events clients reading `/v1/events` of a
//! switchyard whose run board is on, while the benchmark's events flow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Clients reading the event stream, counting what they receive.
pub struct Clients {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    bytes: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
    n: usize,
}

/// What the clients received.
pub struct Received {
    pub clients: usize,
    pub batches: u64,
    pub bytes: u64,
}

impl Clients {
    /// Wait (up to 30 s) for the board at `addr` to answer, then open `n` streams.
    pub async fn connect(addr: &str, n: usize) -> anyhow::Result<Clients> {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/v1/events");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http.get(format!("http://{addr}/v1/board")).send().await {
                Ok(r) if r.status().is_success() => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(r) => anyhow::bail!("the board at {addr} answered {}", r.status()),
                Err(e) => return Err(e).context(format!("the board at {addr} did not answer")),
            }
        }
        let bytes = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut resp = http
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .context("opening the board's event stream")?;
            let (bytes, batches) = (bytes.clone(), batches.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(chunk)) = resp.chunk().await {
                    bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    let runs = chunk.windows(11).filter(|w| w == b"event: runs").count();
                    batches.fetch_add(runs as u64, Ordering::Relaxed);
                }
            }));
        }
        Ok(Clients {
            tasks,
            bytes,
            batches,
            n,
        })
    }

    pub fn stop(self) -> Received {
        for t in &self.tasks {
            t.abort();
        }
        Received {
            clients: self.n,
            batches: self.batches.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

pub fn report(system: &str, rss_start_kb: u64, peak_kb: u64, received: Option<Received>) {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let clients = match received {
        Some(r) => format!(
            "{} SSE clients received {} `runs` batches, {:.1} MB in all",
            r.clients,
            r.batches,
            r.bytes as f64 / 1e6
        ),
        None => "no SSE clients".to_owned(),
    };
    println!(
        "{system:<10} board: {clients}; RSS {:.1} MB when the load began, peak {:.1} MB (+{:.1} MB)",
        mb(rss_start_kb),
        mb(peak_kb),
        mb(peak_kb.saturating_sub(rss_start_kb))
    );
}
