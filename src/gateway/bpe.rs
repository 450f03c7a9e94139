//! Counting tokens with OpenAI's `o200k_base` byte-pair encoding, from one compact table.
//!
//! Only counts are needed (never token ids or decoding), so the vocabulary is kept the way it
//! is compiled into the binary — `o200k_base.bin`, written by `scripts/update-tokenizer`: its
//! 199,998 tokens sorted by their bytes, each as length (1 byte), rank (3 bytes, little-endian)
//! and bytes — plus one offset per token to search it. That is ~3 MB in all, where a general
//! tokenizer library builds three hash maps of owned byte strings and a pool of regex copies
//! (~50 MB, kept for the life of the process once the first estimate is made). The tests
//! compare every count with `tiktoken-rs`'s.

/// The vocabulary, sorted by bytes (see the module's documentation for the layout).
static TABLE: &[u8] = include_bytes!("o200k_base.bin");

/// How `o200k_base` cuts text into pieces before merging bytes (OpenAI's published pattern).
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// A token's rank; lower ranks merge first.
type Rank = u32;

/// The `o200k_base` encoder, as far as counting needs it.
pub struct Bpe {
    /// Where each entry of [`TABLE`] starts, in the table's (byte) order.
    offsets: Vec<u32>,
    split: fancy_regex::Regex,
}

/// Why the tokenizer could not be built.
#[derive(Debug)]
pub struct LoadError(String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Bpe {
    /// Reads the compiled-in table and compiles the splitting pattern.
    pub fn load() -> Result<Self, LoadError> {
        let split = fancy_regex::Regex::new(PATTERN).map_err(|e| LoadError(e.to_string()))?;
        let mut offsets = Vec::with_capacity(200_000);
        let mut at = 0;
        while at < TABLE.len() {
            let len = usize::from(TABLE[at]);
            if len == 0 || at + 4 + len > TABLE.len() {
                return Err(LoadError(format!("o200k_base.bin is damaged at byte {at}")));
            }
            offsets.push(u32::try_from(at).map_err(|e| LoadError(e.to_string()))?);
            at += 4 + len;
        }
        Ok(Self { offsets, split })
    }

    /// The bytes and rank of the entry starting at `offset`.
    fn entry(offset: u32) -> (&'static [u8], Rank) {
        let at = offset as usize;
        let len = usize::from(TABLE[at]);
        let rank = Rank::from(TABLE[at + 1])
            | Rank::from(TABLE[at + 2]) << 8
            | Rank::from(TABLE[at + 3]) << 16;
        (&TABLE[at + 4..at + 4 + len], rank)
    }

    /// The rank of `bytes` if they are a token.
    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        self.offsets
            .binary_search_by(|&offset| Self::entry(offset).0.cmp(bytes))
            .ok()
            .map(|i| Self::entry(self.offsets[i]).1)
    }

    /// Tokens of `text` as `o200k_base` encodes it (special tokens read as ordinary text).
    /// Text the splitting pattern cannot read (it gives up past a backtracking limit) counts a
    /// token per four bytes.
    pub fn count(&self, text: &str) -> u64 {
        let mut tokens = 0;
        let mut read = 0;
        for piece in self.split.find_iter(text) {
            match piece {
                Ok(piece) => {
                    tokens += self.count_piece(piece.as_str().as_bytes());
                    read = piece.end();
                }
                Err(_) => return tokens + (text.len() - read).div_ceil(4) as u64,
            }
        }
        tokens
    }

    /// Tokens of one piece of the split: one if it is a token, else what merging its bytes
    /// pair by pair, lowest rank first, leaves.
    fn count_piece(&self, piece: &[u8]) -> u64 {
        if piece.len() < 2 || self.rank(piece).is_some() {
            return 1;
        }
        self.merge(piece)
    }

    /// Byte-pair merging: `parts` holds where each current part starts and the rank of the pair
    /// it forms with the next part; the lowest-ranked pair merges until no pair is a token.
    fn merge(&self, piece: &[u8]) -> u64 {
        let pair_rank = |parts: &[(usize, Rank)], i: usize| -> Rank {
            match (parts.get(i), parts.get(i + 2)) {
                (Some(&(start, _)), Some(&(end, _))) => {
                    self.rank(&piece[start..end]).unwrap_or(Rank::MAX)
                }
                _ => Rank::MAX,
            }
        };
        let mut parts: Vec<(usize, Rank)> = (0..=piece.len()).map(|i| (i, Rank::MAX)).collect();
        for i in 0..piece.len().saturating_sub(1) {
            parts[i].1 = pair_rank(&parts, i);
        }
        while let Some(i) = lowest(&parts) {
            parts.remove(i + 1);
            parts[i].1 = pair_rank(&parts, i);
            if i > 0 {
                parts[i - 1].1 = pair_rank(&parts, i - 1);
            }
        }
        parts.len() as u64 - 1
    }
}

/// The first part whose pair with the next has the lowest rank, if any pair is a token (a plain
/// loop: this runs once per merge, and the debug build does not optimise iterator chains).
fn lowest(parts: &[(usize, Rank)]) -> Option<usize> {
    let mut best = None;
    let mut best_rank = Rank::MAX;
    let mut i = 0;
    while i < parts.len() {
        if parts[i].1 < best_rank {
            best_rank = parts[i].1;
            best = Some(i);
        }
        i += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> tiktoken_rs::CoreBPE {
        tiktoken_rs::o200k_base().expect("tiktoken-rs loads o200k_base")
    }

    #[test]
    fn the_table_holds_every_rank_once_in_byte_order() {
        let bpe = Bpe::load().expect("the compiled-in table loads");
        assert_eq!(bpe.offsets.len(), 199_998);
        let mut ranks: Vec<Rank> = bpe.offsets.iter().map(|&o| Bpe::entry(o).1).collect();
        assert!(bpe
            .offsets
            .windows(2)
            .all(|w| Bpe::entry(w[0]).0 < Bpe::entry(w[1]).0));
        ranks.sort_unstable();
        assert!(ranks.iter().enumerate().all(|(i, &r)| r as usize == i));
    }

    #[test]
    fn counts_equal_tiktoken_rs_on_varied_text() {
        let bpe = Bpe::load().expect("the compiled-in table loads");
        let reference = reference();
        let samples = [
            "",
            "hi",
            "Hello, world! How are you doing today?",
            "The quick brown fox jumps over the lazy dog. I'm sure they'll say we've done it.",
            "你好，世界！这是一个用于测试分词器的中文句子，包含标点符号。",
            "こんにちは世界。カタカナとひらがなと漢字。",
            "emoji 😀🎉👩‍👩‍👧‍👦 and flags 🇨🇳🇺🇸",
            "fn main() {\n    let x: Vec<u8> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
            "numbers 1234567890 3.14159 -42 1e10 0xdeadbeef",
            "    indented\n\n\n\ttabs\t\tand   spaces   \r\n",
            "<|endoftext|> is read as text here",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
            "Ünïcödé façade naïve coöperate résumé Straße ĳ ﬁ",
            "https://example.com/path?query=1&other=two#frag",
        ];
        for text in samples {
            assert_eq!(
                bpe.count(text),
                reference.encode_ordinary(text).len() as u64,
                "{text:?}"
            );
        }
        let long: String = (0..400)
            .map(|i| format!("word{i} 数字{} ", i * 7))
            .collect();
        assert_eq!(
            bpe.count(&long),
            reference.encode_ordinary(&long).len() as u64
        );
    }

    #[test]
    fn every_byte_alone_is_one_token() {
        let bpe = Bpe::load().expect("the compiled-in table loads");
        for byte in 0..=255u8 {
            assert_eq!(bpe.count_piece(&[byte]), 1);
            assert!(bpe.rank(&[byte]).is_some(), "byte {byte} is a token");
        }
    }
}
