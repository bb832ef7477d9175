//! Cancel and kill against the progress of the invocation they target.
//!
//! Whoever holds an invocation's record — its running attempt, or, with no attempt running,
//! its owner (the object actor, through whose mailbox every command passes) — states where
//! the invocation stands, and `decide` says what the command does there. The rule that fixes the races: once the output
//! is submitted to storage, the invocation finishes with it; a cancel or kill is too late and
//! says so, instead of overwriting the end (a cancel) or reporting `killed` for an invocation
//! whose effect was applied (a kill).

/// The command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Cancel,
    Kill,
}

/// Where the invocation stands, as seen by the holder of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No record: never created here, or swept after its retention.
    Unknown,
    /// Its end is durable.
    Finished,
    /// An attempt runs and has submitted the output entry (with the end) to storage.
    OutputSubmitted,
    /// An attempt runs and has not produced its output yet.
    Running,
    /// No attempt runs: pending, scheduled, suspended or backing off.
    Waiting,
}

/// What the holder of the record does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// 404.
    NotFound,
    /// 409: it has finished, or is finishing with an output already on its way to disk.
    TooLate,
    /// Record `cancel_requested` (in commit order after everything already submitted) and tell
    /// the handler, which sees a `TerminalException(409)` at its next await.
    RecordCancel,
    /// Stop the attempt at once; its driver writes the `killed` end.
    StopAttempt,
    /// Write the `killed` end here, and make whoever would start it stop.
    WriteKilledEnd,
}

pub fn decide(control: Control, stage: Stage) -> Decision {
    match (control, stage) {
        (_, Stage::Unknown) => Decision::NotFound,
        (_, Stage::Finished | Stage::OutputSubmitted) => Decision::TooLate,
        (Control::Cancel, Stage::Running | Stage::Waiting) => Decision::RecordCancel,
        (Control::Kill, Stage::Running) => Decision::StopAttempt,
        (Control::Kill, Stage::Waiting) => Decision::WriteKilledEnd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_table() {
        use Control::*;
        use Decision::*;
        use Stage::*;
        let table = [
            (Cancel, Unknown, NotFound),
            (Cancel, Finished, TooLate),
            (Cancel, OutputSubmitted, TooLate),
            (Cancel, Running, RecordCancel),
            (Cancel, Waiting, RecordCancel),
            (Kill, Unknown, NotFound),
            (Kill, Finished, TooLate),
            (Kill, OutputSubmitted, TooLate),
            (Kill, Running, StopAttempt),
            (Kill, Waiting, WriteKilledEnd),
        ];
        for (control, stage, expected) in table {
            assert_eq!(decide(control, stage), expected, "{control:?} while {stage:?}");
        }
    }

    /// The measured race, as an interleaving: the attempt submits the output (a counter add:
    /// state and output in one batch), then a kill arrives before that batch is durable. The
    /// kill must be refused — the add is applied — never answered `killed`.
    #[test]
    fn kill_after_the_output_was_submitted_is_refused() {
        let mut stage = Stage::Running;
        // 1. the attempt submits its output batch
        stage = match stage {
            Stage::Running => Stage::OutputSubmitted,
            s => s,
        };
        // 2. the kill reaches the attempt while the batch is on its way to disk
        assert_eq!(decide(Control::Kill, stage), Decision::TooLate);
        // 3. the batch is durable; a later cancel sees the end
        assert_eq!(decide(Control::Cancel, Stage::Finished), Decision::TooLate);
    }

    /// The other order: the cancel arrives first, is recorded, and a later output still ends
    /// the invocation (cancellation is a request the handler may never observe).
    #[test]
    fn cancel_before_the_output_is_recorded_then_the_output_ends_it() {
        assert_eq!(decide(Control::Cancel, Stage::Running), Decision::RecordCancel);
        assert_eq!(decide(Control::Kill, Stage::OutputSubmitted), Decision::TooLate);
    }
}
