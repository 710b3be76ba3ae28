//! `sdrpn`: run SD-RPN experiments on any backend. See `sdrpn --help`.

use clap::Parser;
use experiments::commands::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // A closed pipe (`sdrpn score ... | head -1`) ends the program quietly,
    // as it does other command-line tools, instead of a panic in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal at start-up,
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = cli.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
