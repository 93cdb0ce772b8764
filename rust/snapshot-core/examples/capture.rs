//! Captures a disk with the engine alone, for measurements:
//! `cargo run --release -p snapshot-core --example capture -- SOURCE OUT|- [zstd|zlib|none] [LEVEL] [CLUSTER] [THREADS] [MEMORY_LIMIT]`.
//! Prints the report as JSON on standard error.

use std::path::PathBuf;

use snapshot_core::{CaptureOptions, Compression, NoProgress, Target, parse_size};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: capture SOURCE OUT|- [zstd|zlib|none] [LEVEL] [CLUSTER] [THREADS] [MEMORY_LIMIT]");
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
    let target = if args[1] == "-" { Target::Stdout } else { Target::File { path: PathBuf::from(&args[1]), force: true } };
    match snapshot_core::capture(args[0].as_ref(), &target, &options, &NoProgress) {
        Ok(report) => eprintln!("{}", serde_json::to_string(&report).expect("report")),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
