//! Conversions between Python argument values and the engine's types.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use snapshot_core::{Compression, Format};

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
