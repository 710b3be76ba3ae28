//! Reading the rows of one Parquet file, with typed access to their fields.
//!
//! Uses the `parquet` crate's row API (`parquet::record`) rather than Arrow:
//! it needs no `arrow-*` crates (about half the compile time of the Arrow
//! reader stack), and a benchmark is a few thousand rows, so decoding speed
//! does not matter; image bytes dominate either way. Only the columns a
//! benchmark uses are read (a projection), so e.g. TextVQA's OCR tokens and
//! InfoVQA's OCR text are never decoded.
//!
//! Hugging Face `datasets` writes an `Image` feature as a struct
//! `{bytes: binary, path: string}`, a `Sequence(string)` as a Parquet LIST
//! and a `Value("string")` as UTF8 binary; [`Record`] reads those (and a few
//! lenient variants: a bare binary image column, a single string where a
//! list is expected, integer ids).

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::basic::{Compression, ConvertedType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use super::{BenchmarkError, ImageSource};

/// One row, restricted to the projected columns. Accessors return the
/// reason a field is unusable as `Err`, for [`super::Loaded::skipped`].
#[derive(Debug)]
pub struct Record {
    columns: Vec<(String, Field)>,
}

/// A short name for a field's type, for skip reasons.
fn kind(field: &Field) -> &'static str {
    match field {
        Field::Null => "null",
        Field::Bool(_) => "bool",
        Field::Byte(_)
        | Field::Short(_)
        | Field::Int(_)
        | Field::Long(_)
        | Field::UByte(_)
        | Field::UShort(_)
        | Field::UInt(_)
        | Field::ULong(_) => "integer",
        Field::Float16(_) | Field::Float(_) | Field::Double(_) | Field::Decimal(_) => "number",
        Field::Str(_) => "string",
        Field::Bytes(_) => "binary",
        Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => "date/time",
        Field::Group(_) => "struct",
        Field::ListInternal(_) => "list",
        Field::MapInternal(_) => "map",
    }
}

/// A string field: UTF8, or unannotated binary that is valid UTF-8.
fn as_string(name: &str, field: &Field) -> Result<String, String> {
    match field {
        Field::Str(s) => Ok(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data())
            .map(str::to_owned)
            .map_err(|_| format!("`{name}` is binary, not UTF-8 text")),
        Field::Null => Err(format!("`{name}` is null")),
        other => Err(format!(
            "`{name}`: expected a string, found {}",
            kind(other)
        )),
    }
}

impl Record {
    /// The value of column `name`, if projected.
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    fn field(&self, name: &str) -> Result<&Field, String> {
        self.get(name).ok_or_else(|| format!("no column `{name}`"))
    }

    /// A non-null string.
    pub fn string(&self, name: &str) -> Result<String, String> {
        as_string(name, self.field(name)?)
    }

    /// A string, `None` when the column is absent or the value null.
    pub fn opt_string(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name) {
            None | Some(Field::Null) => Ok(None),
            Some(field) => as_string(name, field).map(Some),
        }
    }

    /// An id: a string or an integer, printed in decimal.
    pub fn id(&self, name: &str) -> Result<String, String> {
        match self.field(name)? {
            Field::Byte(v) => Ok(v.to_string()),
            Field::Short(v) => Ok(v.to_string()),
            Field::Int(v) => Ok(v.to_string()),
            Field::Long(v) => Ok(v.to_string()),
            Field::UByte(v) => Ok(v.to_string()),
            Field::UShort(v) => Ok(v.to_string()),
            Field::UInt(v) => Ok(v.to_string()),
            Field::ULong(v) => Ok(v.to_string()),
            other => as_string(name, other),
        }
    }

    /// A non-null list of strings (a single string reads as a one-element
    /// list). A null element makes the whole field unusable.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, String> {
        match self.field(name)? {
            Field::ListInternal(list) => list
                .elements()
                .iter()
                .enumerate()
                .map(|(i, e)| as_string(&format!("{name}[{i}]"), e))
                .collect(),
            other => as_string(name, other).map(|s| vec![s]),
        }
    }

    /// The image: a `{bytes, path}` struct (bytes preferred; a path alone is
    /// resolved against `base` and must exist), or a bare binary column.
    pub fn image(&self, name: &str, base: &Path) -> Result<ImageSource, String> {
        match self.field(name)? {
            Field::Bytes(b) => Ok(ImageSource::Bytes(b.data().to_vec())),
            // A base64-encoded image file (HR-Bench's release).
            Field::Str(text) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map(ImageSource::Bytes)
                    .map_err(|e| format!("`{name}` is a string but not base64 image bytes ({e})"))
            }
            Field::Group(row) => {
                let part = |key: &str| {
                    row.get_column_iter()
                        .find(|(n, _)| n.as_str() == key)
                        .map(|(_, f)| f)
                };
                match (part("bytes"), part("path")) {
                    (Some(Field::Bytes(b)), _) => Ok(ImageSource::Bytes(b.data().to_vec())),
                    (Some(Field::Null) | None, Some(Field::Str(p))) if !p.is_empty() => {
                        let path = base.join(p);
                        if path.is_file() {
                            Ok(ImageSource::File(path))
                        } else {
                            Err(format!(
                                "`{name}` has no bytes and its path {} does not exist",
                                path.display()
                            ))
                        }
                    }
                    (Some(Field::Null) | None, _) => {
                        Err(format!("`{name}` has neither bytes nor a path"))
                    }
                    (Some(other), _) => Err(format!(
                        "`{name}.bytes`: expected binary, found {}",
                        kind(other)
                    )),
                }
            }
            Field::Null => Err(format!("`{name}` is null")),
            other => Err(format!(
                "`{name}`: expected an image struct, binary or base64 text, found {}",
                kind(other)
            )),
        }
    }
}

/// A leaf type the row API cannot convert (it would panic), if any.
fn unsupported_leaf(t: &Type) -> Option<String> {
    if t.is_group() {
        return t.get_fields().iter().find_map(|f| unsupported_leaf(f));
    }
    let converted = t.get_basic_info().converted_type();
    use ConvertedType as C;
    let ok = match t.get_physical_type() {
        PhysicalType::BOOLEAN
        | PhysicalType::INT96
        | PhysicalType::FLOAT
        | PhysicalType::DOUBLE => true,
        PhysicalType::INT32 => matches!(
            converted,
            C::NONE
                | C::INT_8
                | C::INT_16
                | C::INT_32
                | C::UINT_8
                | C::UINT_16
                | C::UINT_32
                | C::DATE
                | C::TIME_MILLIS
                | C::DECIMAL
        ),
        PhysicalType::INT64 => matches!(
            converted,
            C::NONE
                | C::INT_64
                | C::UINT_64
                | C::TIME_MICROS
                | C::TIMESTAMP_MILLIS
                | C::TIMESTAMP_MICROS
                | C::DECIMAL
        ),
        PhysicalType::BYTE_ARRAY => matches!(
            converted,
            C::NONE | C::UTF8 | C::ENUM | C::JSON | C::BSON | C::DECIMAL
        ),
        PhysicalType::FIXED_LEN_BYTE_ARRAY => matches!(converted, C::NONE | C::DECIMAL),
    };
    (!ok).then(|| {
        format!(
            "`{}` has an unsupported type ({} {})",
            t.name(),
            t.get_physical_type(),
            converted
        )
    })
}

/// Whether this build can decompress `codec`: snappy (the `datasets` /
/// pyarrow default), gzip and zstd (polars' default) are compiled in;
/// brotli, LZ4 and LZO are not.
pub fn codec_supported(codec: Compression) -> bool {
    matches!(
        codec,
        Compression::UNCOMPRESSED
            | Compression::SNAPPY
            | Compression::GZIP(_)
            | Compression::ZSTD(_)
    )
}

/// A codec's name without its level.
fn codec_name(codec: Compression) -> String {
    match codec {
        Compression::BROTLI(_) => "brotli".to_owned(),
        Compression::GZIP(_) => "gzip".to_owned(),
        Compression::ZSTD(_) => "zstd".to_owned(),
        other => other.to_string().to_lowercase(),
    }
}

/// One file's rows for a benchmark: the `required` columns (an error when
/// one is missing) and those of `optional` that exist.
pub struct Table {
    path: PathBuf,
    reader: SerializedFileReader<File>,
}

impl Table {
    /// Open `path`; a file the Parquet reader rejects is
    /// [`BenchmarkError::NotParquet`].
    pub fn open(path: &Path) -> Result<Self, BenchmarkError> {
        let file = File::open(path).map_err(|cause| BenchmarkError::Io {
            path: path.to_owned(),
            cause,
        })?;
        let reader = SerializedFileReader::new(file).map_err(|e| BenchmarkError::NotParquet {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Table {
            path: path.to_owned(),
            reader,
        })
    }

    /// The number of rows, from the file footer.
    pub fn num_rows(&self) -> usize {
        usize::try_from(self.reader.metadata().file_metadata().num_rows()).unwrap_or(0)
    }

    /// The top-level column names, in file order.
    pub fn columns(&self) -> Vec<String> {
        let schema = self.reader.metadata().file_metadata().schema();
        schema
            .get_fields()
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    }

    /// Visit every row (projected to `required` + present `optional`
    /// columns) in order. A missing column, a column type the row API
    /// cannot convert, a codec this build lacks, or a file whose first row
    /// cannot be decoded is an error; a later undecodable row gives `each`
    /// an `Err` and ends the file (the reader cannot be trusted to
    /// resynchronise).
    pub fn for_each_row(
        &self,
        benchmark: &str,
        required: &[&str],
        optional: &[&str],
        mut each: impl FnMut(Result<Record, String>),
    ) -> Result<(), BenchmarkError> {
        let schema = self.reader.metadata().file_metadata().schema();
        let found = self.columns();
        if let Some(missing) = required.iter().find(|c| !found.iter().any(|f| f == *c)) {
            return Err(BenchmarkError::MissingColumn {
                path: self.path.clone(),
                benchmark: benchmark.to_owned(),
                expected: (*missing).to_owned(),
                found,
            });
        }
        let wanted = |name: &str| required.contains(&name) || optional.contains(&name);
        let fields: Vec<_> = schema
            .get_fields()
            .iter()
            .filter(|f| wanted(f.name()))
            .cloned()
            .collect();
        let parquet_err = |e: parquet::errors::ParquetError| BenchmarkError::Parquet {
            path: self.path.clone(),
            message: e.to_string(),
        };
        if let Some(message) = fields.iter().find_map(|f| unsupported_leaf(f)) {
            return Err(BenchmarkError::Parquet {
                path: self.path.clone(),
                message,
            });
        }
        let chunks = self.reader.metadata().row_groups().iter();
        if let Some(chunk) = chunks.flat_map(|rg| rg.columns()).find(|c| {
            let top = c.column_path().parts().first().map(String::as_str);
            top.is_some_and(wanted) && !codec_supported(c.compression())
        }) {
            return Err(BenchmarkError::Parquet {
                path: self.path.clone(),
                message: format!(
                    "column `{}` is {} compressed; this build reads snappy, gzip and zstd",
                    chunk.column_path().string(),
                    codec_name(chunk.compression())
                ),
            });
        }
        let projection = Type::group_type_builder(schema.name())
            .with_fields(fields)
            .build()
            .map_err(parquet_err)?;
        let mut first = true;
        for row in self
            .reader
            .get_row_iter(Some(projection))
            .map_err(parquet_err)?
        {
            match row {
                Ok(row) => {
                    first = false;
                    each(Ok(Record {
                        columns: row.into_columns(),
                    }));
                }
                // Nothing readable at all: the file is broken, not a row.
                Err(e) if first => return Err(parquet_err(e)),
                Err(e) => {
                    each(Err(format!("unreadable row, rest of file skipped: {e}")));
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use parquet::basic::{BrotliLevel, GzipLevel, ZstdLevel};

    use super::*;

    #[test]
    fn codecs_table() {
        let cases = [
            (Compression::UNCOMPRESSED, true),
            (Compression::SNAPPY, true),
            (Compression::GZIP(GzipLevel::default()), true),
            (Compression::ZSTD(ZstdLevel::default()), true),
            (Compression::BROTLI(BrotliLevel::default()), false),
            (Compression::LZ4, false),
            (Compression::LZ4_RAW, false),
            (Compression::LZO, false),
        ];
        for (codec, want) in cases {
            assert_eq!(codec_supported(codec), want, "{codec}");
        }
    }
}
