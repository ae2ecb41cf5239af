//! A reader for Python pickles that treats them as data only.
//!
//! It understands the opcodes `pickle.dumps` emits for plain lists, dicts,
//! tuples, strings, bytes, ints, floats, booleans and `None`, in protocols
//! 0 to 5, and refuses everything else with the opcode's name and byte
//! offset. Nothing is ever imported, called or constructed: the opcodes that
//! would make Python run code (`GLOBAL`, `STACK_GLOBAL`, `REDUCE`, `BUILD`,
//! `INST`, `OBJ`, `NEWOBJ`, `PERSID`, `EXT*`, ...) are errors.
//!
//! Memory is bounded by the input: every opcode reads at least one byte and
//! adds at most one value; strings are shared (`Rc`) and containers live in
//! an arena addressed by index, so memo references (`GET`) and `DUP` copy a
//! handle, never a tree, and a recursive list is just a cycle of indexes.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// One unpickled value. Containers are indexes into [`Pickle`]'s arena.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside the range of i64.
    BigInt,
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(usize),
    Tuple(usize),
    Dict(usize),
}

#[derive(Debug)]
enum Container {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// A parsed pickle: its top-level value and the containers it refers to.
#[derive(Debug)]
pub struct Pickle {
    containers: Vec<Container>,
    root: Value,
}

impl Pickle {
    /// The value the pickle holds (what `pickle.loads` would return).
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The items of a list or tuple.
    pub fn items(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::List(i) | Value::Tuple(i) => match &self.containers[*i] {
                Container::List(items) | Container::Tuple(items) => Some(items),
                Container::Dict(_) => None,
            },
            _ => None,
        }
    }

    /// The (key, value) pairs of a dict, in insertion order. A key set twice
    /// appears twice; the later pair wins, as in Python.
    pub fn pairs(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Dict(i) => match &self.containers[*i] {
                Container::Dict(pairs) => Some(pairs),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value of the string key `key` in a dict (the last one set).
    pub fn get<'a>(&'a self, dict: &Value, key: &str) -> Option<&'a Value> {
        self.pairs(dict)?
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }
}

/// Python's name of a value's type, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Dict(_) => "dict",
    }
}

/// Why a pickle was refused: the byte offset of the opcode and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for PickleError {}

/// Opcodes that make Python import, call or construct something.
const CODE: &[(u8, &str)] = &[
    (b'c', "GLOBAL"),
    (0x93, "STACK_GLOBAL"),
    (b'R', "REDUCE"),
    (b'b', "BUILD"),
    (b'i', "INST"),
    (b'o', "OBJ"),
    (0x81, "NEWOBJ"),
    (0x92, "NEWOBJ_EX"),
    (b'P', "PERSID"),
    (b'Q', "BINPERSID"),
    (0x82, "EXT1"),
    (0x83, "EXT2"),
    (0x84, "EXT4"),
];

/// Data opcodes this reader does not take (sets, out-of-band buffers,
/// Python 2 quoted strings).
const UNSUPPORTED: &[(u8, &str)] = &[
    (b'S', "STRING"),
    (0x8f, "EMPTY_SET"),
    (0x90, "ADDITEMS"),
    (0x91, "FROZENSET"),
    (0x96, "BYTEARRAY8"),
    (0x97, "NEXT_BUFFER"),
    (0x98, "READONLY_BUFFER"),
];

const ACCEPTED: &str = "only lists, dicts, strings and numbers are accepted";

/// Parse `data` as a pickle, as data only.
pub fn parse(data: &[u8]) -> Result<Pickle, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_at: 0,
        op: "",
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Memo::default(),
        containers: Vec::new(),
    };
    let root = m.run()?;
    Ok(Pickle {
        containers: m.containers,
        root,
    })
}

/// Python's memo: index → value. Indexes are small and dense in practice
/// (and each memo opcode reads at least one byte), so those below the
/// input's length live in a vector; any others in a map.
#[derive(Default)]
struct Memo {
    dense: Vec<Option<Value>>,
    sparse: HashMap<u64, Value>,
    /// Entries set (MEMOIZE's next index).
    count: u64,
}

impl Memo {
    fn put(&mut self, key: u64, v: Value, dense_limit: usize) {
        let old = match usize::try_from(key) {
            Ok(k) if k < dense_limit => {
                if k >= self.dense.len() {
                    self.dense.resize(k + 1, None);
                }
                self.dense[k].replace(v)
            }
            _ => self.sparse.insert(key, v),
        };
        if old.is_none() {
            self.count += 1;
        }
    }

    fn get(&self, key: u64) -> Option<&Value> {
        match usize::try_from(key) {
            Ok(k) if k < self.dense.len() => self.dense[k].as_ref(),
            _ => self.sparse.get(&key),
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset and name of the opcode being executed, for errors.
    op_at: usize,
    op: &'static str,
    stack: Vec<Value>,
    /// Stack lengths at each MARK (Python's metastack).
    marks: Vec<usize>,
    memo: Memo,
    containers: Vec<Container>,
}

impl<'a> Machine<'a> {
    fn err(&self, message: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_at,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if self.data.len() - self.pos < n {
            return Err(self.err(format!(
                "the pickle ends inside opcode {} (it needs {n} more bytes, {} remain)",
                self.op,
                self.data.len() - self.pos
            )));
        }
        let data: &'a [u8] = self.data;
        let s = &data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).map_err(|_| self.err(format!("length {n} is too large")))
    }

    /// A protocol-0 argument: the bytes up to the next newline.
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err(format!(
                "the pickle ends inside opcode {} (no end of line)",
                self.op
            )));
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err(format!("opcode {}: its argument is not text", self.op)))
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.err(format!(
                "opcode {} needs a value, but the stack is empty",
                self.op
            )));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.err(format!(
                "opcode {} needs a value, but the stack is empty",
                self.op
            )));
        }
        Ok(self.stack.last().expect("checked"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err(format!("opcode {} without a MARK before it", self.op)));
        };
        Ok(self.stack.split_off(m))
    }

    fn new_container(&mut self, c: Container) -> usize {
        self.containers.push(c);
        self.containers.len() - 1
    }

    fn push_list(&mut self, items: Vec<Value>) {
        let i = self.new_container(Container::List(items));
        self.stack.push(Value::List(i));
    }

    fn push_tuple(&mut self, items: Vec<Value>) {
        let i = self.new_container(Container::Tuple(items));
        self.stack.push(Value::Tuple(i));
    }

    fn push_dict(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let pairs = self.pairs(items)?;
        let i = self.new_container(Container::Dict(pairs));
        self.stack.push(Value::Dict(i));
        Ok(())
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(format!(
                "opcode {} got an odd number of items ({}) for key/value pairs",
                self.op,
                items.len()
            )));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    /// The list on top of the stack, for APPEND(S).
    fn target_list(&mut self) -> Result<&mut Vec<Value>, PickleError> {
        let top = self.top()?.clone();
        match top {
            Value::List(i) => match &mut self.containers[i] {
                Container::List(items) => Ok(items),
                _ => unreachable!("a List value indexes a list"),
            },
            other => Err(self.err(format!(
                "opcode {} appends to a {}, not a list",
                self.op,
                type_name(&other)
            ))),
        }
    }

    /// The dict on top of the stack, for SETITEM(S).
    fn target_dict(&mut self) -> Result<&mut Vec<(Value, Value)>, PickleError> {
        let top = self.top()?.clone();
        match top {
            Value::Dict(i) => match &mut self.containers[i] {
                Container::Dict(pairs) => Ok(pairs),
                _ => unreachable!("a Dict value indexes a dict"),
            },
            other => Err(self.err(format!(
                "opcode {} sets an item of a {}, not a dict",
                self.op,
                type_name(&other)
            ))),
        }
    }

    fn string(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => Err(self.err(format!("opcode {}: the string is not UTF-8", self.op))),
        }
    }

    /// BINSTRING / SHORT_BINSTRING: a Python 2 `str`, which Python 3 reads
    /// as ASCII by default.
    fn ascii(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        if !bytes.is_ascii() {
            return Err(self.err(format!(
                "opcode {}: a Python 2 string with non-ASCII bytes",
                self.op
            )));
        }
        let s = std::str::from_utf8(bytes).expect("ASCII is UTF-8");
        Ok(Value::Str(Rc::from(s)))
    }

    fn bytes(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?;
        Ok(Value::Bytes(Rc::from(b)))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.memo.put(key, v, self.data.len());
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(key) {
            Some(v) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            None => Err(self.err(format!(
                "opcode {} refers to memo entry {key}, which was never set",
                self.op
            ))),
        }
    }

    fn decimal_key(&self, text: &str) -> Result<u64, PickleError> {
        text.trim()
            .parse()
            .map_err(|_| self.err(format!("opcode {}: bad memo key `{text}`", self.op)))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let Some(&code) = self.data.get(self.pos) else {
                return Err(self.err("the pickle ends before its STOP opcode"));
            };
            self.pos += 1;
            if let Some((_, name)) = CODE.iter().find(|(c, _)| *c == code) {
                return Err(self.err(format!("opcode {name} would run code; {ACCEPTED}")));
            }
            if let Some((_, name)) = UNSUPPORTED.iter().find(|(c, _)| *c == code) {
                return Err(self.err(format!("opcode {name} is not supported; {ACCEPTED}")));
            }
            self.op = opcode_name(code);
            match code {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the opcodes inside are read as usual.
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let v = long_le(self.take(n)?);
                    self.stack.push(v);
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("opcode LONG4 with a negative length"));
                    }
                    let v = long_le(self.take(n as usize)?);
                    self.stack.push(v);
                }
                b'I' => {
                    let text = self.line()?;
                    let v = match text {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        t => int_text(t).ok_or_else(|| {
                            self.err(format!("opcode INT: `{t}` is not an integer"))
                        })?,
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let text = self.line()?;
                    let t = text.strip_suffix('L').unwrap_or(text);
                    let v = int_text(t)
                        .ok_or_else(|| self.err(format!("opcode LONG: `{t}` is not an integer")))?;
                    self.stack.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let text = self.line()?;
                    let v = text
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.err(format!("opcode FLOAT: `{text}` is not a number")))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = u64::from(self.u32()?);
                    let n = self.len(n)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let start = self.pos;
                    let Some(n) = self.data[start..].iter().position(|&b| b == b'\n') else {
                        return Err(
                            self.err("the pickle ends inside opcode UNICODE (no end of line)")
                        );
                    };
                    self.pos += n + 1;
                    let s = raw_unicode_escape(&self.data[start..start + n]).ok_or_else(|| {
                        self.err("opcode UNICODE: bad \\u or \\U escape in the string")
                    })?;
                    self.stack.push(Value::Str(Rc::from(s)));
                }
                b'T' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("opcode BINSTRING with a negative length"));
                    }
                    let v = self.ascii(n as usize)?;
                    self.stack.push(v);
                }
                b'U' => {
                    let n = usize::from(self.u8()?);
                    let v = self.ascii(n)?;
                    self.stack.push(v);
                }
                b'B' => {
                    let n = u64::from(self.u32()?);
                    let n = self.len(n)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = usize::from(self.u8()?);
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8e => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b']' => self.push_list(Vec::new()),
                b'}' => self.push_dict(Vec::new())?,
                b')' => self.push_tuple(Vec::new()),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_list(items);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_dict(items)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_tuple(items);
                }
                0x85..=0x87 => {
                    let n = usize::from(code - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_tuple(items);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.target_list()?.push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.target_list()?;
                    if list.is_empty() {
                        *list = items; // no regrowth: the usual case
                    } else {
                        list.extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.target_dict()?.push((k, v));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.target_dict()?;
                    if dict.is_empty() {
                        *dict = pairs;
                    } else {
                        dict.extend(pairs);
                    }
                }
                b'p' => {
                    let text = self.line()?;
                    let key = self.decimal_key(text)?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = u64::from(self.u8()?);
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = u64::from(self.u32()?);
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = self.memo.count;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let text = self.line()?;
                    let key = self.decimal_key(text)?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = u64::from(self.u8()?);
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = u64::from(self.u32()?);
                    self.memo_get(key)?;
                }
                other => {
                    return Err(self.err(format!(
                        "unknown opcode 0x{other:02x}: not a pickle, or a damaged one"
                    )))
                }
            }
        }
    }
}

/// A little-endian two's-complement integer of LONG1 / LONG4.
fn long_le(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0 };
    if b.len() > 8 {
        // Fits only if the extra high bytes merely extend the sign.
        let (low, high) = b.split_at(8);
        if high.iter().any(|&x| x != fill) || (low[7] & 0x80 != 0) != negative {
            return Value::BigInt;
        }
        return Value::Int(i64::from_le_bytes(low.try_into().expect("8 bytes")));
    }
    let mut buf = [fill; 8];
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

/// A decimal integer of the text opcodes; `BigInt` when it does not fit.
fn int_text(t: &str) -> Option<Value> {
    let t = t.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(t.parse::<i64>().map_or(Value::BigInt, Value::Int))
}

/// Python's `raw-unicode-escape` decoding: bytes are Latin-1 characters,
/// except `\uXXXX` and `\UXXXXXXXX`.
fn raw_unicode_escape(b: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'u' || b[i + 1] == b'U') {
            let n = if b[i + 1] == b'u' { 4 } else { 8 };
            let hex = b.get(i + 2..i + 2 + n)?;
            let hex = std::str::from_utf8(hex).ok()?;
            let cp = u32::from_str_radix(hex, 16).ok()?;
            out.push(char::from_u32(cp)?);
            i += 2 + n;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    Some(out)
}

/// The pickle module's name of an opcode this reader executes.
fn opcode_name(code: u8) -> &'static str {
    match code {
        0x80 => "PROTO",
        0x95 => "FRAME",
        b'.' => "STOP",
        b'(' => "MARK",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'N' => "NONE",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'M' => "BININT2",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'I' => "INT",
        b'L' => "LONG",
        b'G' => "BINFLOAT",
        b'F' => "FLOAT",
        b'X' => "BINUNICODE",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        b'V' => "UNICODE",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8e => "BINBYTES8",
        b']' => "EMPTY_LIST",
        b'}' => "EMPTY_DICT",
        b')' => "EMPTY_TUPLE",
        b'l' => "LIST",
        b'd' => "DICT",
        b't' => "TUPLE",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        b'a' => "APPEND",
        b'e' => "APPENDS",
        b's' => "SETITEM",
        b'u' => "SETITEMS",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        0x94 => "MEMOIZE",
        b'g' => "GET",
        b'h' => "BINGET",
        b'j' => "LONG_BINGET",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(Rc::from(v))
    }

    /// A plain Rust picture of a value, to compare whole trees.
    #[derive(Debug, PartialEq)]
    enum Tree {
        Leaf(Value),
        List(Vec<Tree>),
        Tuple(Vec<Tree>),
        Dict(Vec<(Tree, Tree)>),
    }

    fn tree(p: &Pickle, v: &Value, depth: usize) -> Tree {
        assert!(depth < 20, "too deep (a cycle?)");
        match v {
            Value::List(_) => Tree::List(
                p.items(v)
                    .unwrap()
                    .iter()
                    .map(|x| tree(p, x, depth + 1))
                    .collect(),
            ),
            Value::Tuple(_) => Tree::Tuple(
                p.items(v)
                    .unwrap()
                    .iter()
                    .map(|x| tree(p, x, depth + 1))
                    .collect(),
            ),
            Value::Dict(_) => Tree::Dict(
                p.pairs(v)
                    .unwrap()
                    .iter()
                    .map(|(k, x)| (tree(p, k, depth + 1), tree(p, x, depth + 1)))
                    .collect(),
            ),
            leaf => Tree::Leaf(leaf.clone()),
        }
    }

    fn leaf(v: Value) -> Tree {
        Tree::Leaf(v)
    }

    /// What `[{"a": 1, "b": [1.5, None, True, False]}, "x\u00e9\u20ac\n\\",
    /// (1, 2), -300, 2**40, 2**70, -2**63, 70000]` unpickles to.
    fn expected_sample() -> Tree {
        Tree::List(vec![
            Tree::Dict(vec![
                (leaf(s("a")), leaf(Value::Int(1))),
                (
                    leaf(s("b")),
                    Tree::List(vec![
                        leaf(Value::Float(1.5)),
                        leaf(Value::None),
                        leaf(Value::Bool(true)),
                        leaf(Value::Bool(false)),
                    ]),
                ),
            ]),
            leaf(s("x\u{e9}\u{20ac}\n\\")),
            Tree::Tuple(vec![leaf(Value::Int(1)), leaf(Value::Int(2))]),
            leaf(Value::Int(-300)),
            leaf(Value::Int(1 << 40)),
            leaf(Value::BigInt),
            leaf(Value::Int(i64::MIN)),
            leaf(Value::Int(70000)),
        ])
    }

    // Produced by CPython 3.11:
    // pickle.dumps([{"a": 1, "b": [1.5, None, True, False]},
    //               "x\u00e9\u20ac\n\\", (1, 2), -300, 2**40, 2**70, -2**63, 70000],
    //              protocol=N)
    const SAMPLE_P0: &[u8] = b"(lp0\n(dp1\nVa\np2\nI1\nsVb\np3\n(lp4\nF1.5\naNaI01\naI00\nasaVx\xe9\\u20ac\\u000a\\u005c\np5\na(I1\nI2\ntp6\naI-300\naL1099511627776L\naL1180591620717411303424L\naL-9223372036854775808L\naI70000\na.";
    const SAMPLE_P1: &[u8] = b"]q\x00(}q\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03]q\x04(G?\xf8\x00\x00\x00\x00\x00\x00NI01\nI00\neuX\x08\x00\x00\x00x\xc3\xa9\xe2\x82\xac\n\\q\x05(K\x01K\x02tq\x06J\xd4\xfe\xff\xffL1099511627776L\nL1180591620717411303424L\nL-9223372036854775808L\nJp\x11\x01\x00e.";
    const SAMPLE_P2: &[u8] = b"\x80\x02]q\x00(}q\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03]q\x04(G?\xf8\x00\x00\x00\x00\x00\x00N\x88\x89euX\x08\x00\x00\x00x\xc3\xa9\xe2\x82\xac\n\\q\x05K\x01K\x02\x86q\x06J\xd4\xfe\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80Jp\x11\x01\x00e.";
    const SAMPLE_P4: &[u8] = b"\x80\x04\x95[\x00\x00\x00\x00\x00\x00\x00]\x94(}\x94(\x8c\x01a\x94K\x01\x8c\x01b\x94]\x94(G?\xf8\x00\x00\x00\x00\x00\x00N\x88\x89eu\x8c\x08x\xc3\xa9\xe2\x82\xac\n\\\x94K\x01K\x02\x86\x94J\xd4\xfe\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80Jp\x11\x01\x00e.";

    #[test]
    fn reads_every_protocol() {
        for (n, data) in [SAMPLE_P0, SAMPLE_P1, SAMPLE_P2, SAMPLE_P4]
            .into_iter()
            .enumerate()
        {
            let p = parse(data).unwrap_or_else(|e| panic!("sample {n}: {e}"));
            assert_eq!(tree(&p, p.root(), 0), expected_sample(), "sample {n}");
        }
    }

    #[test]
    fn shared_references_see_the_filled_container() {
        // t = {"device": "x"}; pickle.dumps([t, t], protocol=2)
        let data =
            b"\x80\x02]q\x00(}q\x01X\x06\x00\x00\x00deviceq\x02X\x01\x00\x00\x00xq\x03sh\x01e.";
        let p = parse(data).unwrap();
        let items = p.items(p.root()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert_eq!(p.get(&items[1], "device"), Some(&s("x")));
    }

    #[test]
    fn memo_keys_far_apart_cost_no_memory() {
        // 7, LONG_BINPUT 2^32-1, POP, LONG_BINGET 2^32-1; then PUT by text.
        let p = parse(b"\x80\x02K\x07r\xff\xff\xff\xff0j\xff\xff\xff\xff.").unwrap();
        assert_eq!(p.root(), &Value::Int(7));
        let p = parse(b"K\x08p99999999999\n0g99999999999\n.").unwrap();
        assert_eq!(p.root(), &Value::Int(8));
        // MEMOIZE numbers entries, wherever earlier ones were put.
        let p = parse(b"\x80\x04K\x01r\x00\x00\x01\x00K\x02\x94(h\x01j\x00\x00\x01\x00t.").unwrap();
        assert_eq!(p.items(p.root()).unwrap(), &[Value::Int(2), Value::Int(1)]);
    }

    #[test]
    fn recursive_list_is_a_cycle_not_a_hang() {
        // l = []; l.append(l); pickle.dumps(l, protocol=2)
        let data = b"\x80\x02]q\x00h\x00a.";
        let p = parse(data).unwrap();
        let items = p.items(p.root()).unwrap();
        assert_eq!(items, std::slice::from_ref(p.root()));
    }

    #[test]
    fn code_opcodes_are_refused_with_name_and_offset() {
        let cases: &[(&[u8], &str, usize)] = &[
            // pickle.dumps(os.system, protocol=2)
            (b"\x80\x02cposix\nsystem\nq\x00.", "GLOBAL", 2),
            // pickle.dumps(os.system, protocol=0)
            (b"cposix\nsystem\np0\n.", "GLOBAL", 0),
            // pickle.dumps(os.system, protocol=4)
            (
                b"\x80\x04\x95\x14\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.",
                "STACK_GLOBAL",
                28,
            ),
            (b"\x80\x02]q\x00(K\x01K\x02R.", "REDUCE", 10),
            (b"}b.", "BUILD", 1),
            (b"(i__main__\nX\n.", "INST", 1),
            (b"(o.", "OBJ", 1),
            (b"\x80\x02)\x81.", "NEWOBJ", 3),
            (b"\x80\x04)}\x92.", "NEWOBJ_EX", 4),
            (b"P1\n.", "PERSID", 0),
            (b"K\x01Q.", "BINPERSID", 2),
            (b"\x82\x01.", "EXT1", 0),
            (b"\x83\x01\x00.", "EXT2", 0),
            (b"\x84\x01\x00\x00\x00.", "EXT4", 0),
        ];
        for (data, name, offset) in cases {
            let e = parse(data).unwrap_err();
            assert_eq!(e.offset, *offset, "{name}: {e}");
            assert_eq!(
                e.message,
                format!(
                    "opcode {name} would run code; only lists, dicts, strings and numbers are accepted"
                )
            );
            assert_eq!(
                e.to_string(),
                format!("byte {offset}: {}", e.message),
                "{name}"
            );
        }
    }

    #[test]
    fn other_data_opcodes_are_refused() {
        let e = parse(b"\x80\x04\x8f\x94.").unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(
            e.message.starts_with("opcode EMPTY_SET is not supported"),
            "{e}"
        );
        let e = parse(b"\x80\x02K\x01\xff.").unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("unknown opcode 0xff"), "{e}");
        let e = parse(b"\x80\x09N.").unwrap_err();
        assert!(e.message.contains("protocol 9"), "{e}");
    }

    #[test]
    fn damaged_pickles_are_refused_without_huge_allocations() {
        // Truncated everywhere: never a panic, always an error.
        for cut in 0..SAMPLE_P2.len() {
            assert!(parse(&SAMPLE_P2[..cut]).is_err(), "cut at {cut}");
        }
        for cut in 0..SAMPLE_P0.len() {
            assert!(parse(&SAMPLE_P0[..cut]).is_err(), "cut at {cut}");
        }
        // A 4 GiB / 2^63-byte string announced in a 20-byte file.
        let e = parse(b"\x80\x02X\xff\xff\xff\xffabc.").unwrap_err();
        assert!(e.message.contains("ends inside opcode BINUNICODE"), "{e}");
        let e = parse(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7fabc.").unwrap_err();
        assert!(e.message.contains("ends inside opcode BINUNICODE8"), "{e}");
        let e = parse(b"\x80\x02\x8b\xff\xff\xff\x7f.").unwrap_err();
        assert!(e.message.contains("LONG4"), "{e}");
        // Bad structure.
        let e = parse(b"\x80\x02h\x05.").unwrap_err();
        assert!(e.message.contains("memo entry 5"), "{e}");
        let e = parse(b"\x80\x02Na.").unwrap_err();
        assert!(e.message.contains("APPEND needs a value"), "{e}");
        let e = parse(b"\x80\x02NK\x01a.").unwrap_err();
        assert!(e.message.contains("appends to a None"), "{e}");
        let e = parse(b"\x80\x02}(K\x01u.").unwrap_err();
        assert!(e.message.contains("odd number"), "{e}");
        let e = parse(b"\x80\x02e.").unwrap_err();
        assert!(e.message.contains("without a MARK"), "{e}");
        // Items below a MARK are out of reach, as in Python.
        let e = parse(b"\x80\x02](K\x01a.").unwrap_err();
        assert!(e.message.contains("APPEND needs a value"), "{e}");
        let e = parse(b"\x80\x02X\x02\x00\x00\x00\xff\xfe.").unwrap_err();
        assert!(e.message.contains("not UTF-8"), "{e}");
        let e = parse(b"\x80\x02").unwrap_err();
        assert!(e.message.contains("before its STOP"), "{e}");
    }

    #[test]
    fn integers_of_every_width() {
        assert_eq!(long_le(&[]), Value::Int(0));
        assert_eq!(long_le(&[0xff]), Value::Int(-1));
        assert_eq!(long_le(&[0x00, 0x80]), Value::Int(-32768));
        assert_eq!(long_le(&[0xff, 0x00]), Value::Int(255));
        assert_eq!(
            long_le(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Value::Int(i64::MAX)
        );
        // 2**63 needs nine bytes: too big.
        assert_eq!(long_le(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]), Value::BigInt);
        // -1 padded to nine bytes still fits.
        assert_eq!(long_le(&[0xff; 9]), Value::Int(-1));
        assert_eq!(int_text("-12"), Some(Value::Int(-12)));
        assert_eq!(int_text("99999999999999999999"), Some(Value::BigInt));
        assert_eq!(int_text("1x"), None);
        // BININT is signed, BININT1 and BININT2 are not.
        let p = parse(b"\x80\x02(J\xff\xff\xff\xffK\xffM\xff\xfft.").unwrap();
        let items = p.items(p.root()).unwrap();
        assert_eq!(items, &[Value::Int(-1), Value::Int(255), Value::Int(65535)]);
    }

    #[test]
    fn raw_unicode_escape_decodes_python_text() {
        assert_eq!(
            raw_unicode_escape(b"a\xe9\\u20ac\\U0001f600").as_deref(),
            Some("a\u{e9}\u{20ac}\u{1f600}")
        );
        assert_eq!(raw_unicode_escape(b"\\u12"), None);
        assert_eq!(raw_unicode_escape(b"\\x41").as_deref(), Some("\\x41"));
    }
}
