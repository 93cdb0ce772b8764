//! One redrawn progress line on standard error.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use snapshot_core::Phase;
use snapshot_core::{Progress, ProgressUpdate, format_size};

/// Least time between two redraws: the engine calls in far more often.
const REDRAW: Duration = Duration::from_millis(200);

/// Renders updates as
/// `writing    42%  4.2 GiB / 10.0 GiB  310.5 MiB/s  out 1.1 GiB  ETA 0:19`.
pub struct TerminalProgress {
    state: Mutex<State>,
}

struct State {
    last_draw: Option<Instant>,
    phase: Option<Phase>,
    phase_start: Instant,
    /// `done` of the phase's first update: a phase may start with work
    /// already done (skipped zeros), which says nothing of its rate.
    phase_done: u64,
    drawn: bool,
}

impl TerminalProgress {
    /// A renderer that has drawn nothing yet.
    pub fn new() -> Self {
        TerminalProgress {
            state: Mutex::new(State {
                last_draw: None,
                phase: None,
                phase_start: Instant::now(),
                phase_done: 0,
                drawn: false,
            }),
        }
    }

    /// Erases the line so that messages after the capture start clean.
    pub fn clear(&self) {
        let Ok(state) = self.state.lock() else { return };
        if state.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Progress for TerminalProgress {
    fn update(&self, update: &ProgressUpdate) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if state.phase != Some(update.phase) {
            state.phase = Some(update.phase);
            state.phase_start = now;
            state.phase_done = update.done;
        } else if state
            .last_draw
            .is_some_and(|t| now.duration_since(t) < REDRAW)
        {
            return;
        }
        state.last_draw = Some(now);
        state.drawn = true;
        let line = render(
            update,
            update.done.saturating_sub(state.phase_done),
            now.duration_since(state.phase_start),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}

/// The text of one progress line; the rate is `done_in_phase` (the bytes
/// this phase processed itself) over `elapsed`.
fn render(update: &ProgressUpdate, done_in_phase: u64, elapsed: Duration) -> String {
    let phase = update.phase.name();
    let percent = if update.total > 0 {
        (update.done as f64 / update.total as f64 * 100.0).min(100.0)
    } else {
        0.0
    };
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        done_in_phase as f64 / secs
    } else {
        0.0
    };
    let eta = if rate > 0.0 && update.total > update.done {
        let left = ((update.total - update.done) as f64 / rate) as u64;
        format!("  ETA {}:{:02}", left / 60, left % 60)
    } else {
        String::new()
    };
    format!(
        "{phase:<9} {percent:3.0}%  {} / {}  {}/s  out {}{eta}",
        format_size(update.done),
        format_size(update.total),
        format_size(rate as u64),
        format_size(update.written),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_percent_rate_and_eta() {
        let update = ProgressUpdate {
            phase: Phase::Writing,
            done: 1 << 30,
            total: 4 << 30,
            written: 100 << 20,
        };
        let line = render(&update, 1 << 30, Duration::from_secs(2));
        assert!(line.starts_with("writing    25%"), "{line}");
        assert!(line.contains("1.0 GiB / 4.0 GiB"), "{line}");
        assert!(line.contains("512.0 MiB/s"), "{line}");
        assert!(line.contains("ETA 0:06"), "{line}");
    }

    #[test]
    fn rate_counts_only_the_work_of_the_phase() {
        // 3 GiB were done (skipped) before the phase; it did 1 GiB in 2 s.
        let update = ProgressUpdate {
            phase: Phase::Writing,
            done: 4 << 30,
            total: 8 << 30,
            written: 0,
        };
        let line = render(&update, 1 << 30, Duration::from_secs(2));
        assert!(line.contains("512.0 MiB/s"), "{line}");
        assert!(line.contains("ETA 0:08"), "{line}");
    }
}
