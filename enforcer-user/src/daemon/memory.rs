//! Handing freed heap back to the kernel. glibc's allocator keeps what a
//! burst freed (start-up's parse of the kernel object, a load's buffers)
//! mapped in its arenas; an idle daemon would otherwise hold its peak.

use std::{future::Future, time::Duration};

/// One allocator arena for every thread (glibc makes up to eight per
/// core): freed memory is then in one heap that [`trim`] can shrink,
/// not spread over per-thread heaps whose tops it cannot. Called before
/// the runtime's threads start; the daemon's threads are few and its
/// hot paths allocate little, so one arena's lock costs little.
pub fn one_arena() {
    #[cfg(target_env = "gnu")]
    // glibc accepts any positive count; were it refused, the daemon would
    // run with glibc's default arenas.
    let _ = set_allocator_option(libc::M_ARENA_MAX, 1);
}

/// glibc's `mallopt(3)` (nix has no allocator calls): `false` when glibc
/// refuses the value.
#[cfg(target_env = "gnu")]
fn set_allocator_option(parameter: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: mallopt takes two plain integers and changes only the
    // allocator's own parameters, under its own lock.
    unsafe { libc::mallopt(parameter, value) == 1 }
}

/// How often freed heap is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns the allocator's free pages to the kernel; how many bytes of
/// resident heap that released is not reported (glibc does not say).
pub fn trim() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes a plain integer (bytes to keep at the
        // top of the heap) and only rearranges the allocator's own free
        // lists under its locks.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Trims every [`TRIM_EVERY`] until `shutdown`.
pub async fn trim_periodically(shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => trim(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_env = "gnu")]
    fn an_allocator_value_out_of_range_is_refused() {
        // glibc caps the fastbin size at 80 * sizeof(size_t) / 4 bytes.
        assert!(!set_allocator_option(libc::M_MXFAST, i32::MAX));
        // M_ARENA_MAX takes any positive count.
        assert!(set_allocator_option(libc::M_ARENA_MAX, 8));
    }

    #[test]
    fn trimming_keeps_live_allocations_intact() {
        let live: Vec<Vec<u8>> = (0..64).map(|index| vec![index as u8; 64 * 1024]).collect();
        let freed: Vec<Vec<u8>> = (0..256).map(|_| vec![7u8; 64 * 1024]).collect();
        drop(freed);
        trim();
        for (index, block) in live.iter().enumerate() {
            assert!(block.iter().all(|byte| *byte == index as u8));
        }
    }
}
