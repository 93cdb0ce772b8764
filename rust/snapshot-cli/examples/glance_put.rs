//! Test driver of the Glance sink on its own, without the capture engine:
//! streams standard input into a Glance image through `GlanceSink`, then
//! either finishes and verifies the upload, or aborts it after N bytes.
//!
//! `glance_put ENDPOINT IMAGE_ID [--abort-after BYTES]`; the token comes from
//! `OS_TOKEN`. Prints `opened` once the sink is open (the image was checked,
//! no byte sent yet), then `ok` on success; exits 1 with the error chain
//! otherwise.
//! Used by tests/cli/test_glance_sink.py against a real Glance.

use std::io::Read;

use md5::Digest as _;
use snapshot_core::Digests;
use snapshot_core::{Secret, Sink};
use snapshot_openstack::{GlanceTarget, glance};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let abort_after: Option<u64> = args.iter().position(|a| a == "--abort-after").map(|i| {
        args[i + 1]
            .parse()
            .expect("--abort-after takes a byte count")
    });
    let target = GlanceTarget {
        endpoint: args[1].clone(),
        image_id: args[2].clone(),
        token: std::env::var("OS_TOKEN").ok().map(Secret::new),
        insecure: false,
        ca_file: None,
    };
    if let Err(err) = run(&target, abort_after) {
        let mut line = format!("error: {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            line.push_str(&format!("\n  caused by: {cause}"));
            source = cause.source();
        }
        eprintln!("{line}");
        std::process::exit(1);
    }
    println!("ok");
}

fn run(target: &GlanceTarget, abort_after: Option<u64>) -> snapshot_core::Result<()> {
    let mut sink: Box<dyn Sink> = Box::new(glance::open(target)?);
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "opened").and_then(|()| out.flush());
    }
    let (mut md5, mut sha256, mut sha512) =
        (md5::Md5::new(), sha2::Sha256::new(), sha2::Sha512::new());
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stdin.read(&mut buf).expect("read stdin");
        if n == 0 {
            break;
        }
        if let Some(limit) = abort_after
            && total + n as u64 > limit
        {
            sink.abort();
            println!("aborted");
            return Ok(());
        }
        sink.write(&buf[..n])?;
        md5.update(&buf[..n]);
        sha256.update(&buf[..n]);
        sha512.update(&buf[..n]);
        total += n as u64;
    }
    sink.finish()?;
    let digests = Digests {
        md5: hex::encode(md5.finalize()),
        sha256: hex::encode(sha256.finalize()),
        sha512: hex::encode(sha512.finalize()),
    };
    glance::verify(target, &digests, total)
}
