//! PyO3 binding of the imaging engine, importable as `ironic_snapshot._engine`.

use pyo3::prelude::*;

/// The `ironic_snapshot._engine` extension module.
#[pymodule]
mod _engine {
    #[pymodule_export]
    const VERSION: &str = snapshot_core::VERSION;
}
