//! SIGHUP, SIGINT and SIGTERM: the first asks the engine to stop and clean
//! up; a second one, or a panic, removes the partial output here and exits
//! at once. Either way no half-written image or report is left behind.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use snapshot_core::Error;

/// The signals that cancel a capture.
const SIGNALS: [i32; 3] = [SIGHUP, SIGINT, SIGTERM];

/// The first signal received (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);

/// The first signal received, if any.
pub(crate) fn received() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The installed handling: the lock the main thread holds while it removes
/// output itself.
pub(crate) struct Cancellation {
    cleanup: Arc<Mutex<()>>,
}

impl Cancellation {
    /// Held while the main thread removes output the engine already
    /// completed: a second signal waits for it instead of exiting halfway.
    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        self.cleanup.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The exit code of a run ended by `signal`: 128 plus its number, as shells
/// report (130 for Ctrl-C, 129 for a hang-up, 143 for SIGTERM).
pub(crate) fn exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(130)
}

/// Starts the thread that receives the signals; sets `cancel` on the first.
/// Also makes a panic remove partial output before the process ends (the
/// CLI's release profile aborts on panic, so nothing unwinds).
pub(crate) fn install(cancel: Arc<AtomicBool>) -> Result<Cancellation, Error> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        snapshot_core::remove_partial_outputs();
        previous(info);
    }));

    let mut signals = signal_hook::iterator::Signals::new(SIGNALS)
        .map_err(|err| Error::Internal(format!("Cannot install the signal handler: {err}")))?;
    let cleanup = Arc::new(Mutex::new(()));
    let handling = Cancellation {
        cleanup: Arc::clone(&cleanup),
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if FIRST
                    .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    tracing::warn!(
                        signal = name(signal),
                        "Cancelling: the partial output is being removed (a second signal stops at once, still removing it)"
                    );
                    cancel.store(true, Ordering::SeqCst);
                    continue;
                }
                // A second signal: the engine may be stuck (a stalled pipe,
                // a hung disk). Remove what it was writing and leave; the
                // lock lets a removal the main thread started finish first.
                let _held = cleanup.lock().unwrap_or_else(PoisonError::into_inner);
                snapshot_core::remove_partial_outputs();
                let code = received().map_or(130, exit_code);
                eprintln_quiet(&format!(
                    "ironic-snapshot: error: Capture cancelled ({} twice): partial output removed",
                    name(signal)
                ));
                std::process::exit(i32::from(code));
            }
        })
        .map_err(|err| Error::Internal(format!("Cannot start the signal thread: {err}")))?;
    Ok(handling)
}

/// The usual name of a signal, for messages.
pub(crate) fn name(signal: i32) -> &'static str {
    match signal {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// One line on standard error, ignoring failure: after a hang-up the
/// terminal is gone, and that must not stop the cleanup.
fn eprintln_quiet(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
