//! A checkpoint for the kernel's scheduler on a busy worker.
//!
//! Linux's fair scheduler (EEVDF) gives each task a slice (about 1.4 ms on
//! two cores) but notices that a running task has used it up only when it
//! next accounts that task's time: at the timer tick (every 4 ms with the
//! common `HZ=250`), or when the task enters the kernel on a path that
//! accounts it. A worker that stays busy, serving one ready connection
//! after another without ever sleeping, is then let run up to a tick past
//! its slice, and every other task waiting on that core (a client, Livy
//! itself beside a sidecar, the proxy's own peers) waits that long: on this
//! project's benchmark, unpinned, clients waited up to 4.9 ms behind
//! livy-proxy against 1.4 ms behind HAProxy, whose event loop reads its
//! thread's CPU clock (docs/benchmarks.md, "The scheduler's checkpoint").
//!
//! Reading the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`, a system call
//! even through the vDSO) makes the kernel account the running task, and
//! so preempt it at once if its slice is over. [`checkpoint`] does that
//! once every [`EVERY`] calls on a thread, so its cost is a fraction of a
//! system call per request or buffer relayed; it changes nothing for a
//! task whose slice has time left.

use std::cell::Cell;

/// Calls between two reads of the thread's CPU clock: at tens of
/// thousands of requests per second on one worker, a check about every
/// 100–300 µs, well inside a slice.
pub const EVERY: u32 = 16;

thread_local! {
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

/// Counts one unit of work (a request sent to Livy, a buffer relayed) on
/// this thread and, every [`EVERY`] calls, lets the scheduler account the
/// thread so that a used-up slice ends here rather than at the next tick.
#[inline]
pub fn checkpoint() {
    let due = CALLS.with(|calls| {
        let n = calls.get().wrapping_add(1);
        calls.set(if n >= EVERY { 0 } else { n });
        n >= EVERY
    });
    if due {
        account_now();
    }
}

#[cold]
fn account_now() {
    // The value is not needed: reading it is what makes the kernel update
    // the running task's accounting (task_sched_runtime).
    // Through the C library, whose vDSO lookup runs under valgrind as well:
    // rustix's own faults there, which stopped callgrind, the tool the
    // instruction counts in docs/benchmarks.md are made with.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which
    // lives on this stack frame for the whole call.
    let _ = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_read_once_every_so_many_calls() {
        CALLS.with(|c| c.set(0));
        for _ in 0..EVERY - 1 {
            checkpoint();
        }
        assert_eq!(CALLS.with(Cell::get), EVERY - 1);
        checkpoint();
        assert_eq!(
            CALLS.with(Cell::get),
            0,
            "the EVERY-th call reads the clock and starts over"
        );
    }
}
