//! `sdrpn`: run SD-RPN experiments on any backend. See `sdrpn --help`.

use clap::Parser;
use experiments::commands::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
