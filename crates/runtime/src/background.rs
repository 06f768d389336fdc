//! CPU-heavy work that must not hold up requests (admitting a model version: hashing, building,
//! a probe batch) on a thread of its own at a lower scheduling priority, so on a loaded machine
//! the inference threads and async workers get the cores first and a roll-out shows in their
//! latency as little as it can.

/// How much lower: nice 10 (of 19), below every request-serving thread.
#[cfg(target_os = "linux")]
const NICENESS: libc::c_int = 10;

/// Runs `work` on a new thread named `name` at background priority and waits for its result;
/// a panic in it is an `Err` with the panic's message.
pub async fn run_in_background<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_threads_priority();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = reply.send(result.map_err(crate::panic_message));
        })
        .map_err(|e| format!("cannot start a {name} thread: {e}"))?;
    answer
        .await
        .map_err(|_| format!("the {name} thread ended without an answer"))?
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; on Linux a thread id names
    // the calling thread alone, so no other thread's priority changes.
    let changed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS)
    };
    if changed != 0 {
        tracing::debug!("could not lower a background thread's priority; it runs at the default");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_lowered_and_a_panic_is_an_error() {
        let niceness = run_in_background("test-work", || {
            // SAFETY (test): getpriority reads the calling thread's niceness.
            #[allow(unsafe_code)]
            let tid = unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t };
            #[allow(unsafe_code)]
            unsafe {
                libc::getpriority(libc::PRIO_PROCESS, tid)
            }
        })
        .await
        .unwrap();
        assert_eq!(niceness, NICENESS);
        let panicked = run_in_background("test-panic", || -> u32 { panic!("boom") }).await;
        assert!(panicked.unwrap_err().contains("boom"));
    }
}
