//! Umbrella package for top-level examples and tests.
