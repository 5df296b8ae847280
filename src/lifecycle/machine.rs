//! Ring transitions decided by pure code: a join, a leave, the removal of
//! a dead member and a change of the replication factor are each a
//! [`Transition`], a state machine that takes [`Event`]s (the ring as this
//! node sees it, a fetch or a gainer's `Sync` done, time passing) and
//! returns [`Action`]s (announce a state, a removal or a replication
//! setting; fetch ranges; ask a gainer to `Sync`; finish). It does no I/O:
//! `driver.rs` performs the actions and feeds the events back, and the
//! scripted tests in `testscripts/` run several of them against a
//! simulated gossip layer (`sim.rs`).
//!
//! Every transition goes the same way: announce the change, wait until
//! every live member sees the same ring showing it (for as long as that
//! takes: a member that never catches up is either marked down by the
//! failure detector, and then no longer waited for, or shown in `/ring` as
//! what the transition waits for), have every node gaining ranges fetch
//! them from their current replicas, announce the end and wait until it is
//! seen. A gainer counts as done for the ranges it fetched; when the ring
//! changes during a transition (another member joins or leaves), the
//! gainers of ranges not yet fetched are asked again, on the new ring.
//!
//! A joiner fetches its ranges, then makes one last pass over them (keys
//! and versions only, fetching what changed) on the ring it is about to
//! turn normal in, so that writes acknowledged while it was joining and
//! not delivered to it are there too. If the ring changed meanwhile it
//! fetches again what it gains in the new ring.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::TransitionSummary;
use crate::error::{Error, Result};
use crate::membership::{Removal, ReplicaSetting, tokens_hash};
use crate::proto::SyncReply;
use crate::ring::{MemberState, NodeId, Ring, Token, TokenRange};

/// Failed `Sync` calls to one gainer before a leave asked over HTTP gives
/// up (and turns the node normal again).
pub const SYNC_ATTEMPTS: usize = 3;
/// Pause after a failed fetch or `Sync`, doubled after each further
/// failure up to [`LONGEST_RETRY_PAUSE`].
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between attempts of a transition that goes on until done.
pub const LONGEST_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// What a transition is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// This node, announced joining, fetches the ranges it gains and turns
    /// normal.
    Join,
    /// This node hands its ranges over and announces that it is gone.
    Leave {
        /// Keep trying while gainers cannot fetch (a SIGTERM: exit only
        /// once handed over); otherwise give up after [`SYNC_ATTEMPTS`]
        /// failures of one gainer and turn normal again.
        until_done: bool,
    },
    /// A dead member is taken out for good and its ranges re-replicated
    /// from the others. Goes on until done.
    Remove {
        /// The member.
        node: NodeId,
    },
    /// The cluster's replication factor becomes `n`, data copied (or
    /// trimmed by purge) to match. Goes on until done.
    Replicas {
        /// The new replication factor.
        n: usize,
    },
}

impl Goal {
    /// The action's name in summaries and `/ring`.
    pub fn action(&self) -> &'static str {
        match self {
            Goal::Join => "join",
            Goal::Leave { .. } => "leave",
            Goal::Remove { .. } => "remove",
            Goal::Replicas { .. } => "replicas",
        }
    }
}

/// What the driver sees of the cluster at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The ring as this node sees it.
    pub ring: Arc<Ring>,
    /// Members believed up, other than this node, that publish the digest
    /// of another ring than `ring`: until there are none, members may not
    /// all send writes to the nodes a change adds.
    pub lagging: Vec<NodeId>,
    /// The cluster's replication setting as gossiped.
    pub setting: ReplicaSetting,
}

impl Snapshot {
    fn agreed(&self) -> bool {
        self.lagging.is_empty()
    }

    fn state_of(&self, node: &NodeId) -> Option<MemberState> {
        self.ring.member(node).map(|m| m.state)
    }
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// The ring or the members' agreement on it changed (or a tick passed).
    View(Snapshot),
    /// Time since the transition started, for retry pauses.
    Tick(Duration),
    /// This node's fetch of the ranges it gains in the ring with `digest`
    /// ended.
    Fetched {
        /// The ring fetched from.
        digest: u64,
        /// Whether it was the last pass (keys and versions only).
        last_pass: bool,
        /// Records and bytes stored, or why it failed.
        result: Result<SyncReply>,
    },
    /// A gainer's `Sync` at the ring with `digest` ended.
    Synced {
        /// The gainer.
        gainer: NodeId,
        /// The ring it fetched from.
        digest: u64,
        /// Records and bytes it stored, or why it failed.
        result: Result<SyncReply>,
    },
}

/// What to do.
#[derive(Debug)]
pub enum Action {
    /// Announce this node's state.
    SetState(MemberState),
    /// Publish a removal marker.
    PublishRemoval {
        /// The member removed.
        node: NodeId,
        /// Its tokens and how far the removal is.
        removal: Removal,
    },
    /// Publish a replication setting.
    PublishReplicas(ReplicaSetting),
    /// Record in the data dir that this node finished bootstrapping with
    /// these tokens.
    KeepIdentity {
        /// Its tokens.
        tokens: Vec<Token>,
    },
    /// Forget this node's tokens (it left; it would rejoin as new).
    ForgetIdentity,
    /// Fetch the ranges this node gains in `ring` from their current
    /// replicas; `last_pass`: keys and versions first, values only where
    /// they differ.
    Fetch {
        /// The ring to fetch in.
        ring: Arc<Ring>,
        /// Whether this is the last pass before turning normal.
        last_pass: bool,
    },
    /// Ask `gainer` to fetch what it gains in the ring with `digest`.
    Sync {
        /// The node gaining ranges.
        gainer: NodeId,
        /// The ring it must see.
        digest: u64,
    },
    /// The transition is over.
    Finished(Result<TransitionSummary>),
}

/// Where a transition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing announced yet.
    Begin,
    /// The change is announced; waiting for the ring to show it and for
    /// every live member to see that ring.
    Announced,
    /// Gainers are fetching their ranges (leave, remove, replicas).
    Moving,
    /// This node is fetching its ranges (join).
    Fetching,
    /// The end is announced; waiting until it is seen.
    Ending,
    /// Finished.
    Done,
}

/// What a transition is doing, for `/ring` and the status page.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Status {
    /// `join`, `leave`, `remove` or `replicas`.
    pub action: String,
    /// The member concerned (the replication factor for `replicas`).
    pub target: String,
    /// What it is doing or waiting for, in words.
    pub waiting_for: String,
    /// Live members whose ring differs from this node's.
    pub lagging: Vec<NodeId>,
    /// Nodes that still have to fetch ranges.
    pub gainers_left: Vec<NodeId>,
    /// The last failure, when it is retrying.
    pub last_error: Option<String>,
    /// Over.
    pub done: bool,
}

/// One transition's state machine.
#[derive(Debug)]
pub struct Transition {
    /// This node.
    me: NodeId,
    /// What it is for.
    goal: Goal,
    /// Where it is.
    phase: Phase,
    /// The latest snapshot.
    view: Option<Snapshot>,
    /// Time since the start, from the last tick.
    now: Duration,
    /// No new fetch or `Sync` to a node before this time.
    retry_at: BTreeMap<NodeId, Duration>,
    /// Failures in a row, per node (this node for its own fetches).
    failures: BTreeMap<NodeId, usize>,
    /// The last failure, shown while retrying.
    last_error: Option<String>,
    /// Ranges each gainer has fetched (this node's own, for a join).
    fetched: BTreeMap<NodeId, Vec<TokenRange>>,
    /// Fetches and `Sync` calls running: node, and the ranges it gains in
    /// the ring it was asked with.
    in_flight: BTreeMap<NodeId, (u64, Vec<TokenRange>)>,
    /// The digest of the ring the last pass of a join ran on, once done.
    last_pass_done: Option<u64>,
    /// What was moved, for the summary.
    summary: TransitionSummary,
    /// Removal: the removed member's tokens hash; replicas: the new epoch
    /// and the factor serving reads meanwhile.
    removal_hash: u64,
    /// Replicas: the epoch and the factor serving reads while moving.
    replica_change: Option<(u64, usize)>,
}

impl Transition {
    /// A transition of `me` toward `goal`; nothing happens before the
    /// first [`Event::View`].
    pub fn new(me: NodeId, goal: Goal) -> Transition {
        let summary = TransitionSummary {
            action: goal.action().to_string(),
            node: match &goal {
                Goal::Remove { node } => Some(node.to_string()),
                Goal::Join | Goal::Leave { .. } => Some(me.to_string()),
                Goal::Replicas { .. } => None,
            },
            ..TransitionSummary::default()
        };
        Transition {
            me,
            goal,
            phase: Phase::Begin,
            view: None,
            now: Duration::ZERO,
            retry_at: BTreeMap::new(),
            failures: BTreeMap::new(),
            last_error: None,
            fetched: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            last_pass_done: None,
            summary,
            removal_hash: 0,
            replica_change: None,
        }
    }

    /// What it is for.
    pub fn goal(&self) -> &Goal {
        &self.goal
    }

    /// Whether it is over.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Takes one event; returns what to do.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Done {
            return out;
        }
        match event {
            Event::View(view) => self.view = Some(view),
            Event::Tick(now) => self.now = now,
            Event::Fetched {
                digest,
                last_pass,
                result,
            } => self.fetched(digest, last_pass, result),
            Event::Synced {
                gainer,
                digest,
                result,
            } => {
                if let Err(err) = self.synced(gainer, digest, result) {
                    self.abort(err, &mut out);
                }
            }
        }
        if self.phase != Phase::Done {
            self.advance(&mut out);
        }
        out
    }

    /// What it is doing, for `/ring`.
    pub fn status(&self) -> Status {
        let view = self.view.as_ref();
        let lagging = view.map(|v| v.lagging.clone()).unwrap_or_default();
        let gainers_left = view.map(|v| self.gainers_left(v)).unwrap_or_default();
        let waiting_for = match self.phase {
            Phase::Begin => "starting".to_string(),
            Phase::Announced | Phase::Ending if !lagging.is_empty() => format!(
                "every live member to see the ring ({} not yet)",
                names(&lagging)
            ),
            Phase::Announced => "the ring to show the change".to_string(),
            Phase::Moving if !lagging.is_empty() => format!(
                "every live member to see the ring ({} not yet) before asking more gainers",
                names(&lagging)
            ),
            Phase::Moving => format!("{} to fetch their ranges", names(&gainers_left)),
            Phase::Fetching => "this node fetching its ranges".to_string(),
            Phase::Ending => "the end of the change to be seen".to_string(),
            Phase::Done => "nothing: done".to_string(),
        };
        Status {
            action: self.goal.action().to_string(),
            target: match &self.goal {
                Goal::Replicas { n } => n.to_string(),
                _ => self.summary.node.clone().unwrap_or_default(),
            },
            waiting_for,
            lagging,
            gainers_left,
            last_error: self.last_error.clone(),
            done: self.phase == Phase::Done,
        }
    }

    /// Moves on as far as the latest view allows.
    fn advance(&mut self, out: &mut Vec<Action>) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let result = match self.goal.clone() {
            Goal::Join => self.advance_join(&view, out),
            Goal::Leave { .. } => self.advance_leave(&view, out),
            Goal::Remove { node } => self.advance_remove(&view, &node, out),
            Goal::Replicas { n } => self.advance_replicas(&view, n, out),
        };
        if let Err(err) = result {
            self.abort(err, out);
        }
    }

    /// Ends with `err`; a leave that announced itself turns normal again.
    fn abort(&mut self, err: Error, out: &mut Vec<Action>) {
        if matches!(self.goal, Goal::Leave { .. })
            && matches!(self.phase, Phase::Announced | Phase::Moving)
        {
            out.push(Action::SetState(MemberState::Normal));
        }
        self.phase = Phase::Done;
        out.push(Action::Finished(Err(err)));
    }

    fn finish(&mut self, view: &Snapshot, out: &mut Vec<Action>) {
        self.summary.digest = format!("{:016x}", view.ring.digest());
        self.phase = Phase::Done;
        self.last_error = None;
        out.push(Action::Finished(Ok(self.summary.clone())));
    }

    fn advance_join(&mut self, view: &Snapshot, out: &mut Vec<Action>) -> Result<()> {
        let me = self.me.clone();
        match view.state_of(&me) {
            Some(MemberState::Removed) => {
                return Err(Error::Conflict {
                    reason: format!("{me} was removed while it was joining"),
                });
            }
            Some(MemberState::Normal) if self.phase != Phase::Fetching => {
                // Announced normal (by this machine, or before a restart).
                self.finish(view, out);
                return Ok(());
            }
            Some(MemberState::Joining) => {}
            // Not announced yet (the tokens are on their way).
            _ => return Ok(()),
        }
        if !matches!(self.phase, Phase::Begin | Phase::Announced) {
            return Ok(()); // fetching, or announced normal and waiting to see it
        }
        self.phase = Phase::Announced;
        if !view.agreed() {
            return Ok(());
        }
        let digest = view.ring.digest();
        if self.last_pass_done == Some(digest) {
            // The last pass ran on the ring every live member sees now.
            let tokens = view
                .ring
                .member(&me)
                .map(|m| m.tokens.clone())
                .unwrap_or_default();
            out.push(Action::KeepIdentity { tokens });
            out.push(Action::SetState(MemberState::Normal));
            self.phase = Phase::Ending;
            return Ok(());
        }
        if self.waiting(&me) {
            return Ok(());
        }
        let mine = gained(&view.ring, &me);
        let last_pass = covers(self.fetched.get(&me), &mine);
        self.in_flight.insert(me, (digest, mine));
        self.phase = Phase::Fetching;
        out.push(Action::Fetch {
            ring: view.ring.clone(),
            last_pass,
        });
        Ok(())
    }

    /// A fetch of this node's ranges ended.
    fn fetched(&mut self, digest: u64, last_pass: bool, result: Result<SyncReply>) {
        let me = self.me.clone();
        let Some((asked, ranges)) = self.in_flight.remove(&me) else {
            return;
        };
        if self.phase == Phase::Fetching {
            self.phase = Phase::Announced;
        }
        self.last_pass_done = None;
        match result {
            Ok(reply) => {
                self.summary.keys += reply.keys;
                self.summary.bytes += reply.bytes;
                self.failures.remove(&me);
                self.last_error = None;
                if asked == digest {
                    self.fetched.entry(me).or_default().extend(ranges);
                    // Turns the node normal in advance() if the ring is
                    // still this one.
                    self.last_pass_done = last_pass.then_some(digest);
                }
            }
            Err(err) => self.failed(&me, &err, true),
        }
    }

    /// Counts a failure of `node` and sets when to try it again.
    fn failed(&mut self, node: &NodeId, err: &Error, until_done: bool) {
        let failures = self.failures.entry(node.clone()).or_insert(0);
        *failures += 1;
        let pause = if until_done {
            RETRY_PAUSE
                .saturating_mul(1 << (*failures - 1).min(4))
                .min(LONGEST_RETRY_PAUSE)
        } else {
            RETRY_PAUSE
        };
        self.retry_at.insert(node.clone(), self.now + pause);
        self.last_error = Some(format!("{node}: {err}"));
    }

    /// Whether `node` is in its pause after a failure.
    fn waiting(&self, node: &NodeId) -> bool {
        self.retry_at.get(node).is_some_and(|at| *at > self.now)
    }

    fn advance_leave(&mut self, view: &Snapshot, out: &mut Vec<Action>) -> Result<()> {
        let me = self.me.clone();
        let state = view.state_of(&me);
        match self.phase {
            Phase::Begin => {
                if state != Some(MemberState::Normal) {
                    return Err(Error::invalid(format!(
                        "this node is {}, not normal; only a normal member can leave",
                        state.map(|s| s.as_str()).unwrap_or("not a member yet")
                    )));
                }
                check_enough_members(&view.ring, Some(&me), None)?;
                out.push(Action::SetState(MemberState::Leaving));
                self.phase = Phase::Announced;
                Ok(())
            }
            Phase::Announced => {
                if state == Some(MemberState::Leaving) && view.agreed() {
                    self.phase = Phase::Moving;
                    self.advance_moving(view, out)?;
                }
                Ok(())
            }
            Phase::Moving => self.advance_moving(view, out),
            Phase::Ending => {
                if state == Some(MemberState::Removed) && view.agreed() {
                    self.finish(view, out);
                }
                Ok(())
            }
            Phase::Fetching | Phase::Done => Ok(()),
        }
    }

    fn advance_remove(
        &mut self,
        view: &Snapshot,
        node: &NodeId,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let state = view.state_of(node);
        match self.phase {
            Phase::Begin => {
                let member = view
                    .ring
                    .member(node)
                    .ok_or_else(|| Error::not_found(format!("no member {node} in the ring")))?;
                if *node == self.me {
                    return Err(Error::invalid(
                        "a node cannot remove itself; make it leave instead (ringkv leave)",
                    ));
                }
                if member.state == MemberState::Removed {
                    return Err(Error::Conflict {
                        reason: format!("{node} is already removed"),
                    });
                }
                self.removal_hash = tokens_hash(&member.tokens);
                // A joiner owned nothing yet: nothing to move.
                let done = member.state == MemberState::Joining;
                if !done {
                    check_enough_members(&view.ring, Some(node), None)?;
                }
                out.push(Action::PublishRemoval {
                    node: node.clone(),
                    removal: Removal {
                        tokens_hash: self.removal_hash,
                        done,
                    },
                });
                self.phase = if done {
                    Phase::Ending
                } else {
                    Phase::Announced
                };
                Ok(())
            }
            Phase::Announced => {
                if matches!(state, Some(MemberState::Leaving | MemberState::Removed))
                    && view.agreed()
                {
                    self.phase = Phase::Moving;
                    self.advance_moving(view, out)?;
                }
                Ok(())
            }
            Phase::Moving => self.advance_moving(view, out),
            Phase::Ending => {
                if state == Some(MemberState::Removed) && view.agreed() {
                    self.finish(view, out);
                }
                Ok(())
            }
            Phase::Fetching | Phase::Done => Ok(()),
        }
    }

    fn advance_replicas(&mut self, view: &Snapshot, n: usize, out: &mut Vec<Action>) -> Result<()> {
        if let Some((epoch, _)) = self.replica_change
            && view.setting.epoch > epoch
        {
            return Err(Error::Conflict {
                reason: format!(
                    "another change of the replication factor (to {}) was made meanwhile",
                    view.setting.n
                ),
            });
        }
        match self.phase {
            Phase::Begin => {
                if n == 0 {
                    return Err(Error::invalid("the replication factor must be at least 1"));
                }
                check_enough_members(&view.ring, None, Some(n))?;
                let current = view.setting;
                if current.n == n && current.from.is_none() {
                    self.finish(view, out);
                    return Ok(());
                }
                let (epoch, from) = (current.epoch + 1, current.current());
                self.replica_change = Some((epoch, from));
                out.push(Action::PublishReplicas(ReplicaSetting {
                    n,
                    epoch,
                    from: Some(from),
                }));
                self.phase = Phase::Announced;
                Ok(())
            }
            Phase::Announced => {
                let (_, from) = self.replica_change.unwrap_or((0, n));
                let ring = &view.ring;
                if ring.target_replicas() == n && ring.replicas() == from && view.agreed() {
                    self.phase = Phase::Moving;
                    self.advance_moving(view, out)?;
                }
                Ok(())
            }
            Phase::Moving => self.advance_moving(view, out),
            Phase::Ending => {
                let ring = &view.ring;
                if ring.replicas() == n && ring.target_replicas() == n && view.agreed() {
                    self.finish(view, out);
                }
                Ok(())
            }
            Phase::Fetching | Phase::Done => Ok(()),
        }
    }

    /// The gainers in `view` with ranges they have not fetched.
    fn gainers_left(&self, view: &Snapshot) -> Vec<NodeId> {
        let mut by_gainer: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        for movement in view.ring.movements() {
            by_gainer
                .entry(movement.gainer)
                .or_default()
                .push(movement.range);
        }
        by_gainer
            .into_iter()
            .filter(|(gainer, ranges)| !covers(self.fetched.get(gainer), ranges))
            .map(|(gainer, _)| gainer)
            .collect()
    }

    /// Asks every gainer with ranges left to fetch them, once every live
    /// member sees the ring; announces the end once none is left.
    fn advance_moving(&mut self, view: &Snapshot, out: &mut Vec<Action>) -> Result<()> {
        if !view.agreed() {
            return Ok(());
        }
        let left = self.gainers_left(view);
        if left.is_empty() && self.in_flight.is_empty() {
            self.end(out);
            return Ok(());
        }
        let digest = view.ring.digest();
        for gainer in left {
            if self.in_flight.contains_key(&gainer) || self.waiting(&gainer) {
                continue;
            }
            self.in_flight
                .insert(gainer.clone(), (digest, gained(&view.ring, &gainer)));
            out.push(Action::Sync { gainer, digest });
        }
        Ok(())
    }

    /// Announces the end of a leave, removal or change of N.
    fn end(&mut self, out: &mut Vec<Action>) {
        match &self.goal {
            Goal::Leave { .. } => {
                out.push(Action::SetState(MemberState::Removed));
                out.push(Action::ForgetIdentity);
            }
            Goal::Remove { node } => out.push(Action::PublishRemoval {
                node: node.clone(),
                removal: Removal {
                    tokens_hash: self.removal_hash,
                    done: true,
                },
            }),
            Goal::Replicas { n } => {
                let (epoch, _) = self.replica_change.unwrap_or((0, *n));
                out.push(Action::PublishReplicas(ReplicaSetting {
                    n: *n,
                    epoch,
                    from: None,
                }));
            }
            Goal::Join => {}
        }
        self.phase = Phase::Ending;
    }

    /// A gainer's `Sync` ended; an error ends the transition.
    fn synced(&mut self, gainer: NodeId, digest: u64, result: Result<SyncReply>) -> Result<()> {
        let Some((asked, ranges)) = self.in_flight.remove(&gainer) else {
            return Ok(());
        };
        match result {
            Ok(reply) => {
                self.summary.keys += reply.keys;
                self.summary.bytes += reply.bytes;
                if !self.summary.receivers.contains(&gainer.to_string()) {
                    self.summary.receivers.push(gainer.to_string());
                }
                self.failures.remove(&gainer);
                if asked == digest {
                    self.fetched.entry(gainer).or_default().extend(ranges);
                }
                if self.failures.is_empty() {
                    self.last_error = None;
                }
                Ok(())
            }
            Err(err) => {
                let until_done = !matches!(self.goal, Goal::Leave { until_done: false });
                self.failed(&gainer, &err, until_done);
                if !until_done && self.failures.get(&gainer).copied().unwrap_or(0) >= SYNC_ATTEMPTS
                {
                    // Retryable (503): asked again once the gainer reaches
                    // the current replicas (a partition healed, a node
                    // back), it completes.
                    return Err(Error::NotReady {
                        reason: format!(
                            "{gainer} could not fetch its ranges ({err}); try again once it can \
                             reach their current replicas"
                        ),
                    });
                }
                Ok(())
            }
        }
    }
}

/// `a, b and c`.
fn names(nodes: &[NodeId]) -> String {
    let names: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
    match names.split_last() {
        None => "nobody".to_string(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The ranges `node` gains in the transition under way in `ring`.
fn gained(ring: &Ring, node: &NodeId) -> Vec<TokenRange> {
    ring.movements()
        .into_iter()
        .filter(|m| m.gainer == *node)
        .map(|m| m.range)
        .collect()
}

/// Closed intervals of tokens `[first, last]` covered by `range`.
fn intervals(range: TokenRange) -> Vec<(u64, u64)> {
    let (s, e) = (range.start.0, range.end.0);
    if s == e {
        return vec![(0, u64::MAX)];
    }
    if s < e {
        return vec![(s + 1, e)];
    }
    let mut out = vec![(0, e)];
    if s < u64::MAX {
        out.push((s + 1, u64::MAX));
    }
    out
}

/// Whether the ranges `have` cover every one of `want`.
fn covers(have: Option<&Vec<TokenRange>>, want: &[TokenRange]) -> bool {
    let mut merged: Vec<(u64, u64)> = have
        .into_iter()
        .flatten()
        .flat_map(|r| intervals(*r))
        .collect();
    merged.sort();
    let mut union: Vec<(u64, u64)> = Vec::new();
    for (first, last) in merged {
        match union.last_mut() {
            Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
            _ => union.push((first, last)),
        }
    }
    want.iter()
        .flat_map(|r| intervals(*r))
        .all(|(first, last)| union.iter().any(|(from, to)| *from <= first && last <= *to))
}

/// Checks that the members left after `leaving` goes (or with `replicas`
/// copies) can hold every key's N replicas.
pub fn check_enough_members(
    ring: &Ring,
    leaving: Option<&NodeId>,
    replicas: Option<usize>,
) -> Result<()> {
    let owners = ring
        .members()
        .filter(|m| Some(&m.id) != leaving)
        .filter(|m| matches!(m.state, MemberState::Normal | MemberState::Joining))
        .count();
    let n = replicas.unwrap_or(ring.target_replicas());
    if owners < n {
        let what = match (leaving, replicas) {
            (Some(node), _) => format!("without {node} the cluster would have {owners} members"),
            _ => format!("the cluster has {owners} members"),
        };
        return Err(Error::invalid(format!(
            "{what}, fewer than the {n} replicas each key needs; {}",
            if replicas.is_some() {
                "add members first"
            } else {
                "lower the replication factor first (ringkv replicas)"
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> TokenRange {
        TokenRange {
            start: Token(start),
            end: Token(end),
        }
    }

    #[test]
    fn coverage_of_ranges_that_wrap_and_split() {
        let have = vec![range(10, 20), range(20, 30), range(u64::MAX - 5, 3)];
        assert!(covers(Some(&have), &[range(12, 28)]));
        assert!(covers(Some(&have), &[range(u64::MAX - 2, 1)]));
        assert!(!covers(Some(&have), &[range(5, 12)]));
        assert!(!covers(Some(&have), &[range(25, 35)]));
        assert!(covers(None, &[]));
        assert!(!covers(None, &[range(1, 2)]));
        let whole = vec![range(7, 7)];
        assert!(covers(Some(&whole), &[range(u64::MAX - 1, 5), range(3, 4)]));
    }

    #[test]
    fn names_read_as_a_list() {
        let ids: Vec<NodeId> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|n| NodeId::parse(n).unwrap())
            .collect();
        assert_eq!(names(&ids), "a:1, b:1 and c:1");
        assert_eq!(names(&ids[..1]), "a:1");
        assert_eq!(names(&[]), "nobody");
    }
}
