//! One `--data` argument to samples: a Parquet file or folder, a LLaVA
//! question file (`.jsonl`, with an image folder), `synthetic:N`, or testbed
//! questions (`testbed:SPLIT:N...`, TextVQA schema).

use anyhow::Context;
use sdrpn_eval::benchmarks::{load, load_llava_jsonl, Benchmark, Loaded};
use std::path::Path;

/// Loads the samples named by `data` for `benchmark`.
pub fn load_samples(
    benchmark: Benchmark,
    data: &str,
    images: Option<&Path>,
) -> anyhow::Result<Loaded> {
    if let Some(n) = data.strip_prefix("synthetic:") {
        let count: usize = n
            .parse()
            .with_context(|| format!("{data:?}: expected synthetic:N"))?;
        let file = crate::synthetic::synthetic_benchmark_file(benchmark, count)?;
        return Ok(load(benchmark, &file)?);
    }
    if data.starts_with(crate::testbed::spec::PREFIX) {
        let spec: crate::testbed::spec::TestbedData = data.parse()?;
        let files = spec.write(&std::env::temp_dir().join("sdrpn-testbed"))?;
        return Ok(load(benchmark, &files.parquet)?);
    }
    let path = Path::new(data);
    if path.extension().is_some_and(|e| e == "jsonl") {
        let images = images
            .with_context(|| format!("{data} is a LLaVA question file: pass --images DIR"))?;
        return Ok(load_llava_jsonl(path, images, None)?);
    }
    Ok(load(benchmark, path)?)
}
