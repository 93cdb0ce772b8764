//! OpenStack access of ironic-snapshot: where to upload and with which
//! credentials, Keystone, and the Glance sink.
//!
//! - [`config`]: the settings of an upload from flags, `OS_*` variables and
//!   `clouds.yaml` + `secure.yaml`, in openstackclient's precedence, resolved
//!   into a [`GlanceTarget`] (authenticating with Keystone when needed).
//! - [`keystone`]: a small Keystone v3 client (password, application
//!   credential and token authentication; the catalog).
//! - [`glance`]: the Glance [`Sink`](snapshot_core::Sink) (one chunked
//!   `PUT` of unknown length), the check of Glance's own digests, the
//!   properties update and reading an image back for `verify`.
//! - [`capture`]: the engine's capture with a Glance image as one more
//!   [`Target`].
//!
//! The engine (`snapshot-core`) knows nothing of OpenStack: this crate holds
//! the HTTP client (reqwest with rustls and hickory DNS, so that the static
//! CLI needs neither OpenSSL nor NSS) and the tokio runtime of the upload.
//! Errors are the engine's [`Error`]: the sink must speak its language
//! anyway ([`Sink::write`](snapshot_core::Sink::write)), and the front ends
//! map one error type to exit codes and exception classes.

#![deny(missing_docs)]

use std::path::Path;

use snapshot_core::{CaptureOptions, Digests, Phase, Progress, ProgressUpdate, Report};
pub use snapshot_core::{Error, Result, Secret};

pub mod config;
pub mod glance;
mod http;
pub mod keystone;

pub use glance::GlanceTarget;

/// Where the image goes: one of the engine's own sinks, or a Glance image.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file or standard output, written by the engine itself.
    Engine(snapshot_core::Target),
    /// An image in Glance, uploaded with a chunked `PUT /v2/images/{id}/file`
    /// (forward-only), then verified against Glance's own digests.
    Glance(GlanceTarget),
}

impl Target {
    /// Where the image goes, for logs and the report, without secrets: the
    /// engine's description (a path or `-`), or `glance:ID`.
    pub fn describe(&self) -> String {
        match self {
            Target::Engine(target) => target.describe(),
            Target::Glance(glance) => format!("glance:{}", glance.image_id),
        }
    }
}

/// Captures the disk at `source` into `target` as
/// [`snapshot_core::capture`] does; for [`Target::Glance`] the image is
/// uploaded into the given queued image and then checked against the size
/// and digests Glance reports.
///
/// Errors: those of [`snapshot_core::capture`], of [`glance::open`] (the
/// image must exist and be queued), of the upload, and
/// [`Error::VerificationFailed`] when Glance holds other bytes. On any error
/// the output is removed (file) or the upload broken off.
pub fn capture(
    source: &Path,
    target: &Target,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let glance = match target {
        Target::Engine(target) => return snapshot_core::capture(source, target, options, progress),
        Target::Glance(glance) => glance,
    };
    let report = snapshot_core::capture_with(
        source,
        |_| Ok(Box::new(glance::open(glance)?)),
        options,
        progress,
    )?;
    progress.update(&ProgressUpdate {
        phase: Phase::Verifying,
        done: report.virtual_size,
        total: report.virtual_size,
        written: report.image_size,
    });
    glance::verify(glance, &digests_of(&report), report.image_size)?;
    tracing::info!(image_id = %glance.image_id, "Glance holds exactly the image that was sent");
    Ok(report)
}

/// The digests a report carries.
pub fn digests_of(report: &Report) -> Digests {
    Digests {
        md5: report.md5.clone(),
        sha256: report.sha256.clone(),
        sha512: report.sha512.clone(),
    }
}
