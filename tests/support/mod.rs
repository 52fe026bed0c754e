//! Fixtures of one feature area each.
