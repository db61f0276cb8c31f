//! Ctrl-C, SIGTERM and SIGHUP: the first one sets a flag that every long wait checks (a
//! one-off helper task, a rotation), so the command stops waiting and puts things right —
//! removes its helpers, restores a password, removes a secret it made — before it exits. A
//! second signal of the same kind ends the process at once (exit 1), leaving the recovery
//! steps undone.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers (once; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Order matters: the conditional shutdown sees the flag the first signal set.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(flag()))?;
        signal_hook::flag::register(signal, Arc::clone(flag()))?;
    }
    let _ = INSTALLED.set(());
    Ok(())
}

/// Whether a stop was asked for since the handlers were installed.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Sleeps until `until` in slices of at most `slice`: true once it is reached, false as soon
/// as `stop` says so (checked before each slice).
pub fn sleep_until(until: Instant, stop: &dyn Fn() -> bool, slice: Duration) -> bool {
    loop {
        if stop() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(slice.min(until - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_lasts_its_time_unless_a_stop_comes() {
        let ms = Duration::from_millis;
        let started = Instant::now();
        assert!(sleep_until(started + ms(60), &|| false, ms(5)));
        assert!(started.elapsed() >= ms(60));
        // A stop ends it at the next slice.
        let started = Instant::now();
        let asked = std::cell::Cell::new(0);
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        assert!(!sleep_until(
            started + Duration::from_secs(60),
            &stop,
            ms(5)
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(asked.get(), 3);
        // A time already past, no stop: reached at once.
        assert!(sleep_until(started, &|| false, ms(5)));
    }

    #[test]
    fn a_signal_sets_the_flag_without_ending_the_process() {
        install().unwrap();
        install().unwrap();
        assert!(!requested());
        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
        // Delivered synchronously to this thread by raise(3).
        assert!(requested());
        flag().store(false, Ordering::SeqCst);
    }
}
