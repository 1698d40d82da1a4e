//! How the service's allocator (mimalloc 3, set in `main.rs`) gives memory
//! back.
//!
//! mimalloc 3 keeps the pages it frees for a second (`purge_delay`, 1,000 ms)
//! before it returns them to the OS. Under a deadline stream that falls
//! behind, hundreds of connections come and go within that second, and the
//! pages they freed were still counted in the service's RSS: its peak swung
//! by 40 MB while its work stayed the same (BENCHMARKS.md). Returning them at
//! once keeps the peak near what is in use.

use std::ffi::c_long;

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h`; the bindings do
/// not name it, and mimalloc 2 numbers it differently, hence the exact
/// version in Cargo.toml and the test below.
const PURGE_DELAY: mi_option_t = 15;

/// The variable through which mimalloc reads that option at start.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Has mimalloc return freed pages to the OS at once, unless the operator
/// chose a delay through `MIMALLOC_PURGE_DELAY`. Returns the delay now in
/// force, in milliseconds.
pub fn return_freed_memory_promptly() -> c_long {
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        // SAFETY: sets one value in mimalloc's option table; the index is
        // in range (see PURGE_DELAY), and the call has no other effect.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
    }
    // SAFETY: as above, a read.
    unsafe { mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child this test starts, so that its copy of the test
    /// below reads the option instead of starting another child.
    const CHILD: &str = "RBMF_ALLOCATOR_TEST_CHILD";

    /// Proves that `PURGE_DELAY` is the option mimalloc reads from
    /// `MIMALLOC_PURGE_DELAY`: a process started with that variable set
    /// reads it back at that index, and keeps it.
    #[test]
    fn the_option_is_the_purge_delay_and_an_operators_choice_stands() {
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(return_freed_memory_promptly(), 1234);
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "allocator::tests::the_option_is_the_purge_delay_and_an_operators_choice_stands",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(PURGE_DELAY_VAR, "1234")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Without the variable, the delay becomes 0.
    #[test]
    fn without_a_choice_freed_pages_go_back_at_once() {
        if std::env::var_os(PURGE_DELAY_VAR).is_some() {
            return;
        }
        assert_eq!(return_freed_memory_promptly(), 0);
    }
}
