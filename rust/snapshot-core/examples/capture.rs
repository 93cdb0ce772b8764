//! Captures a disk with the engine alone, for measurements:
//! `cargo run --release -p snapshot-core --example capture -- SOURCE OUT|- [zstd|zlib|none] [LEVEL] [CLUSTER] [THREADS] [MEMORY_LIMIT]`.
//! Prints the report as JSON on standard error.

use std::path::PathBuf;

use std::sync::Mutex;
use std::time::Instant;

use snapshot_core::{CaptureOptions, Compression, ProgressUpdate, Target, parse_size};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!(
            "usage: capture SOURCE OUT|- [zstd|zlib|none] [LEVEL] [CLUSTER] [THREADS] [MEMORY_LIMIT]"
        );
        std::process::exit(2);
    }
    let compression = match args.get(2).map(String::as_str) {
        Some("zlib") => Compression::Zlib,
        Some("none") => Compression::None,
        _ => Compression::Zstd,
    };
    let mut options = CaptureOptions {
        compression,
        level: args.get(3).map(|l| l.parse().expect("level")),
        skip_free_space: false,
        ..CaptureOptions::default()
    };
    if let Some(cluster) = args.get(4) {
        options.cluster_size = parse_size(cluster).expect("cluster size") as u32;
    }
    if let Some(threads) = args.get(5) {
        options.threads = threads.parse().expect("threads");
    }
    if let Some(limit) = args.get(6) {
        options.memory_limit = parse_size(limit).expect("memory limit");
    }
    let target = if args[1] == "-" {
        Target::Stdout
    } else {
        Target::File {
            path: PathBuf::from(&args[1]),
            force: true,
        }
    };
    // Seconds at which each phase was first seen, and when all guest bytes
    // were done (the rest is metadata and digests).
    let started = Instant::now();
    let marks = Mutex::new(Vec::<(String, f64)>::new());
    let progress = |update: &ProgressUpdate| {
        let mut marks = marks.lock().expect("marks");
        let label = if update.done == update.total {
            format!("{:?} done", update.phase)
        } else {
            format!("{:?}", update.phase)
        };
        if marks.last().map(|(l, _)| l) != Some(&label) {
            marks.push((label, started.elapsed().as_secs_f64()));
        }
    };
    let result = snapshot_core::capture(args[0].as_ref(), &target, &options, &progress);
    let marks = marks.into_inner().expect("marks");
    eprintln!(
        "phases: {}",
        marks
            .iter()
            .map(|(l, t)| format!("{l} at {t:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match result {
        Ok(report) => eprintln!("{}", serde_json::to_string(&report).expect("report")),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
