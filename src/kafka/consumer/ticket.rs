//! Tickets: the right and duty to complete one offset, and the panic isolation that
//! rescues them.

use std::sync::mpsc::Sender;

use tokio_util::sync::CancellationToken;

use super::*;

/// A completed (or abandoned) offset, sent back to the consumer thread.
pub(super) struct Completion {
    pub(super) tp: Tp,
    pub(super) generation: u64,
    pub(super) offset: i64,
    pub(super) done: bool,
}

/// The right and duty to complete one offset. Holding it is holding a slot of the
/// partition's window.
pub struct Ticket {
    pub(super) tp: Tp,
    pub(super) generation: u64,
    pub(super) offset: i64,
    pub(super) tx: Sender<Completion>,
    pub(super) intake: CancellationToken,
    pub(super) hard: CancellationToken,
    pub(super) done: bool,
}

impl Ticket {
    /// The event's run update has been acknowledged: its offset may be committed.
    pub fn complete(mut self) {
        self.done = true;
        self.send(true);
    }

    /// True once the partition is being revoked or switchyard is stopping: an event that
    /// has not started yet must not start (it will be redelivered to the next owner).
    pub fn intake_stopped(&self) -> bool {
        self.intake.is_cancelled()
    }

    /// Fires when the grace period for this partition ran out: abandon the work.
    pub fn abandoned(&self) -> &CancellationToken {
        &self.hard
    }

    pub(super) fn send(&self, done: bool) {
        // The consumer thread may already be gone at shutdown; nothing to report then.
        let _ = self.tx.send(Completion {
            tp: self.tp.clone(),
            generation: self.generation,
            offset: self.offset,
            done,
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if rescuing() {
            // A run's task panicked (see [`isolate`]): hand the ticket to the task boundary,
            // which fails the run and completes the offset, instead of pinning it.
            let rescued = Ticket {
                tp: self.tp.clone(),
                generation: self.generation,
                offset: self.offset,
                tx: self.tx.clone(),
                intake: self.intake.clone(),
                hard: self.hard.clone(),
                done: false,
            };
            self.done = true;
            RESCUE.with(|r| r.borrow_mut().1.push(rescued));
            return;
        }
        self.send(false);
    }
}

/// Tickets for work that comes from no partition (runs claimed from Port's API by the
/// POLLING streamer): the same duty to complete, counted here instead of committed.
pub struct Detached {
    tx: Sender<Completion>,
    rx: std::sync::Mutex<std::sync::mpsc::Receiver<Completion>>,
    hard: CancellationToken,
    issued: std::sync::atomic::AtomicI64,
    finished: std::sync::atomic::AtomicI64,
    source: String,
}

impl Detached {
    /// `source` names the work in records (`<org>.runs` for claimed runs); `hard`
    /// abandons what is still running (the end of the shutdown grace period).
    pub fn new(source: &str, hard: CancellationToken) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Detached {
            tx,
            rx: std::sync::Mutex::new(rx),
            hard,
            issued: 0.into(),
            finished: 0.into(),
            source: source.to_owned(),
        }
    }

    /// A ticket for one unit of work. Its intake never closes: claimed work is done
    /// (or abandoned at the hard stop), never handed back.
    pub fn issue(&self) -> Ticket {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.issued.fetch_add(1, Relaxed);
        Ticket {
            tp: (self.source.clone(), -1),
            generation: 0,
            offset: n,
            tx: self.tx.clone(),
            intake: CancellationToken::new(),
            hard: self.hard.clone(),
            done: false,
        }
    }

    /// Tickets issued and not yet completed or dropped.
    pub fn outstanding(&self) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let back = rx.try_iter().count() as i64;
        let finished = self.finished.fetch_add(back, Relaxed) + back;
        self.issued.load(Relaxed) - finished
    }
}

/// When a dropped ticket is rescued rather than returned: while a panic unwinds inside
/// an [`isolate`]d future, and while that future is dropped after the panic.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Rescue {
    Off,
    Unwinding,
    Dropping,
}

thread_local! {
    static RESCUE: std::cell::RefCell<(Rescue, Vec<Ticket>)> =
        const { std::cell::RefCell::new((Rescue::Off, Vec::new())) };
}

pub(super) fn rescuing() -> bool {
    RESCUE.with(|r| match r.borrow().0 {
        Rescue::Off => false,
        Rescue::Unwinding => std::thread::panicking(),
        Rescue::Dropping => true,
    })
}

/// Switch the mode and take the tickets rescued so far (dropped outside a rescue, they
/// are returned as usual).
pub(super) fn set_rescue(mode: Rescue) -> Vec<Ticket> {
    RESCUE.with(|r| {
        let mut r = r.borrow_mut();
        r.0 = mode;
        std::mem::take(&mut r.1)
    })
}

/// A run's task panicked: what it said, and the tickets it held (rescued, not returned).
pub struct Panicked {
    pub message: String,
    pub tickets: Vec<Ticket>,
}

/// Run `fut`, catching a panic at this boundary. The tickets the future held are
/// rescued, so that the caller can fail the run and complete its offset: a panic never
/// pins a partition's watermark.
///
/// Not an `async fn`: `fut` (a whole run, several KB) is boxed here, at the call, so the
/// futures that hold this one stay small. As an `async fn` it kept `fut` by value until
/// first polled, which made every enclosing future (the lane's, the spawned task's) as
/// large as a run, each one allocated and copied per event.
pub fn isolate<F: std::future::Future>(
    fut: F,
) -> impl std::future::Future<Output = Result<F::Output, Panicked>> {
    let mut fut = Some(Box::pin(fut));
    std::future::poll_fn(move |cx| {
        let Some(inner) = fut.as_mut() else {
            unreachable!("polled after completion")
        };
        set_rescue(Rescue::Unwinding);
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx)));
        match polled {
            Ok(std::task::Poll::Pending) => {
                drop(set_rescue(Rescue::Off));
                std::task::Poll::Pending
            }
            Ok(std::task::Poll::Ready(v)) => {
                drop(set_rescue(Rescue::Off));
                fut = None;
                std::task::Poll::Ready(Ok(v))
            }
            Err(payload) => {
                let mut tickets = set_rescue(Rescue::Dropping);
                drop(fut.take());
                tickets.extend(set_rescue(Rescue::Off));
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic with no message".to_owned());
                std::task::Poll::Ready(Err(Panicked { message, tickets }))
            }
        }
    })
}
