//! Scripted tests of the transition state machines (`machine.rs`), in the
//! manner of toyDB's Raft testscripts: each file in `testscripts/` is a
//! goldenscript (commands, then `---` and their output), run against a
//! simulated cluster. The simulation keeps, per node, the gossip keys it
//! publishes and the copies of the others' it has received; the ring each
//! node sees is built from those with the real `ring_from_peers`, and each
//! transition machine gets the same events a real driver would give it.
//! Fetches and `Sync` calls wait until the script completes or fails them.
//! `UPDATE_GOLDENFILES=1 cargo test --lib lifecycle::sim` rewrites the
//! expected output, to be reviewed as a diff.
//!
//! Commands (nodes are named by one word; `a` is the node `a:1`):
//! - `cluster a b c [replicas=3]`: founders, normal, converged.
//! - `join d`: starts `d` joining through the others (its join machine
//!   starts).
//! - `leave a [until_done=true]`, `remove c via=a`, `replicas 5 via=a`:
//!   start a transition on a node.
//! - `gossip [rounds=N]`: delivers gossip between nodes that are up and not
//!   cut off (until nothing changes, or N rounds), feeding every machine.
//! - `lag a` / `unlag a`: `a` stays up and is seen live, but neither hears
//!   nor spreads gossip.
//! - `crash a` / `restart a`: the process dies (its transitions with it)
//!   and comes back with what its data dir kept.
//! - `complete [node]` / `fail [node] [reason=...]`: ends the fetches run
//!   by a node and the `Sync` calls it was asked (all nodes when none).
//! - `tick 5s`: time passes.
//! - `status`: each node's ring, what it waits for, its transitions.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::machine::{Action, Event, Goal, Snapshot, Transition};
use crate::error::Error;
use crate::membership::{
    KEY_DIGEST, KEY_REPLICAS, KEY_STATE, KEY_TOKENS, KEY_ZONE, PeerState, REMOVAL_PREFIX,
    ReplicaSetting, cluster_removals, cluster_replicas, ring_from_peers,
};
use crate::proto::SyncReply;
use crate::ring::{Member, MemberState, NodeId, Ring, allocate_tokens, encode_tokens};

/// Tokens per simulated node: few, so that runs stay fast.
const TOKENS: usize = 4;

/// A fetch or `Sync` call waiting for the script.
#[derive(Debug, Clone)]
enum Pending {
    /// `node` fetches the ranges it gains in the ring with `digest`.
    Fetch {
        node: String,
        transition: usize,
        digest: u64,
        last_pass: bool,
    },
    /// `from` asked `gainer` to fetch what it gains in `digest`.
    Sync {
        from: String,
        transition: usize,
        gainer: String,
        digest: u64,
    },
}

/// A node's keys as heard, with their version.
type Heard = ((u64, u64), BTreeMap<String, String>);

/// One simulated node.
struct Node {
    /// `name:1`.
    id: NodeId,
    /// Whether its process runs.
    up: bool,
    /// Restarts so far (the gossip generation).
    generation: u64,
    /// It neither hears nor spreads gossip.
    lagging: bool,
    /// The gossip keys it publishes.
    keys: BTreeMap<String, String>,
    /// Bumped by every change of `keys` (and by a restart): the newest
    /// copy of a node's keys wins wherever it travels.
    version: (u64, u64),
    /// What it has heard of the others, from them or relayed by anyone:
    /// their keys and version, newest kept.
    heard: BTreeMap<String, Heard>,
    /// What its data dir keeps: its tokens and whether it bootstrapped.
    kept: Option<(String, bool)>,
    /// Its transitions (index into the simulation's list).
    transitions: Vec<usize>,
}

/// A transition and the node it runs on.
struct Running {
    node: String,
    machine: Transition,
    over: bool,
}

/// The simulated cluster.
#[derive(Default)]
struct Sim {
    nodes: BTreeMap<String, Node>,
    transitions: Vec<Running>,
    pending: Vec<Pending>,
    /// Short names of ring digests, in order of appearance.
    rings: HashMap<u64, String>,
    /// Time since the start.
    now: Duration,
    /// The replication factor founders start with.
    replicas: usize,
}

impl Sim {
    fn ring_name(&mut self, digest: u64) -> String {
        let next = self.rings.len() + 1;
        self.rings
            .entry(digest)
            .or_insert_with(|| format!("r{next}"))
            .clone()
    }

    fn node(&self, name: &str) -> Result<&Node, Box<dyn StdError>> {
        self.nodes
            .get(name)
            .ok_or_else(|| format!("no node {name}").into())
    }

    /// What `name` sees: its own keys and those it heard.
    fn peers_seen(&self, name: &str) -> Vec<PeerState> {
        let Some(me) = self.nodes.get(name) else {
            return Vec::new();
        };
        let mut peers = vec![PeerState {
            node: me.id.to_string(),
            generation: me.generation,
            version: me.version.1,
            live: true,
            keys: me.keys.clone().into_iter().collect(),
        }];
        for (other, (_, keys)) in &me.heard {
            let Some(node) = self.nodes.get(other) else {
                continue;
            };
            peers.push(PeerState {
                node: node.id.to_string(),
                generation: 0,
                version: 0,
                live: node.up,
                keys: keys.clone().into_iter().collect(),
            });
        }
        peers
    }

    fn ring_of(&self, name: &str) -> Ring {
        ring_from_peers(&self.peers_seen(name), self.replicas)
    }

    /// What `name`'s driver would give its machines.
    fn snapshot(&self, name: &str) -> Snapshot {
        let ring = Arc::new(self.ring_of(name));
        let want = format!("{:016x}", ring.digest());
        let me = &self.nodes[name];
        let lagging = ring
            .members()
            .filter(|m| m.live && m.state != MemberState::Removed && m.id != me.id)
            .filter(|m| {
                let short = short(&m.id);
                me.heard
                    .get(&short)
                    .and_then(|(_, k)| k.get(KEY_DIGEST))
                    .is_none_or(|d| *d != want)
            })
            .map(|m| m.id.clone())
            .collect();
        let setting = cluster_replicas(&self.peers_seen(name)).unwrap_or(ReplicaSetting {
            n: ring.target_replicas(),
            epoch: 0,
            from: None,
        });
        Snapshot {
            ring,
            lagging,
            setting,
        }
    }

    /// Publishes `name`'s digest and re-publishes the cluster settings it
    /// saw, as the refresh task does.
    fn refresh(&mut self, name: &str) {
        let peers = self.peers_seen(name);
        let ring = ring_from_peers(&peers, self.replicas);
        let setting = cluster_replicas(&peers);
        let removals = cluster_removals(&peers);
        if self.nodes[name].keys.contains_key(KEY_TOKENS) {
            self.set(name, KEY_DIGEST, format!("{:016x}", ring.digest()));
        }
        if let Some(setting) = setting {
            self.set(name, KEY_REPLICAS, setting.encode());
        }
        for (removed, removal) in removals {
            self.set(
                name,
                &format!("{REMOVAL_PREFIX}{removed}"),
                removal_wire(removal.tokens_hash, removal.done),
            );
        }
    }

    /// Sets one of `name`'s keys, bumping its version when it changes.
    fn set(&mut self, name: &str, key: &str, value: String) {
        let node = self.nodes.get_mut(name).expect("node");
        if node.keys.get(key) != Some(&value) {
            node.keys.insert(key.to_string(), value);
            node.version.1 += 1;
        }
    }

    /// Feeds every running machine of `name` its view, performing actions.
    fn feed(&mut self, out: &mut String, name: &str, event: Option<Event>) {
        let indexes = self.nodes[name].transitions.clone();
        for index in indexes {
            if self.transitions[index].over {
                continue;
            }
            let event = match &event {
                Some(Event::Tick(now)) => Event::Tick(*now),
                _ => Event::View(self.snapshot(name)),
            };
            let actions = self.transitions[index].machine.step(event);
            self.perform(out, index, actions);
        }
    }

    fn perform(&mut self, out: &mut String, index: usize, actions: Vec<Action>) {
        let name = self.transitions[index].node.clone();
        for action in actions {
            let line = match action {
                Action::SetState(state) => {
                    self.set(&name, KEY_STATE, state.as_str().into());
                    format!("announce {}", state.as_str())
                }
                Action::PublishRemoval { node, removal } => {
                    self.set(
                        &name,
                        &format!("{REMOVAL_PREFIX}{node}"),
                        removal_wire(removal.tokens_hash, removal.done),
                    );
                    format!(
                        "publish removal of {} ({})",
                        short(&node),
                        if removal.done { "removed" } else { "removing" }
                    )
                }
                Action::PublishReplicas(setting) => {
                    self.set(&name, KEY_REPLICAS, setting.encode());
                    match setting.from {
                        Some(from) => {
                            format!("publish replicas {} (moving from {from})", setting.n)
                        }
                        None => format!("publish replicas {} (settled)", setting.n),
                    }
                }
                Action::KeepIdentity { tokens } => {
                    if let Some(node) = self.nodes.get_mut(&name) {
                        node.kept = Some((encode_tokens(&tokens), true));
                    }
                    "keep identity: bootstrapped".into()
                }
                Action::ForgetIdentity => {
                    if let Some(node) = self.nodes.get_mut(&name) {
                        node.kept = None;
                    }
                    "forget identity".into()
                }
                Action::Fetch { ring, last_pass } => {
                    let digest = ring.digest();
                    self.pending.push(Pending::Fetch {
                        node: name.clone(),
                        transition: index,
                        digest,
                        last_pass,
                    });
                    format!(
                        "fetch ranges gained in {}{}",
                        self.ring_name(digest),
                        if last_pass { " (last pass)" } else { "" }
                    )
                }
                Action::Sync { gainer, digest } => {
                    self.pending.push(Pending::Sync {
                        from: name.clone(),
                        transition: index,
                        gainer: short(&gainer),
                        digest,
                    });
                    format!("ask {} to sync {}", short(&gainer), self.ring_name(digest))
                }
                Action::Finished(result) => {
                    self.transitions[index].over = true;
                    let what = self.transitions[index].machine.goal().action();
                    match result {
                        Ok(summary) => format!(
                            "{what} done: receivers [{}], {} keys",
                            summary
                                .receivers
                                .iter()
                                .map(|r| short(&NodeId::parse(r).expect("node id")))
                                .collect::<Vec<_>>()
                                .join(" "),
                            summary.keys
                        ),
                        Err(err) => format!("{what} failed: {err}"),
                    }
                }
            };
            let _ = writeln!(out, "{name}: {line}");
        }
    }

    /// Delivers gossip until nothing changes (or `rounds` rounds).
    fn gossip(&mut self, out: &mut String, rounds: usize) {
        for _ in 0..rounds {
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for name in &names {
                self.refresh(name);
            }
            let mut changed = false;
            for from in &names {
                let sender = &self.nodes[from];
                if !sender.up || sender.lagging {
                    continue;
                }
                // What it knows: its own keys and everything it heard.
                let mut known = sender.heard.clone();
                known.insert(from.clone(), (sender.version, sender.keys.clone()));
                for to in &names {
                    let receiver = &self.nodes[to];
                    if to == from || !receiver.up || receiver.lagging {
                        continue;
                    }
                    let receiver = self.nodes.get_mut(to).expect("node");
                    for (about, (version, keys)) in &known {
                        if about == to {
                            continue;
                        }
                        let newer = receiver.heard.get(about).is_none_or(|(v, _)| v < version);
                        if newer {
                            receiver
                                .heard
                                .insert(about.clone(), (*version, keys.clone()));
                            changed = true;
                        }
                    }
                }
            }
            for name in &names {
                self.refresh(name);
                if self.nodes[name].up {
                    self.feed(out, name, None);
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn start(&mut self, out: &mut String, name: &str, goal: Goal) -> Result<(), Box<dyn StdError>> {
        let id = self.node(name)?.id.clone();
        let index = self.transitions.len();
        self.transitions.push(Running {
            node: name.to_string(),
            machine: Transition::new(id, goal),
            over: false,
        });
        self.nodes
            .get_mut(name)
            .ok_or("no such node")?
            .transitions
            .push(index);
        self.feed(out, name, None);
        Ok(())
    }

    fn new_node(&mut self, name: &str) -> Result<(), Box<dyn StdError>> {
        let id = NodeId::parse(&format!("{name}:1"))?;
        self.nodes.insert(
            name.to_string(),
            Node {
                id,
                up: true,
                generation: 1,
                lagging: false,
                keys: BTreeMap::new(),
                version: (1, 0),
                heard: BTreeMap::new(),
                kept: None,
                transitions: Vec::new(),
            },
        );
        Ok(())
    }

    /// Chooses `name`'s tokens on the ring it sees and announces them, as a
    /// joining node does once it has heard from a member.
    fn announce_tokens(&mut self, name: &str, state: MemberState) {
        let ring = self.ring_of(name);
        let id = self.nodes[name].id.clone();
        let me = Member {
            id,
            zone: String::new(),
            state: MemberState::Joining,
            live: true,
            tokens: Vec::new(),
        };
        let tokens = encode_tokens(&allocate_tokens(&ring, &me, TOKENS));
        let node = self.nodes.get_mut(name).expect("node");
        node.kept = Some((tokens.clone(), state == MemberState::Normal));
        self.set(name, KEY_TOKENS, tokens);
        self.set(name, KEY_STATE, state.as_str().into());
    }

    /// Ends the pending calls `filter` picks, with `result`.
    fn resolve(
        &mut self,
        out: &mut String,
        filter: Option<&str>,
        failure: Option<&str>,
    ) -> Result<(), Box<dyn StdError>> {
        let (picked, kept): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| {
                let at = match p {
                    Pending::Fetch { node, .. } => node,
                    Pending::Sync { gainer, .. } => gainer,
                };
                filter.is_none_or(|f| f == at)
            });
        self.pending = kept;
        for call in picked {
            match call {
                Pending::Fetch {
                    node,
                    transition,
                    digest,
                    last_pass,
                } => {
                    let up = self.nodes.get(&node).is_some_and(|n| n.up);
                    if !up || self.transitions[transition].over {
                        continue; // its process died with it
                    }
                    let result = match failure {
                        Some(reason) => Err(Error::NotReady {
                            reason: reason.to_string(),
                        }),
                        None => Ok(SyncReply { keys: 1, bytes: 0 }),
                    };
                    let _ = writeln!(
                        out,
                        "{node}: fetch in {} {}",
                        self.ring_name(digest),
                        if failure.is_some() { "failed" } else { "done" }
                    );
                    let actions = self.transitions[transition].machine.step(Event::Fetched {
                        digest,
                        last_pass,
                        result,
                    });
                    self.perform(out, transition, actions);
                }
                Pending::Sync {
                    from,
                    transition,
                    gainer,
                    digest,
                } => {
                    if self.transitions[transition].over
                        || !self.nodes.get(&from).is_some_and(|n| n.up)
                    {
                        continue;
                    }
                    let gainer_up = self.nodes.get(&gainer).is_some_and(|n| n.up);
                    let sees = self.ring_of(&gainer).digest();
                    let result = match failure {
                        Some(reason) => Err(reason.to_string()),
                        None if !gainer_up => Err("unreachable".to_string()),
                        None if sees != digest => {
                            Err(format!("{gainer} sees ring {}", self.ring_name(sees)))
                        }
                        None => Ok(SyncReply { keys: 1, bytes: 0 }),
                    };
                    let _ = writeln!(
                        out,
                        "{gainer}: sync of {} for {from} {}",
                        self.ring_name(digest),
                        match &result {
                            Ok(_) => "done".to_string(),
                            Err(why) => format!("failed: {why}"),
                        }
                    );
                    let id = self.nodes[&gainer].id.clone();
                    let actions = self.transitions[transition].machine.step(Event::Synced {
                        gainer: id,
                        digest,
                        result: result.map_err(|reason| Error::NotReady { reason }),
                    });
                    self.perform(out, transition, actions);
                }
            }
        }
        Ok(())
    }

    fn status(&mut self, out: &mut String) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let node = &self.nodes[&name];
            if !node.up {
                let _ = writeln!(out, "{name}: down");
                continue;
            }
            let snapshot = self.snapshot(&name);
            let members: Vec<String> = snapshot
                .ring
                .members()
                .map(|m| format!("{}={}", short(&m.id), m.shown_state().as_str()))
                .collect();
            let ring_name = self.ring_name(snapshot.ring.digest());
            let lagging: Vec<String> = snapshot.lagging.iter().map(short).collect();
            let _ = writeln!(
                out,
                "{name}: {ring_name} [{}] n={}{}{}",
                members.join(" "),
                snapshot.ring.replicas(),
                if snapshot.ring.target_replicas() != snapshot.ring.replicas() {
                    format!("->{}", snapshot.ring.target_replicas())
                } else {
                    String::new()
                },
                if lagging.is_empty() {
                    String::new()
                } else {
                    format!(" lagging=[{}]", lagging.join(" "))
                }
            );
            for index in self.nodes[&name].transitions.clone() {
                let running = &self.transitions[index];
                if running.over {
                    continue;
                }
                let status = running.machine.status();
                let _ = writeln!(
                    out,
                    "  {} {}: waiting for {}{}",
                    status.action,
                    short_name(&status.target),
                    status.waiting_for.replace(":1", ""),
                    status
                        .last_error
                        .map(|e| format!(" (last failure: {})", e.replace(":1", "")))
                        .unwrap_or_default()
                );
            }
        }
        let pending: Vec<String> = self
            .pending
            .iter()
            .map(|p| match p {
                Pending::Fetch { node, digest, .. } => {
                    format!(
                        "{node} fetching {}",
                        self.rings.get(digest).cloned().unwrap_or_default()
                    )
                }
                Pending::Sync {
                    gainer,
                    digest,
                    from,
                    ..
                } => format!(
                    "{gainer} syncing {} for {from}",
                    self.rings.get(digest).cloned().unwrap_or_default()
                ),
            })
            .collect();
        if !pending.is_empty() {
            let _ = writeln!(out, "pending: {}", pending.join(", "));
        }
    }
}

fn removal_wire(tokens_hash: u64, done: bool) -> String {
    format!(
        "{tokens_hash:016x}:{}",
        if done { "removed" } else { "removing" }
    )
}

/// `a` for `a:1`.
fn short(id: &NodeId) -> String {
    short_name(id.as_str())
}

fn short_name(id: &str) -> String {
    id.strip_suffix(":1").unwrap_or(id).to_string()
}

fn duration(raw: &str) -> Result<Duration, Box<dyn StdError>> {
    Ok(crate::config::parse_duration(raw)?)
}

impl goldenscript::Runner for Sim {
    fn run(&mut self, command: &goldenscript::Command) -> Result<String, Box<dyn StdError>> {
        let mut out = String::new();
        let mut args = command.consume_args();
        match command.name.as_str() {
            "cluster" => {
                self.replicas = args.lookup_parse("replicas")?.unwrap_or(3);
                let names: Vec<String> = args.rest_pos().iter().map(|a| a.value.clone()).collect();
                for name in &names {
                    self.new_node(name)?;
                    let setting = ReplicaSetting {
                        n: self.replicas,
                        epoch: 1,
                        from: None,
                    };
                    self.set(name, KEY_REPLICAS, setting.encode());
                    self.set(name, KEY_ZONE, String::new());
                    self.announce_tokens(name, MemberState::Normal);
                    self.gossip(&mut out, 10);
                }
                out.clear();
                self.status(&mut out);
            }
            "join" => {
                let name = &args.next_pos().ok_or("join NODE")?.value;
                self.new_node(name)?;
                self.set(name, KEY_ZONE, String::new());
                // It hears the cluster first, then chooses its tokens.
                self.gossip(&mut out, 2);
                self.announce_tokens(name, MemberState::Joining);
                let _ = writeln!(out, "{name}: announce joining");
                self.start(&mut out, name, Goal::Join)?;
            }
            "leave" => {
                let name = args.next_pos().ok_or("leave NODE")?.value.clone();
                let until_done = args.lookup_parse("until_done")?.unwrap_or(false);
                self.start(&mut out, &name, Goal::Leave { until_done })?;
            }
            "remove" => {
                let node = args
                    .next_pos()
                    .ok_or("remove NODE via=OTHER")?
                    .value
                    .clone();
                let via = args.lookup("via").ok_or("via=")?.value.clone();
                let id = self.node(&node)?.id.clone();
                self.start(&mut out, &via, Goal::Remove { node: id })?;
            }
            "replicas" => {
                let n: usize = args.next_pos().ok_or("replicas N via=OTHER")?.parse()?;
                let via = args.lookup("via").ok_or("via=")?.value.clone();
                self.start(&mut out, &via, Goal::Replicas { n })?;
            }
            "gossip" => {
                let rounds = args.lookup_parse("rounds")?.unwrap_or(20);
                self.gossip(&mut out, rounds);
            }
            "lag" | "unlag" => {
                let name = args.next_pos().ok_or("lag NODE")?.value.clone();
                let lag = command.name == "lag";
                self.nodes.get_mut(&name).ok_or("no such node")?.lagging = lag;
            }
            "crash" => {
                let name = args.next_pos().ok_or("crash NODE")?.value.clone();
                let node = self.nodes.get_mut(&name).ok_or("no such node")?;
                node.up = false;
                for index in std::mem::take(&mut node.transitions) {
                    self.transitions[index].over = true;
                }
            }
            "restart" => {
                let name = args.next_pos().ok_or("restart NODE")?.value.clone();
                let node = self.nodes.get_mut(&name).ok_or("no such node")?;
                node.up = true;
                node.generation += 1;
                node.version = (node.generation, 0);
                node.heard.clear();
                let kept = node.kept.clone();
                let zone = node.keys.get(KEY_ZONE).cloned().unwrap_or_default();
                node.keys = BTreeMap::from([(KEY_ZONE.to_string(), zone)]);
                self.gossip(&mut out, 2);
                match kept {
                    Some((tokens, bootstrapped)) => {
                        let state = if bootstrapped {
                            MemberState::Normal
                        } else {
                            MemberState::Joining
                        };
                        self.set(&name, KEY_TOKENS, tokens);
                        self.set(&name, KEY_STATE, state.as_str().into());
                        let _ = writeln!(out, "{name}: restarted {}", state.as_str());
                        if !bootstrapped {
                            self.start(&mut out, &name, Goal::Join)?;
                        }
                    }
                    None => {
                        let _ = writeln!(out, "{name}: restarted with nothing kept");
                    }
                }
            }
            "complete" | "fail" => {
                let node = args.next_pos().map(|a| a.value.clone());
                let reason = args.lookup("reason").map(|a| a.value.clone());
                let failure = (command.name == "fail")
                    .then(|| reason.unwrap_or_else(|| "cannot reach the replicas".into()));
                self.resolve(&mut out, node.as_deref(), failure.as_deref())?;
            }
            "tick" => {
                let by = duration(&args.next_pos().ok_or("tick DURATION")?.value)?;
                self.now += by;
                let names: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.up)
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in &names {
                    let now = self.now;
                    self.feed(&mut out, name, Some(Event::Tick(now)));
                    self.feed(&mut out, name, None);
                }
            }
            "status" => self.status(&mut out),
            other => return Err(format!("unknown command {other:?}").into()),
        }
        args.reject_rest()?;
        Ok(out)
    }
}

#[test]
fn testscripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lifecycle/testscripts");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .expect("testscripts dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts in {}", dir.display());
    for script in scripts {
        goldenscript::run(&mut Sim::default(), &script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    }
}
