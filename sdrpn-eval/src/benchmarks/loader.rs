//! Loading a benchmark from its lmms-eval Parquet mirror.

use std::path::Path;

use super::table::Table;
use super::{files, mirrors, Benchmark, BenchmarkError, Loaded};

/// Load `benchmark` from `data`: one `.parquet` file, or a folder (e.g. a
/// downloaded Hugging Face snapshot) whose `*.parquet` files are read in
/// path order, narrowed to the benchmark's config and split (see
/// [`super::files`]).
///
/// Missing columns, unreadable or non-Parquet files are errors; malformed
/// rows land in [`Loaded::skipped`] with their index, counted over all the
/// files read (so an index is the row's position in the concatenated data,
/// which is also the id of mirrors without an id column).
pub fn load(benchmark: Benchmark, data: &Path) -> Result<Loaded, BenchmarkError> {
    let paths = files::parquet_files(benchmark, data)?;
    let (required, optional) = mirrors::columns(benchmark);
    let mut loaded = Loaded::default();
    let mut first_index = 0;
    for path in paths {
        let table = Table::open(&path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut row = 0;
        table.for_each_row(benchmark.name(), required, optional, |record| {
            let index = first_index + row;
            let sample = record.and_then(|rec| mirrors::to_sample(benchmark, &rec, index, base));
            match sample {
                Ok(sample) => loaded.samples.push(sample),
                Err(reason) => loaded
                    .skipped
                    .push((index, format!("{} row {row}: {reason}", path.display()))),
            }
            row += 1;
        })?;
        // Rows left unread after a decoding error still take their indices.
        first_index += row.max(table.num_rows());
        loaded.files.push(path);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};

    use super::*;
    use crate::benchmarks::mirrors::{SHORT_ANSWER, SINGLE_WORD};
    use crate::benchmarks::testutil::{img, list, s, write_parquet, Cell, Kind, TempDir};
    use crate::benchmarks::{decode_image, Sample};

    const VSTAR_TRAILER: &str =
        "\nAnswer with the option's letter from the given choices directly.";

    /// What a loaded sample must look like; `rgb` is its image's colour.
    struct Want {
        id: &'static str,
        prompt: String,
        answers: &'static [&'static str],
        category: Option<&'static str>,
        dataset: Option<&'static str>,
        rgb: [u8; 3],
    }

    fn want(
        id: &'static str,
        prompt: &str,
        answers: &'static [&'static str],
        rgb: [u8; 3],
    ) -> Want {
        Want {
            id,
            prompt: prompt.to_owned(),
            answers,
            category: None,
            dataset: None,
            rgb,
        }
    }

    struct Case {
        benchmark: Benchmark,
        columns: Vec<(&'static str, Kind)>,
        rows: Vec<Vec<Cell>>,
        compression: Compression,
        want: Vec<Want>,
        /// Skipped row index and a fragment of the reason.
        skipped: Vec<(usize, &'static str)>,
    }

    const RED: [u8; 3] = [255, 0, 0];
    const GREEN: [u8; 3] = [0, 255, 0];
    const BLUE: [u8; 3] = [0, 0, 255];

    fn textvqa() -> Case {
        use Kind::*;
        let ten = |a: &str, b: &str| {
            let mut v = vec![a; 7];
            v.extend([b; 3]);
            list(&v)
        };
        let row = |id: i32, q: Cell, image: Cell, answers: Cell| {
            vec![
                s("0054c91397f2fe05"),
                Cell::I32(id),
                q,
                list(&["what", "is", "it"]),
                image,
                Cell::I32(1024),
                Cell::I32(768),
                s("https://farm.example/o.jpg"),
                s("https://farm.example/z.jpg"),
                answers,
                list(&["Vehicle"]),
                s("val"),
                list(&["NOUS", "LES"]),
            ]
        };
        Case {
            benchmark: Benchmark::TextVqa,
            columns: vec![
                ("image_id", Str),
                ("question_id", I32),
                ("question", Str),
                ("question_tokens", StrList),
                ("image", Image),
                ("image_width", I32),
                ("image_height", I32),
                ("flickr_original_url", Str),
                ("flickr_300k_url", Str),
                ("answers", StrList),
                ("image_classes", StrList),
                ("set_name", Str),
                ("ocr_tokens", StrList),
            ],
            rows: vec![
                row(
                    34602,
                    s("what is the BRAND of this Camera?"),
                    img(RED),
                    ten("nous les gosses", "dakota"),
                ),
                row(34603, s("who made it?"), Cell::Null, ten("x", "y")),
                row(34604, s("iPhone model?"), img(GREEN), ten("5s", "5")),
            ],
            compression: Compression::SNAPPY,
            want: vec![
                Want {
                    answers: &[
                        "nous les gosses",
                        "nous les gosses",
                        "nous les gosses",
                        "nous les gosses",
                        "nous les gosses",
                        "nous les gosses",
                        "nous les gosses",
                        "dakota",
                        "dakota",
                        "dakota",
                    ],
                    ..want(
                        "34602",
                        &format!("What is the brand of this camera?{SHORT_ANSWER}"),
                        &[],
                        RED,
                    )
                },
                Want {
                    answers: &["5s", "5s", "5s", "5s", "5s", "5s", "5s", "5", "5", "5"],
                    ..want("34604", &format!("Iphone model?{SHORT_ANSWER}"), &[], GREEN)
                },
            ],
            skipped: vec![(1, "`image` is null")],
        }
    }

    fn docvqa() -> Case {
        use Kind::*;
        let row = |id: &str, q: Cell, image: Cell, answers: Cell| {
            vec![
                s(id),
                q,
                list(&["layout"]),
                image,
                Cell::I64(14465),
                s("pybv0228"),
                s("81"),
                answers,
                s("val"),
            ]
        };
        Case {
            benchmark: Benchmark::DocVqa,
            columns: vec![
                ("questionId", Str),
                ("question", Str),
                ("question_types", StrList),
                ("image", Image),
                ("docId", I64),
                ("ucsf_document_id", Str),
                ("ucsf_document_page_no", Str),
                ("answers", StrList),
                ("data_split", Str),
            ],
            rows: vec![
                row(
                    "49153",
                    s("What is the ‘actual’ value per 1000, during the year 1975?"),
                    img(RED),
                    list(&["0.28"]),
                ),
                row("49154", s("What is the date?"), img(GREEN), Cell::Null),
                // Neither stripped nor capitalised.
                row(
                    "24580",
                    s(" what IS the total? "),
                    img(BLUE),
                    list(&["$1,000", "1000"]),
                ),
            ],
            compression: Compression::GZIP(GzipLevel::default()),
            want: vec![
                want(
                    "49153",
                    &format!(
                        "What is the ‘actual’ value per 1000, during the year 1975?{SHORT_ANSWER}"
                    ),
                    &["0.28"],
                    RED,
                ),
                want(
                    "24580",
                    &format!(" what IS the total? {SHORT_ANSWER}"),
                    &["$1,000", "1000"],
                    BLUE,
                ),
            ],
            skipped: vec![(1, "`answers` is null")],
        }
    }

    fn infovqa() -> Case {
        use Kind::*;
        let row = |id: &str, q: Cell, image: Cell, answers: Cell| {
            vec![
                s(id),
                q,
                answers,
                list(&["single span"]),
                image,
                s("https://infographic.example/1.jpg"),
                list(&["Counting"]),
                s("{\"PAGE\": []}"),
                s("val"),
            ]
        };
        Case {
            benchmark: Benchmark::InfoVqa,
            columns: vec![
                ("questionId", Str),
                ("question", Str),
                ("answers", StrList),
                ("answer_type", StrList),
                ("image", Image),
                ("image_url", Str),
                ("operation/reasoning", StrList),
                ("ocr", Str),
                ("data_split", Str),
            ],
            rows: vec![
                row(
                    "65718",
                    s("Which social platform has heavy female audience?"),
                    img(GREEN),
                    list(&["pinterest"]),
                ),
                row("65719", Cell::Null, img(GREEN), list(&["x"])),
            ],
            compression: Compression::UNCOMPRESSED,
            want: vec![want(
                "65718",
                &format!("Which social platform has heavy female audience?{SHORT_ANSWER}"),
                &["pinterest"],
                GREEN,
            )],
            skipped: vec![(1, "`question` is null")],
        }
    }

    fn chartqa() -> Case {
        use Kind::*;
        Case {
            benchmark: Benchmark::ChartQa,
            columns: vec![
                ("type", Str),
                ("question", Str),
                ("answer", Str),
                ("image", Image),
            ],
            rows: vec![
                vec![
                    s("human_test"),
                    s("How many food item is shown in the bar graph?"),
                    s("14"),
                    img(RED),
                ],
                vec![
                    s("augmented_test"),
                    s("What is the value?"),
                    Cell::Null,
                    img(RED),
                ],
                vec![
                    s("augmented_test"),
                    s("Is the value of Favorable 38 in 2015?"),
                    s("Yes"),
                    img(BLUE),
                ],
            ],
            compression: Compression::SNAPPY,
            want: vec![
                Want {
                    category: Some("human_test"),
                    ..want(
                        "0",
                        &format!("How many food item is shown in the bar graph?{SINGLE_WORD}"),
                        &["14"],
                        RED,
                    )
                },
                Want {
                    category: Some("augmented_test"),
                    ..want(
                        "2",
                        &format!("Is the value of Favorable 38 in 2015?{SINGLE_WORD}"),
                        &["Yes"],
                        BLUE,
                    )
                },
            ],
            skipped: vec![(1, "`answer` is null")],
        }
    }

    fn ocrbench() -> Case {
        use Kind::*;
        Case {
            benchmark: Benchmark::OcrBench,
            columns: vec![
                ("dataset", Str),
                ("question", Str),
                ("question_type", Str),
                ("answer", StrList),
                ("image", Image),
            ],
            rows: vec![
                vec![
                    s("IIIT5K"),
                    s("what is written in the image?"),
                    s("Regular Text Recognition"),
                    list(&["CENTRE"]),
                    img(RED),
                ],
                vec![
                    s("HME100k"),
                    s(" Please write out the expression of the formula in the image using LaTeX format.\n"),
                    s("Handwritten Mathematical Expression Recognition"),
                    list(&["x ^ { 2 }", "x^{2}"]),
                    img(GREEN),
                ],
                vec![
                    s("IIIT5K"),
                    s("what is written in the image?"),
                    s("Regular Text Recognition"),
                    list(&[]),
                    img(RED),
                ],
            ],
            compression: Compression::ZSTD(ZstdLevel::default()),
            want: vec![
                Want {
                    category: Some("Regular Text Recognition"),
                    dataset: Some("IIIT5K"),
                    ..want("0", "what is written in the image?", &["CENTRE"], RED)
                },
                Want {
                    category: Some("Handwritten Mathematical Expression Recognition"),
                    dataset: Some("HME100k"),
                    ..want(
                        "1",
                        "Please write out the expression of the formula in the image using LaTeX format.",
                        &["x ^ { 2 }", "x^{2}"],
                        GREEN,
                    )
                },
            ],
            skipped: vec![(2, "`answer` is empty")],
        }
    }

    fn vstar() -> Case {
        use Kind::*;
        let glove = "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\nAnswer with the option's letter from the given choices directly.";
        let dog = "Is the dog on the left or right side of the bench?\n(A) left\n(B) right\nAnswer with the option's letter from the given choices directly.";
        Case {
            benchmark: Benchmark::VStar,
            columns: vec![
                ("image", Image),
                ("text", Str),
                ("category", Str),
                ("question_id", Str),
                ("label", Str),
            ],
            rows: vec![
                vec![img(RED), s(glove), s("direct_attributes"), s("0"), s("A")],
                vec![img(BLUE), s(dog), s("relative_position"), s("115"), s(" b ")],
                vec![img(RED), s(glove), s("direct_attributes"), s("1"), Cell::Null],
            ],
            compression: Compression::SNAPPY,
            want: vec![
                Want {
                    category: Some("direct_attributes"),
                    ..want(
                        "0",
                        &format!(
                            "What is the material of the glove?\nA. rubber\nB. cotton\nC. kevlar\nD. leather{VSTAR_TRAILER}{VSTAR_TRAILER}"
                        ),
                        &["A"],
                        RED,
                    )
                },
                Want {
                    category: Some("relative_position"),
                    ..want(
                        "115",
                        &format!(
                            "Is the dog on the left or right side of the bench?\nA. left\nB. right{VSTAR_TRAILER}{VSTAR_TRAILER}"
                        ),
                        &["B"],
                        BLUE,
                    )
                },
            ],
            skipped: vec![(2, "`label` is null")],
        }
    }

    fn pope() -> Case {
        use Kind::*;
        let row = |qid: &str, q: &str, a: &str, cat: &str, image: Cell| {
            vec![
                s("1"),
                s(qid),
                s(q),
                s(a),
                s("COCO_val2014_000000310196"),
                image,
                s(cat),
            ]
        };
        Case {
            benchmark: Benchmark::Pope,
            columns: vec![
                ("id", Str),
                ("question_id", Str),
                ("question", Str),
                ("answer", Str),
                ("image_source", Str),
                ("image", Image),
                ("category", Str),
            ],
            rows: vec![
                row(
                    "1",
                    "Is there a snowboard in the image?",
                    "yes",
                    "adversarial",
                    img(RED),
                ),
                row(
                    "3001",
                    " Is there a car in the image? ",
                    " No",
                    "popular",
                    img(GREEN),
                ),
                row(
                    "6001",
                    "Is there a dog in the image?",
                    "maybe",
                    "random",
                    img(RED),
                ),
            ],
            compression: Compression::SNAPPY,
            want: vec![
                Want {
                    category: Some("adversarial"),
                    ..want(
                        "1",
                        &format!("Is there a snowboard in the image?{SHORT_ANSWER}"),
                        &["yes"],
                        RED,
                    )
                },
                Want {
                    category: Some("popular"),
                    ..want(
                        "3001",
                        &format!("Is there a car in the image?{SHORT_ANSWER}"),
                        &["no"],
                        GREEN,
                    )
                },
            ],
            skipped: vec![(2, "not yes/no")],
        }
    }

    /// HR-Bench's release: base64 JPEG text (PNG here: any format decodes)
    /// in `image`, options in columns A-D, int64 `index`.
    fn hrbench(benchmark: Benchmark) -> Case {
        use base64::Engine;
        use Kind::*;
        let b64 = |rgb| {
            s(&base64::engine::general_purpose::STANDARD
                .encode(crate::benchmarks::testutil::png_bytes(2, 2, rgb)))
        };
        let row = |i: i64, q: &str, answer: &str, d: Cell, cycle: &str, image: Cell| {
            vec![
                Cell::I64(i),
                s(q),
                s(answer),
                s("single"),
                s("27B"),
                s("37B"),
                s("27D"),
                d,
                s(cycle),
                image,
            ]
        };
        Case {
            benchmark,
            columns: vec![
                ("index", I64),
                ("question", Str),
                ("answer", Str),
                ("category", Str),
                ("A", Str),
                ("B", Str),
                ("C", Str),
                ("D", Str),
                ("cycle_category", Str),
                ("image", Str),
            ],
            rows: vec![
                row(0, " What is the number? ", "A", s("27E"), "0", b64(RED)),
                // A null option is dropped (3 options).
                row(1, "Which one?", "C", Cell::Null, "1", b64(GREEN)),
                row(2, "Which one?", "D", Cell::Null, "2", b64(BLUE)),
                row(3, "Which one?", "A", s("x"), "3", s("not base64!")),
            ],
            compression: Compression::SNAPPY,
            want: vec![
                Want {
                    category: Some("single"),
                    dataset: Some("0"),
                    ..want(
                        "0",
                        "What is the number?\nA. 27B\nB. 37B\nC. 27D\nD. 27E\nAnswer the option letter directly.",
                        &["A", "27B", "37B", "27D", "27E"],
                        RED,
                    )
                },
                Want {
                    category: Some("single"),
                    dataset: Some("1"),
                    ..want(
                        "1",
                        "Which one?\nA. 27B\nB. 37B\nC. 27D\nAnswer the option letter directly.",
                        &["C", "27B", "37B", "27D"],
                        GREEN,
                    )
                },
            ],
            skipped: vec![(2, "not one of the 3 option letters"), (3, "not base64")],
        }
    }

    fn check(case: &Case, loaded: &Loaded) {
        let b = case.benchmark;
        assert_eq!(loaded.samples.len(), case.want.len(), "{b}: {loaded:?}");
        for (got, want) in loaded.samples.iter().zip(&case.want) {
            let Sample {
                id,
                image,
                prompt,
                answers,
                category,
                dataset,
            } = got;
            assert_eq!(id, want.id, "{b}");
            assert_eq!(prompt, &want.prompt, "{b} {id}");
            assert_eq!(answers, want.answers, "{b} {id}");
            assert_eq!(category.as_deref(), want.category, "{b} {id}");
            assert_eq!(dataset.as_deref(), want.dataset, "{b} {id}");
            let rgb = decode_image(image).unwrap();
            assert_eq!(rgb.dimensions(), (2, 2), "{b} {id}");
            assert_eq!(rgb.get_pixel(1, 1).0, want.rgb, "{b} {id}");
        }
        let got: Vec<usize> = loaded.skipped.iter().map(|(i, _)| *i).collect();
        let want: Vec<usize> = case.skipped.iter().map(|(i, _)| *i).collect();
        assert_eq!(got, want, "{b}: {:?}", loaded.skipped);
        for ((_, reason), (_, fragment)) in loaded.skipped.iter().zip(&case.skipped) {
            assert!(
                reason.contains(fragment),
                "{b}: {reason:?} lacks {fragment:?}"
            );
            assert!(
                reason.contains("bench.parquet"),
                "{b}: {reason:?} names no file"
            );
        }
    }

    #[test]
    fn every_mirror_schema_loads() {
        let cases = [
            textvqa(),
            docvqa(),
            infovqa(),
            chartqa(),
            ocrbench(),
            vstar(),
            pope(),
            hrbench(Benchmark::HrBench4k),
            hrbench(Benchmark::HrBench8k),
        ];
        for b in Benchmark::ALL {
            assert!(cases.iter().any(|c| c.benchmark == b), "no case for {b}");
        }
        for case in &cases {
            let dir = TempDir::new("load");
            let path = dir.path().join("bench.parquet");
            write_parquet(&path, &case.columns, &case.rows, case.compression);
            let loaded = load(case.benchmark, &path).unwrap();
            assert_eq!(loaded.files, std::slice::from_ref(&path));
            check(case, &loaded);
        }
    }

    #[test]
    fn an_hrbench_release_folder_reads_the_split_file_only() {
        let case = hrbench(Benchmark::HrBench4k);
        let dir = TempDir::new("load");
        let four = dir.path().join("hr_bench_4k.parquet");
        let eight = dir.path().join("hr_bench_8k.parquet");
        write_parquet(&four, &case.columns, &case.rows, case.compression);
        write_parquet(&eight, &case.columns, &case.rows[..1], case.compression);
        assert_eq!(
            load(Benchmark::HrBench4k, dir.path()).unwrap().files,
            [four]
        );
        let loaded = load(Benchmark::HrBench8k, dir.path()).unwrap();
        assert_eq!(loaded.files, [eight]);
        assert_eq!(loaded.samples.len(), 1);
    }

    #[test]
    fn folder_loads_files_in_order_with_running_indices() {
        let case = chartqa();
        let dir = TempDir::new("load");
        // A snapshot: two data shards and a file of another config.
        let first = dir.path().join("data/test-00000-of-00002.parquet");
        let second = dir.path().join("data/test-00001-of-00002.parquet");
        let other = dir.path().join("extra/test-00000-of-00001.parquet");
        write_parquet(&second, &case.columns, &case.rows[2..], case.compression);
        write_parquet(&first, &case.columns, &case.rows[..2], case.compression);
        write_parquet(&other, &case.columns, &case.rows, case.compression);
        let loaded = load(Benchmark::ChartQa, dir.path()).unwrap();
        assert_eq!(loaded.files, [first, second.clone()]);
        // The ids (row indices) run on across files: same as one file.
        let ids: Vec<&str> = loaded.samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0", "2"]);
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].0, 1);
        assert!(loaded.skipped[0]
            .1
            .contains("test-00000-of-00002.parquet row 1"));

        // The second shard alone starts again at 0.
        let loaded = load(Benchmark::ChartQa, &second).unwrap();
        assert_eq!(loaded.samples[0].id, "0");
    }

    #[test]
    fn wrong_types_skip_rows() {
        use Kind::*;
        let dir = TempDir::new("load");
        let path = dir.path().join("pope.parquet");
        let columns = [
            ("question_id", Str),
            ("question", I32),
            ("answer", Str),
            ("image", Str),
            ("category", Str),
        ];
        let rows = vec![
            vec![s("1"), Cell::I32(7), s("yes"), s("x.png"), s("random")],
            vec![s("2"), Cell::I32(8), s("no"), Cell::Null, s("random")],
        ];
        write_parquet(&path, &columns, &rows, Compression::SNAPPY);
        let loaded = load(Benchmark::Pope, &path).unwrap();
        assert!(loaded.samples.is_empty());
        let reasons: Vec<&str> = loaded.skipped.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(reasons.len(), 2);
        // A string image column is read as base64 (HR-Bench's release);
        // "x.png" is not base64.
        assert!(
            reasons[0].contains("`image` is a string but not base64"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("`image` is null"), "{reasons:?}");

        let columns = [("question", I32), ("answer", Str), ("image", Image)];
        let rows = vec![vec![Cell::I32(7), s("yes"), img(RED)]];
        write_parquet(&path, &columns, &rows, Compression::SNAPPY);
        let loaded = load(Benchmark::Pope, &path).unwrap();
        assert!(
            loaded.skipped[0]
                .1
                .contains("`question`: expected a string, found integer"),
            "{:?}",
            loaded.skipped
        );
        // Without a `question_id` column the id is the row index.
        let columns = [("question", Str), ("answer", Str), ("image", Image)];
        let rows = vec![vec![s("Is it?"), s("yes"), img(RED)]];
        write_parquet(&path, &columns, &rows, Compression::SNAPPY);
        assert_eq!(load(Benchmark::Pope, &path).unwrap().samples[0].id, "0");
    }

    #[test]
    fn image_path_without_bytes() {
        let dir = TempDir::new("load");
        let path = dir.path().join("chart.parquet");
        std::fs::write(
            dir.path().join("c1.png"),
            crate::benchmarks::testutil::png_bytes(2, 2, BLUE),
        )
        .unwrap();
        let columns = [
            ("question", Kind::Str),
            ("answer", Kind::Str),
            ("image", Kind::Image),
        ];
        let rows = vec![
            vec![s("Q1"), s("1"), Cell::Image(None, Some("c1.png".into()))],
            vec![s("Q2"), s("2"), Cell::Image(None, Some("gone.png".into()))],
            vec![s("Q3"), s("3"), Cell::Image(None, None)],
        ];
        write_parquet(&path, &columns, &rows, Compression::SNAPPY);
        let loaded = load(Benchmark::ChartQa, &path).unwrap();
        assert_eq!(loaded.samples.len(), 1);
        assert_eq!(
            decode_image(&loaded.samples[0].image)
                .unwrap()
                .get_pixel(0, 0)
                .0,
            BLUE
        );
        assert!(loaded.skipped[0].1.contains("gone.png does not exist"));
        assert!(loaded.skipped[1].1.contains("neither bytes nor a path"));
    }

    #[test]
    fn missing_column_lists_what_was_found() {
        let dir = TempDir::new("load");
        let path = dir.path().join("textvqa.parquet");
        let columns = [
            ("question_id", Kind::I32),
            ("question", Kind::Str),
            ("image", Kind::Image),
        ];
        write_parquet(&path, &columns, &[], Compression::SNAPPY);
        let err = load(Benchmark::TextVqa, &path).unwrap_err();
        assert!(matches!(err, BenchmarkError::MissingColumn { .. }), "{err}");
        let msg = err.to_string();
        for part in [
            "textvqa.parquet",
            "missing column `answers` for textvqa",
            "columns found: question_id, question, image",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
    }

    #[test]
    fn non_parquet_files_are_errors() {
        let dir = TempDir::new("load");
        let path = dir.path().join("data/test-00000-of-00001.parquet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "question,answer\nIs it?,yes\n").unwrap();
        for data in [path.as_path(), dir.path()] {
            let err = load(Benchmark::Pope, data).unwrap_err();
            assert!(matches!(err, BenchmarkError::NotParquet { .. }), "{err}");
            assert!(
                err.to_string().contains("test-00000-of-00001.parquet"),
                "{err}"
            );
        }
    }
}
