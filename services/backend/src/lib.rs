//! Backend service library (work in progress).
