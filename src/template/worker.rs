//! The template worker process: this executable started with
//! [`WORKER_ENV`](super::sandbox::WORKER_ENV) set. It sets its limits, then renders one
//! request at a time from stdin under a CPU timer, checks the output's size and depth,
//! and answers in frames on stdout (see [`super::sandbox`] for the protocol).

use std::io::{Read, Write};

use serde_json::{Map, Value};

use super::sandbox::{Answer, Limits, Received};
use super::{Context, Renderer};

/// The worker process: set the limits, then answer requests on stdin until it closes.
/// Called by `main` before anything else when [`WORKER_ENV`] is set.
pub fn worker_main(limits: &str) -> std::process::ExitCode {
    let Ok(limits) = serde_json::from_str::<Limits>(limits) else {
        return std::process::ExitCode::from(2);
    };
    // Renders run on a thread whose whole stack is mapped before the limits are set. The
    // process's mappings (mimalloc reserves its arena up front) already exceed
    // RLIMIT_AS, so the main thread's stack could not grow past what it had touched, and
    // an honest render one frame deeper died with SIGSEGV, now and then (the main stack's
    // starting depth moves with the environment and ASLR).
    let serve = std::thread::Builder::new()
        .name("template-worker".into())
        .stack_size(WORKER_STACK)
        .spawn(move || serve(&limits));
    match serve.map(std::thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        _ => std::process::ExitCode::from(4),
    }
}

/// Stack of the thread that renders: room for jaq's recursion in debug builds too.
const WORKER_STACK: usize = 16 * 1024 * 1024;

fn serve(limits: &Limits) -> std::process::ExitCode {
    set_limits(limits);
    let mut renderer = Renderer::with_max_program(limits.max_program);
    renderer.observe(report_field);
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut len = [0u8; 4];
        if stdin.read_exact(&mut len).is_err() {
            return std::process::ExitCode::SUCCESS; // the dispatcher closed the pipe
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        if stdin.read_exact(&mut buf).is_err() {
            return std::process::ExitCode::from(3);
        }
        let answer = match serde_json::from_slice::<Received>(&buf) {
            Ok(req) => {
                let ctx = Context::plain(&req.context);
                cpu_timer(limits.cpu_micros);
                let rendered = renderer.render_object(&req.template, &ctx, &req.path);
                cpu_timer(0);
                match rendered {
                    Ok(value) => check_output(value, limits, &req.path),
                    Err(e) => Answer::Error {
                        field: e.field,
                        message: e.message,
                        budget: false,
                    },
                }
            }
            Err(e) => Answer::Error {
                field: String::new(),
                message: format!("unreadable request: {e}"),
                budget: false,
            },
        };
        if write_frame(&answer).is_err() {
            return std::process::ExitCode::from(4);
        }
    }
}

/// The rendered value, or a budget error when it is too large or too deep.
fn check_output(value: Map<String, Value>, limits: &Limits, path: &str) -> Answer {
    let wrapped = Value::Object(value);
    if let Some(at) = too_deep(&wrapped, limits.max_depth, path) {
        return Answer::Error {
            field: at,
            message: format!(
                "the output nests deeper than templates.max_depth ({})",
                limits.max_depth
            ),
            budget: true,
        };
    }
    let size = serde_json::to_vec(&wrapped).map_or(usize::MAX, |b| b.len());
    if size > limits.max_output {
        return Answer::Error {
            field: path.to_owned(),
            message: format!(
                "the output is {size} bytes; templates.max_output_bytes is {}",
                limits.max_output
            ),
            budget: true,
        };
    }
    let Value::Object(value) = wrapped else {
        unreachable!("wrapped an object")
    };
    Answer::Ok { value }
}

/// The path of a value nested deeper than `max` levels, if any. Recursion stops at
/// `max`, so it is bounded.
fn too_deep(v: &Value, max: usize, at: &str) -> Option<String> {
    if max == 0 {
        return matches!(v, Value::Array(_) | Value::Object(_)).then(|| at.to_owned());
    }
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| too_deep(x, max - 1, &format!("{at}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, x)| too_deep(x, max - 1, &format!("{at}.{k}"))),
        _ => None,
    }
}

fn report_field(field: &str) {
    let _ = write_frame(&Answer::Field {
        field: field.to_owned(),
    });
}

fn write_frame(answer: &Answer) -> std::io::Result<()> {
    let body = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&(body.len() as u32).to_be_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

/// Arm (or, with 0, disarm) the CPU-time timer of one render: past it the kernel sends
/// SIGPROF, whose default action ends the worker.
#[cfg(unix)]
fn cpu_timer(micros: u64) {
    let value = libc::timeval {
        tv_sec: (micros / 1_000_000) as libc::time_t,
        tv_usec: (micros % 1_000_000) as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: value,
    };
    // SAFETY: setitimer reads a valid itimerval; the old value is not asked for.
    unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) };
}

#[cfg(not(unix))]
fn cpu_timer(_micros: u64) {}

#[cfg(unix)]
fn set_limits(limits: &Limits) {
    let set = |resource, value: u64| {
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a valid rlimit struct; it has no other effect on memory.
        unsafe { libc::setrlimit(resource, &lim) };
    };
    set(libc::RLIMIT_AS, limits.memory);
    set(libc::RLIMIT_CPU, limits.cpu_seconds);
    set(libc::RLIMIT_NOFILE, 16);
    set(libc::RLIMIT_CORE, 0);
}

#[cfg(not(unix))]
fn set_limits(_limits: &Limits) {}
