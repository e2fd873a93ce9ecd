//! Operating-system calls that neither `std` nor our dependencies wrap. Fenced here (one of the few modules allowed
//! `unsafe`) so each call's safety argument sits next to it.

/// Sets the calling thread's nice value (-20..=19). On Linux `setpriority(PRIO_PROCESS, tid)` applies to that one
/// thread, not the process. Lowering it below the current value needs CAP_SYS_NICE.
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: `gettid` has no preconditions and cannot fail; `setpriority` only reads its three integer arguments
    // and reports failure through its return value and errno, which we read at once.
    result(unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) })
}

/// Puts the calling thread in the SCHED_FIFO real-time class at `priority` (1..=99): it then runs ahead of every
/// normal thread on its CPU until it blocks or sleeps. On Linux `sched_setscheduler(0, ..)` applies to the calling
/// thread only. Needs CAP_SYS_NICE (or an RLIMIT_RTPRIO allowance).
pub fn set_thread_fifo(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives the call, which only reads it; failure
    // is reported through the return value and errno, read at once.
    result(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) })
}

/// Sets TCP_DEFER_ACCEPT on a listening socket: the kernel completes a connection's handshake but hands it to
/// `accept` only once the client has sent data (or after about `secs` seconds of SYN-ACK retransmissions, when a
/// bare ACK completes it anyway). A TLS client speaks first, so the accept and the ClientHello arrive together.
pub fn set_tcp_defer_accept(socket: &impl std::os::fd::AsRawFd, secs: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is borrowed from a live socket for the duration of the call; the option value points at a
    // local `c_int` whose size is passed alongside, and the kernel only reads it.
    result(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// A libc return code (0 = success, -1 = failure with errno set) as a `Result`; errno is read at once.
fn result(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Where and how the calling thread runs: pinned to `core`, at nice value `nice` (0 = unchanged) and, when
/// `fifo_priority` > 0, in SCHED_FIFO at that priority. Every step that fails is logged as a warning naming
/// `thread` and the thread runs on as it was: placement is an optimisation, never a reason to stop.
pub fn place_current_thread(thread: &str, core: Option<core_affinity::CoreId>, nice: i32, fifo_priority: i32) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            log::warn!("{thread}: could not pin to core {}", core.id);
        }
    }
    if nice != 0 {
        match set_thread_nice(nice) {
            Ok(()) => log::info!("{thread}: nice {nice}"),
            Err(e) => log::warn!("{thread}: cannot set nice {nice} (needs CAP_SYS_NICE below 0): {e}"),
        }
    }
    if fifo_priority > 0 {
        match set_thread_fifo(fifo_priority) {
            Ok(()) => log::info!("{thread}: real-time priority {fifo_priority} (SCHED_FIFO)"),
            Err(e) => log::warn!("{thread}: cannot set real-time priority {fifo_priority} (needs CAP_SYS_NICE): {e}"),
        }
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

    #[test]
    fn fifo_applies_to_the_calling_thread_or_fails_with_a_permission_error() {
        let result = std::thread::spawn(|| {
            let r = set_thread_fifo(1);
            // SAFETY: `sched_getscheduler(0)` reads the calling thread's policy; no pointers.
            (r, unsafe { libc::sched_getscheduler(0) })
        })
        .join()
        .unwrap();
        match result {
            (Ok(()), policy) => assert_eq!(policy, libc::SCHED_FIFO),
            (Err(e), policy) => {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                assert_eq!(policy, libc::SCHED_OTHER);
            }
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER, "this thread is untouched");
        assert!(set_thread_fifo(100).is_err(), "priorities stop at 99");
    }

    #[test]
    fn deferred_accept_waits_for_the_first_bytes() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_defer_accept(&listener, 5).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "nothing sent yet");
        client.write_all(b"hello").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match listener.accept() {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("not accepted after the first bytes: {e}"),
            }
        }
    }
}
