//! Gives the memory allocator's free pages back to the kernel.
//!
//! glibc's allocator serves threads from up to eight heaps ("arenas") per
//! core and returns a heap's freed pages to the kernel only when they are
//! at its top. A daemon whose passing peaks (a tenant flood, a gzip'd body
//! held by each of fifty slow `/metrics` clients, the state file's text)
//! land on different arenas over hours stays resident at the sum of those
//! peaks though it holds far less: the one-hour soak's RSS rose in steps at
//! such peaks and never came down (docs/reliability.md). `malloc_trim(0)`
//! hands back every whole free page of every arena; the daemon calls it
//! every [`RELEASE_INTERVAL`], off the async workers.
//!
//! Giving pages back frees only whole free pages: a page that holds one
//! live allocation among freed ones stays. The more arenas, the more such
//! half-used pages, spread over more heaps: at startup the daemon caps the
//! arenas at one per core ([`limit_arenas`]), as `MALLOC_ARENA_MAX` would.
//!
//! Large passing buffers (a store snapshot's rows, a gzip'd body, the
//! detector's tables) are the other source of such pages: glibc gives an
//! allocation pages of its own (mmap) above a threshold, but raises the
//! threshold to the size of each such block freed, so that after the first
//! scrape the next ones' buffers come from the heaps, where long-lived
//! allocations made meanwhile pin their pages (the one-hour soak's RSS
//! crept without a fixed threshold and not with it, docs/reliability.md).
//! The daemon fixes the threshold ([`fix_mmap_threshold`]), as
//! `MALLOC_MMAP_THRESHOLD_` would. Each block above it is then mapped,
//! faulted and zeroed afresh, so the largest a scrape needs are kept
//! between scrapes instead: the exposition's buffers
//! (`metrics::SharedExposition`) and its snapshot's rows
//! (`Store::exposition_snapshot`).

use std::time::{Duration, Instant};

/// How often the daemon gives free pages back: often enough that RSS follows
/// what is held within seconds, rarely enough that the walk over the heaps
/// (about a millisecond for 50 MiB) is noise.
pub const RELEASE_INTERVAL: Duration = Duration::from_secs(10);

/// Gives every whole free page of the allocator's heaps back to the kernel
/// and says how long that took and whether any page went back. Does nothing
/// where the allocator is not glibc's (musl's and others return memory on
/// their own).
pub fn release_free_pages() -> (Duration, bool) {
    let started = Instant::now();
    let released = trim();
    (started.elapsed(), released)
}

/// Caps glibc's arenas at [`arena_limit`] of the cores, unless the
/// environment sets the cap (`MALLOC_ARENA_MAX`). Call it before any thread
/// but the main one starts. Returns the cap set, if any.
///
/// glibc gives each new thread an arena of its own, up to eight per core
/// (threads share them only past that); each keeps its own heap, and
/// memory freed in one cannot serve another. In the soak (issue 26) and a tenant-flood test beside it, the
/// daemon's anonymous memory rose in steps of megabytes at passing peaks
/// and stayed, though what it held did not grow (a heap profile after 2
/// and after 14 floods held the same 6.4 MB): over 13 floods a default
/// daemon held a median of 14.8 MiB, the same build with two arenas 7.6.
pub fn limit_arenas() -> Option<usize> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = arena_limit(cores);
    set_arena_max(limit).then_some(limit)
}

/// Allocations of this size or more get pages of their own, given back to
/// the kernel when freed: above the largest per-tenant structure, below
/// an exposition of a few hundred tenants.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`], unless the
/// environment sets it (`MALLOC_MMAP_THRESHOLD_`); a fixed threshold is no
/// longer raised as large blocks are freed. Returns the threshold set, if
/// any.
pub fn fix_mmap_threshold() -> Option<usize> {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return None;
    }
    set_mmap_threshold(MMAP_THRESHOLD).then_some(MMAP_THRESHOLD)
}

/// One arena per core, and at least two: a thread allocating while another
/// holds the only arena's lock would wait for it.
pub fn arena_limit(cores: usize) -> usize {
    cores.max(2)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(limit: usize) -> bool {
    // M_ARENA_MAX only caps arenas created from now on.
    mallopt(libc::M_ARENA_MAX, limit)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_limit: usize) -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_mmap_threshold(bytes: usize) -> bool {
    // M_MMAP_THRESHOLD applies to allocations made from now on.
    mallopt(libc::M_MMAP_THRESHOLD, bytes)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: usize) -> bool {
    false
}

/// Sets one of glibc's malloc options; `value` past `c_int` is clamped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn mallopt(option: libc::c_int, value: usize) -> bool {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes two integers and no pointer.
    unsafe { libc::mallopt(option, value) == 1 }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc
    // locks each arena while it walks it, so it is safe beside allocating
    // threads (they wait for that arena's walk).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arenas glibc has made so far, from `malloc_info`'s report (one
    /// `<heap nr=...>` element per arena).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    fn arenas() -> usize {
        let mut buffer: *mut libc::c_char = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: open_memstream writes the buffer's address and size into
        // the two locals; malloc_info writes to the stream; once it is
        // closed the buffer holds `size` bytes, which are copied out before
        // the buffer is freed.
        let report = unsafe {
            let stream = libc::open_memstream(&mut buffer, &mut size);
            assert!(!stream.is_null(), "open_memstream failed");
            libc::malloc_info(0, stream);
            libc::fclose(stream);
            let bytes = std::slice::from_raw_parts(buffer.cast::<u8>(), size).to_vec();
            libc::free(buffer.cast());
            bytes
        };
        String::from_utf8_lossy(&report)
            .matches("<heap nr=")
            .count()
    }

    #[test]
    fn one_arena_per_core_and_at_least_two() {
        assert_eq!(arena_limit(1), 2);
        assert_eq!(arena_limit(2), 2);
        assert_eq!(arena_limit(16), 16);
    }

    /// Runs the test `name` again in a process of its own (the test binary,
    /// this test alone), with `CHILD` set; the allocator's settings and
    /// history are the process's, and other tests' threads have made and
    /// used arenas of their own. Returns whether this is the child.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn in_a_process_of_its_own(name: &str) -> bool {
        const CHILD: &str = "TENANTWATCH_HEAP_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--test-threads", "1", "--nocapture"])
            .env(CHILD, "1")
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .output()
            .expect("the test binary runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "the child ran no test: {text}");
        false
    }

    /// Sixteen threads more than the cap allocating at once, after the
    /// cap: glibc makes no more arenas than it allows (without it, one per
    /// thread up to eight per core).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn busy_threads_share_the_capped_arenas() {
        if !in_a_process_of_its_own("heap::tests::busy_threads_share_the_capped_arenas") {
            return;
        }
        let limit = limit_arenas().expect("the cap is set");
        let threads = limit + 16;
        let barrier = std::sync::Barrier::new(threads);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    // Each thread allocates while all the others do.
                    barrier.wait();
                    let held: Vec<Vec<u8>> = (0..2000).map(|i| vec![1u8; 64 + i % 512]).collect();
                    barrier.wait();
                    drop(held);
                });
            }
        });
        let made = arenas();
        // Two at least: the main thread's and the test's (a report that
        // could not be read would count none).
        assert!(made >= 2, "malloc_info reported {made} arenas");
        assert!(made <= limit, "{made} arenas with a cap of {limit}");
    }

    /// A large block freed does not move large blocks after it into the
    /// heaps: the next one, half its size, still gets pages of its own,
    /// counted in `mallinfo2`'s `hblkhd` (glibc's dynamic threshold, left
    /// alone, would have risen to the freed block's size).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[allow(unsafe_code)]
    fn a_large_block_freed_leaves_the_next_ones_mapped() {
        if !in_a_process_of_its_own("heap::tests::a_large_block_freed_leaves_the_next_ones_mapped")
        {
            return;
        }
        fn mapped_bytes() -> usize {
            // SAFETY: mallinfo2 takes nothing and returns a plain struct.
            unsafe { libc::mallinfo2() }.hblkhd
        }
        assert_eq!(fix_mmap_threshold(), Some(MMAP_THRESHOLD));
        let big = vec![1u8; 4 * MMAP_THRESHOLD];
        assert!(mapped_bytes() >= big.len(), "the first block is mapped");
        drop(big);
        let before = mapped_bytes();
        let next = vec![1u8; 2 * MMAP_THRESHOLD];
        let after = mapped_bytes();
        assert!(
            after >= before + next.len(),
            "{} bytes mapped for a block of {}",
            after.saturating_sub(before),
            next.len()
        );
    }

    /// Freed memory in the middle of a heap (kept there by a live
    /// allocation above it) leaves the process's RSS once released.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_pages_inside_a_heap_leave_the_resident_set() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS in /proc/self/status")
        }
        // 128 MiB in blocks under glibc's mmap threshold (so inside a heap),
        // each touched; then all but one in 256 go, so that the free ones
        // lie between live ones and no heap's top is free. RSS is the
        // process's, and other tests run beside this one: half of what was
        // freed is asked, in any of three tries.
        let mut tries = Vec::new();
        for _ in 0..3 {
            let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 32 * 1024]).collect();
            let held = rss_kib();
            let mut at = 0;
            blocks.retain(|_| {
                at += 1;
                at % 256 == 0
            });
            assert_eq!(blocks.len(), 16);
            let freed = rss_kib();
            let (_, released) = release_free_pages();
            let after = rss_kib();
            if released && freed.saturating_sub(after) > 64 * 1024 {
                return;
            }
            tries.push(format!(
                "{held} KiB with the blocks, {freed} with most freed, {after} after the \
                 release (released: {released})"
            ));
        }
        panic!("expected at least 64 MiB back; RSS {tries:?}");
    }
}
