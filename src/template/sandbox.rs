//! The template sandbox: event templates run in a small pool of worker processes under
//! budgets, so that no template can stop, freeze or exhaust the dispatcher.
//!
//! jaq has no fuel counter and no interrupt: `until(false; .)` loops without yielding,
//! `"a" * 1e14` aborts the process when the allocation fails, and a deep `fromjson`
//! overflows the stack. None of these can be stopped from inside the process, so each
//! render that runs more than a plain path (`.inputs.name`) goes to a worker process:
//!
//! - the worker is this same executable, started with [`WORKER_ENV`] set, single
//!   threaded, with `RLIMIT_AS` (memory) and `RLIMIT_CPU` set before it reads a request;
//! - each render has `templates.timeout` of CPU time, counted by the kernel
//!   (`ITIMER_PROF`): past it the worker ends with SIGPROF. CPU time, not wall-clock
//!   time, so a busy machine does not fail honest templates; the dispatcher keeps a
//!   wall-clock backstop (20 × the budget + 1 s) for a worker that is starved or stuck;
//! - when the worker dies (CPU, memory, stack) it is replaced, and the run fails with
//!   "template budget exceeded in <field>: …";
//! - the worker checks the output's size and depth, and the program's length, itself;
//! - plain path templates (`.a.b`, `.a["b-c"]`, `.a[0]`) read the context and build
//!   nothing, so they are rendered in-process with no round trip.
//!
//! Wire format between the two: frames of a 4-byte big-endian length and a JSON body.
//! The dispatcher sends one [`Request`] per run (the whole `invocationMethod`); the
//! worker answers with `field` frames (the field it is about to evaluate, so that an
//! overrun names it) and one final `ok` or `error` frame.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::template::{Context, Renderer, TemplateError};

/// Budgets of event templates (this module). Each render that runs more than a
/// plain path goes to a worker process; exceeding a budget fails the run with class
/// `template_budget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Worker processes (renders at once).
    pub workers: usize,
    /// Wall-clock time of one run's render; past it the worker is killed and replaced.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest rendered `invocationMethod`, as compact JSON.
    pub max_output_bytes: usize,
    /// Deepest nesting of the rendered value.
    pub max_depth: usize,
    /// Longest jq program.
    pub max_program_bytes: usize,
    /// Address space of a worker process (`RLIMIT_AS`).
    pub max_memory_bytes: u64,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        TemplatesConfig {
            workers: 2,
            timeout: Duration::from_millis(50),
            max_output_bytes: 1024 * 1024,
            max_depth: 128,
            max_program_bytes: super::MAX_PROGRAM,
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Set (to the JSON of the worker's [`Limits`]) in a worker process's environment.
pub const WORKER_ENV: &str = "SWITCHYARD_TEMPLATE_WORKER";

/// A render that failed: an ordinary template error, or a budget overrun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Template(TemplateError),
    Budget(TemplateError),
}

/// The budgets a worker enforces itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Limits {
    /// CPU time of one render, in microseconds (`ITIMER_PROF`: the worker ends with
    /// SIGPROF past it).
    pub(super) cpu_micros: u64,
    pub(super) max_output: usize,
    pub(super) max_depth: usize,
    pub(super) max_program: usize,
    pub(super) memory: u64,
    pub(super) cpu_seconds: u64,
}

#[derive(Serialize)]
struct Request<'a> {
    path: &'a str,
    template: &'a Map<String, Value>,
    context: Value,
}

/// [`Request`] as the worker reads it.
#[derive(Deserialize)]
pub(super) struct Received {
    pub(super) path: String,
    pub(super) template: Map<String, Value>,
    pub(super) context: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum Answer {
    Field {
        field: String,
    },
    Ok {
        value: Map<String, Value>,
    },
    Error {
        field: String,
        message: String,
        budget: bool,
    },
}

/// Renders one worker serves before it is replaced (see `Limits::cpu_seconds`).
const RENDERS_PER_WORKER: u32 = 10_000;

/// One worker process and its pipes.
struct Worker {
    served: u32,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

/// The pool of template workers. Cheap to share (`Arc`).
pub struct Sandbox {
    exe: PathBuf,
    limits: Limits,
    /// Wall-clock backstop of one render.
    timeout: Duration,
    /// CPU time budget of one render (`templates.timeout`).
    cpu: Duration,
    idle: Mutex<Vec<Worker>>,
    permits: tokio::sync::Semaphore,
    local: Renderer,
}

impl Sandbox {
    /// A sandbox whose workers run `exe` (normally this executable).
    pub fn new(cfg: &TemplatesConfig, exe: PathBuf) -> Sandbox {
        Sandbox {
            exe,
            limits: Limits {
                cpu_micros: cfg.timeout.as_micros().max(1) as u64,
                max_output: cfg.max_output_bytes,
                max_depth: cfg.max_depth,
                max_program: cfg.max_program_bytes,
                memory: cfg.max_memory_bytes,
                // A backstop: RLIMIT_CPU counts a worker's whole life, and a worker is
                // retired after RENDERS_PER_WORKER renders of at most `timeout` each.
                cpu_seconds: (cfg.timeout.as_secs_f64() * RENDERS_PER_WORKER as f64 * 2.0) as u64
                    + 60,
            },
            // The budget is CPU time, counted by the worker itself; this wall-clock limit
            // is a backstop for a worker starved of CPU or stuck.
            timeout: cfg.timeout * 20 + Duration::from_secs(1),
            cpu: cfg.timeout,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(cfg.workers.max(1)),
            local: Renderer::with_max_program(cfg.max_program_bytes),
        }
    }

    /// Render the members of `template` (an `invocationMethod`) against `ctx`.
    pub async fn render_object(
        &self,
        template: &Map<String, Value>,
        ctx: &Context,
        path: &str,
    ) -> Result<Map<String, Value>, RenderError> {
        if !crate::template::object_needs_sandbox(template) {
            return self
                .local
                .render_object(template, ctx, path)
                .map_err(RenderError::Template);
        }
        let Ok(_permit) = self.permits.acquire().await else {
            unreachable!("the semaphore is never closed")
        };
        let mut worker = self.worker().await.map_err(|e| no_worker(path, &e))?;
        let request = Request {
            path,
            template,
            context: crate::template::val_to_json(ctx.val()),
        };
        let body = serde_json::to_vec(&request).expect("JSON values always serialize");
        let mut field = path.to_owned();
        let mut outcome = self.send(&mut worker, &body, &mut field).await;
        // A worker that died before it read the request (killed from outside between
        // the liveness check and the write) is not the run's fault: once more, afresh.
        if matches!(&outcome, Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe) {
            let (status, _) = end(worker).await;
            tracing::warn!(worker = %status, "template worker gone before the request; retrying with a new one");
            worker = self.worker().await.map_err(|e| no_worker(path, &e))?;
            outcome = self.send(&mut worker, &body, &mut field).await;
        }
        let budget = |message: String| {
            over_budget(TemplateError {
                field: field.clone(),
                message,
            })
        };
        match outcome {
            Ok(Ok(Answer::Ok { value })) => {
                self.release(worker);
                Ok(value)
            }
            Ok(Ok(Answer::Error {
                field,
                message,
                budget,
            })) => {
                self.release(worker);
                let e = TemplateError { field, message };
                Err(if budget {
                    over_budget(e)
                } else {
                    RenderError::Template(e)
                })
            }
            Ok(Ok(Answer::Field { .. })) => unreachable!("exchange returns final answers only"),
            Ok(Err(e)) => {
                let (status, signal) = end(worker).await;
                tracing::warn!(field = %field, error = %e, worker = %status,
                    "template worker ended during a render; replaced");
                Err(budget(if signal == Some(SIGPROF) {
                    format!(
                        "the evaluation used more than templates.timeout ({:?}) of CPU time",
                        self.cpu
                    )
                } else {
                    format!(
                        "the evaluation exceeded templates.max_memory_bytes ({} MiB) or the \
                         stack (the worker {status})",
                        self.limits.memory >> 20
                    )
                }))
            }
            Err(_) => {
                end(worker).await;
                tracing::warn!(field = %field, timeout = ?self.timeout,
                    "template evaluation overran its wall-clock backstop; worker killed and replaced");
                Err(budget(format!(
                    "the evaluation took longer than {:?} of wall-clock time",
                    self.timeout
                )))
            }
        }
    }

    /// One request to `worker` within the wall-clock backstop.
    async fn send(
        &self,
        worker: &mut Worker,
        body: &[u8],
        field: &mut String,
    ) -> Result<std::io::Result<Answer>, tokio::time::error::Elapsed> {
        worker.served += 1;
        tokio::time::timeout(
            self.timeout,
            exchange(worker, body, self.limits.max_output, field),
        )
        .await
    }

    /// An idle worker that is still alive, or a new one. Starting one is retried for a
    /// few seconds (a fork can fail for a moment when the machine is short of processes
    /// or memory), so that a run does not fail for the machine's passing trouble.
    async fn worker(&self) -> std::io::Result<Worker> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut w) = idle else { break };
            // A worker that ended while idle (killed from outside) is replaced, not
            // blamed on the next run.
            if matches!(w.child.try_wait(), Ok(None)) {
                return Ok(w);
            }
        }
        let mut wait = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match self.spawn() {
                Ok(w) => return Ok(w),
                Err(e) if tries >= 5 => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, retry_ms = wait.as_millis() as u64,
                        "starting a template worker failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    tries += 1;
                }
            }
        }
    }

    /// Return a healthy worker to the pool (or retire it after its quota).
    fn release(&self, worker: Worker) {
        if worker.served < RENDERS_PER_WORKER {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(worker);
        }
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let limits = serde_json::to_string(&self.limits).expect("limits serialize");
        let mut child = tokio::process::Command::new(&self.exe)
            .env(WORKER_ENV, limits)
            // RLIMIT_AS only caps what is mapped after it is set. By default mimalloc
            // reserves a 1 GiB arena at start (a worker began at VmSize 1,076,592 kB, so
            // allocations inside the reservation were never counted), and glibc gives the
            // render thread an arena of 64 MiB; without both a worker starts near 120 MB.
            .env("MIMALLOC_ARENA_RESERVE", "0")
            .env("MALLOC_ARENA_MAX", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        crate::telemetry::metrics::get()
            .template_workers_started
            .inc();
        Ok(Worker {
            served: 0,
            child,
            stdin,
            stdout,
        })
    }
}

/// A budget overrun, counted.
fn over_budget(e: TemplateError) -> RenderError {
    crate::telemetry::metrics::get()
        .refusals
        .with_label_values(&["template_budget"])
        .inc();
    RenderError::Budget(e)
}

/// The failure of a run whose render found no worker.
fn no_worker(path: &str, e: &std::io::Error) -> RenderError {
    RenderError::Budget(TemplateError {
        field: path.to_owned(),
        message: format!("no template worker could be started: {e}"),
    })
}

/// The signal a worker ends with when it overruns its CPU budget.
#[cfg(unix)]
const SIGPROF: i32 = libc::SIGPROF;
#[cfg(not(unix))]
const SIGPROF: i32 = 27;

/// Kill a worker (if it still runs) and say how it ended, with the ending signal.
async fn end(mut w: Worker) -> (String, Option<i32>) {
    // A worker that ended by itself (SIGPROF, an abort) is reaped first, so that its
    // own signal is reported rather than our SIGKILL.
    if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(200), w.child.wait()).await {
        return (format!("ended with {status}"), signal_of(&status));
    }
    let _ = w.child.start_kill();
    match tokio::time::timeout(Duration::from_secs(2), w.child.wait()).await {
        Ok(Ok(status)) => (format!("ended with {status}"), signal_of(&status)),
        Ok(Err(e)) => (format!("could not be waited for: {e}"), None),
        Err(_) => ("did not end within 2 s of SIGKILL".to_owned(), None),
    }
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal_of(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// Send one request and read frames up to the final answer; `field` follows the
/// worker's progress.
async fn exchange(
    w: &mut Worker,
    body: &[u8],
    max_output: usize,
    field: &mut String,
) -> std::io::Result<Answer> {
    w.stdin
        .write_all(&(body.len() as u32).to_be_bytes())
        .await?;
    w.stdin.write_all(body).await?;
    w.stdin.flush().await?;
    // The answer's JSON is the output plus escaping; twice the output cap bounds it.
    let max_frame = max_output.saturating_mul(2).saturating_add(64 * 1024);
    loop {
        let mut len = [0u8; 4];
        w.stdout.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max_frame {
            return Err(std::io::Error::other(format!("a frame of {len} bytes")));
        }
        let mut buf = vec![0u8; len];
        w.stdout.read_exact(&mut buf).await?;
        match serde_json::from_slice::<Answer>(&buf).map_err(std::io::Error::other)? {
            Answer::Field { field: f } => *field = f,
            done => return Ok(done),
        }
    }
}
