//! zongheng-check: judging what clients saw.
//!
//! A test (simulated or against real processes) records a [`history`]: every
//! operation a client invoked, when, and what came back. The checkers here
//! decide whether some order of those operations, consistent with real time
//! and with a sequential model of the store, explains every answer
//! (linearizability), and report the smallest failing part when none does.
//!
//! The crate has no I/O and no dependency on the node: histories are data,
//! so the simulator, the process tests and a history read from a file are
//! judged by the same code.

pub mod history;
