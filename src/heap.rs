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
