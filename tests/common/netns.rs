//! Real network partitions: each node in its own network namespace with its
//! own address, all joined by a bridge in the test's namespace, so that the
//! test process (the clients) reaches every node while the links between
//! chosen nodes are cut and healed with blackhole routes inside the nodes'
//! namespaces. Needs root and iproute2 (the test script installs it).
//!
//! Everything created is named `rkv<pid>…` after the test process. It is
//! removed when the [`Net`] is dropped (a passing or failing test), and by a
//! reaper process started with it that outlives the test: when the test
//! process is gone (interrupted, killed) the reaper removes what is left.
//! Leftovers of a test process that no longer exists are also swept when the
//! next [`Net`] is created.

use std::process::{Command, Stdio};

/// Prefix of every namespace, bridge and link the harness creates.
pub const PREFIX: &str = "rkv";

/// A bridge and one namespace per node.
pub struct Net {
    /// `rkv<pid>`: the prefix of this net's names.
    tag: String,
    /// The first three octets of the net's /24, `10.x.y`.
    subnet: String,
    /// Namespaces created, by node index.
    spaces: Vec<Option<String>>,
    /// The reaper process.
    reaper: Option<std::process::Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(err) = ip(args) {
        panic!("{err} (the partition tests need root)");
    }
}

/// The shell commands that remove everything named `tag…`.
fn cleanup_script(tag: &str) -> String {
    format!(
        "for ns in $(ip netns list | awk '{{print $1}}' | grep '^{tag}-'); do \
           for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p 2>/dev/null; done; \
           ip netns del $ns 2>/dev/null; \
         done; \
         for l in $(ip -o link show | awk -F': ' '{{print $2}}' | cut -d@ -f1 | grep '^{tag}'); do \
           ip link del $l 2>/dev/null; \
         done; true"
    )
}

/// Removes what earlier test processes, now gone, left behind.
fn sweep_leftovers() {
    let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(
            "{ ip netns list | awk '{print $1}'; ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1; } \
             | grep -o '^rkv[0-9]*' | sort -u",
        )
        .output()
    else {
        return;
    };
    for tag in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(pid) = tag.trim_start_matches(PREFIX).parse::<i32>() else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(cleanup_script(tag))
                .status();
        }
    }
}

impl Net {
    /// A bridge with address `10.x.y.254/24` in this namespace.
    pub fn new() -> Net {
        sweep_leftovers();
        let pid = std::process::id();
        let tag = format!("{PREFIX}{pid}");
        let subnet = format!("10.{}.{}", 100 + (pid >> 8) % 100, pid & 0xff);
        let bridge = format!("{tag}b");
        // The reaper first, so that nothing is left even if the setup fails.
        let reaper = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {}",
                cleanup_script(&tag)
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let net = Net {
            tag,
            subnet,
            spaces: Vec::new(),
            reaper,
        };
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&[
            "addr",
            "add",
            &format!("{}.254/24", net.subnet),
            "dev",
            &bridge,
        ]);
        must(&["link", "set", &bridge, "up"]);
        net
    }

    /// The address of node `i`.
    pub fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Creates node `i`'s namespace (once) and returns its name.
    pub fn space(&mut self, i: usize) -> String {
        assert!(i < 200, "at most 200 nodes");
        if self.spaces.len() <= i {
            self.spaces.resize(i + 1, None);
        }
        if let Some(name) = &self.spaces[i] {
            return name.clone();
        }
        let name = format!("{}-{i}", self.tag);
        let (outside, inside) = (format!("{}h{i}", self.tag), format!("{}n{i}", self.tag));
        must(&["netns", "add", &name]);
        must(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        must(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        must(&["link", "set", &inside, "netns", &name]);
        must(&["link", "set", &outside, "master", &format!("{}b", self.tag)]);
        must(&["link", "set", &outside, "up"]);
        let address = format!("{}/24", self.host(i));
        must(&[
            "netns", "exec", &name, "ip", "addr", "add", &address, "dev", &inside,
        ]);
        must(&["netns", "exec", &name, "ip", "link", "set", &inside, "up"]);
        self.spaces[i] = Some(name.clone());
        name
    }

    /// Cuts the link between nodes `a` and `b`, both ways. Clients still
    /// reach both.
    pub fn cut(&mut self, a: usize, b: usize) {
        self.route("add", a, b);
        self.route("add", b, a);
    }

    /// Heals the link between nodes `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) {
        self.route("del", a, b);
        self.route("del", b, a);
    }

    /// Cuts every link between a node of `left` and one of `right`.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.cut(a, b);
            }
        }
    }

    /// Heals every link between a node of `left` and one of `right`.
    pub fn heal_partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.heal(a, b);
            }
        }
    }

    /// Cuts UDP between nodes `a` and `b`, both ways: their gossip no
    /// longer flows while TCP (the API and the node-to-node RPC) does.
    pub fn cut_udp(&mut self, a: usize, b: usize) {
        self.udp_rule("add", a, b);
        self.udp_rule("add", b, a);
    }

    /// Lets UDP between nodes `a` and `b` flow again.
    pub fn heal_udp(&mut self, a: usize, b: usize) {
        self.udp_rule("del", a, b);
        self.udp_rule("del", b, a);
    }

    /// Adds or deletes, in `from`'s namespace, the policy rule that drops
    /// UDP to `to`.
    fn udp_rule(&mut self, verb: &str, from: usize, to: usize) {
        let space = self.space(from);
        let target = format!("{}/32", self.host(to));
        let result = ip(&[
            "netns",
            "exec",
            &space,
            "ip",
            "rule",
            verb,
            "to",
            &target,
            "ipproto",
            "udp",
            "blackhole",
        ]);
        match (verb, result) {
            (_, Ok(())) => {}
            ("del", Err(err)) if err.contains("No such file") => {}
            (_, Err(err)) => panic!("{err}"),
        }
    }

    /// Adds or deletes, in `from`'s namespace, the blackhole route to `to`.
    fn route(&mut self, verb: &str, from: usize, to: usize) {
        let space = self.space(from);
        let target = format!("{}/32", self.host(to));
        let result = ip(&[
            "netns",
            "exec",
            &space,
            "ip",
            "route",
            verb,
            "blackhole",
            &target,
        ]);
        match (verb, result) {
            (_, Ok(())) => {}
            // Healing what is not cut, or cutting what is, changes nothing.
            ("del", Err(err)) if err.contains("No such process") => {}
            ("add", Err(err)) if err.contains("File exists") => {}
            (_, Err(err)) => panic!("{err}"),
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The nodes' processes are killed by the cluster first; anything
        // still in a namespace goes with it.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(cleanup_script(&self.tag))
            .status();
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
    }
}
