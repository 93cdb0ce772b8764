//! Conversions between Python argument values and the engine's types.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList};
use snapshot_core::{CaptureOptions, Compression, Format};

use crate::errors::invalid_input;

/// A size argument: an int of bytes or a string such as `"64K"`.
#[derive(FromPyObject)]
pub(crate) enum SizeArg {
    /// A number of bytes.
    Int(u64),
    /// A size with an optional K, M, G or T suffix.
    Str(String),
}

impl SizeArg {
    /// The size in bytes; `name` is the argument's name for the error message.
    pub(crate) fn bytes(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        match self {
            SizeArg::Int(value) => Ok(*value),
            SizeArg::Str(text) => snapshot_core::parse_size(text)
                .map_err(|err| invalid_input(py, &format!("Invalid {name}: {err}"))),
        }
    }

    /// The memory limit in bytes: a size, or `"auto"` for half of the
    /// memory available now.
    pub(crate) fn memory_limit(&self, py: Python<'_>) -> PyResult<u64> {
        match self {
            SizeArg::Int(value) => Ok(*value),
            SizeArg::Str(text) => snapshot_core::parse_memory_limit(text)
                .map_err(|err| invalid_input(py, &format!("Invalid memory_limit: {err}"))),
        }
    }
}

/// The engine options of `capture`'s arguments, each parsed by the core's
/// own parsers (`check_options` uses the same conversion, so that the client
/// and the step refuse exactly what a capture would).
#[allow(clippy::too_many_arguments)]
pub(crate) fn capture_options(
    py: Python<'_>,
    format: &str,
    compression: &str,
    level: Option<i32>,
    cluster_size: &SizeArg,
    threads: usize,
    memory_limit: &SizeArg,
    skip_free_space: bool,
) -> PyResult<CaptureOptions> {
    Ok(CaptureOptions {
        format: parse_format(py, format)?,
        compression: parse_compression(py, compression)?,
        level,
        cluster_size: u32::try_from(cluster_size.bytes(py, "cluster_size")?).map_err(|_| {
            invalid_input(
                py,
                "Invalid cluster_size: use a power of two from 64K to 2M",
            )
        })?,
        threads,
        memory_limit: memory_limit.memory_limit(py)?,
        skip_free_space,
        cancel: None,
    })
}

/// An optional argument of `check_options` as `T`, or an `InvalidInputError`
/// saying what `name` takes (`expected`) when it is of another type. A bool
/// is refused where a number is expected: `True` is no thread count.
pub(crate) fn loose<'py, T: pyo3::conversion::FromPyObjectOwned<'py>>(
    py: Python<'py>,
    value: Option<&Bound<'py, PyAny>>,
    name: &str,
    expected: &str,
) -> PyResult<Option<T>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let refuse = || {
        let shown = value
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        invalid_input(py, &format!("Invalid {name} {shown}: use {expected}"))
    };
    if value.is_instance_of::<PyBool>() {
        return Err(refuse());
    }
    value.extract::<T>().map(Some).map_err(|_| refuse())
}

/// Parses the `format` argument.
pub(crate) fn parse_format(py: Python<'_>, text: &str) -> PyResult<Format> {
    match text.to_ascii_lowercase().as_str() {
        "qcow2" => Ok(Format::Qcow2),
        "raw" => Ok(Format::Raw),
        _ => Err(invalid_input(
            py,
            &format!("Invalid format {text:?}: use \"qcow2\" or \"raw\""),
        )),
    }
}

/// Parses the `compression` argument.
pub(crate) fn parse_compression(py: Python<'_>, text: &str) -> PyResult<Compression> {
    match text.to_ascii_lowercase().as_str() {
        "zstd" => Ok(Compression::Zstd),
        "zlib" => Ok(Compression::Zlib),
        "none" => Ok(Compression::None),
        _ => Err(invalid_input(
            py,
            &format!("Invalid compression {text:?}: use \"zstd\", \"zlib\" or \"none\""),
        )),
    }
}

/// Converts a JSON value (a serialised report) to plain Python objects.
pub(crate) fn json_to_py<'py>(
    py: Python<'py>,
    value: &serde_json::Value,
) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}
