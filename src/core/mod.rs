//! The invocation core's pure rules: what a command does to an invocation, decided from
//! explicit inputs only — no I/O, no clock, no randomness — and tested as data tables.
//!
//! This is the first piece of the deterministic core (design brief §10); the modules that run
//! invocations ask it what to do and carry the answer out.

pub mod attempt;
pub mod complete;
pub mod control;
pub mod entry;
pub mod finish;
pub mod invoke;
pub mod promise;
pub mod records;
pub mod transition;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod testing;

pub use transition::{Action, Command, Completer, PartitionRead, ReadFailed, Refusal, Transition, Write};

/// Applies `command` to the partition state `read` sees: the one function that decides what a
/// command does. Pure: the same state and command give the same transition.
pub fn apply(read: &dyn PartitionRead, command: Command) -> Result<Transition, ReadFailed> {
    match command {
        Command::Invoke { message, redelivery } => invoke::apply(read, message, redelivery),
        Command::Complete {
            target,
            index,
            result,
            by,
        } => complete::apply(read, target, index, result, by),
        Command::Promise(message) => promise::apply(read, message),
        Command::Finish {
            id,
            record,
            status,
            output,
            now_ms,
            retention_ms,
        } => Ok(finish::apply(id, &record, status, output, now_ms, retention_ms)),
    }
}
