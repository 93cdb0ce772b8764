//! Engine `tracing` events forwarded to Python `logging`.
//!
//! The engine logs from worker threads while the calling thread has released
//! the GIL, so each forwarded event attaches to the interpreter only for the
//! one `Logger.log` call. Events below the Python logger's effective level,
//! read at the start of every capture, are dropped without touching Python.

use std::fmt::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Name of the Python logger receiving engine events.
const LOGGER: &str = "ironic_snapshot.engine";

/// Python level below which events are dropped (`logging.WARNING` until a
/// capture reads the logger's level).
static MIN_LEVEL: AtomicU32 = AtomicU32::new(30);

/// Python `logging` level of a `tracing` level.
fn python_level(level: &Level) -> u32 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// Installs the forwarding subscriber as the global default of this
/// extension's copy of `tracing`, once.
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(PythonLayer);
        // Fails only if something else in this library set one first: then
        // that one receives the events, which is fine.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Reads the effective level of the Python logger so that later events are
/// filtered without the GIL.
pub(crate) fn refresh_level(py: Python<'_>) {
    let level = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", (LOGGER,)))
        .and_then(|logger| logger.call_method0("getEffectiveLevel"))
        .and_then(|level| level.extract::<u32>());
    if let Ok(level) = level {
        MIN_LEVEL.store(level, Ordering::Relaxed);
    }
}

/// Collects an event's message and its other fields as `key=value`.
#[derive(Default)]
struct Message {
    text: String,
    fields: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

/// The layer forwarding events to the `ironic_snapshot.engine` logger.
struct PythonLayer;

impl<S: Subscriber> Layer<S> for PythonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = python_level(event.metadata().level());
        if level < MIN_LEVEL.load(Ordering::Relaxed) {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let text = message.text + &message.fields;
        let meta = event.metadata();
        let file = meta.file().unwrap_or("<engine>");
        let line = meta.line().unwrap_or(0);
        let target = meta.target();
        Python::attach(|py| {
            // A record built by hand names the Rust file, line and module
            // that logged, instead of the Python frame that happens to run.
            let logged = py
                .import("logging")
                .and_then(|logging| logging.call_method1("getLogger", (LOGGER,)))
                .and_then(|logger| {
                    let record = logger.call_method1(
                        "makeRecord",
                        (LOGGER, level, file, line, text, (), py.None(), target),
                    )?;
                    logger.call_method1("handle", (record,))
                });
            // A failing handler must not break the capture; Python's own
            // logging prints handler errors itself.
            if let Err(err) = logged {
                err.print(py);
            }
        });
    }
}
