//! Unit tests for the balancing algorithms.
