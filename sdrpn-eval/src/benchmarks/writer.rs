//! Writing Parquet files with the schemas Hugging Face `datasets` (pyarrow)
//! produces for the benchmark mirrors: used to generate `synthetic:N` data
//! and test files, so both go through the real loader.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::BenchmarkError;

/// A column's type, as `datasets` writes it.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `Value("string")`: `optional binary (UTF8)`.
    Str,
    /// `Value("int32")`.
    I32,
    /// `Value("int64")`.
    I64,
    /// `Sequence(Value("string"))`: a three-level LIST of UTF8.
    StrList,
    /// `Image()`: struct `{bytes: binary, path: string}`.
    Image,
}

/// One value of a row.
#[derive(Clone, Debug)]
pub enum Cell {
    Null,
    Str(String),
    I32(i32),
    I64(i64),
    List(Vec<Option<String>>),
    Image(Option<Vec<u8>>, Option<String>),
}

fn schema_text(columns: &[(&str, Kind)]) -> String {
    let mut text = String::from("message schema {\n");
    for (name, kind) in columns {
        let field = match kind {
            Kind::Str => format!("optional binary {name} (UTF8);"),
            Kind::I32 => format!("optional int32 {name};"),
            Kind::I64 => format!("optional int64 {name};"),
            Kind::StrList => format!(
                "optional group {name} (LIST) {{ repeated group list {{ optional binary element (UTF8); }} }}"
            ),
            Kind::Image => format!(
                "optional group {name} {{ optional binary bytes; optional binary path (UTF8); }}"
            ),
        };
        text.push_str(&field);
        text.push('\n');
    }
    text.push('}');
    text
}

/// One leaf column's values and levels.
enum Values {
    Bytes(Vec<ByteArray>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

struct Leaf {
    values: Values,
    def: Vec<i16>,
    rep: Option<Vec<i16>>,
}

fn bytes_leaf(cells: &[Option<Option<Vec<u8>>>], max_def: i16) -> Leaf {
    // Outer None: the enclosing struct is null; inner None: the value is.
    let mut values = Vec::new();
    let mut def = Vec::new();
    for cell in cells {
        match cell {
            None => def.push(0),
            Some(None) => def.push(max_def - 1),
            Some(Some(b)) => {
                def.push(max_def);
                values.push(ByteArray::from(b.clone()));
            }
        }
    }
    Leaf {
        values: Values::Bytes(values),
        def,
        rep: None,
    }
}

fn leaves(kind: Kind, name: &str, cells: &[&Cell]) -> Vec<Leaf> {
    fn bad<T>(name: &str, kind: Kind, c: &Cell) -> T {
        panic!("column {name} ({kind:?}) cannot hold {c:?}")
    }
    match kind {
        Kind::Str => {
            let cells: Vec<_> = cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Some(None),
                    Cell::Str(v) => Some(Some(v.clone().into_bytes())),
                    c => bad(name, kind, c),
                })
                .collect();
            // A top-level optional value: null is level 0.
            vec![bytes_leaf(&cells, 1)]
        }
        Kind::I32 | Kind::I64 => {
            let mut i32s = Vec::new();
            let mut i64s = Vec::new();
            let mut def = Vec::new();
            for c in cells {
                match c {
                    Cell::Null => def.push(0),
                    Cell::I32(v) => {
                        def.push(1);
                        i32s.push(*v);
                    }
                    Cell::I64(v) => {
                        def.push(1);
                        i64s.push(*v);
                    }
                    c => bad(name, kind, c),
                }
            }
            let values = match kind {
                Kind::I32 => Values::I32(i32s),
                _ => Values::I64(i64s),
            };
            vec![Leaf {
                values,
                def,
                rep: None,
            }]
        }
        Kind::StrList => {
            let mut values = Vec::new();
            let mut def = Vec::new();
            let mut rep = Vec::new();
            for c in cells {
                match c {
                    Cell::Null => {
                        def.push(0);
                        rep.push(0);
                    }
                    Cell::List(items) if items.is_empty() => {
                        def.push(1);
                        rep.push(0);
                    }
                    Cell::List(items) => {
                        for (j, item) in items.iter().enumerate() {
                            rep.push(i16::from(j > 0));
                            match item {
                                None => def.push(2),
                                Some(v) => {
                                    def.push(3);
                                    values.push(ByteArray::from(v.as_str()));
                                }
                            }
                        }
                    }
                    c => bad(name, kind, c),
                }
            }
            vec![Leaf {
                values: Values::Bytes(values),
                def,
                rep: Some(rep),
            }]
        }
        Kind::Image => {
            let parts: Vec<_> = cells
                .iter()
                .map(|c| match c {
                    Cell::Null => None,
                    Cell::Image(b, p) => Some((b.clone(), p.clone().map(String::into_bytes))),
                    c => bad(name, kind, c),
                })
                .collect();
            let bytes: Vec<_> = parts
                .iter()
                .map(|p| p.as_ref().map(|(b, _)| b.clone()))
                .collect();
            let paths: Vec<_> = parts
                .iter()
                .map(|p| p.as_ref().map(|(_, q)| q.clone()))
                .collect();
            vec![bytes_leaf(&bytes, 2), bytes_leaf(&paths, 2)]
        }
    }
}

/// Writes `rows` (one `Cell` per column) to a Parquet file, two rows per
/// row group (so several groups get exercised). A cell that does not fit
/// its column's kind is a programming error and panics.
pub fn write_parquet(
    path: &Path,
    columns: &[(&str, Kind)],
    rows: &[Vec<Cell>],
    compression: Compression,
) -> Result<(), BenchmarkError> {
    let fail = |e: &dyn std::fmt::Display| BenchmarkError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    }
    let schema = Arc::new(parse_message_type(&schema_text(columns)).map_err(|e| fail(&e))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(|e| fail(&e))?;
    for group in rows.chunks(2) {
        let leaves: Vec<Leaf> = columns
            .iter()
            .enumerate()
            .flat_map(|(i, (name, kind))| {
                let cells: Vec<&Cell> = group.iter().map(|r| &r[i]).collect();
                leaves(*kind, name, &cells)
            })
            .collect();
        let mut rg = writer.next_row_group().map_err(|e| fail(&e))?;
        let mut leaves = leaves.iter();
        while let Some(mut col) = rg.next_column().map_err(|e| fail(&e))? {
            let leaf = leaves.next().expect("one leaf per parquet column");
            let def = Some(leaf.def.as_slice());
            let rep = leaf.rep.as_deref();
            match &leaf.values {
                Values::Bytes(v) => col.typed::<ByteArrayType>().write_batch(v, def, rep),
                Values::I32(v) => col.typed::<Int32Type>().write_batch(v, def, rep),
                Values::I64(v) => col.typed::<Int64Type>().write_batch(v, def, rep),
            }
            .map_err(|e| fail(&e))?;
            col.close().map_err(|e| fail(&e))?;
        }
        rg.close().map_err(|e| fail(&e))?;
    }
    writer.close().map_err(|e| fail(&e))?;
    Ok(())
}
