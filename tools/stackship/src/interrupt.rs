//! Ctrl-C, SIGTERM and SIGHUP: the first one sets a flag that every long wait checks (a
//! one-off helper task, a rotation), so the command stops waiting and puts things right —
//! removes its helpers, restores a password, removes a secret it made — before it exits. A
//! second signal of the same kind ends the process at once (exit 1), leaving the recovery
//! steps undone.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

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
