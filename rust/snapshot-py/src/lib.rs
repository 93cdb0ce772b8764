//! PyO3 binding of the imaging engine, importable as `ironic_snapshot._engine`.
//!
//! Thin by design: [`_engine::capture`] converts its arguments to owned Rust
//! values, releases the GIL for the whole capture (the ironic-python-agent
//! heartbeat is a Python thread that must keep running), calls
//! [`snapshot_openstack::capture`], maps the error to the exception hierarchy of
//! `ironic_snapshot.exceptions` and converts the report to a dict.

use pyo3::prelude::*;

mod convert;
mod errors;
mod logging;
mod progress;
mod token;

/// The `ironic_snapshot._engine` extension module.
#[pymodule]
mod _engine {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use pyo3::prelude::*;
    use pyo3::types::PyDict;
    use snapshot_core::CaptureOptions;
    use snapshot_core::Digests;
    use snapshot_core::Secret;
    use snapshot_openstack::GlanceTarget;
    use snapshot_openstack::Target;

    use crate::convert::{SizeArg, capture_options, json_to_py};
    use crate::errors::{engine_error, invalid_input, panic_error};
    use crate::progress::CallbackProgress;

    /// Version of the engine, recorded in every report.
    #[pymodule_export]
    const VERSION: &str = snapshot_core::VERSION;

    #[pymodule_init]
    fn init(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::logging::install();
        Ok(())
    }

    /// Captures a disk into an image: see `ironic_snapshot._engine.pyi`.
    #[pyfunction]
    #[pyo3(signature = (
        source, output = None, *, glance_image = None, glance_endpoint = None, token = None,
        format = "qcow2", compression = "zstd", level = None, cluster_size = SizeArg::Str("64K".into()),
        threads = 0, memory_limit = SizeArg::Str("256M".into()), skip_free_space = true,
        force = false, progress = None, progress_interval = 2.0, insecure = false, ca_file = None,
        verify_upload = true, token_source = None,
    ))]
    #[pyo3(
        text_signature = "(source, output=None, *, glance_image=None, glance_endpoint=None, \
        token=None, format='qcow2', compression='zstd', level=None, cluster_size='64K', threads=0, \
        memory_limit='256M', skip_free_space=True, force=False, progress=None, progress_interval=2.0, \
        insecure=False, ca_file=None, verify_upload=True, \
        token_source=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn capture<'py>(
        py: Python<'py>,
        source: PathBuf,
        output: Option<PathBuf>,
        glance_image: Option<String>,
        glance_endpoint: Option<String>,
        token: Option<String>,
        format: &str,
        compression: &str,
        level: Option<i32>,
        cluster_size: SizeArg,
        threads: usize,
        memory_limit: SizeArg,
        skip_free_space: bool,
        force: bool,
        progress: Option<Py<PyAny>>,
        progress_interval: f64,
        insecure: bool,
        ca_file: Option<PathBuf>,
        verify_upload: bool,
        token_source: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let target = match (output, glance_image) {
            (Some(_), Some(_)) => {
                return Err(invalid_input(
                    py,
                    "Both output and glance_image were given: pass one of them",
                ));
            }
            (None, None) => {
                return Err(invalid_input(
                    py,
                    "No destination: pass output (a path, or \"-\" for standard output) or glance_image",
                ));
            }
            (Some(path), None) if path.as_os_str() == "-" => {
                Target::Engine(snapshot_core::Target::Stdout)
            }
            (Some(path), None) => Target::Engine(snapshot_core::Target::File { path, force }),
            (None, Some(image_id)) => {
                let Some(endpoint) = glance_endpoint else {
                    return Err(invalid_input(
                        py,
                        "No Glance endpoint: pass glance_endpoint with glance_image",
                    ));
                };
                Target::Glance(GlanceTarget {
                    endpoint,
                    image_id,
                    token: token.map(Secret::new),
                    insecure,
                    ca_file,
                })
            }
        };
        if token_source.is_some() && (verify_upload || !matches!(target, Target::Glance(_))) {
            return Err(invalid_input(
                py,
                "token_source is for a Glance upload with verify_upload=False: the caller verifies with verify_glance",
            ));
        }
        if !(progress_interval.is_finite() && progress_interval >= 0.0) {
            return Err(invalid_input(
                py,
                "Invalid progress_interval: give a number of seconds, 0 or more",
            ));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let options = CaptureOptions {
            cancel: Some(cancel.clone()),
            ..capture_options(
                py,
                format,
                compression,
                level,
                &cluster_size,
                threads,
                &memory_limit,
                skip_free_space,
            )?
        };
        let reporter =
            CallbackProgress::new(progress, Duration::from_secs_f64(progress_interval), cancel);
        crate::logging::refresh_level(py);

        // Everything the closure touches is owned Rust data: no Python object
        // is used while the GIL is released, and a panic in the engine is
        // caught here so that it becomes an exception instead of unwinding
        // through the interpreter.
        let source_error = Arc::new(Mutex::new(None));
        let mut token_source =
            token_source.map(|source| crate::token::python_source(source, source_error.clone()));
        let outcome = py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| match &target {
                // The caller checks Glance's digests itself (verify_glance),
                // with a token that may be newer than the upload's: a
                // Keystone token can expire during a long capture.
                Target::Glance(glance) if !verify_upload => {
                    snapshot_openstack::glance::open(glance).and_then(|sink| {
                        let sink = match token_source.take() {
                            Some(renew) => sink.with_token_source(renew),
                            None => sink,
                        };
                        snapshot_core::capture_into(&source, Box::new(sink), &options, &reporter)
                    })
                }
                _ => snapshot_openstack::capture(&source, &target, &options, &reporter),
            }))
        });
        // An exception raised by the progress callback cancelled the capture:
        // it is the more useful error to show.
        if let Some(err) = reporter.take_error() {
            return Err(err);
        }
        // So did one raised by the token source (Keystone refused, say).
        if let Some(err) = crate::token::take(&source_error) {
            return Err(err);
        }
        match outcome {
            Ok(Ok(report)) => {
                let value = serde_json::to_value(&report).map_err(|err| {
                    panic_error(py, &format!("Report could not be serialised: {err}"))
                })?;
                let dict = json_to_py(py, &value)?;
                Ok(dict.cast_into::<PyDict>()?)
            }
            Ok(Err(err)) => Err(engine_error(py, &err)),
            Err(payload) => Err(panic_error(py, &crate::errors::panic_message(&payload))),
        }
    }
    /// Checks that a Glance image holds exactly what a capture sent: see
    /// `ironic_snapshot._engine.pyi`.
    ///
    /// The second half of `capture(..., verify_upload=False)`, kept apart so
    /// that the caller can pass a token other than the upload's (the step
    /// re-authenticates after a long upload). Over
    /// [`snapshot_openstack::glance::verify`].
    #[pyfunction]
    #[pyo3(signature = (
        glance_image, *, glance_endpoint, image_size, md5, sha256, sha512, token = None,
        insecure = false, ca_file = None,
    ))]
    #[pyo3(
        text_signature = "(glance_image, *, glance_endpoint, image_size, md5, sha256, sha512, \
        token=None, insecure=False, ca_file=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn verify_glance(
        py: Python<'_>,
        glance_image: String,
        glance_endpoint: String,
        image_size: u64,
        md5: String,
        sha256: String,
        sha512: String,
        token: Option<String>,
        insecure: bool,
        ca_file: Option<PathBuf>,
    ) -> PyResult<()> {
        let target = GlanceTarget {
            endpoint: glance_endpoint,
            image_id: glance_image,
            token: token.map(Secret::new),
            insecure,
            ca_file,
        };
        // Glance reports lowercase hex; a caller may pass either case.
        let digests = Digests {
            md5: md5.to_ascii_lowercase(),
            sha256: sha256.to_ascii_lowercase(),
            sha512: sha512.to_ascii_lowercase(),
        };
        let outcome = py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| {
                snapshot_openstack::glance::verify(&target, &digests, image_size)
            }))
        });
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(engine_error(py, &err)),
            Err(payload) => Err(panic_error(py, &crate::errors::panic_message(&payload))),
        }
    }

    /// The `snapshot_*` image properties of a capture, its provenance
    /// record included: see `ironic_snapshot._engine.pyi`.
    ///
    /// Over [`snapshot_core::provenance::properties`], the one builder of
    /// these properties (the CLI's Glance upload uses it too). The report
    /// dict goes through Python's `json` so that any JSON-able report is
    /// taken as the CLI's `--json` object would be.
    #[pyfunction]
    #[pyo3(signature = (report, *, node = None, device = None, parent_image = None))]
    #[pyo3(text_signature = "(report, *, node=None, device=None, parent_image=None)")]
    fn provenance_properties(
        py: Python<'_>,
        report: &Bound<'_, PyDict>,
        node: Option<String>,
        device: Option<String>,
        parent_image: Option<String>,
    ) -> PyResult<std::collections::BTreeMap<String, String>> {
        let text: String = py
            .import("json")?
            .call_method1("dumps", (report,))
            .map_err(|err| invalid_input(py, &format!("The report is not JSON-able: {err}")))?
            .extract()?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|err| invalid_input(py, &format!("The report is not JSON: {err}")))?;
        let source = snapshot_core::provenance::Source {
            node,
            device,
            parent_image,
        };
        Ok(snapshot_core::provenance::properties(&value, &source))
    }

    /// Checks capture options without capturing: see
    /// `ironic_snapshot._engine.pyi`.
    ///
    /// Kept apart from `capture`: the snapshot client calls it before it
    /// changes anything on a node, the step before it reads the disk. Each
    /// value is taken as loosely as `capture` takes it (a wrong Python type
    /// is an `InvalidInputError` too, not a `TypeError`), then parsed and
    /// checked by the engine's own rules ([`snapshot_core::check_options`]).
    #[pyfunction]
    #[pyo3(signature = (
        *, format = None, compression = None, level = None, cluster_size = None,
        threads = None, memory_limit = None,
    ))]
    #[pyo3(
        text_signature = "(*, format='qcow2', compression='zstd', level=None, cluster_size='64K', \
        threads=0, memory_limit='256M')"
    )]
    fn check_options(
        py: Python<'_>,
        format: Option<&Bound<'_, PyAny>>,
        compression: Option<&Bound<'_, PyAny>>,
        level: Option<&Bound<'_, PyAny>>,
        cluster_size: Option<&Bound<'_, PyAny>>,
        threads: Option<&Bound<'_, PyAny>>,
        memory_limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        use crate::convert::loose;

        let format: String =
            loose(py, format, "format", "\"qcow2\" or \"raw\"")?.unwrap_or_else(|| "qcow2".into());
        let compression: String = loose(
            py,
            compression,
            "compression",
            "\"zstd\", \"zlib\" or \"none\"",
        )?
        .unwrap_or_else(|| "zstd".into());
        let level: Option<i32> = loose(py, level, "level", "an integer, or None")?;
        let size = "a size such as \"64K\" or \"2M\", or a number of bytes";
        let cluster_size: SizeArg =
            loose(py, cluster_size, "cluster_size", size)?.unwrap_or(SizeArg::Str("64K".into()));
        let threads: usize =
            loose(py, threads, "threads", "0 (one per core) up to 1024")?.unwrap_or(0);
        let memory_limit: SizeArg = loose(
            py,
            memory_limit,
            "memory_limit",
            "a size such as \"512M\" or a number of bytes, or \"auto\"",
        )?
        .unwrap_or(SizeArg::Str("256M".into()));
        let options = capture_options(
            py,
            &format,
            &compression,
            level,
            &cluster_size,
            threads,
            &memory_limit,
            true,
        )?;
        snapshot_core::check_options(&options).map_err(|err| engine_error(py, &err))
    }
}
