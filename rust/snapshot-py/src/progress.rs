//! Progress updates forwarded to a Python callback, throttled by time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use snapshot_core::Phase;
use snapshot_core::{Progress, ProgressUpdate};

/// Throttling state: when the callback last ran, and for which phase.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    phase: Option<Phase>,
    finished_phase: Option<Phase>,
}

/// A [`Progress`] calling a Python callable with a dict
/// (`phase`, `done`, `total`, `written`) at most once per interval, plus once
/// when a phase starts and once when it completes.
pub(crate) struct CallbackProgress {
    callback: Option<Py<PyAny>>,
    interval: Duration,
    throttle: Mutex<Throttle>,
    error: Mutex<Option<PyErr>>,
    cancel: Arc<AtomicBool>,
}

impl CallbackProgress {
    /// Wraps `callback`; an exception it raises sets `cancel` so that the
    /// engine stops, and is kept for [`CallbackProgress::take_error`].
    pub(crate) fn new(
        callback: Option<Py<PyAny>>,
        interval: Duration,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        CallbackProgress {
            callback,
            interval,
            throttle: Mutex::new(Throttle::default()),
            error: Mutex::new(None),
            cancel,
        }
    }

    /// The exception the callback raised, if any.
    pub(crate) fn take_error(&self) -> Option<PyErr> {
        self.error
            .lock()
            .map(|mut slot| slot.take())
            .unwrap_or(None)
    }
}

/// Test hook: with `IRONIC_SNAPSHOT_TEST_PANIC=1` in the environment the
/// engine panics (in its own thread, mid-write) at the first progress update
/// after image bytes were written. No real input makes the engine panic, yet
/// the binding promises that a panic leaves no partial output: this is the
/// only way for a test to prove it. Read once per process.
fn test_panic_requested() -> bool {
    static REQUESTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REQUESTED
        .get_or_init(|| std::env::var_os("IRONIC_SNAPSHOT_TEST_PANIC").is_some_and(|v| v == "1"))
}

impl Progress for CallbackProgress {
    fn update(&self, update: &ProgressUpdate) {
        if update.written > 0 && test_panic_requested() {
            panic!("IRONIC_SNAPSHOT_TEST_PANIC is set");
        }
        let Some(callback) = &self.callback else {
            return;
        };
        // Engine threads call this often: a thread that finds another one
        // already reporting skips its update rather than waiting for the GIL.
        let Ok(mut throttle) = self.throttle.try_lock() else {
            return;
        };
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let new_phase = throttle.phase != Some(update.phase);
        let finished = update.total > 0
            && update.done >= update.total
            && throttle.finished_phase != Some(update.phase);
        let due = throttle
            .last
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if !(new_phase || finished || due) {
            return;
        }
        throttle.last = Some(now);
        throttle.phase = Some(update.phase);
        if finished {
            throttle.finished_phase = Some(update.phase);
        }
        let outcome = Python::attach(|py| -> PyResult<()> {
            let dict = PyDict::new(py);
            dict.set_item("phase", update.phase.name())?;
            dict.set_item("done", update.done)?;
            dict.set_item("total", update.total)?;
            dict.set_item("written", update.written)?;
            callback.call1(py, (dict,))?;
            Ok(())
        });
        if let Err(err) = outcome {
            if let Ok(mut slot) = self.error.lock() {
                slot.get_or_insert(err);
            }
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}
