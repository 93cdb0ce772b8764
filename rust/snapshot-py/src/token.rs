//! A Python callable as the token source of a Glance upload.
//!
//! The step passes its login with the configured credential, so that the
//! upload starts with a token minted then rather than at the start of a
//! capture that may outlast it.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use snapshot_core::Error;
use snapshot_core::Secret;
use snapshot_openstack::glance::TokenSource;

/// Where the exception of a failed call waits until the capture returns.
pub(crate) type Failure = Arc<Mutex<Option<PyErr>>>;

/// A [`TokenSource`] calling `source()` (with the GIL, from the engine's
/// writer thread) for a `str` token. An exception cancels the capture; the
/// binding raises it afterwards ([`take`]), so the caller sees its own
/// typed error.
pub(crate) fn python_source(source: Py<PyAny>, failure: Failure) -> TokenSource {
    Box::new(move || {
        Python::attach(|py| {
            match source
                .call0(py)
                .and_then(|value| value.extract::<String>(py))
            {
                Ok(token) => Ok(Secret::new(token)),
                Err(err) => {
                    if let Ok(mut slot) = failure.lock() {
                        *slot = Some(err);
                    }
                    Err(Error::Cancelled)
                }
            }
        })
    })
}

/// The exception a token source raised, if any.
pub(crate) fn take(failure: &Failure) -> Option<PyErr> {
    failure.lock().ok().and_then(|mut slot| slot.take())
}
