//! Backend service entry point.
fn main() {}
