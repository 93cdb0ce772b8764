//! Engine errors as Python exceptions.
//!
//! The exception classes live in Python (`ironic_snapshot.exceptions`) so that
//! they can inherit from both `SnapshotError` and a built-in class such as
//! `ValueError` or `OSError`, which `create_exception!` cannot express.

use std::any::Any;
use std::error::Error as _;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use snapshot_core::ErrorKind;

/// Module holding the exception hierarchy.
const EXCEPTIONS_MODULE: &str = "ironic_snapshot.exceptions";

/// Name of the exception class for an error kind.
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "InvalidInputError",
        ErrorKind::Source => "SourceError",
        ErrorKind::Output => "OutputError",
        ErrorKind::Upload => "UploadError",
        ErrorKind::Verification => "VerificationError",
        ErrorKind::Cancelled => "CancelledError",
        ErrorKind::Internal => "InternalError",
    }
}

/// Stable lower-case name of an error kind, set as the exception's `kind`.
fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::Source => "source",
        ErrorKind::Output => "output",
        ErrorKind::Upload => "upload",
        ErrorKind::Verification => "verification",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Internal => "internal",
    }
}

/// Builds an exception of the class for `kind` carrying `message`, and the
/// HTTP `status` of a service's answer when there was one.
fn make(py: Python<'_>, kind: ErrorKind, message: String, status: Option<u16>) -> PyErr {
    let built = (|| -> PyResult<PyErr> {
        let class = py.import(EXCEPTIONS_MODULE)?.getattr(class_name(kind))?;
        let exc = class.call1((message.clone(),))?;
        exc.setattr("kind", kind_name(kind))?;
        if let Some(status) = status {
            exc.setattr("status", status)?;
        }
        Ok(PyErr::from_value(exc))
    })();
    // Only reachable when the extension is used without its Python package:
    // still raise something that says what happened.
    built.unwrap_or_else(|_| PyRuntimeError::new_err(message))
}

/// Maps an engine error to its Python exception; the message carries the
/// whole cause chain because Python users see only the text.
pub(crate) fn engine_error(py: Python<'_>, err: &snapshot_core::Error) -> PyErr {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    // A caller tells an expired token (401) from other refusals by the
    // status, not by parsing the message.
    let status = match err {
        snapshot_core::Error::Http { status, .. } => Some(*status),
        _ => None,
    };
    make(py, err.kind(), message, status)
}

/// An `InvalidInputError` raised by the binding itself (argument checks).
pub(crate) fn invalid_input(py: Python<'_>, message: &str) -> PyErr {
    make(py, ErrorKind::InvalidInput, message.to_owned(), None)
}

/// An `InternalError` for a panic or another bug.
pub(crate) fn panic_error(py: Python<'_>, message: &str) -> PyErr {
    make(
        py,
        ErrorKind::Internal,
        format!("Internal error: {message}; please report this as a bug"),
        None,
    )
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        format!("the engine panicked: {text}")
    } else if let Some(text) = payload.downcast_ref::<String>() {
        format!("the engine panicked: {text}")
    } else {
        "the engine panicked".to_owned()
    }
}
