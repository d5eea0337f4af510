//! Dequantization of ggml block formats to f32, following ggml's reference `dequantize_row_*`.

use half::{bf16, f16};

/// The ggml tensor types this reader knows by id; `supported()` tells which it can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
    BF16,
    Other(u32),
}

pub const SUPPORTED: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K";

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The ggml id this type has in a GGUF file.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::BF16 => "BF16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::Other(id) => format!("ggml type id {id}"),
        }
    }

    /// (elements per block, bytes per block); `None` for types this reader cannot decode.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
            Self::Other(_) => return None,
        })
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks or
    /// the bytes would not fit a `usize` (only a corrupt file declares such a tensor).
    pub fn byte_len(self, n: usize) -> Option<usize> {
        let (per_block, bytes) = self.block_layout()?;
        n.is_multiple_of(per_block)
            .then(|| (n / per_block).checked_mul(bytes))
            .flatten()
    }
}

/// Encodes `data` as `ty` (ggml's reference `quantize_row_*`), for the types a GGUF is
/// written in: F32, F16 and Q8_0 (`None` for the others, or when `data` is not a whole
/// number of blocks).
pub fn quantize(ty: GgmlType, data: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(ty.byte_len(data.len())?);
    match ty {
        GgmlType::F32 => data.iter().for_each(|x| out.extend(x.to_le_bytes())),
        GgmlType::F16 => data
            .iter()
            .for_each(|x| out.extend(f16::from_f32(*x).to_le_bytes())),
        GgmlType::Q8_0 => {
            for block in data.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|x| (x * inv).round() as i8 as u8));
            }
        }
        _ => return None,
    }
    Some(out)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `raw` (exactly `ty.byte_len(out.len())` bytes) into `out`.
/// The caller has checked sizes and support; this only does arithmetic.
pub fn dequantize(ty: GgmlType, raw: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (j, v) in o.iter_mut().enumerate() {
                    *v = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = (q & 0x0F) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(22)) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    let q = b[6 + j] as u32;
                    o[j] = (((q & 0x0F) | xh0) as i32 - 16) as f32 * d;
                    o[j + 16] = (((q >> 4) | xh1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(24)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    let q = b[8 + j] as u32;
                    o[j] = ((q & 0x0F) | xh0) as f32 * d + m;
                    o[j + 16] = ((q >> 4) | xh1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q4K => {
            for (o, b) in out.chunks_exact_mut(256).zip(raw.chunks_exact(144)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, pair) in (0..4).map(|c| (c, 2 * c)) {
                    let (sc0, m0) = k_scale_min(pair, scales);
                    let (sc1, m1) = k_scale_min(pair + 1, scales);
                    let (d1, min1) = (d * sc0 as f32, dmin * m0 as f32);
                    let (d2, min2) = (d * sc1 as f32, dmin * m1 as f32);
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    let o = &mut o[chunk * 64..chunk * 64 + 64];
                    for l in 0..32 {
                        o[l] = d1 * (q[l] & 0x0F) as f32 - min1;
                        o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (o, b) in out.chunks_exact_mut(256).zip(raw.chunks_exact(210)) {
                let ql_all = &b[0..128];
                let qh_all = &b[128..192];
                let sc_all = &b[192..208];
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &ql_all[half * 64..];
                    let qh = &qh_all[half * 32..];
                    let sc = &sc_all[half * 8..];
                    let o = &mut o[half * 128..half * 128 + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        GgmlType::Other(_) => unreachable!("dequantize called on an unsupported type"),
    }
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min for sub-block `j` of a Q4_K super-block.
fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_decodes_low_then_high_nibbles() {
        let mut block = vec![0u8; 20];
        block[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block[4] = 0x3A; // low nibble 10, high nibble 3
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &block, &mut out);
        assert_eq!(out[0], 10.0 * 0.5 - 1.0);
        assert_eq!(out[16], 3.0 * 0.5 - 1.0);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn written_types_read_back_within_their_step() {
        let data: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        for (ty, step) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::Q8_0, 0.02),
        ] {
            let raw = quantize(ty, &data).unwrap();
            assert_eq!(Some(raw.len()), ty.byte_len(data.len()));
            assert_eq!(GgmlType::from_id(ty.id()), ty);
            let mut back = vec![0f32; data.len()];
            dequantize(ty, &raw, &mut back);
            for (a, b) in data.iter().zip(&back) {
                assert!((a - b).abs() <= step, "{ty:?}: {a} came back as {b}");
            }
        }
        assert!(quantize(GgmlType::Q8_0, &data[..31]).is_none());
        assert!(quantize(GgmlType::Q4_1, &data).is_none());
    }

    #[test]
    fn q8_0_block_is_signed() {
        let mut block = vec![0u8; 34];
        block[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        block[2] = (-4i8) as u8;
        block[33] = 8;
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &block, &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[31], 2.0);
    }

    #[test]
    fn q4_0_is_offset_by_eight() {
        let mut block = vec![0u8; 18];
        block[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        block[2] = 0xF0;
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_0, &block, &mut out);
        assert_eq!(out[0], -16.0);
        assert_eq!(out[16], 14.0);
    }
}
