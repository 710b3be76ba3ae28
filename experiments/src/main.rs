//! `sdrpn`: run SD-RPN experiments on any backend. See `sdrpn --help`.

use clap::Parser;
use experiments::commands::Cli;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
