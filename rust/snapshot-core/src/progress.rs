//! Progress reporting: the engine pushes updates into a consumer it is given.
//!
//! The engine never draws anything itself; the CLI renders a line on a
//! terminal and the Python binding forwards throttled updates to a callback.

/// Phase of a capture, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Finding what parts of the source may hold data.
    Scanning,
    /// Reading and compressing to learn the image's layout (forward-only sinks
    /// whose spool overflowed only).
    Sizing,
    /// Reading, compressing and writing the image (for forward-only sinks:
    /// compressing into the in-memory spool, or the second pass).
    Writing,
    /// Sending the spooled image to a forward-only sink (standard output,
    /// Glance). `done` and `total` count image bytes.
    Sending,
    /// Reading a written image file back for its digests. `done` and
    /// `total` count image bytes.
    Digesting,
    /// Checking what storage reports against the report.
    Verifying,
}

impl Phase {
    /// The phase's name as front ends show it: `scanning`, `sizing`,
    /// `writing`, `sending`, `digesting`, `verifying`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Scanning => "scanning",
            Phase::Sizing => "sizing",
            Phase::Writing => "writing",
            Phase::Sending => "sending",
            Phase::Digesting => "digesting",
            Phase::Verifying => "verifying",
        }
    }
}

/// One progress update.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    /// Current phase.
    pub phase: Phase,
    /// Guest bytes processed so far in this phase (zeros and holes
    /// included); image bytes in [`Phase::Sending`] and [`Phase::Digesting`].
    pub done: u64,
    /// Guest bytes this phase will process in all; image bytes in
    /// [`Phase::Sending`] and [`Phase::Digesting`].
    pub total: u64,
    /// Image bytes emitted so far.
    pub written: u64,
}

/// Receives progress updates. Called from engine threads, often: keep it cheap
/// and throttle expensive work (drawing, calling into Python) yourself.
pub trait Progress: Send + Sync {
    /// Called with the latest state.
    fn update(&self, update: &ProgressUpdate);
}

/// A [`Progress`] that ignores every update.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _update: &ProgressUpdate) {}
}

impl<F: Fn(&ProgressUpdate) + Send + Sync> Progress for F {
    fn update(&self, update: &ProgressUpdate) {
        self(update)
    }
}
