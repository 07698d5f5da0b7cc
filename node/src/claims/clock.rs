//! The clock of leases: CLOCK_BOOTTIME, which keeps counting while the machine is
//! suspended. Rust's `Instant` is CLOCK_MONOTONIC on Linux, which stops during a suspend:
//! a laptop woken after an hour would believe its lease still had the seconds it had left.

use std::sync::Arc;

/// Milliseconds on a clock that never goes back and counts suspended time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> u64;
}

/// CLOCK_BOOTTIME (Linux); CLOCK_MONOTONIC where there is none.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now_ms(&self) -> u64 {
        boottime_ms()
    }
}

/// The shared clock handle the claims code takes (the simulation passes a virtual one).
pub type SharedClock = Arc<dyn Clock>;

/// The system's boot clock as a [`SharedClock`].
pub fn boot_clock() -> SharedClock {
    Arc::new(BootClock)
}

/// Milliseconds of CLOCK_BOOTTIME.
pub fn boottime_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let id = nix::time::ClockId::CLOCK_BOOTTIME;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let id = nix::time::ClockId::CLOCK_MONOTONIC;
    match nix::time::clock_gettime(id) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1000).saturating_add(ts.tv_nsec() as u64 / 1_000_000),
        // clock_gettime on a clock id the kernel knows cannot fail; fall back to the
        // monotonic clock rather than 0, which would look like time going back.
        Err(_) => monotonic_fallback_ms(),
    }
}

fn monotonic_fallback_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_with_real_time() {
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = boottime_ms();
        assert!(b >= a + 15 && b < a + 2000, "{a} -> {b}");
    }
}
