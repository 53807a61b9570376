//! The gzip form of `/metrics`: one gzip member whose deflate data is
//! compressed in parts on as many threads as there are cores to spare, the
//! way `pigz` does.
//!
//! Compression is about two thirds of a gzip'd scrape (docs/performance.md),
//! and a scrape has one exposition to compress: split in parts at line ends,
//! each part is raw deflate at the fast level, all but the last ended with a
//! full flush (byte-aligned, not final), so the parts concatenated are one
//! valid deflate stream; the CRC-32s of the parts combine into the member's.
//! A part starts with an empty dictionary, which costs a few hundred bytes
//! of output per part of megabytes; the instructions are the same as one
//! stream's. Small expositions stay one part: a thread costs more than it
//! saves below [`PART_MIN_BYTES`].

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The least plain text worth a part of its own (and a thread).
pub const PART_MIN_BYTES: usize = 1 << 20;

/// At most this many parts, whatever the cores (the calling thread
/// compresses one of them): the scrape shares the machine with ingest, and
/// past a few parts a thread's start-up and the caches it misses eat what
/// it saves.
const MAX_PARTS: usize = 4;

/// gzip's header: deflate, no name, time or flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// `plain` gzipped at the fast level, in as many parts as the cores
/// (at most [`MAX_PARTS`], each at least [`PART_MIN_BYTES`]).
pub fn gzip(plain: &[u8]) -> Vec<u8> {
    // Read once: on Linux the standard library reads the cgroup's CPU
    // quota from files each time it is asked, and a scrape need not.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let parts = (plain.len() / PART_MIN_BYTES).clamp(1, cores.min(MAX_PARTS));
    gzip_in_parts(plain, parts)
}

/// `plain` gzipped as one member of `parts` deflate parts (fewer when
/// `plain` has fewer lines), compressed on that many threads.
pub fn gzip_in_parts(plain: &[u8], parts: usize) -> Vec<u8> {
    let pieces = split_at_lines(plain, parts.max(1));
    let last = pieces.len() - 1;
    let compressed: Vec<(Vec<u8>, Crc)> = if pieces.len() == 1 {
        vec![deflate_part(pieces[0], true)]
    } else {
        std::thread::scope(|scope| {
            // A part whose thread the system refuses is compressed here.
            let parts: Vec<Result<_, (Vec<u8>, Crc)>> = pieces[1..]
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    let last = i + 1 == last;
                    std::thread::Builder::new()
                        .name("metrics-gzip".into())
                        .spawn_scoped(scope, move || deflate_part(piece, last))
                        .map_err(|_| deflate_part(piece, last))
                })
                .collect();
            let mut all = vec![deflate_part(pieces[0], false)];
            for part in parts {
                all.push(match part {
                    // A part's thread only compresses into memory; should
                    // it panic all the same, the scrape fails as a panic
                    // would have on one thread.
                    Ok(handle) => handle
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e)),
                    Err(done_here) => done_here,
                });
            }
            all
        })
    };
    let mut crc = Crc::new();
    let size: usize = compressed.iter().map(|(data, _)| data.len()).sum();
    let mut out = Vec::with_capacity(HEADER.len() + size + 8);
    out.extend_from_slice(&HEADER);
    for (data, part_crc) in &compressed {
        out.extend_from_slice(data);
        crc.combine(part_crc);
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out
}

/// `plain` cut into at most `parts` pieces of about equal length, each
/// ending at a line end (the last at the end of `plain`).
fn split_at_lines(plain: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(parts);
    let mut rest = plain;
    for left in (2..=parts).rev() {
        let target = rest.len() / left;
        let Some(newline) = rest[target..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let (piece, after) = rest.split_at(target + newline + 1);
        if piece.is_empty() || after.is_empty() {
            break;
        }
        pieces.push(piece);
        rest = after;
    }
    pieces.push(rest);
    pieces
}

/// One part as raw deflate and its CRC-32: ended with the final block when
/// `last`, otherwise with a full flush (byte-aligned, the next part free to
/// start a fresh block with a fresh dictionary).
fn deflate_part(piece: &[u8], last: bool) -> (Vec<u8>, Crc) {
    let mut crc = Crc::new();
    crc.update(piece);
    let mut compress = Compress::new(Compression::fast(), false);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Full
    };
    // Text exposition compresses about tenfold; the output grows if not.
    let mut out = Vec::with_capacity(piece.len() / 8 + 1024);
    loop {
        let consumed = compress.total_in() as usize;
        // miniz_oxide errs only on bad parameters or a failing output
        // callback, neither of which a Vec with room can cause.
        let status = compress
            .compress_vec(&piece[consumed..], &mut out, flush)
            .expect("deflating into a Vec with room to spare does not fail");
        let done = match status {
            Status::StreamEnd => true,
            // A flush is complete once it returns with output room to spare.
            _ => !last && compress.total_in() as usize == piece.len() && out.len() < out.capacity(),
        };
        if done {
            return (out, crc);
        }
        out.reserve(out.capacity().max(4096));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read as _;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut plain)
            .expect("valid gzip");
        plain
    }

    fn exposition(lines: usize) -> Vec<u8> {
        let mut text = String::new();
        for i in 0..lines {
            text.push_str(&format!(
                "tenantwatch_tenant_queries_total{{tenant=\"t{}\",kind=\"read\"}} {}\n",
                i % 997,
                i * 7919 % 10007
            ));
        }
        text.push_str("# EOF\n");
        text.into_bytes()
    }

    #[test]
    fn parts_are_one_gzip_member_that_any_gunzip_reads_back() {
        let plain = exposition(60_000);
        for parts in [1, 2, 3, 4] {
            let gz = gzip_in_parts(&plain, parts);
            assert_eq!(gunzip(&gz), plain, "{parts} parts");
            // GNU gzip is a second, independent reader (and checks the
            // CRC and length of the trailer).
            let mut child = std::process::Command::new("gzip")
                .args(["-dc"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("gzip(1) is needed by this test: apt-get install gzip");
            let mut stdin = child.stdin.take().unwrap();
            let input = gz.clone();
            let writer = std::thread::spawn(move || {
                use std::io::Write as _;
                stdin.write_all(&input).unwrap();
            });
            let output = child.wait_with_output().unwrap();
            writer.join().unwrap();
            assert!(output.status.success(), "gzip -dc failed on {parts} parts");
            assert_eq!(output.stdout, plain, "gzip -dc of {parts} parts");
        }
    }

    #[test]
    fn parts_cost_a_few_hundred_bytes_each() {
        let plain = exposition(200_000);
        let one = gzip_in_parts(&plain, 1).len();
        let four = gzip_in_parts(&plain, 4).len();
        assert!(four <= one + 4 * 4096, "{one} in one part, {four} in four");
    }

    #[test]
    fn the_daemons_gzip_uses_parts_only_past_a_megabyte() {
        assert_eq!(split_at_lines(&exposition(10), 4).len(), 4);
        let small = exposition(1_000);
        assert!(small.len() < PART_MIN_BYTES);
        assert_eq!(gzip(&small), gzip_in_parts(&small, 1));
        assert_eq!(gunzip(&gzip(&[])), b"");
    }

    proptest! {
        #[test]
        fn any_text_in_any_parts_round_trips(
            plain in proptest::collection::vec(
                prop_oneof![Just(b'\n'), any::<u8>()], 0..4096),
            parts in 1usize..6,
        ) {
            let gz = gzip_in_parts(&plain, parts);
            prop_assert_eq!(gunzip(&gz), plain);
        }

        #[test]
        fn pieces_end_at_line_ends_and_cover_the_text(
            plain in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'a')], 0..512),
            parts in 1usize..6,
        ) {
            let pieces = split_at_lines(&plain, parts);
            prop_assert!(pieces.len() <= parts);
            prop_assert_eq!(pieces.concat(), plain.clone());
            for piece in &pieces[..pieces.len() - 1] {
                prop_assert!(!piece.is_empty() && piece.ends_with(b"\n"));
            }
        }
    }
}
