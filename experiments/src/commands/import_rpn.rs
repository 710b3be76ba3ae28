//! `sdrpn import-rpn`: the RPN of an authors' released checkpoint into a run
//! folder that `sdrpn infer` / `eval --rpn` read.

use clap::Args;
use sdrpn_train::released_rpn::import_released_rpn;
use std::path::PathBuf;

/// Arguments of `sdrpn import-rpn`.
#[derive(Debug, Clone, Args)]
pub struct ImportRpnArgs {
    /// The released checkpoint folder (config.json with twig_K/twig_T, safetensors)
    pub checkpoint: PathBuf,
    /// Run folder to write (rpn.safetensors, config.toml, imported.json)
    #[arg(long)]
    pub out: PathBuf,
    /// Method preset (default: the paper's for the checkpoint's host and depth)
    #[arg(long)]
    pub preset: Option<String>,
}

pub fn run(args: ImportRpnArgs) -> anyhow::Result<()> {
    let source = import_released_rpn(&args.checkpoint, &args.out, args.preset.as_deref())?;
    println!(
        "imported the {:?} RPN of {} (K {}, T {}, {} tensors) into {}",
        source.host,
        args.checkpoint.display(),
        source.branch_layer,
        source.twig_layers,
        source.tensors.len(),
        args.out.display()
    );
    println!(
        "use it with the base model it was trained on: sdrpn infer --model BASE --rpn {}",
        args.out.display()
    );
    Ok(())
}
