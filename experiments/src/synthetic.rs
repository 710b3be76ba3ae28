//! Generated data: pictures of one coloured ball, question files and
//! benchmark-shaped samples, for the demo, smoke tests and CI (`synthetic:N`
//! wherever a data path is expected). Nothing here is a real benchmark.

use anyhow::Context;
use image::{Rgb, RgbImage};
use sdrpn_eval::benchmarks::writer::{write_parquet, Cell, Kind};
use sdrpn_eval::benchmarks::{Benchmark, BenchmarkError};
use sdrpn_train::dataset::SplitMix;
use std::path::{Path, PathBuf};

/// The colours balls come in.
pub const COLOURS: [(&str, [u8; 3]); 5] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [235, 210, 40]),
    ("white", [245, 245, 245]),
];

/// A 320x240 picture: a soft gradient and one coloured ball.
pub fn picture(rng: &mut SplitMix) -> (RgbImage, &'static str) {
    let (w, h) = (320u32, 240u32);
    let (name, colour) = COLOURS[(rng.next_u64() % COLOURS.len() as u64) as usize];
    let radius = 14.0 + (rng.next_u64() % 24) as f32;
    let cx = radius + (rng.next_u64() % (w - 2 * radius as u32) as u64) as f32;
    let cy = radius + (rng.next_u64() % (h - 2 * radius as u32) as u64) as f32;
    let tint = (rng.next_u64() % 60) as f32;
    let img = RgbImage::from_fn(w, h, |x, y| {
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        if d <= radius {
            Rgb(colour)
        } else {
            let g = 90.0 + 60.0 * y as f32 / h as f32;
            Rgb([(g + tint) as u8, g as u8, (150.0 - tint) as u8])
        }
    });
    (img, name)
}

/// Writes `count` pictures under `dir/images` and a LLaVA question file
/// `dir/questions.jsonl` (seeded); returns the question file.
pub fn write_question_set(dir: &Path, count: usize, seed: u64) -> anyhow::Result<PathBuf> {
    let rng = &mut SplitMix::new(seed);
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let mut lines = String::new();
    for i in 0..count {
        let (img, colour) = picture(rng);
        let name = format!("ball_{i:03}.png");
        img.save(images.join(&name))
            .with_context(|| format!("cannot write {name}"))?;
        let q = serde_json::json!({"question_id": i, "image": name, "text": "What color is the ball?", "category": colour});
        lines.push_str(&format!("{q}\n"));
    }
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, lines)?;
    Ok(path)
}

/// An image encoded as PNG bytes.
pub(crate) fn png(img: &RgbImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .expect("PNG encoding to memory");
    buf.into_inner()
}

/// Writes `count` ball pictures as a Parquet file with the columns of
/// `benchmark`'s mirror (the ones the loader reads), so synthetic data goes
/// through the real loader, prompts and scorer.
pub fn write_benchmark(
    benchmark: Benchmark,
    count: usize,
    seed: u64,
    path: &Path,
) -> Result<(), BenchmarkError> {
    use Kind::*;
    let rng = &mut SplitMix::new(seed);
    let s = |v: &str| Cell::Str(v.to_string());
    let list = |v: Vec<String>| Cell::List(v.into_iter().map(Some).collect());
    let columns: Vec<(&str, Kind)> = match benchmark {
        Benchmark::TextVqa => vec![
            ("question_id", I32),
            ("question", Str),
            ("answers", StrList),
            ("image", Image),
        ],
        Benchmark::DocVqa | Benchmark::InfoVqa => {
            vec![
                ("questionId", Str),
                ("question", Str),
                ("answers", StrList),
                ("image", Image),
            ]
        }
        Benchmark::ChartQa => vec![
            ("question", Str),
            ("answer", Str),
            ("type", Str),
            ("image", Image),
        ],
        Benchmark::OcrBench => vec![
            ("question", Str),
            ("answer", StrList),
            ("question_type", Str),
            ("dataset", Str),
            ("image", Image),
        ],
        Benchmark::VStar => vec![
            ("question_id", Str),
            ("text", Str),
            ("label", Str),
            ("category", Str),
            ("image", Image),
        ],
        Benchmark::Pope => vec![
            ("question_id", Str),
            ("question", Str),
            ("answer", Str),
            ("category", Str),
            ("image", Image),
        ],
        // HR-Bench's release stores the image as base64 text.
        Benchmark::HrBench4k | Benchmark::HrBench8k => vec![
            ("index", I64),
            ("question", Str),
            ("answer", Str),
            ("A", Str),
            ("B", Str),
            ("C", Str),
            ("D", Str),
            ("category", Str),
            ("cycle_category", Str),
            ("image", Str),
        ],
    };
    let rows: Vec<Vec<Cell>> = (0..count)
        .map(|i| {
            let (img, colour) = picture(rng);
            let bytes = png(&img);
            let base64_text = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            };
            let image = Cell::Image(Some(bytes), Some(format!("ball_{i}.png")));
            let other = COLOURS[(i + 1) % COLOURS.len()].0;
            match benchmark {
                Benchmark::TextVqa => vec![
                    Cell::I32(i as i32),
                    s("what color is the ball?"),
                    list(vec![colour.to_string(); 10]),
                    image,
                ],
                Benchmark::DocVqa | Benchmark::InfoVqa => {
                    vec![s(&format!("q{i}")), s("What color is the ball?"), list(vec![colour.into()]), image]
                }
                Benchmark::ChartQa => vec![s("How many balls are there?"), s("1"), s("synthetic"), image],
                Benchmark::OcrBench => vec![
                    s("What color is the ball?"),
                    list(vec![colour.into()]),
                    s("synthetic"),
                    s("synthetic"),
                    image,
                ],
                Benchmark::VStar => {
                    let (a, b, label) = if i % 2 == 0 { (colour, other, "A") } else { (other, colour, "B") };
                    vec![
                        s(&format!("v{i}")),
                        s(&format!(
                            "What is the color of the ball?\n(A) {a}\n(B) {b}\nAnswer with the option's letter from the given choices directly."
                        )),
                        s(label),
                        s("direct_attributes"),
                        image,
                    ]
                }
                Benchmark::Pope => {
                    let (asked, answer) = if i % 2 == 0 { (colour, "yes") } else { (other, "no") };
                    vec![
                        s(&format!("p{i}")),
                        s(&format!("Is there a {asked} ball in the image?")),
                        s(answer),
                        s("random"),
                        image,
                    ]
                }
                Benchmark::HrBench4k | Benchmark::HrBench8k => {
                    // Four rotations of the options, as the release has.
                    let mut options: Vec<&str> = vec![colour, other, "black", "purple"];
                    options.rotate_right(i % 4);
                    let answer = ["A", "B", "C", "D"][i % 4];
                    let mut row = vec![Cell::I64(i as i64), s("What is the color of the ball?"), s(answer)];
                    row.extend(options.iter().map(|o| s(o)));
                    row.extend([
                        s(if i % 2 == 0 { "single" } else { "cross" }),
                        s(&(i % 4).to_string()),
                        Cell::Str(base64_text),
                    ]);
                    row
                }
            }
        })
        .collect();
    write_parquet(path, &columns, &rows, parquet::basic::Compression::SNAPPY)
}

/// The Parquet file of `synthetic:N` for a benchmark, written once under
/// the system temp folder (deterministic content, seed 5).
pub fn synthetic_benchmark_file(benchmark: Benchmark, count: usize) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("sdrpn-synthetic");
    let path = dir.join(format!("{benchmark}-{count}.parquet"));
    if !path.is_file() {
        let tmp = dir.join(format!("{benchmark}-{count}.{}.tmp", std::process::id()));
        write_benchmark(benchmark, count, 5, &tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
    }
    Ok(path)
}
