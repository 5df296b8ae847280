//! The commands the front end knows: arity, flags and key positions (for
//! `COMMAND`, arity errors and the pipeline's key conflicts) and their
//! documentation (`COMMAND DOCS`, which redis-cli's hints read).

/// What a command does to the connection and the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads its keys.
    Read,
    /// Writes its keys.
    Write,
    /// Touches no key and no connection state: runs beside anything.
    Free,
    /// Changes the connection (HELLO, SELECT…) or works on the whole
    /// keyspace (SCAN, FLUSHALL): runs alone, after what came before.
    Barrier,
}

/// One command.
#[derive(Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: the count of words with the name; negative: at least.
    pub arity: i64,
    /// How it runs in a pipeline.
    pub access: Access,
    /// First key word (1-based, 0: none), last (-1: the last word), step.
    pub keys: (i64, i64, i64),
    /// `COMMAND DOCS` group.
    pub group: &'static str,
    /// One line of what it does here.
    pub summary: &'static str,
    /// Argument names, `[optional]`, `name...` repeated (for hints).
    pub args: &'static [&'static str],
    /// Served here (false: a known Redis command refused with a reason).
    pub served: bool,
}

const fn spec(
    name: &'static str,
    arity: i64,
    access: Access,
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
    args: &'static [&'static str],
) -> Spec {
    Spec {
        name,
        arity,
        access,
        keys,
        group,
        summary,
        args,
        served: true,
    }
}

const fn refused(
    name: &'static str,
    arity: i64,
    keys: (i64, i64, i64),
    group: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        access: Access::Barrier,
        keys,
        group,
        summary: "not supported by ringkv (see its README)",
        args: &[],
        served: false,
    }
}

use Access::{Barrier, Free, Read, Write};

const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);

/// Every command known, served or refused.
pub static COMMANDS: &[Spec] = &[
    // connection
    spec(
        "ping",
        -1,
        Free,
        NONE,
        "connection",
        "Answers PONG, or the message given",
        &["[message]"],
    ),
    spec(
        "echo",
        2,
        Free,
        NONE,
        "connection",
        "Answers the message given",
        &["message"],
    ),
    spec(
        "quit",
        -1,
        Barrier,
        NONE,
        "connection",
        "Closes the connection",
        &[],
    ),
    spec(
        "select",
        2,
        Barrier,
        NONE,
        "connection",
        "Selects database 0 (the only one)",
        &["index"],
    ),
    spec(
        "hello",
        -1,
        Barrier,
        NONE,
        "connection",
        "Handshake: protocol 2 or 3, optional AUTH and SETNAME",
        &["[protover [AUTH username password] [SETNAME clientname]]"],
    ),
    spec(
        "auth",
        -2,
        Barrier,
        NONE,
        "connection",
        "Authenticates the connection",
        &["[username]", "password"],
    ),
    spec(
        "client",
        -2,
        Barrier,
        NONE,
        "connection",
        "SETNAME, GETNAME, ID, SETINFO, INFO, LIST, NO-EVICT, NO-TOUCH",
        &["subcommand", "[arg ...]"],
    ),
    spec(
        "reset",
        1,
        Barrier,
        NONE,
        "connection",
        "Resets the connection (protocol 2, no name)",
        &[],
    ),
    spec(
        "readonly",
        1,
        Free,
        NONE,
        "cluster",
        "Accepted: every node serves reads of every slot",
        &[],
    ),
    spec(
        "readwrite",
        1,
        Free,
        NONE,
        "cluster",
        "Accepted: every node serves writes of every slot",
        &[],
    ),
    // server
    spec(
        "command",
        -1,
        Free,
        NONE,
        "server",
        "COUNT, INFO, DOCS, LIST: the commands of this server",
        &["[subcommand [arg ...]]"],
    ),
    spec(
        "info",
        -1,
        Free,
        NONE,
        "server",
        "Server, clients, memory, stats, keyspace, cluster and ringkv figures",
        &["[section ...]"],
    ),
    spec(
        "dbsize",
        1,
        Free,
        NONE,
        "server",
        "Keys in the cluster, approximate (members' key counts / N)",
        &[],
    ),
    spec(
        "flushall",
        -1,
        Barrier,
        NONE,
        "server",
        "Deletes every key (tombstones), if --resp-allow-flush",
        &["[ASYNC|SYNC]"],
    ),
    spec(
        "flushdb",
        -1,
        Barrier,
        NONE,
        "server",
        "Deletes every key (tombstones), if --resp-allow-flush",
        &["[ASYNC|SYNC]"],
    ),
    spec(
        "config",
        -2,
        Free,
        NONE,
        "server",
        "GET of a few settings; SET is refused",
        &["subcommand", "[arg ...]"],
    ),
    spec(
        "time",
        1,
        Free,
        NONE,
        "server",
        "This node's clock: seconds and microseconds",
        &[],
    ),
    // strings
    spec(
        "get",
        2,
        Read,
        ONE,
        "string",
        "The value of a key",
        &["key"],
    ),
    spec(
        "set",
        -3,
        Write,
        ONE,
        "string",
        "Stores a value (NX/XX/GET are checked on a quorum read first, not atomically)",
        &[
            "key",
            "value",
            "[NX|XX]",
            "[GET]",
            "[EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]",
        ],
    ),
    spec(
        "setex",
        4,
        Write,
        ONE,
        "string",
        "Stores a value expiring in seconds",
        &["key", "seconds", "value"],
    ),
    spec(
        "psetex",
        4,
        Write,
        ONE,
        "string",
        "Stores a value expiring in milliseconds",
        &["key", "milliseconds", "value"],
    ),
    spec(
        "setnx",
        3,
        Write,
        ONE,
        "string",
        "Stores a value if the key is absent (checked on a quorum read first)",
        &["key", "value"],
    ),
    spec(
        "getset",
        3,
        Write,
        ONE,
        "string",
        "Stores a value, answering the old one (read first, not atomically)",
        &["key", "value"],
    ),
    spec(
        "getdel",
        2,
        Write,
        ONE,
        "string",
        "Answers the value and deletes the key",
        &["key"],
    ),
    spec(
        "getex",
        -2,
        Write,
        ONE,
        "string",
        "Answers the value and changes its expiry",
        &[
            "key",
            "[EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|PERSIST]",
        ],
    ),
    spec(
        "mget",
        -2,
        Read,
        ALL,
        "string",
        "The values of several keys",
        &["key [key ...]"],
    ),
    spec(
        "mset",
        -3,
        Write,
        (1, -1, 2),
        "string",
        "Stores several values, each on its own (not atomically)",
        &["key value [key value ...]"],
    ),
    spec(
        "strlen",
        2,
        Read,
        ONE,
        "string",
        "The length of a value",
        &["key"],
    ),
    spec(
        "getrange",
        4,
        Read,
        ONE,
        "string",
        "A part of a value",
        &["key", "start", "end"],
    ),
    spec(
        "substr",
        4,
        Read,
        ONE,
        "string",
        "A part of a value",
        &["key", "start", "end"],
    ),
    // keys
    spec(
        "del",
        -2,
        Write,
        ALL,
        "generic",
        "Deletes keys (tombstones), answering how many existed",
        &["key [key ...]"],
    ),
    spec(
        "unlink",
        -2,
        Write,
        ALL,
        "generic",
        "Deletes keys (tombstones), answering how many existed",
        &["key [key ...]"],
    ),
    spec(
        "exists",
        -2,
        Read,
        ALL,
        "generic",
        "How many of the keys exist (repeats count)",
        &["key [key ...]"],
    ),
    spec("type", 2, Read, ONE, "generic", "string or none", &["key"]),
    spec(
        "expire",
        -3,
        Write,
        ONE,
        "generic",
        "Sets a key's time to live in seconds",
        &["key", "seconds", "[NX|XX|GT|LT]"],
    ),
    spec(
        "pexpire",
        -3,
        Write,
        ONE,
        "generic",
        "Sets a key's time to live in milliseconds",
        &["key", "milliseconds", "[NX|XX|GT|LT]"],
    ),
    spec(
        "expireat",
        -3,
        Write,
        ONE,
        "generic",
        "Sets a key's expiry as a Unix time in seconds",
        &["key", "unix-time-seconds", "[NX|XX|GT|LT]"],
    ),
    spec(
        "pexpireat",
        -3,
        Write,
        ONE,
        "generic",
        "Sets a key's expiry as a Unix time in milliseconds",
        &["key", "unix-time-milliseconds", "[NX|XX|GT|LT]"],
    ),
    spec(
        "expiretime",
        2,
        Read,
        ONE,
        "generic",
        "A key's expiry, Unix time in seconds",
        &["key"],
    ),
    spec(
        "pexpiretime",
        2,
        Read,
        ONE,
        "generic",
        "A key's expiry, Unix time in milliseconds",
        &["key"],
    ),
    spec(
        "ttl",
        2,
        Read,
        ONE,
        "generic",
        "Seconds left to live (-1: no expiry, -2: absent)",
        &["key"],
    ),
    spec(
        "pttl",
        2,
        Read,
        ONE,
        "generic",
        "Milliseconds left to live (-1: no expiry, -2: absent)",
        &["key"],
    ),
    spec(
        "persist",
        2,
        Write,
        ONE,
        "generic",
        "Removes a key's expiry",
        &["key"],
    ),
    spec(
        "scan",
        -2,
        Barrier,
        NONE,
        "generic",
        "Iterates over the keys of the whole cluster (the cursor is a ring position)",
        &["cursor", "[MATCH pattern]", "[COUNT count]", "[TYPE type]"],
    ),
    spec(
        "keys",
        2,
        Barrier,
        NONE,
        "generic",
        "Every key of the cluster matching a pattern",
        &["pattern"],
    ),
    // cluster
    spec(
        "cluster",
        -2,
        Free,
        NONE,
        "cluster",
        "INFO, MYID, NODES, SLOTS, SHARDS, KEYSLOT: the live members as a cluster in which every node serves every slot",
        &["subcommand", "[arg ...]"],
    ),
    // refused: read-modify-write, multi-key atomicity, transactions, scripts
    refused("incr", 2, ONE, "string"),
    refused("incrby", 3, ONE, "string"),
    refused("incrbyfloat", 3, ONE, "string"),
    refused("decr", 2, ONE, "string"),
    refused("decrby", 3, ONE, "string"),
    refused("append", 3, ONE, "string"),
    refused("setrange", 4, ONE, "string"),
    refused("msetnx", -3, (1, -1, 2), "string"),
    refused("lcs", -3, (1, 2, 1), "string"),
    refused("rename", 3, (1, 2, 1), "generic"),
    refused("renamenx", 3, (1, 2, 1), "generic"),
    refused("copy", -3, (1, 2, 1), "generic"),
    refused("move", 3, ONE, "generic"),
    refused("multi", 1, NONE, "transactions"),
    refused("exec", 1, NONE, "transactions"),
    refused("discard", 1, NONE, "transactions"),
    refused("watch", -2, ALL, "transactions"),
    refused("unwatch", 1, NONE, "transactions"),
    refused("eval", -3, NONE, "scripting"),
    refused("evalsha", -3, NONE, "scripting"),
    refused("eval_ro", -3, NONE, "scripting"),
    refused("script", -2, NONE, "scripting"),
    refused("function", -2, NONE, "scripting"),
    refused("fcall", -3, NONE, "scripting"),
    refused("subscribe", -2, NONE, "pubsub"),
    refused("psubscribe", -2, NONE, "pubsub"),
    refused("ssubscribe", -2, NONE, "pubsub"),
    refused("publish", 3, NONE, "pubsub"),
    refused("spublish", 3, NONE, "pubsub"),
    refused("pubsub", -2, NONE, "pubsub"),
    refused("wait", 3, NONE, "generic"),
    refused("object", -2, NONE, "generic"),
    refused("dump", 2, ONE, "generic"),
    refused("restore", -4, ONE, "generic"),
    refused("sort", -2, ONE, "generic"),
    refused("randomkey", 1, NONE, "generic"),
    refused("touch", -2, ALL, "generic"),
    refused("swapdb", 3, NONE, "server"),
    refused("save", 1, NONE, "server"),
    refused("bgsave", -1, NONE, "server"),
    refused("bgrewriteaof", 1, NONE, "server"),
    refused("shutdown", -1, NONE, "server"),
    refused("monitor", 1, NONE, "server"),
    refused("debug", -2, NONE, "server"),
    refused("replicaof", 3, NONE, "server"),
    refused("slaveof", 3, NONE, "server"),
    refused("sync", 1, NONE, "server"),
    refused("psync", -3, NONE, "server"),
    refused("acl", -2, NONE, "server"),
    refused("asking", 1, NONE, "cluster"),
];

/// The spec of `name` (lower case), if known.
pub fn lookup(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name == name)
}

/// The data type a command of another data type works on, from a list of
/// Redis's command names (`LPUSH`, `HSET`…).
pub fn other_type(name: &str) -> Option<&'static str> {
    const NAMES: &[(&str, &str)] = &[
        (
            "lpush lpop rpush rpop llen lrange lindex lset lrem linsert ltrim lpos lmove blpop brpop brpoplpush rpoplpush lmpop blmpop lpushx rpushx blmove",
            "list",
        ),
        (
            "hset hget hdel hgetall hkeys hvals hlen hexists hincrby hincrbyfloat hmset hmget hsetnx hstrlen hscan hrandfield",
            "hash",
        ),
        (
            "sadd srem smembers sismember smismember scard spop srandmember sinter sunion sdiff sinterstore sunionstore sdiffstore smove sscan sintercard",
            "set",
        ),
        (
            "zadd zrem zrange zrangebyscore zrevrange zrevrangebyscore zscore zcard zcount zincrby zrank zrevrank zpopmin zpopmax bzpopmin bzpopmax zrangestore zunion zinter zdiff zunionstore zinterstore zdiffstore zscan zmscore zlexcount zrangebylex zrevrangebylex zremrangebyrank zremrangebyscore zremrangebylex zrandmember zmpop bzmpop zintercard",
            "sorted set",
        ),
        (
            "xadd xrange xrevrange xlen xread xreadgroup xgroup xack xclaim xautoclaim xpending xtrim xdel xinfo xsetid",
            "stream",
        ),
        ("pfadd pfcount pfmerge", "HyperLogLog"),
        (
            "geoadd geodist geohash geopos georadius georadiusbymember geosearch geosearchstore",
            "geo",
        ),
        (
            "setbit getbit bitcount bitpos bitop bitfield bitfield_ro",
            "bitmap",
        ),
    ];
    NAMES
        .iter()
        .find(|(names, _)| names.split(' ').any(|n| n == name))
        .map(|(_, kind)| *kind)
}

impl Spec {
    /// Whether `words` (the name included) fits the arity.
    pub fn arity_ok(&self, words: usize) -> bool {
        let words = words as i64;
        if self.arity >= 0 {
            words == self.arity
        } else {
            words >= -self.arity
        }
    }

    /// The key words of a call whose arguments (name excluded) are `args`.
    pub fn key_indexes(&self, args: usize) -> Vec<usize> {
        let (first, last, step) = self.keys;
        if first == 0 || args == 0 {
            return Vec::new();
        }
        let last = if last < 0 {
            args as i64 + 1 + last
        } else {
            last
        };
        let mut out = Vec::new();
        let mut i = first;
        while i <= last.min(args as i64) {
            out.push((i - 1) as usize);
            i += step.max(1);
        }
        out
    }

    /// `COMMAND` flags.
    pub fn flags(&self) -> Vec<&'static str> {
        let mut flags = match self.access {
            Access::Read => vec!["readonly", "fast"],
            Access::Write => vec!["write", "denyoom"],
            Access::Free => vec!["fast", "stale", "loading"],
            Access::Barrier => vec!["stale", "loading"],
        };
        if super::connection::need(self) == super::connection::Need::Nothing {
            flags.push("no-auth");
        }
        flags
    }
}
