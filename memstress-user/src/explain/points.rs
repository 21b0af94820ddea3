//! The OOM killer's badness points, computed exactly as `oom_badness()` (mm/oom_kill.c) does:
//!
//! ```text
//! points = get_mm_rss(mm) + get_mm_counter(mm, MM_SWAPENTS) + mm_pgtables_bytes(mm) / PAGE_SIZE
//! adj   *= totalpages / 1000          (integer division first, then the multiplication)
//! points += adj
//! ```
//!
//! and `totalpages`, which scales `oom_score_adj`: for a memcg OOM, `mem_cgroup_get_max()` of
//! the domain (its limit, plus the swap it may use when swap exists); for a global OOM,
//! `totalram_pages() + total_swap_pages`. `/proc/PID/oom_score` always uses the global
//! figure, which is why it does not rank a memcg OOM.

use crate::{explain::record::RawCounters, target::cgroup::Version};

/// `oom_badness()` for a task whose counters are `raw` (pages; page tables in bytes).
pub fn badness(raw: RawCounters, oom_score_adj: i16, totalpages: u64, page: u64) -> i64 {
    // Saturating throughout: the counters come from a ring-buffer record, and a corrupt one
    // must give a nonsense figure, not wrap or panic.
    let base = raw
        .rss_pages
        .saturating_add(raw.swap_pages)
        .saturating_add(raw.pgtables_bytes / page.max(1));
    i64::try_from(base)
        .unwrap_or(i64::MAX)
        .saturating_add(adj_points(oom_score_adj, totalpages))
}

/// What `oom_score_adj` adds to the points: `adj * (totalpages / 1000)`.
pub fn adj_points(oom_score_adj: i16, totalpages: u64) -> i64 {
    i64::from(oom_score_adj).saturating_mul((totalpages / 1000) as i64)
}

/// `totalpages` for a memcg OOM: `mem_cgroup_get_max()` of the domain.
///
/// `max_pages` is its `memory.max`; `swap_max_pages` its v2 `swap.max` or v1 `memsw.max`;
/// `swap_total_pages` the node's swap (`total_swap_pages`). The kernel adds swap only when
/// the memcg's swappiness is not 0; with no swap on the node the result is `max_pages`.
pub fn totalpages_memcg(
    version: Version,
    max_pages: u64,
    swap_max_pages: u64,
    swap_total_pages: u64,
    swappiness: u64,
) -> u64 {
    if swappiness == 0 || swap_total_pages == 0 {
        return max_pages;
    }
    let swap = match version {
        // memsw.max bounds memory + swap: the swap part is what exceeds memory.max.
        Version::V1 => swap_max_pages.saturating_sub(max_pages),
        Version::V2 => swap_max_pages,
    };
    max_pages.saturating_add(swap.min(swap_total_pages))
}

/// `totalpages` for a global OOM: RAM plus swap, in pages.
pub fn totalpages_global(mem_total_pages: u64, swap_total_pages: u64) -> u64 {
    mem_total_pages.saturating_add(swap_total_pages)
}

/// MemTotal and SwapTotal from /proc/meminfo, in pages (`totalram_pages()` and
/// `total_swap_pages`).
pub fn node_pages(page: u64) -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let pages = |k: u64| k * 1024 / page.max(1);
    (pages(kib("MemTotal:")), pages(kib("SwapTotal:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PLATFORM.md recorded, from `fexit:oom_badness` on Debian's 6.12 under qemu: a
    /// memcg with `memory.max` 64 MiB has totalpages 16384, and an oom_score_adj 500 task
    /// holding 20 MiB scored 13280. 20 MiB is 5120 pages; 500 × (16384 / 1000) = 8000; the
    /// remaining 160 pages are its other RSS and page tables.
    #[test]
    fn matches_the_kernels_recorded_points() {
        let totalpages = totalpages_memcg(Version::V2, 16_384, u64::MAX / 4096, 0, 60);
        assert_eq!(totalpages, 16_384);
        assert_eq!(adj_points(500, totalpages), 8_000);
        let raw = RawCounters {
            rss_pages: 5_120 + 152,
            swap_pages: 0,
            pgtables_bytes: 8 * 4096,
        };
        assert_eq!(badness(raw, 500, totalpages, 4096), 13_280);
    }

    /// The integer division comes first: with totalpages 1999, adj 1000 adds 1000, not 1999.
    #[test]
    fn divides_before_multiplying() {
        assert_eq!(adj_points(1000, 1_999), 1_000);
        assert_eq!(adj_points(-997, 262_144), -997 * 262);
        assert_eq!(adj_points(0, 262_144), 0);
    }

    #[test]
    fn adds_swap_the_kernel_way() {
        // No swap on the node: the limit alone.
        assert_eq!(totalpages_memcg(Version::V1, 1_000, 5_000, 0, 60), 1_000);
        // v1: memsw.max 1500 over memory.max 1000 allows 500 pages of swap.
        assert_eq!(
            totalpages_memcg(Version::V1, 1_000, 1_500, 10_000, 60),
            1_500
        );
        // v2: swap.max 300, node swap 200: min(300, 200).
        assert_eq!(totalpages_memcg(Version::V2, 1_000, 300, 200, 60), 1_200);
        // swappiness 0: swap does not count.
        assert_eq!(totalpages_memcg(Version::V2, 1_000, 300, 200, 0), 1_000);
        assert_eq!(totalpages_global(6_000_000, 0), 6_000_000);
    }
}
