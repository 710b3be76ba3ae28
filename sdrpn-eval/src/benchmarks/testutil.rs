//! Test helpers: temporary folders, tiny PNGs and Parquet files written with
//! the schemas Hugging Face `datasets` (pyarrow) produces.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use super::writer::{Cell, Kind};

/// [`super::writer::write_parquet`], unwrapped for tests.
pub fn write_parquet(
    path: &Path,
    columns: &[(&str, Kind)],
    rows: &[Vec<Cell>],
    compression: parquet::basic::Compression,
) {
    super::writer::write_parquet(path, columns, rows, compression).unwrap()
}

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("sdrpn-benchmarks-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `w` x `h` PNG filled with `rgb`.
pub fn png_bytes(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// A string cell.
pub fn s(v: &str) -> Cell {
    Cell::Str(v.to_owned())
}

/// A list-of-strings cell.
pub fn list(vs: &[&str]) -> Cell {
    Cell::List(vs.iter().map(|v| Some((*v).to_owned())).collect())
}

/// An image cell with PNG bytes.
pub fn img(rgb: [u8; 3]) -> Cell {
    Cell::Image(Some(png_bytes(2, 2, rgb)), Some("image.png".to_owned()))
}
