//! Keeping an owner's continuations in order with its commands.
//!
//! A command that reads and then writes runs under `ctx.wait`, which stops the actor from
//! handling messages and polling its spawned futures until the wait is done — except that
//! actix still polls *one* spawned future after a message handler schedules a wait (the wait
//! joins the context's queue only after that poll). A continuation that ran there could act in
//! the middle of a command: seen as an add that started while its kill was being written, and
//! then ran beside the next add. Every continuation of a spawned future or timer therefore
//! goes through `in_order`, which defers it while a wait is scheduled.

use actix::prelude::*;

/// Runs `f` now — or, if a wait has just been scheduled, once it is done.
pub(super) fn in_order<A>(act: &mut A, ctx: &mut Context<A>, f: impl FnOnce(&mut A, &mut Context<A>) + 'static)
where
    A: Actor<Context = Context<A>>,
{
    if ctx.waiting() {
        ctx.spawn(actix::fut::ready(()).map(move |(), act: &mut A, ctx| in_order(act, ctx, f)));
    } else {
        f(act, ctx);
    }
}

/// Runs `fut` beside the actor's other work, then `then` with its output, in order.
pub(super) fn spawn_then<A, T: 'static>(
    act: &mut A,
    ctx: &mut Context<A>,
    fut: impl std::future::Future<Output = T> + 'static,
    then: impl FnOnce(&mut A, T, &mut Context<A>) + 'static,
) where
    A: Actor<Context = Context<A>>,
{
    ctx.spawn(
        fut.into_actor(act)
            .map(move |out, act, ctx| in_order(act, ctx, move |act, ctx| then(act, out, ctx))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;

    /// Records what happened, in order: a command's wait and the continuation of a spawned
    /// future (say, a creation's commit) that lands at the moment the command arrives.
    struct Probe {
        log: Arc<Mutex<Vec<&'static str>>>,
        landing: Option<oneshot::Receiver<()>>,
        ordered: bool,
    }

    impl Actor for Probe {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Context<Self>) {
            let landing = self.landing.take().expect("given once");
            let landed = async move {
                let _ = landing.await;
            };
            let note = |act: &mut Self, (), _: &mut Context<Self>| act.log.lock().unwrap().push("landed");
            if self.ordered {
                spawn_then(self, ctx, landed, note);
            } else {
                ctx.spawn(landed.into_actor(self).map(move |(), act, ctx| note(act, (), ctx)));
            }
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Command;

    impl Handler<Command> for Probe {
        type Result = ();
        fn handle(&mut self, _: Command, ctx: &mut Context<Self>) {
            self.log.lock().unwrap().push("command begins");
            let write = async { tokio::time::sleep(std::time::Duration::from_millis(20)).await };
            ctx.wait(
                write
                    .into_actor(self)
                    .map(|(), act, _| act.log.lock().unwrap().push("command ends")),
            );
        }
    }

    /// The interleaving: the spawned future becomes ready and the command arrives before the
    /// actor is polled again; in that poll the command schedules its wait first.
    fn run(ordered: bool) -> Vec<&'static str> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let system = actix::System::new();
        let seen = log.clone();
        system.block_on(async move {
            let (land, landing) = oneshot::channel();
            let probe = Probe {
                log: seen,
                landing: Some(landing),
                ordered,
            };
            let addr = probe.start();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await; // started, waiting
            let _ = land.send(());
            addr.do_send(Command);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        });
        let log = log.lock().unwrap().clone();
        log
    }

    #[test]
    fn without_in_order_a_continuation_runs_inside_a_command() {
        assert_eq!(run(false), vec!["command begins", "landed", "command ends"]);
    }

    #[test]
    fn in_order_runs_a_continuation_after_the_command() {
        assert_eq!(run(true), vec!["command begins", "command ends", "landed"]);
    }
}
