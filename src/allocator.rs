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

use libmimalloc_sys::{mi_option_get, mi_option_set_default, mi_option_t};

/// `mi_option_purge_delay` in `mimalloc.h`; the bindings do not name it, so
/// the test below checks the number against the variable mimalloc reads.
const PURGE_DELAY: mi_option_t = 15;

/// Has mimalloc return freed pages to the OS at once, unless the operator
/// set a delay in the environment (`MIMALLOC_PURGE_DELAY`, any case, or its
/// older name `MIMALLOC_RESET_DELAY`), which mimalloc read at start and which
/// stands. Returns the delay now in force, in milliseconds.
///
/// # Safety
///
/// mimalloc's options are plain memory that allocating threads read without
/// synchronisation: call this before the process starts any thread that
/// allocates through mimalloc.
pub unsafe fn return_freed_memory_promptly() -> c_long {
    // SAFETY: the index is in range (see PURGE_DELAY), and the caller
    // guarantees no other thread reads the option meanwhile.
    unsafe {
        mi_option_set_default(PURGE_DELAY, 0);
        mi_option_get(PURGE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the children these tests start: the delay the child must read.
    const EXPECT: &str = "RBMF_ALLOCATOR_TEST_EXPECT";
    const TEST: &str = "allocator::tests::child";

    /// Runs [`child`] in a process of its own, with `delay` as the
    /// operator's `MIMALLOC_PURGE_DELAY` (or none), expecting `expect`.
    fn run_child(delay: Option<&str>, expect: c_long) {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", TEST, "--test-threads=1"])
            .env(EXPECT, expect.to_string())
            .env_remove("MIMALLOC_PURGE_DELAY")
            .env_remove("MIMALLOC_RESET_DELAY");
        if let Some(delay) = delay {
            cmd.env("MIMALLOC_PURGE_DELAY", delay);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The child's side; does nothing when run by the harness itself.
    #[test]
    fn child() {
        let Some(expect) = std::env::var_os(EXPECT) else {
            return;
        };
        // SAFETY: mimalloc is not this test binary's allocator, so no other
        // thread reads its options.
        let got = unsafe { return_freed_memory_promptly() };
        assert_eq!(got.to_string(), expect.to_string_lossy());
    }

    /// Without the operator's choice the delay becomes 0, not mimalloc's
    /// 1,000 ms.
    #[test]
    fn without_a_choice_freed_pages_go_back_at_once() {
        run_child(None, 0);
    }

    /// The operator's choice stands, and is read at the index set: a wrong
    /// `PURGE_DELAY` reads another option's value.
    #[test]
    fn the_option_is_the_purge_delay_and_an_operators_choice_stands() {
        run_child(Some("1234"), 1234);
    }
}
