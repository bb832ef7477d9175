//! The invocation core's pure rules: what a command does to an invocation, decided from
//! explicit inputs only — no I/O, no clock, no randomness — and tested as data tables.
//!
//! This is the first piece of the deterministic core (design brief §10); the modules that run
//! invocations ask it what to do and carry the answer out.

pub mod control;
