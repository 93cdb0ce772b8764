//! Plans a disk and says what planning cost, for measurements:
//! `cargo run --release -p snapshot-core --example plan -- SOURCE [--no-cross-check]`.
//! Prints one JSON object: seconds, metadata bytes and reads the planner
//! made, bytes the plan reads, and the partition report.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use snapshot_core::fs::{PlanOptions, ReadAt, plan_with};

/// Counts what the planner reads.
struct Counting {
    file: std::fs::File,
    bytes: AtomicU64,
    reads: AtomicU64,
}

impl ReadAt for Counting {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads.fetch_add(1, Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Relaxed);
        self.file.read_at(offset, buf)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(source) = args.first() else {
        eprintln!("usage: plan SOURCE [--no-cross-check]");
        std::process::exit(2);
    };
    let options = PlanOptions {
        cross_check: !args.iter().any(|a| a == "--no-cross-check"),
    };
    let file = std::fs::File::open(source).unwrap_or_else(|err| {
        eprintln!("Cannot open {source}: {err}");
        std::process::exit(1);
    });
    // Block devices report no length in their metadata: seek to the end.
    let size = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).expect("source size");
    let disk = Counting {
        file,
        bytes: 0.into(),
        reads: 0.into(),
    };
    let started = Instant::now();
    let plan = plan_with(&disk, size, options);
    let seconds = started.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "cross_check": options.cross_check,
        "seconds": seconds,
        "metadata_bytes_read": disk.bytes.load(Relaxed),
        "metadata_reads": disk.reads.load(Relaxed),
        "bytes_to_read": plan.bytes_to_read(),
        "partitions": plan.partitions,
    });
    println!("{out}");
}
