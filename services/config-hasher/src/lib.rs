//! config-hasher library (work in progress).
