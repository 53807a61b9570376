//! The gzip form of `/metrics`, compressed in blocks that are kept from one
//! exposition to the next: a block whose text did not change is not
//! compressed again, and the blocks that did are compressed on up to
//! `server.max_heavy_requests` threads at once.
//!
//! Compressing is most of a gzip'd scrape's cost (at 10,000 tenants about
//! twice the encode itself, `docs/performance.md`), and between two scrapes
//! most of a large exposition is unchanged: the tenants that had no event
//! since, every family's help text. The text is cut into blocks of a few
//! hundred lines at lines chosen by their series (name and labels, never
//! the value), so a changed value or a new tenant changes the block it is
//! in and leaves the others' cut points where they were. Each block is
//! compressed alone as raw deflate ending in a sync flush (byte-aligned,
//! not final), so the blocks can be concatenated in any combination into
//! one deflate stream, as pigz does; the gzip header, a final empty block,
//! and the CRC-32 and length of the whole text frame them. The result is
//! one ordinary gzip member.
//!
//! A block is found again by its text (the key of the map, compared byte
//! for byte), never by a hash alone, so a stale block cannot stand in for
//! a changed one. The map keeps only the last exposition's blocks: its
//! memory is about one exposition's text and its compressed form.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::Write as _;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// A block ends before a line whose series hashes to 0 modulo this: about
/// this many lines per block (some 25 KiB of exposition), large enough for
/// deflate's 32 KiB window to find the repetition between lines.
const LINES_PER_BLOCK: u64 = 384;

/// A block never grows past this, whatever the hashes say.
const MAX_BLOCK_BYTES: usize = 256 * 1024;

/// gzip header: deflate, no name or time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// A final stored block of length 0: ends the deflate stream after blocks
/// that each ended with a sync flush (byte-aligned).
const FINAL_BLOCK: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

type Blocks = HashMap<Bytes, Bytes, foldhash::fast::RandomState>;

/// The last exposition's blocks, by text, with their deflated form.
#[derive(Debug)]
pub struct GzipBlocks {
    last: Mutex<Blocks>,
    /// Chooses the cut points; random per process, fixed for its life.
    cut: foldhash::fast::RandomState,
    threads: usize,
}

/// What one [`GzipBlocks::gzip`] did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GzipStats {
    pub blocks: usize,
    pub compressed: usize,
}

impl GzipBlocks {
    /// Compresses changed blocks on up to `threads` threads (at least 1).
    pub fn new(threads: usize) -> GzipBlocks {
        GzipBlocks {
            last: Mutex::default(),
            cut: foldhash::fast::RandomState::default(),
            threads: threads.max(1),
        }
    }

    /// `plain` as one gzip member, reusing the blocks of the last call
    /// whose text did not change. Heavy: call it off the async workers.
    pub fn gzip(&self, plain: &[u8]) -> Vec<u8> {
        self.gzip_counted(plain).0
    }

    /// As [`GzipBlocks::gzip`], and how many blocks it compressed.
    pub fn gzip_counted(&self, plain: &[u8]) -> (Vec<u8>, GzipStats) {
        let texts = self.split(plain);
        // Held while compressing: a concurrent call would only redo the
        // same blocks.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = std::mem::take(&mut *last);
        let mut blocks: Vec<(Bytes, Option<Bytes>)> = texts
            .iter()
            .map(|text| match previous.get_key_value(*text) {
                Some((key, deflated)) => (key.clone(), Some(deflated.clone())),
                None => (Bytes::copy_from_slice(text), None),
            })
            .collect();
        drop(previous);
        let stats = GzipStats {
            blocks: blocks.len(),
            compressed: blocks.iter().filter(|(_, d)| d.is_none()).count(),
        };
        self.deflate_missing(&mut blocks);

        let mut crc = flate2::Crc::new();
        crc.update(plain);
        let deflated_len: usize = blocks
            .iter()
            .map(|(_, d)| d.as_ref().map_or(0, Bytes::len))
            .sum();
        let mut out = Vec::with_capacity(HEADER.len() + deflated_len + FINAL_BLOCK.len() + 8);
        out.extend_from_slice(&HEADER);
        for (text, deflated) in blocks {
            // Every block was deflated above (inline if a thread failed).
            let deflated = deflated.unwrap_or_else(|| deflate(&text));
            out.extend_from_slice(&deflated);
            last.insert(text, deflated);
        }
        out.extend_from_slice(&FINAL_BLOCK);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE: the length modulo 2^32, as gzip defines it.
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        (out, stats)
    }

    /// Cuts `plain` into blocks at line starts chosen by their series.
    fn split<'a>(&self, plain: &'a [u8]) -> Vec<&'a [u8]> {
        let mut blocks = Vec::with_capacity(plain.len() / (16 * 1024) + 1);
        let mut start = 0;
        let mut line_start = 0;
        let mut ends = memchr::memchr_iter(b'\n', plain);
        while line_start < plain.len() {
            let line_end = ends.next().map_or(plain.len(), |end| end + 1);
            let line = &plain[line_start..line_end];
            if line_start > start
                && (line_start - start >= MAX_BLOCK_BYTES
                    || self
                        .cut
                        .hash_one(series(line))
                        .is_multiple_of(LINES_PER_BLOCK))
            {
                blocks.push(&plain[start..line_start]);
                start = line_start;
            }
            line_start = line_end;
        }
        if start < plain.len() {
            blocks.push(&plain[start..]);
        }
        blocks
    }

    /// Deflates the blocks not found in the last exposition, spread over
    /// the threads.
    fn deflate_missing(&self, blocks: &mut [(Bytes, Option<Bytes>)]) {
        let missing: Vec<usize> = (0..blocks.len())
            .filter(|&i| blocks[i].1.is_none())
            .collect();
        let threads = self.threads.min(missing.len() / 2).max(1);
        if threads == 1 {
            for i in missing {
                blocks[i].1 = Some(deflate(&blocks[i].0));
            }
            return;
        }
        let done: Vec<Vec<(usize, Bytes)>> = std::thread::scope(|scope| {
            let texts: &[(Bytes, Option<Bytes>)] = blocks;
            let missing = &missing;
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        missing
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .map(|&i| (i, deflate(&texts[i].0)))
                            .collect()
                    })
                })
                .collect();
            // A thread that panicked leaves its blocks to the caller.
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (i, deflated) in done.into_iter().flatten() {
            blocks[i].1 = Some(deflated);
        }
    }
}

/// A line's series: all but its value (after the last space); a comment
/// line whole.
fn series(line: &[u8]) -> &[u8] {
    if line.first() == Some(&b'#') {
        return line;
    }
    match memchr::memrchr(b' ', line) {
        Some(space) => &line[..space],
        None => line,
    }
}

/// `text` as raw deflate (fast level) ending in a sync flush: byte-aligned
/// and not final, so another block can follow it.
fn deflate(text: &[u8]) -> Bytes {
    let mut encoder = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(text.len() / 6 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text);
    let _ = encoder.flush();
    // Taken before the encoder is dropped: its final block goes into the
    // emptied Vec and is discarded.
    Bytes::from(std::mem::take(encoder.get_mut()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Read as _;

    use super::*;

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn exposition(tenants: usize, bump: usize) -> String {
        let mut text = String::from("# HELP q Queries.\n# TYPE q counter\n");
        for t in 0..tenants {
            let value = if t == bump { 1000 + t } else { t };
            text.push_str(&format!(
                "q_total{{tenant=\"t{t}\",kind=\"read\"}} {value}\n"
            ));
        }
        text.push_str("# EOF\n");
        text
    }

    #[test]
    fn blocks_make_one_gzip_member_and_only_changed_ones_are_compressed_again() {
        let blocks = GzipBlocks::new(2);
        let first = exposition(20_000, usize::MAX);
        let (gz, stats) = blocks.gzip_counted(first.as_bytes());
        assert_eq!(gunzip(&gz), first.as_bytes());
        assert!(stats.blocks > 10, "{stats:?}");
        assert_eq!(stats.compressed, stats.blocks);
        // About as small as one stream of the same text.
        let one_stream = crate::metrics::gzip_one_stream(first.as_bytes()).len();
        assert!(
            gz.len() * 10 < one_stream * 11,
            "{} against {one_stream}",
            gz.len()
        );

        // One value changes: one block (two when it sits on a cut) again.
        let second = exposition(20_000, 7_777);
        let (gz, stats) = blocks.gzip_counted(second.as_bytes());
        assert_eq!(gunzip(&gz), second.as_bytes());
        assert!(stats.compressed <= 2, "{stats:?}");

        // Unchanged: nothing compressed; a tenant more: a block or two.
        let (gz, stats) = blocks.gzip_counted(second.as_bytes());
        assert_eq!(gunzip(&gz), second.as_bytes());
        assert_eq!(stats.compressed, 0);
        let third = exposition(20_001, 7_777);
        let (gz, stats) = blocks.gzip_counted(third.as_bytes());
        assert_eq!(gunzip(&gz), third.as_bytes());
        assert!(stats.compressed <= 2, "{stats:?}");
    }

    #[test]
    fn empty_tiny_and_unterminated_texts_round_trip() {
        let blocks = GzipBlocks::new(1);
        for text in [&b""[..], b"x", b"a b\n", b"no newline at the end"] {
            assert_eq!(gunzip(&blocks.gzip(text)), text);
        }
        // A text with no cut the hash would choose still splits at the cap.
        let long = vec![b'a'; 3 * MAX_BLOCK_BYTES];
        let (gz, stats) = blocks.gzip_counted(&long);
        assert_eq!(gunzip(&gz), long);
        assert_eq!(stats.blocks, 1, "one line cannot be cut");
    }
}
