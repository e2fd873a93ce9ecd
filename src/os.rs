//! Operating-system calls that neither `std` nor our dependencies wrap. Fenced here (one of the few modules allowed
//! `unsafe`, see CONVENTIONS.md) so each call's safety argument sits next to it.

/// Sets the calling thread's nice value (-20..=19). On Linux `setpriority(PRIO_PROCESS, tid)` applies to that one
/// thread, not the process. Lowering it below the current value needs CAP_SYS_NICE.
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: `gettid` has no preconditions and cannot fail; `setpriority` only reads its three integer arguments
    // and reports failure through its return value and errno, which we read at once.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_nice_value_of_a_thread_leaves_the_others_alone() {
        std::thread::spawn(|| {
            set_thread_nice(5).unwrap();
            // SAFETY: as above.
            let mine = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            assert_eq!(mine, 5);
        })
        .join()
        .unwrap();
        // SAFETY: as above (on Linux, `who` = 0 is the calling thread).
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(here, 0, "the other thread's nice value did not leak to this one");
    }
}
