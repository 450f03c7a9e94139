//! Standard base64 (RFC 4648, padded), used for `encoding_format: "base64"` embeddings.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes bytes as padded standard base64.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 of the little-endian bytes of `values`, as the OpenAI embeddings API sends them.
pub fn encode_f32_le(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_bytes() {
        let cases: [(&[u8], &str); 8] = [
            (b"", ""),
            (b"M", "TQ=="),
            (b"Ma", "TWE="),
            (b"Man", "TWFu"),
            (b"foobar", "Zm9vYmFy"),
            (b"fooba", "Zm9vYmE="),
            (&[0xff, 0xfe, 0xfd], "//79"),
            (&[0, 0, 0, 0], "AAAAAA=="),
        ];
        for (input, want) in cases {
            assert_eq!(encode(input), want, "input {input:?}");
        }
    }

    #[test]
    fn encodes_f32_little_endian() {
        let cases: [(&[f32], &str); 3] = [
            (&[], ""),
            (&[1.0], "AACAPw=="),
            (&[1.0, -0.5], "AACAPwAAAL8="),
        ];
        for (input, want) in cases {
            assert_eq!(encode_f32_le(input), want, "input {input:?}");
        }
    }
}
