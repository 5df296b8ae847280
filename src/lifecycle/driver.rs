//! The thin async side of transitions: runs a [`Transition`] by performing
//! its actions (gossip announcements, fetches, `Sync` calls to gainers)
//! and feeding it the events they and the ring produce. Each transition
//! runs in its own task, registered with the lifecycle so that `/ring`
//! shows what it is waiting for, and so that a second request for the same
//! change finds it instead of starting another.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::machine::{Action, Event, Goal, Snapshot, Status, Transition};
use super::{Lifecycle, TransitionSummary};
use crate::error::Result;
use crate::storage::INLINE_MAX_BYTES;

/// How often a running transition looks at the members' agreement and its
/// retry pauses (agreement changes without the ring changing).
const TICK: Duration = Duration::from_millis(100);

/// Finished transitions kept for `/ring`.
const FINISHED_SHOWN: usize = 5;

/// A transition running (or just finished) on this node.
pub struct Running {
    /// What it is for.
    pub goal: Goal,
    /// What it does now; updated after every step.
    pub status: Mutex<Status>,
    /// How it ended (the error as text), for requests that joined it.
    outcome: Mutex<Option<std::result::Result<TransitionSummary, String>>>,
    /// Becomes true when it ends.
    done: watch::Sender<bool>,
}

impl Running {
    /// What it does now.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Waits up to `wait` for its end: the summary, or the error as text.
    pub async fn wait(
        &self,
        wait: Duration,
    ) -> Option<std::result::Result<TransitionSummary, String>> {
        let mut done = self.done.subscribe();
        let ended = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        if !matches!(ended, Ok(Ok(_))) {
            return None;
        }
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How a request found its transition.
pub enum Waiter {
    /// It started it: the result arrives on the receiver.
    Started(Arc<Running>, oneshot::Receiver<Result<TransitionSummary>>),
    /// One toward the same goal was running already.
    Joined(Arc<Running>),
}

/// The transitions of one node.
#[derive(Default)]
pub struct Registry {
    /// Running ones, then the last finished ones; a std mutex held only to
    /// look up or change the list.
    list: Mutex<Vec<Arc<Running>>>,
}

impl Registry {
    /// The statuses, running ones first.
    pub fn statuses(&self) -> Vec<Status> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Status> = list.iter().map(|r| r.status()).collect();
        out.sort_by_key(|s| s.done);
        out
    }

    /// The running transition for `goal`, if any.
    pub fn running(&self, goal: &Goal) -> Option<Arc<Running>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .find(|r| r.goal == *goal && !r.is_done())
            .cloned()
    }

    /// Registers a new transition; `Err` with the one running toward
    /// `goal` when there is one.
    fn add(&self, goal: &Goal) -> std::result::Result<Arc<Running>, Arc<Running>> {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = list.iter().find(|r| r.goal == *goal && !r.is_done()) {
            return Err(running.clone());
        }
        let running = Arc::new(Running {
            goal: goal.clone(),
            status: Mutex::new(Status::default()),
            outcome: Mutex::new(None),
            done: watch::channel(false).0,
        });
        list.push(running.clone());
        // Forget the oldest finished ones.
        let finished = list.iter().filter(|r| r.is_done()).count();
        let mut excess = finished.saturating_sub(FINISHED_SHOWN);
        list.retain(|r| {
            let done = r.is_done();
            if done && excess > 0 {
                excess -= 1;
                return false;
            }
            true
        });
        Ok(running)
    }
}

/// Starts a transition toward `goal` in its own task, or finds the one
/// running toward it.
pub fn start(lifecycle: &Lifecycle, goal: Goal) -> Waiter {
    let running = match lifecycle.inner.transitions.add(&goal) {
        Ok(running) => running,
        Err(running) => return Waiter::Joined(running),
    };
    let (tx, rx) = oneshot::channel();
    let (lifecycle, task) = (lifecycle.clone(), running.clone());
    tokio::spawn(async move {
        let result = run(&lifecycle, goal, &task).await;
        if let Ok(mut status) = task.status.lock() {
            status.done = true;
            if let Err(err) = &result {
                status.last_error = Some(err.to_string());
                status.waiting_for = "nothing: failed".into();
            }
        }
        if let Ok(mut outcome) = task.outcome.lock() {
            *outcome = Some(match &result {
                Ok(summary) => Ok(summary.clone()),
                Err(err) => Err(err.to_string()),
            });
        }
        task.done.send_replace(true);
        let _ = tx.send(result);
    });
    Waiter::Started(running, rx)
}

/// What this node sees now.
pub fn snapshot(lifecycle: &Lifecycle) -> Snapshot {
    let membership = &lifecycle.inner.membership;
    let ring = membership.ring();
    Snapshot {
        lagging: membership.lagging(&ring),
        setting: membership.replica_setting_seen(&ring),
        ring,
    }
}

/// Runs one transition to its end.
async fn run(lifecycle: &Lifecycle, goal: Goal, running: &Running) -> Result<TransitionSummary> {
    let me = lifecycle.inner.node.clone();
    let membership = lifecycle.inner.membership.clone();
    let mut machine = Transition::new(me.clone(), goal);
    let (events, mut results) = mpsc::unbounded_channel::<Event>();
    let mut rings = membership.subscribe();
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = vec![Event::View(snapshot(lifecycle))];
    loop {
        for event in pending.drain(..) {
            for action in machine.step(event) {
                match action {
                    Action::Finished(result) => {
                        set_status(running, &machine);
                        return result;
                    }
                    action => perform(lifecycle, action, &events).await,
                }
            }
        }
        set_status(running, &machine);
        tokio::select! {
            Some(event) = results.recv() => pending.push(event),
            changed = rings.changed() => {
                if changed.is_err() {
                    // The ring is no longer published: the node is stopping.
                    return Err(crate::error::Error::NotReady {
                        reason: "the node is shutting down".into(),
                    });
                }
                pending.push(Event::View(snapshot(lifecycle)));
            }
            _ = tick.tick() => {
                pending.push(Event::Tick(started.elapsed()));
                pending.push(Event::View(snapshot(lifecycle)));
            }
        }
    }
}

fn set_status(running: &Running, machine: &Transition) {
    if let Ok(mut status) = running.status.lock() {
        *status = machine.status();
    }
}

/// Does one action; fetches and `Sync` calls run in their own tasks and
/// report on `events`.
async fn perform(lifecycle: &Lifecycle, action: Action, events: &mpsc::UnboundedSender<Event>) {
    let membership = &lifecycle.inner.membership;
    match action {
        Action::SetState(state) => membership.set_state(state).await,
        Action::PublishRemoval { node, removal } => {
            tracing::info!(%node, done = removal.done, "removal announced");
            membership.publish_removal(&node, removal).await;
        }
        Action::PublishReplicas(setting) => {
            tracing::info!(
                n = setting.n,
                epoch = setting.epoch,
                moving = setting.from.is_some(),
                "replication setting announced"
            );
            membership.publish_replicas(setting).await;
        }
        Action::KeepIdentity { tokens } => {
            if let Err(err) = membership.keep_identity(Some(&tokens), true) {
                tracing::error!(%err, "cannot record that bootstrap finished");
            }
        }
        Action::ForgetIdentity => {
            if let Err(err) = membership.keep_identity(None, false) {
                tracing::error!(%err, "cannot forget this node's tokens after leaving");
            }
        }
        Action::Fetch { ring, last_pass } => {
            let (lifecycle, events) = (lifecycle.clone(), events.clone());
            tokio::spawn(async move {
                let digest = ring.digest();
                if last_pass {
                    tracing::info!(
                        "last pass over the ranges this node gains before it turns normal"
                    );
                } else {
                    tracing::info!(node = %lifecycle.inner.node, "bootstrapping: fetching the ranges this node will own");
                }
                // The last pass compares keys and versions and fetches
                // only the values that differ.
                let inline_max = if last_pass {
                    0
                } else {
                    INLINE_MAX_BYTES as u64
                };
                let result = lifecycle
                    .inner
                    .transfer
                    .receive(&lifecycle, &ring, inline_max, last_pass)
                    .await;
                match &result {
                    Ok(reply) => tracing::info!(
                        keys = reply.keys,
                        bytes = reply.bytes,
                        last_pass,
                        "fetched the ranges this node gains"
                    ),
                    Err(err) => {
                        tracing::warn!(%err, "fetching this node's ranges failed; trying again")
                    }
                }
                let _ = events.send(Event::Fetched {
                    digest,
                    last_pass,
                    result,
                });
            });
        }
        Action::Sync { gainer, digest } => {
            let (lifecycle, events) = (lifecycle.clone(), events.clone());
            tokio::spawn(async move {
                let handle = lifecycle.inner.coordinator.replica(&gainer);
                let result = handle.sync(digest, &lifecycle).await;
                match &result {
                    Ok(reply) => tracing::info!(
                        %gainer,
                        keys = reply.keys,
                        bytes = reply.bytes,
                        "a node gaining ranges fetched them"
                    ),
                    Err(err) => tracing::warn!(%gainer, %err, "sync failed"),
                }
                let _ = events.send(Event::Synced {
                    gainer,
                    digest,
                    result,
                });
            });
        }
        Action::Finished(_) => {}
    }
}
