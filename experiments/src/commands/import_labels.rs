//! `sdrpn import-labels`: the authors' released pseudo-label pickle into a
//! label folder that `sdrpn train` reads unchanged.

use anyhow::Context;
use clap::Args;
use sdrpn_core::Grid;
use sdrpn_train::released_labels::{import_released_labels, LabelImport};
use sdrpn_train::SdrpnConfig;
use std::path::{Path, PathBuf};

/// Arguments of `sdrpn import-labels`.
#[derive(Debug, Clone, Args)]
pub struct ImportLabelsArgs {
    /// The released pickle (`llava_v1_5_7b_pseudo_roi_release.pkl` or the 13B one)
    pub pickle: PathBuf,
    /// Label folder to write (shards, config.toml, imported.json)
    #[arg(long)]
    pub out: PathBuf,
    /// Preset of the model that made the labels (default: from the file
    /// name, `7b` -> llava-1.5-7b, `13b` -> llava-1.5-13b)
    #[arg(long)]
    pub preset: Option<String>,
    /// The visual grid ROWSxCOLS (default: read off the first map; 24x24 for LLaVA-1.5)
    #[arg(long, value_parser = parse_grid)]
    pub grid: Option<Grid>,
    /// The image folder the records' paths are relative to (recorded for `sdrpn train`)
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Records per shard
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
}

/// Parses `ROWSxCOLS`.
fn parse_grid(s: &str) -> Result<Grid, String> {
    let (r, c) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?} is not ROWSxCOLS (such as 24x24)"))?;
    let r = r
        .parse()
        .map_err(|_| format!("{s:?}: rows {r:?} is not a number"))?;
    let c = c
        .parse()
        .map_err(|_| format!("{s:?}: columns {c:?} is not a number"))?;
    Grid::new(r, c).map_err(|e| e.to_string())
}

/// The preset named, or the one the file name tells.
fn preset_for(args: &ImportLabelsArgs) -> anyhow::Result<SdrpnConfig> {
    let name = match &args.preset {
        Some(p) => p.clone(),
        None => {
            let file = args
                .pickle
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_lowercase();
            if file.contains("13b") {
                "llava-1.5-13b".into()
            } else if file.contains("7b") {
                "llava-1.5-7b".into()
            } else {
                anyhow::bail!(
                    "{}: the file name says neither 7b nor 13b; pass --preset (one of {})",
                    args.pickle.display(),
                    sdrpn_train::config::PRESETS.join(", ")
                );
            }
        }
    };
    Ok(SdrpnConfig::preset(&name)?)
}

pub fn run(args: ImportLabelsArgs) -> anyhow::Result<()> {
    let config = preset_for(&args)?;
    let file = std::fs::File::open(&args.pickle)
        .with_context(|| format!("cannot open {}", args.pickle.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Some(images) = &args.images {
        if !images.is_dir() {
            anyhow::bail!("--images {} is not a folder", images.display());
        }
    }
    let bar = crate::progress::bytes_bar(size, "importing");
    let job = LabelImport {
        pickle: &args.pickle,
        out: &args.out,
        grid: args.grid,
        config: &config,
        shard_size: args.shard_size,
    };
    let report = import_released_labels(&job, bar.wrap_read(file));
    bar.finish_and_clear();
    let report = report?;
    if let Some(images) = &args.images {
        sdrpn_train::label_store::write_image_source(&args.out, images)?;
    }
    let dtypes: Vec<String> = report
        .dtypes
        .iter()
        .map(|(d, n)| format!("{n} {d}"))
        .collect();
    println!(
        "read {} records: {} imported, {} there already, {} skipped; grid {}; maps {}; preset {}",
        report.read,
        report.imported,
        report.already,
        report.skipped.len(),
        report.grid.map_or("-".into(), |g| g.to_string()),
        dtypes.join(", "),
        config.preset
    );
    for (id, why) in report.skipped.iter().take(5) {
        println!("  skipped {id}: {why}");
    }
    if report.skipped.len() > 5 {
        println!(
            "  ... all {} in {}",
            report.skipped.len(),
            skipped_log(&args.out).display()
        );
    }
    if args.images.is_none() {
        println!("train with --images DIR (the folder the records' image paths are relative to)");
    }
    Ok(())
}

fn skipped_log(out: &Path) -> PathBuf {
    out.join(format!(
        "skipped-{}.jsonl",
        sdrpn_train::released_labels::WORKER
    ))
}
