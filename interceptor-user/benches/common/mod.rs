//! What the benchmarks share.

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, first field; it
/// includes the kernel's work on the thread's behalf).
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
