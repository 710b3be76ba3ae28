//! What made an output: cheap, stable fingerprints of a checkpoint folder
//! (and of any file), recorded by every output folder and checked when a
//! folder is resumed or a trained RPN is used.
//!
//! A checkpoint's fingerprint hashes its `config.json` and, for the weights,
//! each safetensors file's header (names, dtypes, shapes, offsets) plus 16
//! evenly spaced 256-byte samples of its data: a few reads however large the
//! model (it never reads 14 GB), and two trainings of one architecture
//! differ in every sample. The hash is 64-bit FNV-1a, stable across
//! platforms and program versions.

use crate::error::{LlavaError, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// 64-bit FNV-1a over a stream of byte slices.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

pub use sdrpn_core::host::ModelFingerprint;

fn io(path: &Path, e: std::io::Error) -> LlavaError {
    LlavaError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Hash of a whole file (for small files: configs, RPN weights).
pub fn file_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let mut h = Fnv64::default();
    h.update(&bytes);
    Ok(h.hex())
}

/// Adds a safetensors file's header and 16 samples of its data to `h`.
fn hash_safetensors(path: &Path, h: &mut Fnv64) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let size = file.metadata().map_err(|e| io(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| io(path, e))?;
    let header_len = u64::from_le_bytes(len);
    if header_len.saturating_add(8) > size {
        return Err(LlavaError::invalid(
            "safetensors file",
            format!(
                "{}: header length {header_len} exceeds the file",
                path.display()
            ),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| io(path, e))?;
    h.update(&size.to_le_bytes());
    h.update(&header);
    let data_start = 8 + header_len;
    let data_len = size - data_start;
    let mut sample = [0u8; 256];
    for k in 0..16u64 {
        let at = data_start + data_len.saturating_sub(256) * k / 15;
        file.seek(SeekFrom::Start(at)).map_err(|e| io(path, e))?;
        let n = file.read(&mut sample).map_err(|e| io(path, e))?;
        h.update(&sample[..n]);
    }
    Ok(())
}

/// The fingerprint of checkpoint folder `dir` whose visual grid is `grid`.
pub fn model_fingerprint(dir: &Path, grid: &str) -> Result<ModelFingerprint> {
    let config = file_hash(&dir.join("config.json"))?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut h = Fnv64::default();
    for f in &files {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        hash_safetensors(f, &mut h)?;
    }
    Ok(ModelFingerprint {
        config,
        weights: h.hex(),
        grid: grid.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        // FNV-1a 64 of "" and "a" (from the FNV reference tables).
        assert_eq!(Fnv64::default().hex(), "cbf29ce484222325");
        let mut h = Fnv64::default();
        h.update(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
    }
}
