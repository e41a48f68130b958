//! How the process gets its memory from glibc: transparent huge pages for its heap, and large
//! blocks given back to the system when freed.
//!
//! A run's hot loops look things up in tables of hundreds of MB: the engine's hash tables
//! when it groups 100M lines by invoice and by customer, the forest's nodes when it scores
//! 2.4M customers. With 4 KiB pages nearly every such lookup also misses the TLB. Kernels set
//! to give transparent huge pages only where asked (`transparent_hugepage/enabled` =
//! `madvise`: Debian's default and many clouds') never give them to glibc's malloc unless its
//! `glibc.malloc.hugetlb=1` tunable is set, and glibc reads tunables only when a program
//! starts: so segflow, started without it on such a kernel, starts itself again with it
//! ([`restart_with_huge_pages`]), once, before anything else happens.
//!
//! Measured (README, Benchmarks, session 15): the 100M demo pipeline 333.9 and 322.5 s against
//! 354–361 s before, the same peak RSS and the same output bytes; at 10M 29.9–32.2 s against
//! 30.7–32.3 s, within the noise. Our own global allocator advising only blocks of 2 MiB and
//! more gained a third of that (352.1 s): most of the engine's memory is small blocks in
//! glibc's per-thread heaps.
//!
//! `GLIBC_TUNABLES` set with `glibc.malloc.hugetlb` (to 0, say) is left as it is.

/// glibc's tunable that makes malloc ask for transparent huge pages (glibc 2.35 and later;
/// older ones ignore it).
pub const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb";

/// Where Linux says when it gives transparent huge pages: `always [madvise] never`, the
/// bracketed word the mode in force.
pub const THP_MODE_FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The `GLIBC_TUNABLES` value to start again with, given the current one (`None` when unset)
/// and the kernel's THP mode file's text; `None` when starting again would change nothing:
/// the tunable is already there (the user's choice, or this process started again), or the
/// kernel gives huge pages unasked (`always`), never (`never`), or says nothing readable.
pub fn tunables_with_huge_pages(current: Option<&str>, thp_modes: &str) -> Option<String> {
    if current.is_some_and(|tunables| tunables.contains(HUGE_PAGES_TUNABLE)) {
        return None;
    }
    if !thp_modes.split_whitespace().any(|mode| mode == "[madvise]") {
        return None;
    }
    Some(match current.filter(|tunables| !tunables.is_empty()) {
        Some(tunables) => format!("{tunables}:{HUGE_PAGES_TUNABLE}=1"),
        None => format!("{HUGE_PAGES_TUNABLE}=1"),
    })
}

/// Starts this program again, same arguments and process id, with glibc's heap asking for
/// transparent huge pages, when [`tunables_with_huge_pages`] says it changes something.
/// Returns only when it did not start again (nothing to change, or the restart failed: the run
/// goes on as it is). Call it first thing in `main`, before any thread or output.
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let current = std::env::var_os("GLIBC_TUNABLES");
        // A value that is not UTF-8 is not ours to rewrite.
        let current = match current.as_deref().map(|tunables| tunables.to_str()) {
            Some(None) => return,
            Some(Some(tunables)) => Some(tunables),
            None => None,
        };
        let modes = std::fs::read_to_string(THP_MODE_FILE).unwrap_or_default();
        let Some(tunables) = tunables_with_huge_pages(current, &modes) else { return };
        // The binary's own path, not /proc/self/exe, which would make `exe` the process's name
        // in ps and top. Read a millisecond after the start, it is still this binary's.
        let Ok(binary) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let program = args.next().unwrap_or_default();
        let _failed = std::process::Command::new(binary).arg0(program).args(args).env("GLIBC_TUNABLES", tunables).exec();
    }
}

/// Blocks of 1 MiB and more get a memory mapping of their own, given back to the system when
/// freed. glibc's own threshold starts at 128 KiB and rises (to 32 MiB) each time such a block
/// is freed, after which the blocks a forest is grown with (24 MB of nodes and row indices per
/// tree at 1.7M customers) come from the heap and stay resident once freed. Measured on the
/// 10M-line pipeline, alternating: peak RSS 1,105 / 1,112 MiB against 1,318 / 1,331 MiB.
pub fn return_large_blocks_when_freed() {
    // SAFETY: mallopt only sets an allocator parameter, here before any other thread runs.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADVISE: &str = "always [madvise] never\n";

    #[test]
    fn a_kernel_that_gives_huge_pages_only_when_asked_gets_asked() {
        assert_eq!(tunables_with_huge_pages(None, MADVISE).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(tunables_with_huge_pages(Some(""), MADVISE).as_deref(), Some("glibc.malloc.hugetlb=1"));
    }

    #[test]
    fn tunables_the_user_set_are_kept_and_the_huge_pages_one_added() {
        assert_eq!(
            tunables_with_huge_pages(Some("glibc.malloc.check=3:glibc.malloc.arena_max=2"), MADVISE).as_deref(),
            Some("glibc.malloc.check=3:glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
    }

    #[test]
    fn the_tunable_already_set_whatever_its_value_means_no_restart() {
        // Set by the user (0 turns huge pages off), or by the restart itself: no loop.
        assert_eq!(tunables_with_huge_pages(Some("glibc.malloc.hugetlb=0"), MADVISE), None);
        assert_eq!(tunables_with_huge_pages(Some("glibc.malloc.check=3:glibc.malloc.hugetlb=1"), MADVISE), None);
    }

    #[test]
    fn a_kernel_that_gives_huge_pages_always_never_or_says_nothing_means_no_restart() {
        assert_eq!(tunables_with_huge_pages(None, "[always] madvise never\n"), None);
        assert_eq!(tunables_with_huge_pages(None, "always madvise [never]\n"), None);
        assert_eq!(tunables_with_huge_pages(None, ""), None);
    }
}
