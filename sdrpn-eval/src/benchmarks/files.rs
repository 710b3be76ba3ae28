//! Which Parquet files a load reads.
//!
//! `data` is one `.parquet` file (read whatever its name), or a folder: every
//! `*.parquet` under it, recursively (following symbolic links, as in a
//! Hugging Face cache snapshot), sorted by path. A downloaded dataset
//! snapshot also holds other configs and splits, so a folder's files are
//! narrowed in two steps, each applied only when it keeps at least one file:
//!
//! 1. config: files under a folder named after the benchmark's config
//!    (`DocVQA`, `InfographicVQA`), or for the default config under `data`
//!    or `default` (which leaves out e.g. POPE's `Full` copy);
//! 2. split: files whose name starts with `<split>-` or `<split>.`
//!    (`validation-00000-of-00003.parquet`), or under a folder named after
//!    the split (the Hub's `refs/convert/parquet` layout,
//!    `default/test/0000.parquet`), or the split's file of the dataset's
//!    own release ([`Benchmark::release_file`]: HR-Bench's
//!    `hr_bench_4k.parquet`).
//!
//! So pointing at a whole `lmms-lab/textvqa` snapshot reads only its
//! validation files, and pointing at a folder of hand-picked files reads
//! them all.

use std::path::{Path, PathBuf};

use super::{Benchmark, BenchmarkError};

/// Deep enough for any snapshot layout, shallow enough to stop link loops.
const MAX_DEPTH: usize = 16;

/// The Parquet files to read for `benchmark` from `data`, in reading order.
pub fn parquet_files(benchmark: Benchmark, data: &Path) -> Result<Vec<PathBuf>, BenchmarkError> {
    let meta = std::fs::metadata(data).map_err(|cause| BenchmarkError::Io {
        path: data.to_owned(),
        cause,
    })?;
    if meta.is_file() {
        return Ok(vec![data.to_owned()]);
    }
    let mut files = Vec::new();
    collect(data, 0, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(BenchmarkError::NoParquetFiles {
            path: data.to_owned(),
        });
    }
    Ok(select(benchmark, data, files))
}

/// Every `*.parquet` file under `dir`.
fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), BenchmarkError> {
    let io_err = |cause| BenchmarkError::Io {
        path: dir.to_owned(),
        cause,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        // Follows links; a dangling link is skipped, not an error.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                collect(&path, depth + 1, out)?;
            }
        } else if meta.is_file() && path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// The folder names of `file` below `root`.
fn folders<'a>(root: &Path, file: &'a Path) -> Vec<&'a str> {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let parent = rel.parent().unwrap_or(Path::new(""));
    parent.iter().filter_map(|c| c.to_str()).collect()
}

/// Narrow a snapshot's files to the benchmark's config and split.
fn select(benchmark: Benchmark, root: &Path, files: Vec<PathBuf>) -> Vec<PathBuf> {
    let configs: &[&str] = match benchmark.hf_config() {
        Some(config) => &[config][..],
        None => &["data", "default"],
    };
    let files = keep_if_any(files, |f| {
        folders(root, f).iter().any(|d| configs.contains(d))
    });
    let split = benchmark.split();
    keep_if_any(files, |f| {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let named = name
            .strip_prefix(split)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('.'));
        named || folders(root, f).contains(&split) || benchmark.release_file() == Some(name)
    })
}

/// The files matching `pred`, or all of them when none does.
fn keep_if_any(files: Vec<PathBuf>, pred: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    if files.iter().any(|f| pred(f)) {
        files.into_iter().filter(|f| pred(f)).collect()
    } else {
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmarks::testutil::TempDir;

    fn touch_all(dir: &TempDir, rels: &[&str]) {
        for rel in rels {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
    }

    fn picked(benchmark: Benchmark, dir: &TempDir) -> Vec<String> {
        parquet_files(benchmark, dir.path())
            .unwrap()
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(dir.path()).unwrap();
                rel.to_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn snapshot_selection_table() {
        let docvqa_snapshot: &[&str] = &[
            "README.md",
            "DocVQA/test-00000-of-00001.parquet",
            "DocVQA/validation-00001-of-00002.parquet",
            "DocVQA/validation-00000-of-00002.parquet",
            "InfographicVQA/test-00000-of-00001.parquet",
            "InfographicVQA/validation-00000-of-00001.parquet",
        ];
        let pope_snapshot: &[&str] = &[
            "data/test-00000-of-00002.parquet",
            "data/test-00001-of-00002.parquet",
            "Full/adversarial-00000-of-00001.parquet",
            "Full/test-00000-of-00001.parquet",
        ];
        let textvqa_snapshot: &[&str] = &[
            "data/test-00000-of-00001.parquet",
            "data/train-00000-of-00001.parquet",
            "data/validation-00000-of-00001.parquet",
        ];
        let converted: &[&str] = &["default/test/0000.parquet", "default/test/0001.parquet"];
        let loose: &[&str] = &["b.parquet", "a.parquet", "notes.txt", "x.parquet.bak"];
        type Case<'a> = (Benchmark, &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                Benchmark::DocVqa,
                docvqa_snapshot,
                &[
                    "DocVQA/validation-00000-of-00002.parquet",
                    "DocVQA/validation-00001-of-00002.parquet",
                ],
            ),
            (
                Benchmark::InfoVqa,
                docvqa_snapshot,
                &["InfographicVQA/validation-00000-of-00001.parquet"],
            ),
            (
                Benchmark::Pope,
                pope_snapshot,
                &[
                    "data/test-00000-of-00002.parquet",
                    "data/test-00001-of-00002.parquet",
                ],
            ),
            (
                Benchmark::TextVqa,
                textvqa_snapshot,
                &["data/validation-00000-of-00001.parquet"],
            ),
            (Benchmark::ChartQa, converted, converted),
            // No config or split in the names: everything, sorted.
            (Benchmark::OcrBench, loose, &["a.parquet", "b.parquet"]),
        ];
        for &(benchmark, tree, want) in cases {
            let dir = TempDir::new("files");
            touch_all(&dir, tree);
            assert_eq!(picked(benchmark, &dir), want, "{benchmark}");
        }
    }

    #[test]
    fn a_single_file_is_read_whatever_its_name() {
        let dir = TempDir::new("files");
        touch_all(&dir, &["data/train-00000-of-00001.parquet"]);
        let file = dir.path().join("data/train-00000-of-00001.parquet");
        assert_eq!(parquet_files(Benchmark::TextVqa, &file).unwrap(), [file]);
    }

    #[cfg(unix)]
    #[test]
    fn follows_symlinked_snapshot_files() {
        let dir = TempDir::new("files");
        touch_all(&dir, &["blobs/abc123"]);
        std::fs::create_dir_all(dir.path().join("snap/data")).unwrap();
        let link = dir.path().join("snap/data/test-00000-of-00001.parquet");
        std::os::unix::fs::symlink(dir.path().join("blobs/abc123"), &link).unwrap();
        std::os::unix::fs::symlink("missing", dir.path().join("snap/dangling.parquet")).unwrap();
        let got = parquet_files(Benchmark::Pope, &dir.path().join("snap")).unwrap();
        assert_eq!(got, [link]);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = TempDir::new("files");
        touch_all(&dir, &["readme.txt"]);
        let err = parquet_files(Benchmark::Pope, dir.path()).unwrap_err();
        assert!(
            matches!(err, BenchmarkError::NoParquetFiles { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(dir.path().to_str().unwrap()),
            "{err}"
        );

        let missing = dir.path().join("nope");
        let err = parquet_files(Benchmark::Pope, &missing).unwrap_err();
        assert!(matches!(err, BenchmarkError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
