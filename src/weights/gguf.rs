//! GGUF (v2/v3) reader working from a byte slice, since the browser has no filesystem.
//! Layout: header, metadata key/values, tensor infos, then aligned tensor data.

use std::collections::BTreeMap;

use super::quant::{self, GgmlType};
use crate::error::{Error, Result};

/// One metadata value. Arrays keep their element values.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::UInt(v) => Some(v),
            Self::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::UInt(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the data section.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first).
    pub dims: Vec<usize>,
    pub kind: GgmlType,
    /// Offset from the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    /// Shape in row-major order (slowest first), as PyTorch would print it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file borrowing its bytes.
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
    data_start: usize,
}

/// Metadata array elements one file may hold in all. Each is kept as a [`MetaValue`] (32
/// bytes, whatever its size in the file), so an unbounded one-byte array would cost 32 times
/// its size in memory; real tokenizers hold about a million (Gemma 3: 262k tokens, their
/// scores and types, and its merges).
pub const MAX_METADATA_ELEMENTS: usize = 1 << 23;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Array elements the file may still declare (see [`MAX_METADATA_ELEMENTS`]).
    elements_left: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n as u64,
                len: self.bytes.len() as u64,
            }),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length or count. Each counted item takes at least one byte, so a value larger than
    /// the bytes left means a cut (or corrupt) file, and can never make us allocate gigabytes.
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        // Some converters emit invalid UTF-8 in token strings; keep what we can.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::UInt(self.u8(what)? as u64),
            1 => MetaValue::Int(self.u8(what)? as i8 as i64),
            2 => {
                let b = self.take(2, what)?;
                MetaValue::UInt(u16::from_le_bytes([b[0], b[1]]) as u64)
            }
            3 => {
                let b = self.take(2, what)?;
                MetaValue::Int(i16::from_le_bytes([b[0], b[1]]) as i64)
            }
            4 => MetaValue::UInt(self.u32(what)? as u64),
            5 => MetaValue::Int(self.u32(what)? as i32 as i64),
            6 => MetaValue::Float(f32::from_bits(self.u32(what)?) as f64),
            7 => MetaValue::Bool(self.u8(what)? != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(Error::Malformed(format!(
                        "{what}: arrays nested too deeply"
                    )));
                }
                let elem_ty = self.u32(what)?;
                let n = self.len(what)?;
                self.elements_left = self.elements_left.checked_sub(n).ok_or_else(|| {
                    Error::Malformed(format!(
                        "{what}: an array of {n} elements takes the metadata past {MAX_METADATA_ELEMENTS} array elements, more than any model's"
                    ))
                })?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem_ty, what, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64(what)?),
            11 => MetaValue::Int(self.u64(what)? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64(what)?)),
            other => {
                return Err(Error::Malformed(format!(
                    "{what}: unknown metadata value type {other}"
                )));
            }
        })
    }
}

impl<'a> Gguf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            elements_left: MAX_METADATA_ELEMENTS,
        };
        let magic = c
            .take(4, "GGUF magic")
            .map_err(|_| Error::NotGguf { found: pad4(bytes) })?;
        if magic != b"GGUF" {
            return Err(Error::NotGguf { found: pad4(bytes) });
        }
        let version = c.u32("GGUF version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::GgufVersion(version));
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(Error::Malformed(format!(
                    "tensor `{name}` has {n_dims} dimensions (ggml allows at most 4)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            // Reject dims whose element count overflows: only a corrupt file has them.
            let numel = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let (Some(_), Ok(dims)) = (numel, dims.into_iter().map(usize::try_from).collect())
            else {
                return Err(Error::Malformed(format!(
                    "tensor `{name}` has impossible dimensions; the file is corrupt"
                )));
            };
            let kind = GgmlType::from_id(c.u32(&name)?);
            let offset = usize::try_from(c.u64(&name)?).map_err(|_| {
                Error::Malformed(format!("tensor `{name}` has an impossible offset"))
            })?;
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        Ok(Self {
            version,
            metadata,
            tensors,
            data: bytes,
            data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantizes one tensor to f32 in row-major order.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let n = info.numel();
        if info.kind.block_layout().is_none() {
            return Err(Error::UnsupportedQuant {
                tensor: info.name.clone(),
                kind: info.kind.name(),
                supported: quant::SUPPORTED,
                remedy: "re-quantize the model to one of those with llama.cpp (e.g. Q8_0 or Q4_1)",
            });
        }
        let nbytes = info.kind.byte_len(n).ok_or_else(|| {
            Error::Malformed(format!(
                "tensor `{}` has {n} elements: not a whole number of {} blocks, or more bytes than a file can hold",
                info.name,
                info.kind.name()
            ))
        })?;
        let start = self.data_start.saturating_add(info.offset);
        let raw = start
            .checked_add(nbytes)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| Error::Truncated {
                what: format!("tensor `{}`", info.name),
                offset: start as u64,
                needed: nbytes as u64,
                len: self.data.len() as u64,
            })?;
        let mut out = vec![0f32; n];
        quant::dequantize(info.kind, raw, &mut out);
        Ok(out)
    }
}

fn pad4(bytes: &[u8]) -> [u8; 4] {
    let mut m = [0u8; 4];
    for (d, s) in m.iter_mut().zip(bytes) {
        *d = *s;
    }
    m
}

/// A tensor for [`write`]: its name, shape outermost first (as burn and safetensors order
/// it; GGUF stores it reversed), ggml type, and its data already encoded in that type.
pub struct TensorBytes {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: GgmlType,
    pub bytes: Vec<u8>,
}

/// Bytes between the start of the data section and each tensor (GGUF's default).
const ALIGNMENT: usize = 32;

/// A GGUF v3 file holding `meta` and `tensors`. Integers go out as 32-bit where every value
/// of the entry fits (llama.cpp reads its counts and ids as u32 / i32), 64-bit otherwise;
/// floats as f32.
pub fn write(meta: &[(impl AsRef<str>, MetaValue)], tensors: &[TensorBytes]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    /// The GGUF value type of `v`, widened to 64 bits where one value needs it.
    fn ty(v: &MetaValue) -> u32 {
        match v {
            MetaValue::UInt(x) if u32::try_from(*x).is_ok() => 4,
            MetaValue::UInt(_) => 10,
            MetaValue::Int(x) if i32::try_from(*x).is_ok() => 5,
            MetaValue::Int(_) => 11,
            MetaValue::Float(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::Array(_) => 9,
        }
    }
    fn val(out: &mut Vec<u8>, v: &MetaValue, as_ty: u32) {
        match v {
            MetaValue::UInt(x) if as_ty == 4 => out.extend((*x as u32).to_le_bytes()),
            MetaValue::UInt(x) => out.extend(x.to_le_bytes()),
            MetaValue::Int(x) if as_ty == 5 => out.extend((*x as i32).to_le_bytes()),
            MetaValue::Int(x) => out.extend(x.to_le_bytes()),
            MetaValue::Float(x) => out.extend((*x as f32).to_le_bytes()),
            MetaValue::Bool(b) => out.push(*b as u8),
            MetaValue::Str(x) => s(out, x),
            MetaValue::Array(items) => {
                let elem = items.iter().map(ty).max().unwrap_or(4);
                out.extend(elem.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    val(out, i, elem);
                }
            }
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut out, k.as_ref());
        out.extend(ty(v).to_le_bytes());
        val(&mut out, v, ty(v));
    }
    let mut offset = 0u64;
    for t in tensors {
        s(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.kind.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += t.bytes.len().div_ceil(ALIGNMENT) as u64 * ALIGNMENT as u64;
    }
    let pad = |out: &mut Vec<u8>, from: usize| {
        out.resize(from + (out.len() - from).div_ceil(ALIGNMENT) * ALIGNMENT, 0)
    };
    pad(&mut out, 0);
    for t in tensors {
        let start = out.len();
        out.extend(&t.bytes);
        pad(&mut out, start);
    }
    out
}

/// A GGUF file of f32 tensors with `meta`: tiny test models and fuzzing seeds.
pub fn write_f32(meta: &[(&str, MetaValue)], tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let tensors: Vec<TensorBytes> = tensors
        .iter()
        .map(|(name, shape, data)| TensorBytes {
            name: name.to_string(),
            shape: shape.clone(),
            kind: GgmlType::F32,
            bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    write(meta, &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: dimensions whose element count fits but whose byte count does not
    /// (2^31 x 2^31 f32) overflowed the size computation instead of being refused.
    #[test]
    fn a_tensor_larger_than_memory_is_refused() {
        let mut bytes = write_f32(&[], &[("w", vec![1, 1], vec![0.0])]);
        let mut dims = vec![1u8, 0, 0, 0, 0, 0, 0, 0, b'w', 2, 0, 0, 0];
        dims.extend(1u64.to_le_bytes());
        dims.extend(1u64.to_le_bytes());
        let at = bytes.windows(dims.len()).position(|w| w == dims).unwrap() + 13;
        for k in 0..2 {
            bytes[at + 8 * k..at + 8 * k + 8].copy_from_slice(&(1u64 << 31).to_le_bytes());
        }
        let g = Gguf::parse(&bytes).unwrap();
        let err = g.tensor_f32(&g.tensors[0]).unwrap_err();
        assert!(
            err.to_string().contains("more bytes than a file can hold"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_metadata_and_f32_tensor() {
        let bytes = write_f32(
            &[
                ("general.architecture", MetaValue::Str("llama".into())),
                ("llama.block_count", MetaValue::UInt(2)),
            ],
            &[("w", vec![2, 3], vec![1., 2., 3., 4., 5., 6.])],
        );
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(
            g.get("llama.block_count").and_then(MetaValue::as_u64),
            Some(2)
        );
        // Wide integers, negative ones and arrays of them keep their values.
        let wide = [
            ("big", MetaValue::UInt(1 << 40)),
            ("neg", MetaValue::Int(-(1 << 40))),
            (
                "list",
                MetaValue::Array(vec![MetaValue::Int(1), MetaValue::Int(-(1 << 33))]),
            ),
        ];
        let g2 = write_f32(&wide, &[]);
        let g2 = Gguf::parse(&g2).unwrap();
        for (key, value) in &wide {
            assert_eq!(g2.get(key), Some(value), "{key}");
        }
        let info = g.tensor_info("w").unwrap();
        assert_eq!(info.shape(), vec![2, 3]);
        assert_eq!(g.tensor_f32(info).unwrap(), vec![1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn rejects_foreign_and_truncated_files() {
        assert!(matches!(
            Gguf::parse(b"PK\x03\x04rest"),
            Err(Error::NotGguf { .. })
        ));
        assert!(matches!(Gguf::parse(b"GG"), Err(Error::NotGguf { .. })));
        let bytes = write_f32(&[], &[("w", vec![4, 8], vec![0.5; 32])]);
        let cut = &bytes[..bytes.len() - 20];
        let g = Gguf::parse(cut).unwrap();
        let err = g.tensor_f32(&g.tensors[0]).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("download it again"));
        // Cut inside the header: an error, never a panic.
        for n in 0..60 {
            let _ = Gguf::parse(&bytes[..n.min(bytes.len())]);
        }
    }

    #[test]
    fn rejects_unknown_version() {
        let mut bytes = write_f32(&[], &[]);
        bytes[4] = 9;
        assert!(matches!(Gguf::parse(&bytes), Err(Error::GgufVersion(9))));
    }

    /// A one-byte metadata array costs 32 bytes an element once read: more elements than any
    /// model's metadata holds are refused before they are read.
    #[test]
    fn bounds_metadata_array_elements() {
        let n = MAX_METADATA_ELEMENTS + 1;
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes()); // tensors
        bytes.extend(1u64.to_le_bytes()); // metadata entries
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'x');
        bytes.extend(9u32.to_le_bytes()); // array
        bytes.extend(0u32.to_le_bytes()); // of u8
        bytes.extend((n as u64).to_le_bytes());
        bytes.resize(bytes.len() + n, 7);
        let err = Gguf::parse(&bytes).err().expect("refused").to_string();
        assert!(err.contains("more than any model's"), "{err}");
    }
}
