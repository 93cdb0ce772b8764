//! `ironic-snapshot`: command-line front end of the imaging engine.

fn main() {
    println!("ironic-snapshot {}", snapshot_core::VERSION);
}
