//! One benchmark question, the result of a load, and image decoding.

use std::path::PathBuf;

use super::BenchmarkError;

/// Where a sample's image comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Encoded image bytes (PNG, JPEG, ...), as embedded in the Parquet
    /// mirrors.
    Bytes(Vec<u8>),
    /// An image file on disk.
    File(PathBuf),
}

impl std::fmt::Debug for ImageSource {
    /// Byte payloads are summarised (they are often megabytes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            ImageSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// One benchmark question, ready for the model and the scorer.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The reference's question id (the row index when the mirror has none).
    pub id: String,
    pub image: ImageSource,
    /// The user text that follows `"<image>\n"`: the question plus the
    /// post-prompt (and V* options), exactly as lmms-eval builds it.
    pub prompt: String,
    /// What the scorer gets: TextVQA's 10 human answers, DocVQA/InfoVQA's
    /// accepted answers, ChartQA's target, OCRBench's answers, V*'s label
    /// letter, POPE's "yes"/"no".
    pub answers: Vec<String>,
    /// Breakdown key: V* `direct_attributes` / `relative_position`, POPE
    /// `adversarial` / `popular` / `random`, OCRBench question type, ChartQA
    /// `human_test` / `augmented_test`.
    pub category: Option<String>,
    /// OCRBench source dataset (`"HME100k"` switches the scoring rule).
    pub dataset: Option<String>,
}

/// The samples of a load, with the rows that could not be used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub samples: Vec<Sample>,
    /// Malformed rows: row index (counted over all files read, in order) and
    /// the reason (naming the file). Never fatal.
    pub skipped: Vec<(usize, String)>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Loaded {
    /// What a user should hear about this load before the work starts, one
    /// line each (`data` names the source): the rows skipped, and the
    /// samples whose `answers` list is empty (they score 0 whatever the
    /// model answers, as in lmms-eval, but silently lowering a score is a
    /// defect of the data worth saying).
    pub fn warnings(&self, data: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .skipped
            .iter()
            .map(|(row, why)| format!("warning: {data} row {row} skipped: {why}"))
            .collect();
        let empty: Vec<&str> = self
            .samples
            .iter()
            .filter(|s| s.answers.is_empty())
            .map(|s| s.id.as_str())
            .collect();
        if !empty.is_empty() {
            let shown = empty.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            let more = if empty.len() > 5 { ", ..." } else { "" };
            out.push(format!(
                "warning: {data}: {} of {} samples have an empty answers list (ids {shown}{more}): they score 0 whatever the answer",
                empty.len(),
                self.samples.len()
            ));
        }
        out
    }
}

/// Decode an image to 8-bit RGB (what lmms-eval's `.convert("RGB")` gives):
/// greyscale, alpha and 16-bit images are converted.
pub fn decode_image(image: &ImageSource) -> Result<image::RgbImage, BenchmarkError> {
    let decoded = match image {
        ImageSource::Bytes(bytes) => {
            image::load_from_memory(bytes).map_err(|e| BenchmarkError::Image {
                what: format!("({} embedded bytes)", bytes.len()),
                message: e.to_string(),
            })?
        }
        ImageSource::File(path) => image::ImageReader::open(path)
            .map_err(|cause| BenchmarkError::Io {
                path: path.clone(),
                cause,
            })?
            .with_guessed_format()
            .map_err(|cause| BenchmarkError::Io {
                path: path.clone(),
                cause,
            })?
            .decode()
            .map_err(|e| BenchmarkError::Image {
                what: path.display().to_string(),
                message: e.to_string(),
            })?,
    };
    Ok(decoded.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmarks::testutil::{png_bytes, TempDir};

    #[test]
    fn decodes_bytes_and_files_to_rgb() {
        let png = png_bytes(3, 2, [10, 20, 30]);
        let rgb = decode_image(&ImageSource::Bytes(png.clone())).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        assert_eq!(rgb.get_pixel(0, 0).0, [10, 20, 30]);

        let dir = TempDir::new("decode");
        // The extension lies: the format is sniffed from the content.
        let path = dir.path().join("image.jpg");
        std::fs::write(&path, &png).unwrap();
        let rgb = decode_image(&ImageSource::File(path)).unwrap();
        assert_eq!(rgb.get_pixel(2, 1).0, [10, 20, 30]);
    }

    #[test]
    fn converts_grey_alpha_to_rgb() {
        let img = image::GrayAlphaImage::from_pixel(2, 2, image::LumaA([200, 7]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        let rgb = decode_image(&ImageSource::Bytes(buf.into_inner())).unwrap();
        assert_eq!(rgb.get_pixel(1, 1).0, [200, 200, 200]);
    }

    #[test]
    fn errors_name_the_problem() {
        let err = decode_image(&ImageSource::Bytes(b"not an image".to_vec())).unwrap_err();
        assert!(err.to_string().contains("12 embedded bytes"), "{err}");
        let err = decode_image(&ImageSource::File("/nonexistent/x.png".into())).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.png"), "{err}");
    }

    #[test]
    fn empty_answer_lists_and_skipped_rows_are_warned_about() {
        let sample = |id: &str, answers: &[&str]| Sample {
            id: id.into(),
            image: ImageSource::Bytes(Vec::new()),
            prompt: "q".into(),
            answers: answers.iter().map(|a| a.to_string()).collect(),
            category: None,
            dataset: None,
        };
        let loaded = Loaded {
            samples: vec![sample("a", &["x"]), sample("b", &[]), sample("c", &[])],
            skipped: vec![(4, "no image".into())],
            files: Vec::new(),
        };
        assert_eq!(
            loaded.warnings("data.parquet"),
            [
                "warning: data.parquet row 4 skipped: no image",
                "warning: data.parquet: 2 of 3 samples have an empty answers list (ids b, c): they score 0 whatever the answer",
            ]
        );
        let clean = Loaded {
            samples: vec![sample("a", &["x"])],
            ..Loaded::default()
        };
        assert!(clean.warnings("d").is_empty());
    }

    #[test]
    fn debug_summarises_bytes() {
        let s = format!("{:?}", ImageSource::Bytes(vec![0; 1000]));
        assert_eq!(s, "Bytes(1000 bytes)");
    }
}
