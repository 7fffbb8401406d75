//! Reading Curator's LeaderLatch znodes: pure functions, no I/O.
//! (Stub: filled in by the discovery work.)
