//! Who is alive: the failure detector every routing decision reads. A peer is dead once it has
//! been silent for `DEAD_AFTER` (a paused or partitioned node accepts connections but never
//! answers, so only silence tells), refused a connection since its last answer, or failed
//! `FAILURES_DEAD` pings in a row. Pure: the clock is an argument, so the rules are tested below
//! as a table. A wait on another node is bounded by this, not by a request timeout, so a long
//! handler on a live node is never cut short.
//!
//! A node that was itself stopped (SIGSTOP, a VM pause) sees every peer silent when it wakes.
//! Its own ping rounds tell it: while the last round is overdue its view is stale and silence
//! proves nothing, and after a late round silence counts only from that round.

use std::time::{Duration, Instant};

use super::PingReply;

/// How often each peer is pinged (one ping in flight per peer at a time).
pub const PING_INTERVAL: Duration = Duration::from_millis(200);
/// Silence after which a peer is dead: seven pings unanswered. Together with the 50 ms at which
/// waiters look, a node that stops answering costs a caller ≤ ~1.6 s.
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// A ping's own limit: past `DEAD_AFTER` its answer no longer matters.
pub const PING_TIMEOUT: Duration = DEAD_AFTER;
/// Answered errors in a row after which a peer is dead (an error answer is not silence).
const FAILURES_DEAD: u32 = 2;
/// A ping round this late means this node itself was not running.
const ROUND_OVERDUE: Duration = Duration::from_millis(600);

/// This node's ping rounds: whether its own view of silence can be trusted.
#[derive(Clone, Copy, Debug, Default)]
pub struct View {
    last_round: Option<Instant>,
    /// The end of this node's last own stall: silence before it proves nothing.
    resumed_at: Option<Instant>,
}

impl View {
    /// A ping round begins at `now`.
    pub fn round(&mut self, now: Instant) {
        if self
            .last_round
            .is_some_and(|r| now.saturating_duration_since(r) > ROUND_OVERDUE)
        {
            self.resumed_at = Some(now);
        }
        self.last_round = Some(now);
    }

    /// Silence up to `now` proves nothing: this node has not run a ping round for too long.
    fn stale(&self, now: Instant) -> bool {
        self.last_round
            .is_some_and(|r| now.saturating_duration_since(r) > ROUND_OVERDUE)
    }
}

/// What one ping (or a forwarded request) learnt about a peer.
#[derive(Debug, Clone)]
pub enum Probe {
    Answered(PingReply),
    /// Connection refused or reset before sending: nothing listens there.
    Refused,
    /// An error answer, or no answer within `PING_TIMEOUT`.
    Failed,
}

#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    /// The last ping answer (addresses and load).
    pub last: Option<PingReply>,
    last_answer: Option<Instant>,
    /// When this node began to ping the peer: silence counts from here until it first answers.
    watched_since: Option<Instant>,
    refused: bool,
    failures: u32,
    ping_in_flight: bool,
    reported_dead: bool,
}

impl PeerStatus {
    /// Dead at `now`, as seen with `view` (a peer never pinged is not dead: nothing is known).
    pub fn dead_at(&self, now: Instant, view: &View) -> bool {
        let Some(since) = self.last_answer.or(self.watched_since) else {
            return self.refused;
        };
        if self.refused || self.failures >= FAILURES_DEAD {
            return true;
        }
        let since = view.resumed_at.map_or(since, |r| since.max(r));
        !view.stale(now) && now.saturating_duration_since(since) > DEAD_AFTER
    }

    /// Has answered, and is not dead at `now`.
    pub fn alive_at(&self, now: Instant, view: &View) -> bool {
        self.last.is_some() && !self.dead_at(now, view)
    }

    /// Claims the peer's ping slot: false while a ping to it is still out.
    pub fn start_ping(&mut self, now: Instant) -> bool {
        if self.ping_in_flight {
            return false;
        }
        self.watched_since.get_or_insert(now);
        self.ping_in_flight = true;
        true
    }

    /// Records what a ping (or any request) learnt.
    pub fn record(&mut self, now: Instant, probe: Probe, from_ping: bool) {
        if from_ping {
            self.ping_in_flight = false;
        }
        self.watched_since.get_or_insert(now);
        match probe {
            Probe::Answered(reply) => {
                self.last = Some(reply);
                self.last_answer = Some(now);
                self.refused = false;
                self.failures = 0;
            }
            Probe::Refused => self.refused = true,
            Probe::Failed => self.failures += 1,
        }
    }

    /// `Some(dead)` when the peer changed between dead and alive since the last call: for one
    /// log line per change.
    pub fn transition(&mut self, now: Instant, view: &View) -> Option<bool> {
        let dead = self.dead_at(now, view);
        let was = self.reported_dead;
        self.reported_dead = dead;
        (dead != was && (dead || self.last.is_some())).then_some(dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Steps applied in order at `t0 + offset`; then `dead_at(t0 + check)` is asserted.
    enum Step {
        /// This node's ping round.
        Round(u64),
        /// Rounds every 200 ms from .0 to .1 inclusive.
        Rounds(u64, u64),
        Ping(u64),
        Answer(u64),
        Refused(u64),
        Failed(u64),
    }

    #[test]
    fn liveness_rules() {
        use Step::*;
        let cases: &[(&str, &[Step], u64, bool)] = &[
            ("never pinged: unknown, not dead", &[], 10_000, false),
            ("pinged, no answer yet, short silence", &[Ping(0)], 1_000, false),
            ("pinged, never answered past the limit", &[Ping(0)], 1_600, true),
            ("answered recently", &[Ping(0), Answer(10)], 1_400, false),
            (
                "silent since the last answer (paused)",
                &[Ping(0), Answer(10), Ping(200)],
                1_600,
                true,
            ),
            (
                "answers again after a pause",
                &[Ping(0), Answer(10), Ping(200), Answer(9_000)],
                9_100,
                false,
            ),
            (
                "refused: dead at once",
                &[Ping(0), Answer(10), Ping(200), Refused(210)],
                220,
                true,
            ),
            ("refused before any answer", &[Refused(0)], 0, true),
            (
                "one error answer is not death",
                &[Ping(0), Answer(10), Failed(200)],
                300,
                false,
            ),
            (
                "two error answers in a row",
                &[Ping(0), Answer(10), Failed(200), Failed(400)],
                450,
                true,
            ),
            (
                "an answer clears errors",
                &[Failed(0), Failed(200), Answer(400)],
                450,
                false,
            ),
            (
                "rounds on time, the peer silent",
                &[Ping(0), Answer(10), Rounds(0, 1_600)],
                1_600,
                true,
            ),
            (
                "this node stopped: its view is stale",
                &[Ping(0), Answer(10), Round(0), Round(200)],
                9_000,
                false,
            ),
            (
                "first round after its stop: silence counts from it",
                &[Ping(0), Answer(10), Round(0), Round(9_000)],
                9_100,
                false,
            ),
            (
                "the peer stays silent after this node resumed",
                &[Ping(0), Answer(10), Round(0), Rounds(9_000, 10_600)],
                10_600,
                true,
            ),
            (
                "stale view, but refused is evidence",
                &[Ping(0), Answer(10), Round(0), Refused(5_000)],
                5_000,
                true,
            ),
        ];
        for (name, steps, check, dead) in cases {
            let t0 = Instant::now();
            let mut s = PeerStatus::default();
            let mut view = View::default();
            let reply = || Probe::Answered(PingReply::default());
            for step in steps.iter() {
                match step {
                    Round(at) => view.round(t0 + ms(*at)),
                    Rounds(from, to) => (*from..=*to).step_by(200).for_each(|at| view.round(t0 + ms(at))),
                    Ping(at) => {
                        s.start_ping(t0 + ms(*at));
                    }
                    Answer(at) => s.record(t0 + ms(*at), reply(), true),
                    Refused(at) => s.record(t0 + ms(*at), Probe::Refused, true),
                    Failed(at) => s.record(t0 + ms(*at), Probe::Failed, true),
                }
            }
            assert_eq!(s.dead_at(t0 + ms(*check), &view), *dead, "{name}");
        }
    }

    #[test]
    fn one_ping_in_flight_per_peer() {
        let t0 = Instant::now();
        let mut s = PeerStatus::default();
        assert!(s.start_ping(t0));
        assert!(!s.start_ping(t0 + ms(200)), "the first ping is still out");
        s.record(t0 + ms(300), Probe::Failed, true);
        assert!(s.start_ping(t0 + ms(400)));
        // A forwarded request's finding does not free the ping slot.
        s.record(t0 + ms(450), Probe::Refused, false);
        assert!(!s.start_ping(t0 + ms(500)));
    }

    #[test]
    fn transitions_are_reported_once() {
        let t0 = Instant::now();
        let mut s = PeerStatus::default();
        let v = View::default();
        s.start_ping(t0);
        assert_eq!(s.transition(t0, &v), None, "unknown, not dead");
        s.record(t0 + ms(10), Probe::Answered(PingReply::default()), true);
        assert_eq!(s.transition(t0 + ms(20), &v), None, "first answer: alive was assumed");
        assert_eq!(s.transition(t0 + ms(2_000), &v), Some(true));
        assert_eq!(s.transition(t0 + ms(2_200), &v), None);
        s.record(t0 + ms(3_000), Probe::Answered(PingReply::default()), true);
        assert_eq!(s.transition(t0 + ms(3_000), &v), Some(false));
    }
}
