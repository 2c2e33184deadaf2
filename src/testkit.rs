//! Fake backends for tests and benches; never used by `serve`.
