//! `sdrpn config --preset NAME`: a preset's method config as TOML, the
//! template for `--config FILE` of `label`, `train`, `infer` and `eval`.

use clap::Args;
use sdrpn_train::config::PRESETS;
use sdrpn_train::SdrpnConfig;

/// Print a method preset as TOML (a template for --config).
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Preset to print.
    #[arg(long, default_value = "llava-1.5-7b")]
    pub preset: String,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let config = SdrpnConfig::preset(&args.preset)?;
    println!(
        "# SD-RPN method config, preset {:?} (presets: {}).\n# Edit and pass with --config FILE.",
        args.preset,
        PRESETS.join(", ")
    );
    print!("{}", config.to_toml());
    Ok(())
}
