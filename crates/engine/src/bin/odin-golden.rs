//! Print the golden hash for every kernel this machine supports at 1, 2 and
//! 3 threads: "<kernel> <threads> <hash>" per line. Cross-architecture tests
//! run it under emulation (e.g. qemu-aarch64 for the NEON kernel) and compare
//! every line with the committed `GOLDEN_HASH`.

use odin_engine::synthetic::golden_hash;
use odin_engine::{Kernel, Options};

fn main() -> std::process::ExitCode {
    for k in Kernel::supported() {
        for threads in [1, 2, 3] {
            match golden_hash(Options { threads, kernel: Some(k), parallel_min_macs: 0 }) {
                Ok(h) => println!("{} {threads} {h}", k.name()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
