use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    release_large_buffers_at_once();
    kappa_runtime::host::<kappa_predictor::Predictor>().await
}

/// glibc serves an allocation from its heap rather than its own mapping once a freed mapping
/// of that size has been seen (its threshold slides up to 32 MiB), and a heap keeps what was
/// freed. librdkafka's fetch buffers (up to 16 MiB each while the models topic is read) then
/// stay resident long after the model is loaded: 32-49 MiB with a 2 MiB model against 16 MiB
/// with the threshold pinned. Pinned at glibc's own default, large buffers go back to the
/// system when freed; serving allocates nothing that large.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_large_buffers_at_once() {
    // SAFETY: mallopt only sets an allocator parameter, under the allocator's own lock.
    let pinned = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    if pinned != 1 {
        eprintln!("kappa-predictor: could not pin malloc's mmap threshold; large buffers may stay resident");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_large_buffers_at_once() {}
