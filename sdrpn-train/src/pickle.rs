//! A streaming reader for the subset of Python's pickle format that the
//! authors' released pseudo-label files use (`docs/RELEASED_ARTIFACTS.md`):
//! one top-level list of dicts of strings, numbers and numpy arrays, written
//! by `pickle.dump` at protocols 2-5. No Python runs and nothing is
//! executed: class references are kept as names, and only numpy's array and
//! dtype reconstruction is interpreted ([`Value::ndarray`]).
//!
//! The items of the top-level list are handed out as they are appended
//! (`APPENDS` batches of 1,000 in CPython), and the memo then forgets what
//! was made for them but what CPython shares between records (class
//! references, dtypes, dict keys, a few constants), so a 150K-record file is
//! read in the memory of one batch. A later reference back to a forgotten part is
//! refused by name (the released files never make one: each record's maps
//! and texts are objects of their own).
//!
//! Arrays come as protocols 2-4 write them (`_reconstruct` + `BUILD`, the
//! data as bytes, or at protocol 2 as `_codecs.encode(text, 'latin1')`) or
//! as protocol 5 does (`_frombuffer` of an in-band `BYTEARRAY8`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;

/// An object of the pickle.
#[derive(Clone, Debug)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer (at most 64 bits).
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(Rc<str>),
    /// A byte string.
    Bytes(Rc<[u8]>),
    /// A tuple.
    Tuple(Rc<[Value]>),
    /// A list.
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict, in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function by `module.name`.
    Global(Rc<str>, Rc<str>),
    /// The result of calling a global (`REDUCE`, `NEWOBJ`), with the state
    /// `BUILD` gave it.
    Object(Rc<RefCell<Object>>),
}

/// A reconstructed object: what was called, with what, and its state.
#[derive(Clone, Debug)]
pub struct Object {
    /// The callable, `(module, name)`.
    pub callable: (Rc<str>, Rc<str>),
    /// The call's arguments.
    pub args: Rc<[Value]>,
    /// The state `BUILD` set, if any.
    pub state: Option<Value>,
}

/// A pickle that cannot be read, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("pickle byte {offset}: {message}")]
pub struct PickleError {
    /// Byte offset of the opcode.
    pub offset: u64,
    /// What went wrong.
    pub message: String,
}

/// A numpy array's values, widened to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its element type (`f2`, `f4`, `f8`).
    pub dtype: String,
    /// Its values in C order.
    pub values: Vec<f32>,
}

impl Value {
    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a dict (a copy of the key-value pairs).
    pub fn dict_entries(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    /// A numpy float array (`numpy.core.multiarray._reconstruct` or
    /// `numpy._core.multiarray._reconstruct`, then `BUILD` with `(version,
    /// shape, dtype, is_fortran, raw bytes)`): float16, float32 or float64,
    /// either byte order, C or Fortran order (returned in C order).
    pub fn ndarray(&self) -> Result<NdArray, String> {
        let Value::Object(object) = self else {
            return Err(format!("not a numpy array: {}", self.kind()));
        };
        let object = object.borrow();
        let (module, name) = &object.callable;
        let numpy_module = matches!(
            &**module,
            "numpy.core.multiarray"
                | "numpy._core.multiarray"
                | "numpy.core.numeric"
                | "numpy._core.numeric"
        );
        let (shape, dtype, fortran, raw) = match (&**name, &object.state) {
            // Protocols 2-4: `_reconstruct(ndarray, (0,), b'b')`, then BUILD
            // with `(version, shape, dtype, is_fortran, raw bytes)`.
            ("_reconstruct", Some(Value::Tuple(state))) if numpy_module => {
                let [_, shape, dtype, Value::Bool(fortran), raw] = &state[..] else {
                    return Err(format!("numpy array state of {} fields", state.len()));
                };
                (shape, dtype, *fortran, raw)
            }
            ("_reconstruct", None) if numpy_module => {
                return Err("a numpy array without its state".into())
            }
            // Protocol 5: `_frombuffer(buffer, dtype, shape, order)`.
            ("_frombuffer", None) if numpy_module => {
                let [raw, dtype, shape, Value::Str(order)] = &object.args[..] else {
                    return Err(format!(
                        "numpy _frombuffer call of {} arguments",
                        object.args.len()
                    ));
                };
                (shape, dtype, &**order == "F", raw)
            }
            _ => return Err(format!("not a numpy array: a {module}.{name} object")),
        };
        let Value::Tuple(shape) = shape else {
            return Err(format!("numpy array shape is a {}", shape.kind()));
        };
        let shape = shape
            .iter()
            .map(|d| match d {
                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                other => Err(format!("numpy array dimension {}", other.kind())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (kind, little) = dtype_of(dtype)?;
        let raw = byte_string(raw)?;
        let width = match kind.as_str() {
            "f2" => 2,
            "f4" => 4,
            "f8" => 8,
            other => return Err(format!("numpy dtype {other}: only f2, f4 and f8 arrays")),
        };
        let count: usize = shape.iter().product();
        if raw.len() != count * width {
            return Err(format!(
                "numpy array of shape {shape:?} and dtype {kind} holds {} bytes, not {}",
                raw.len(),
                count * width
            ));
        }
        let mut values: Vec<f32> = raw
            .chunks_exact(width)
            .map(|bytes| {
                // One element in little-endian order, on the stack (no
                // allocation per value: a 7B file holds ~260M of them).
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(bytes);
                if !little {
                    b[..width].reverse();
                }
                match width {
                    2 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    _ => f64::from_le_bytes(b) as f32,
                }
            })
            .collect();
        if fortran && shape.len() > 1 {
            values = fortran_to_c(&values, &shape);
        }
        Ok(NdArray {
            shape,
            dtype: kind,
            values,
        })
    }

    /// What kind of value this is, in words.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_, _) => "class reference",
            Value::Object(_) => "object",
        }
    }
}

/// A numpy dtype object's kind (`f2`, ...) and whether it is little-endian.
fn dtype_of(dtype: &Value) -> Result<(String, bool), String> {
    let Value::Object(object) = dtype else {
        return Err(format!("numpy dtype is a {}", dtype.kind()));
    };
    let object = object.borrow();
    if !matches!(
        &*object.callable.0,
        "numpy" | "numpy.core.multiarray" | "numpy._core.multiarray"
    ) || &*object.callable.1 != "dtype"
    {
        return Err(format!(
            "numpy dtype made by {}.{}",
            object.callable.0, object.callable.1
        ));
    }
    let kind = object
        .args
        .first()
        .and_then(Value::as_str)
        .ok_or("numpy dtype without its type code")?
        .to_string();
    // BUILD state (version, byte order, ...); '<' little, '>' big, '|' and
    // '=' native (the files are written on little-endian machines).
    let order = match &object.state {
        Some(Value::Tuple(t)) => t.get(1).and_then(Value::as_str).unwrap_or("<").to_string(),
        _ => "<".to_string(),
    };
    Ok((kind, order != ">"))
}

/// The bytes of a byte string: `bytes`/`bytearray`, or protocol 2's
/// `_codecs.encode(text, 'latin1')` (each character one byte).
fn byte_string(value: &Value) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match value {
        Value::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
        Value::Object(o) => {
            let o = o.borrow();
            let (module, name) = &o.callable;
            match (&**module, &**name, &o.args[..]) {
                ("_codecs", "encode", [Value::Str(text), Value::Str(codec)])
                    if matches!(&**codec, "latin1" | "latin-1") =>
                {
                    text.chars()
                        .map(|c| {
                            u8::try_from(u32::from(c)).map_err(|_| {
                                "a latin1 byte string with a character past 255".to_string()
                            })
                        })
                        .collect::<Result<Vec<u8>, _>>()
                        .map(std::borrow::Cow::Owned)
                }
                _ => Err(format!("numpy array data is a {module}.{name} object")),
            }
        }
        other => Err(format!("numpy array data is a {}", other.kind())),
    }
}

/// Values stored column-major reordered to row-major.
fn fortran_to_c(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = values.len();
    let mut out = vec![0.0; n];
    let mut index = vec![0usize; shape.len()];
    for value in values {
        // `index` walks the Fortran order: first axis fastest.
        let mut c = 0;
        for (axis, &i) in index.iter().enumerate() {
            c = c * shape[axis] + i;
        }
        out[c] = *value;
        for (axis, i) in index.iter_mut().enumerate() {
            *i += 1;
            if *i < shape[axis] {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Memoized strings of at most this many bytes outlive their batch.
pub const KEPT_TEXT: usize = 64;

/// The string keys of the dicts among `items` (the records' field names).
fn dict_keys(items: &[Value]) -> Vec<Rc<str>> {
    let mut keys: Vec<Rc<str>> = Vec::new();
    for item in items {
        if let Value::Dict(d) = item {
            for (k, _) in d.borrow().iter() {
                if let Value::Str(k) = k {
                    if !keys.iter().any(|seen| Rc::ptr_eq(seen, k)) {
                        keys.push(k.clone());
                    }
                }
            }
        }
    }
    keys
}

/// What the machine's stack holds: values, and marks.
#[derive(Clone, Debug)]
enum Slot {
    Mark,
    Value(Value),
}

/// Reads a pickle from `input`, handing every item appended to the
/// top-level list to `on_item` as it is appended (a pickle whose top object
/// is not a list hands out that object alone). `on_item` returning an error
/// stops the reading with it.
pub fn read_streaming<R: Read, E: From<PickleError>>(
    input: R,
    mut on_item: impl FnMut(Value) -> Result<(), E>,
) -> Result<(), E> {
    let mut machine = Machine::new(input);
    loop {
        match machine.step()? {
            Step::Continue => {}
            Step::Items(items) => {
                let keys = dict_keys(&items);
                for item in items {
                    on_item(item)?;
                }
                machine.release(&keys);
            }
            Step::Stop(top) => {
                if machine.root.is_none() {
                    on_item(top)?;
                }
                return Ok(());
            }
        }
    }
}

struct CountingReader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> CountingReader<R> {
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, PickleError> {
        // Read through `take` rather than into a buffer of the stated size,
        // so a corrupt length cannot ask for more memory than the file has.
        let mut buf = Vec::with_capacity(n.min(1 << 20));
        let got = (&mut self.inner)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| PickleError {
                offset: self.offset,
                message: format!("cannot read the file: {e}"),
            })?;
        if got < n {
            return Err(PickleError {
                offset: self.offset,
                message: format!(
                    "the file ends inside an opcode ({got} of {n} bytes left); is it cut short?"
                ),
            });
        }
        self.offset += n as u64;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let mut out = Vec::new();
        loop {
            let [b] = self.array::<1>()?;
            if b == b'\n' {
                return String::from_utf8(out).map_err(|_| PickleError {
                    offset: self.offset,
                    message: "a text line that is not UTF-8".into(),
                });
            }
            out.push(b);
        }
    }
}

enum Step {
    Continue,
    Items(Vec<Value>),
    Stop(Value),
}

struct Machine<R> {
    input: CountingReader<R>,
    stack: Vec<Slot>,
    /// Memo entries still held, by index.
    memo: HashMap<usize, Value>,
    /// One past the highest memo index stored (`MEMOIZE` stores there).
    memo_len: usize,
    /// Memo indices stored since the last hand-out.
    batch: Vec<usize>,
    /// The strings that named a class or function (`STACK_GLOBAL`): later
    /// items may fetch them again.
    names: Vec<Rc<str>>,
    /// The top-level list, once made.
    root: Option<Rc<RefCell<Vec<Value>>>>,
}

impl<R: Read> Machine<std::io::BufReader<R>> {
    fn new(input: R) -> Self {
        Machine {
            input: CountingReader {
                inner: std::io::BufReader::with_capacity(1 << 20, input),
                offset: 0,
            },
            stack: Vec::new(),
            memo: HashMap::new(),
            memo_len: 0,
            batch: Vec::new(),
            names: Vec::new(),
            root: None,
        }
    }
}

impl<R: Read> Machine<R> {
    fn error(&self, at: u64, message: impl Into<String>) -> PickleError {
        PickleError {
            offset: at,
            message: message.into(),
        }
    }

    fn pop(&mut self, at: u64) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.error(at, "a mark where a value was expected")),
            None => Err(self.error(at, "the stack is empty")),
        }
    }

    fn top(&self, at: u64) -> Result<&Value, PickleError> {
        match self.stack.last() {
            Some(Slot::Value(v)) => Ok(v),
            _ => Err(self.error(at, "no value on the stack")),
        }
    }

    /// The values above the topmost mark, the mark removed.
    fn pop_mark(&mut self, at: u64) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.error(at, "no mark on the stack"))?;
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .map(|s| match s {
                Slot::Value(v) => v,
                Slot::Mark => unreachable!("the topmost mark is below"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::Value(v));
    }

    fn memo_get(&self, at: u64, index: usize) -> Result<Value, PickleError> {
        match self.memo.get(&index) {
            Some(v) => Ok(v.clone()),
            None if index < self.memo_len => Err(self.error(
                at,
                format!("memo {index} refers back to a part of an item already read and released; such files are not supported"),
            )),
            None => Err(self.error(at, format!("memo {index} was never stored"))),
        }
    }

    fn memo_put(&mut self, at: u64, index: usize) -> Result<(), PickleError> {
        let v = self.top(at)?.clone();
        self.memo.insert(index, v);
        self.memo_len = self.memo_len.max(index + 1);
        self.batch.push(index);
        Ok(())
    }

    /// Forgets what was memoized since the last hand-out, but for the
    /// objects CPython shares between records, which later items may fetch
    /// again: class references and their names, dtypes, the `keys` of the
    /// items' dicts, short strings (at most [`KEPT_TEXT`] bytes: byte orders,
    /// codec names, and a constant a writer may share, such as one image
    /// name) and protocol 2's `b'b'`. Each record's maps, shapes, long texts
    /// and containers go, so memory stays that of one batch plus the short
    /// strings (about 40 bytes each).
    fn release(&mut self, keys: &[Rc<str>]) {
        for index in std::mem::take(&mut self.batch) {
            let keep = match self.memo.get(&index) {
                Some(Value::List(l)) => self.root.as_ref().is_some_and(|root| Rc::ptr_eq(root, l)),
                Some(Value::Global(..)) => true,
                Some(Value::Object(o)) => {
                    let o = o.borrow();
                    match (&*o.callable.1, &o.args[..]) {
                        ("dtype", _) => true,
                        ("encode", [Value::Str(text), ..]) => text.chars().count() <= 1,
                        _ => false,
                    }
                }
                Some(Value::Str(text)) => {
                    text.len() <= KEPT_TEXT
                        || keys.iter().chain(&self.names).any(|k| Rc::ptr_eq(k, text))
                }
                Some(Value::Bytes(b)) => b.len() <= 1,
                _ => false,
            };
            if !keep {
                self.memo.remove(&index);
            }
        }
    }

    /// `items` appended to the list `target`: handed out when it is the root.
    fn append(&mut self, at: u64, items: Vec<Value>) -> Result<Step, PickleError> {
        match self.top(at)? {
            Value::List(list) => {
                if self.root.as_ref().is_some_and(|r| Rc::ptr_eq(r, list)) {
                    return Ok(Step::Items(items));
                }
                list.borrow_mut().extend(items);
                Ok(Step::Continue)
            }
            other => Err(self.error(at, format!("APPEND to a {}", other.kind()))),
        }
    }

    fn set_items(&mut self, at: u64, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.error(at, "SETITEMS with an odd number of values"));
        }
        match self.top(at)? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            other => Err(self.error(at, format!("SETITEMS on a {}", other.kind()))),
        }
    }

    fn call(&mut self, at: u64, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(module, name) = callable else {
            return Err(self.error(at, format!("a call of a {}", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.error(at, format!("call arguments are a {}", args.kind())));
        };
        Ok(Value::Object(Rc::new(RefCell::new(Object {
            callable: (module, name),
            args,
            state: None,
        }))))
    }

    fn text(&mut self, n: usize) -> Result<Value, PickleError> {
        let at = self.input.offset;
        let bytes = self.input.bytes(n)?;
        let s =
            String::from_utf8(bytes).map_err(|_| self.error(at, "a string that is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    fn step(&mut self) -> Result<Step, PickleError> {
        let at = self.input.offset;
        let [op] = self.input.array::<1>()?;
        match op {
            0x80 => {
                let [version] = self.input.array::<1>()?;
                if version > 5 {
                    return Err(self.error(at, format!("pickle protocol {version} (2-5 are read)")));
                }
            }
            0x95 => {
                self.input.array::<8>()?; // FRAME: its length only
            }
            b'(' => self.stack.push(Slot::Mark),
            b'.' => {
                let top = self.pop(at)?;
                return Ok(Step::Stop(top));
            }
            b'0' => {
                self.pop(at)?;
            }
            b'1' => {
                self.pop_mark(at)?;
            }
            b'2' => {
                let v = self.top(at)?.clone();
                self.push(v);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.input.array::<4>()?);
                self.push(Value::Int(v as i64));
            }
            b'K' => {
                let [v] = self.input.array::<1>()?;
                self.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.input.array::<2>()?);
                self.push(Value::Int(v as i64));
            }
            0x8a => {
                let [n] = self.input.array::<1>()?;
                if n > 8 {
                    return Err(
                        self.error(at, format!("an integer of {n} bytes (at most 8 are read)"))
                    );
                }
                let bytes = self.input.bytes(n as usize)?;
                let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..bytes.len()].copy_from_slice(&bytes);
                self.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.input.array::<8>()?);
                self.push(Value::Float(v));
            }
            0x8c => {
                let [n] = self.input.array::<1>()?;
                let v = self.text(n as usize)?;
                self.push(v);
            }
            b'X' => {
                let n = u32::from_le_bytes(self.input.array::<4>()?);
                let v = self.text(n as usize)?;
                self.push(v);
            }
            0x8d => {
                let n = u64::from_le_bytes(self.input.array::<8>()?);
                let v = self.text(n as usize)?;
                self.push(v);
            }
            b'C' => {
                let [n] = self.input.array::<1>()?;
                let b = self.input.bytes(n as usize)?;
                self.push(Value::Bytes(b.into()));
            }
            b'B' => {
                let n = u32::from_le_bytes(self.input.array::<4>()?);
                let b = self.input.bytes(n as usize)?;
                self.push(Value::Bytes(b.into()));
            }
            0x8e => {
                let n = u64::from_le_bytes(self.input.array::<8>()?);
                let b = self.input.bytes(n as usize)?;
                self.push(Value::Bytes(b.into()));
            }
            0x96 => {
                // BYTEARRAY8 (protocol 5, numpy's in-band buffers)
                let n = u64::from_le_bytes(self.input.array::<8>()?);
                let b = self.input.bytes(n as usize)?;
                self.push(Value::Bytes(b.into()));
            }
            0x97 | 0x98 => {
                return Err(self.error(
                    at,
                    "an out-of-band buffer (pickled with a buffer_callback): the data is not in the file",
                ));
            }
            b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
            b't' => {
                let items = self.pop_mark(at)?;
                self.push(Value::Tuple(items.into()));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(self.error(at, "a tuple of more values than the stack holds"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop(at)?);
                }
                items.reverse();
                self.push(Value::Tuple(items.into()));
            }
            b']' => {
                let list = Rc::new(RefCell::new(Vec::new()));
                if self.root.is_none() && self.stack.is_empty() {
                    self.root = Some(list.clone());
                }
                self.push(Value::List(list));
            }
            b'l' => {
                let items = self.pop_mark(at)?;
                self.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = self.pop_mark(at)?;
                self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                self.set_items(at, items)?;
            }
            b'a' => {
                let item = self.pop(at)?;
                return self.append(at, vec![item]);
            }
            b'e' => {
                let items = self.pop_mark(at)?;
                return self.append(at, items);
            }
            b's' => {
                let v = self.pop(at)?;
                let k = self.pop(at)?;
                self.set_items(at, vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark(at)?;
                self.set_items(at, items)?;
            }
            b'c' => {
                let module = self.input.line()?;
                let name = self.input.line()?;
                self.push(Value::Global(module.into(), name.into()));
            }
            0x93 => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => {
                        self.names.push(m.clone());
                        self.names.push(n.clone());
                        self.push(Value::Global(m, n))
                    }
                    _ => return Err(self.error(at, "STACK_GLOBAL of values that are not strings")),
                }
            }
            b'R' => {
                let args = self.pop(at)?;
                let callable = self.pop(at)?;
                let v = self.call(at, callable, args)?;
                self.push(v);
            }
            0x81 => {
                let args = self.pop(at)?;
                let class = self.pop(at)?;
                let v = self.call(at, class, args)?;
                self.push(v);
            }
            b'b' => {
                let state = self.pop(at)?;
                match self.top(at)? {
                    Value::Object(o) => o.borrow_mut().state = Some(state),
                    other => {
                        return Err(self.error(at, format!("BUILD on a {}", other.kind())));
                    }
                }
            }
            0x94 => {
                let index = self.memo_len;
                self.memo_put(at, index)?;
            }
            b'q' => {
                let [i] = self.input.array::<1>()?;
                self.memo_put(at, i as usize)?;
            }
            b'r' => {
                let i = u32::from_le_bytes(self.input.array::<4>()?);
                self.memo_put(at, i as usize)?;
            }
            b'h' => {
                let [i] = self.input.array::<1>()?;
                let v = self.memo_get(at, i as usize)?;
                self.push(v);
            }
            b'j' => {
                let i = u32::from_le_bytes(self.input.array::<4>()?);
                let v = self.memo_get(at, i as usize)?;
                self.push(v);
            }
            other => {
                return Err(self.error(
                    at,
                    format!("opcode 0x{other:02x} is not in the subset read (the released label files' numbers, strings, lists, dicts and numpy arrays)"),
                ));
            }
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_keeps_only_what_outlives_a_batch() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/released/labels-stream.pkl"
        );
        let mut machine = Machine::new(std::fs::File::open(path).unwrap());
        let (mut items, mut most_held) = (0, 0);
        loop {
            match machine.step().unwrap() {
                Step::Continue => {}
                Step::Items(batch) => {
                    items += batch.len();
                    machine.release(&dict_keys(&batch));
                    most_held = most_held.max(machine.memo.len());
                }
                Step::Stop(_) => break,
            }
        }
        assert_eq!(items, 2100);
        // Tens of thousands of memo entries were made; short strings (ids,
        // the shared image name) stay, and of all else only the class
        // references, the dtype and `b'b'`.
        assert!(machine.memo_len > 2100 * 10, "{}", machine.memo_len);
        assert!(most_held < 2100 * 2 + 40, "{most_held} entries held");
        let not_text = machine
            .memo
            .values()
            .filter(|v| !matches!(v, Value::Str(t) if t.len() <= KEPT_TEXT))
            .count();
        assert!(
            not_text < 10,
            "{not_text} entries other than short strings held"
        );
    }

    /// Every prefix and many corruptions of the fixtures are answered with
    /// an error or read, never a panic.
    #[test]
    fn cut_and_corrupted_pickles_never_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/released/");
        let read = |bytes: &[u8]| {
            let _ = read_streaming(bytes, |item: Value| -> Result<(), PickleError> {
                for (_, v) in item.dict_entries().unwrap_or_default() {
                    let _ = v.ndarray();
                }
                Ok(())
            });
        };
        for name in [
            "labels-13b-style-protocol2.pkl",
            "labels-13b-style-protocol5.pkl",
        ] {
            let bytes = std::fs::read(format!("{dir}{name}")).unwrap();
            for cut in 0..bytes.len() {
                read(&bytes[..cut]);
            }
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..2000 {
                let mut bad = bytes.clone();
                for _ in 0..3 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let at = (state >> 33) as usize % bad.len();
                    bad[at] = (state >> 20) as u8;
                }
                read(&bad);
            }
        }
    }
}
