//! config-hasher entry point.
fn main() {}
