//! Cluster mode: the prepaid credit bank in Redis, shared by several gateway processes.
//!
//! Embedded mode (`ledger.rs`) keeps each tenant's book in one process. In cluster mode several
//! gateway processes ("nodes") serve the same tenants, so the balance lives in one Redis and each
//! node *leases* allowance from it in chunks, spends the chunk locally on the request path (no
//! Redis round trip), and reports what it spent in batched flushes. Together the nodes can never
//! spend more than the balance: a node only spends allowance it holds, and Redis only hands out
//! allowance the balance covers.
//!
//! Keys (prefix configurable, default `tg:`), amounts are i64 nano-credits:
//! - `bal:{t}`: the tenant's unallocated balance;
//! - `lease:{node}:{t}`: allowance `node` holds for tenant `t` (leased, not yet spent or returned);
//! - `spent:{t}`: total charges flushed; `credited:{t}`: total credits ever applied;
//! - `nodes:{t}`: the nodes that hold a lease for `t`; `held:{node}`: the tenants `node` holds a
//!   lease for (so snapshots and crash recovery never SCAN);
//! - `op:{c|l|g|f}:{id}`: idempotency markers (credit, lease, give-back, flush) with a TTL;
//! - `epoch:{node}`: incremented by every `Bank::connect`, so the ids a node generates are unique
//!   across restarts of a node with the same id.
//!
//! Invariant at every moment, per tenant: `bal + Σ_nodes lease + spent = credited`. Every
//! mutation is one Lua script (EVALSHA), so Redis applies it atomically; the scripts validate
//! everything before their first write, so an error reply means nothing was applied.
//!
//! On top of the bank, [`Allowances`] is what the request path calls: `reserve` and `settle` touch
//! only local state while the node holds enough allowance, and a background task
//! ([`Allowances::run_flusher`]) flushes charges, returns idle allowance and resolves Redis calls
//! whose outcome was lost (timeouts), so every charge is applied exactly once.
//!
//! All scripts touch keys of many tenants (flush) or build key names inside Lua (snapshot,
//! reclaim, rates): every key of the bank must be on one Redis. That is a standalone Redis, one
//! primary with replicas behind Sentinel (`redis+sentinel://`), or one slot of a Redis Cluster
//! (`redis+cluster://`): there the prefix carries a hash tag (`{tg}:`; a prefix without one is
//! wrapped into one), so every key hashes to the same slot and each script's keys share it; the
//! commands without a key (PING, ROLE, WAIT, SCRIPT LOAD) are sent to that slot's primary. The
//! cluster gives the bank its failover (a replica of that slot's primary is promoted), not
//! sharding: the bank is one slot.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// The bank's connection: one Redis (the URL's, or the master Sentinel names), or a Redis Cluster
/// whose slot of the bank's hash tag holds every key.
#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Routing to the primary of the bank's slot.
fn on_slot(route: &redis::cluster_routing::Route) -> redis::cluster_routing::RoutingInfo {
    redis::cluster_routing::RoutingInfo::SingleNode(
        redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(*route),
    )
}

/// `redis+cluster://[user:password@]host:port[,host:port...][/]`: some nodes of a Redis Cluster
/// (the client learns the others from them), as `redis://` URLs.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, BankError> {
    let Some(rest) = url.strip_prefix("redis+cluster://") else {
        return Ok(None);
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    if hosts.contains('/') {
        return Err(BankError::Invalid(
            "redis+cluster:// takes no database (a cluster has only database 0)",
        ));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(BankError::Invalid("redis+cluster:// names no node"));
    }
    Ok(Some(nodes))
}

/// The key prefix a Redis Cluster needs: one with a hash tag (`{...}`) keeps every key of the
/// bank in one slot; a prefix without one (`tg:`) becomes `{tg}:`.
pub fn cluster_prefix(prefix: &str) -> String {
    let tagged = prefix
        .find('{')
        .and_then(|i| prefix[i + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if tagged {
        prefix.to_string()
    } else {
        let name = prefix.trim_end_matches(':');
        format!("{{{}}}:", if name.is_empty() { "tg" } else { name })
    }
}

/// Largest amount one call accepts (2^53): Lua numbers are doubles, exact up to here.
pub const MAX_AMOUNT: i64 = 1 << 53;

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The call did not complete within the configured timeout; it may or may not have been
    /// applied (retry with the same id to find out).
    #[error("redis call timed out after {ms} ms (outcome unknown)")]
    Timeout { ms: u64 },
    /// Redis failed recently and the call was not attempted (fail closed), or the allowance
    /// manager is shut down.
    #[error("credit bank unavailable")]
    Unavailable,
    /// Redis no longer holds the bank this node serves on (it lost its state, or the bank was
    /// rebuilt without this node): nothing was applied, and the node refuses calls until it
    /// takes part in the rebuild (`Bank::adopt`).
    #[error(
        "the credit bank lost its state; calls are refused until it is rebuilt from the record"
    )]
    Lost,
    #[error("insufficient credit: {available} nano-credits available")]
    Insufficient { available: i64 },
    /// A flush charged more than the node's lease for a tenant; nothing in the batch was applied.
    #[error("charge of {amount} exceeds the lease of {lease} for tenant {tenant}")]
    Overdrawn {
        tenant: i64,
        lease: i64,
        amount: i64,
    },
    /// The idempotency id was already used for a different operation.
    #[error("idempotency id {id} was already used with other parameters")]
    IdConflict { id: String },
    #[error("invalid amount {amount}")]
    InvalidAmount { amount: i64 },
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl BankError {
    /// Redis could not be reached or did not answer (as opposed to a refusal).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BankError::Redis(_)
                | BankError::Timeout { .. }
                | BankError::Unavailable
                | BankError::Lost
        )
    }

    /// The call may have been applied although no answer came back.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            BankError::Timeout { .. } => true,
            BankError::Redis(e) => {
                !matches!(e.kind(), redis::ErrorKind::Server(_)) && !e.is_connection_refusal()
            }
            _ => false,
        }
    }
}

/// A tenant's totals in Redis, read atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TenantTotals {
    /// Unallocated balance.
    pub bal: i64,
    /// Sum of all nodes' leases.
    pub leases: i64,
    pub spent: i64,
    pub credited: i64,
    /// Each node's lease (nodes in `nodes:{t}`).
    pub by_node: Vec<(String, i64)>,
}

impl TenantTotals {
    /// `bal + leases + spent == credited`.
    pub fn balanced(&self) -> bool {
        self.bal
            .checked_add(self.leases)
            .and_then(|x| x.checked_add(self.spent))
            == Some(self.credited)
    }
}

#[derive(Debug, Clone)]
pub struct BankConfig {
    /// Every Redis call is abandoned after this (the connection is then replaced).
    pub op_timeout: Duration,
    /// Each connection attempt times out after this.
    pub connect_timeout: Duration,
    /// TTL of credit and give-back markers.
    pub op_marker_ttl: Duration,
    /// TTL of flush markers. One marker per non-empty flush: at 20 flushes/s a busy node writes
    /// ~1.7 M markers a day (~100 bytes each in Redis).
    pub flush_marker_ttl: Duration,
    /// TTL of lease markers (only needed until a timed-out lease is resolved).
    pub lease_marker_ttl: Duration,
    /// A node that finds no bank in Redis creates one at once. A fleet node (the gateway)
    /// sets this to false: a missing bank is then rebuilt from the record once every node
    /// of the fleet has put its charges there (`Bank::publish`).
    pub create_bank: bool,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig {
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            op_marker_ttl: Duration::from_secs(7 * 86_400),
            flush_marker_ttl: Duration::from_secs(3 * 86_400),
            lease_marker_ttl: Duration::from_secs(86_400),
            create_bank: true,
        }
    }
}

// KEYS: bal, credited, op. ARGV: amount, ttl, fingerprint, force ('1': apply a debit even when
// the balance cannot cover it).
// Returns {0, bal} applied, {1, bal} replay, {-1, bal} a debit the balance cannot cover, {-2}
// id reused with other parameters.
const CREDIT_LUA: &str = r#"
local m = redis.call('GET', KEYS[3])
if m then
  if m ~= ARGV[3] then return {-2} end
  return {1, redis.call('GET', KEYS[1]) or '0'}
end
local amt = tonumber(ARGV[1])
local bal = redis.call('GET', KEYS[1]) or '0'
if amt < 0 and ARGV[4] ~= '1' and tonumber(bal) + amt < 0 then return {-1, bal} end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2])
return {0, redis.call('GET', KEYS[1])}
"#;

// KEYS: bal, lease, nodes, held [, op]. ARGV: want, node, tenant, ttl.
// Moves min(want, bal) from bal to the lease. With an op key: once per op id (a replay returns
// the amount granted the first time; want = 0 on an unknown id voids it).
// Returns {0, granted} or {1, granted} (replay), {-2} id used for another tenant.
const LEASE_LUA: &str = r#"
local fp = ARGV[3] .. ':'
if KEYS[5] then
  local m = redis.call('GET', KEYS[5])
  if m then
    if string.sub(m, 1, #fp) ~= fp then return {-2} end
    return {1, tonumber(string.sub(m, #fp + 1))}
  end
end
local want = tonumber(ARGV[1])
local bal = tonumber(redis.call('GET', KEYS[1]) or '0')
local g = want
if bal < g then g = bal end
if g < 0 then g = 0 end
local gs = string.format('%d', g)
if g > 0 then
  redis.call('DECRBY', KEYS[1], gs)
  redis.call('INCRBY', KEYS[2], gs)
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[3])
end
if KEYS[5] then redis.call('SET', KEYS[5], fp .. gs, 'EX', ARGV[4]) end
return {0, g}
"#;

// KEYS: bal, lease, nodes, held, op. ARGV: amount, node, tenant, ttl.
// Moves min(amount, lease) from the lease back to bal, once per op id.
// Returns {0, returned}, {1, returned} (replay), {-2} id used with other parameters.
const GIVE_BACK_LUA: &str = r#"
local fp = ARGV[3] .. ':' .. ARGV[1] .. ':'
local m = redis.call('GET', KEYS[5])
if m then
  if string.sub(m, 1, #fp) ~= fp then return {-2} end
  return {1, tonumber(string.sub(m, #fp + 1))}
end
local amt = tonumber(ARGV[1])
local l = tonumber(redis.call('GET', KEYS[2]) or '0')
local r = amt
if l < r then r = l end
if r < 0 then r = 0 end
local rs = string.format('%d', r)
if r > 0 then
  redis.call('DECRBY', KEYS[2], rs)
  redis.call('INCRBY', KEYS[1], rs)
end
if l - r == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[2])
  redis.call('SREM', KEYS[4], ARGV[3])
end
redis.call('SET', KEYS[5], fp .. rs, 'EX', ARGV[4])
return {0, r}
"#;

// KEYS: op, held, then per charge i: lease_i, spent_i, nodes_i (KEYS[3i], [3i+1], [3i+2]).
// ARGV: ttl, node, fingerprint, then per charge i: tenant_i (ARGV[2+2i]), amount_i (ARGV[3+2i]).
// KEYS: bal, credited, spent, cursor. ARGV: credited, spent, expected cursor.
// Initialises a tenant's bank from the SQL record, once: nothing happens when the tenant is
// already known (`credited` exists). Refused ({-3}) when the fleet's credit cursor moved since
// the caller summed the record (the caller re-reads and retries). Returns {0} seeded, {1} known.
const SEED_LUA: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local cur = redis.call('GET', KEYS[4]) or '0'
if cur ~= ARGV[3] then return {-3} end
local c = tonumber(ARGV[1])
local s = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', c - s))
return {0}
"#;

// KEYS: bal, credited, limit (hash), spent. ARGV: limit, spent when first seen, generation,
// expiry in seconds of a per-period bucket (0: none).
// A quota bucket's balance is its limit minus what was spent under it. The first call sets
// bal = limit - spent; later calls move bal and credited by the change of limit, unless their
// generation is older than the one recorded (a node with a stale snapshot). Returns {0}
// applied, {1} stale or unchanged.
const LIMIT_LUA: &str = r#"
local cur = redis.call('HMGET', KEYS[3], 'limit', 'gen')
local lim = tonumber(ARGV[1])
if not cur[1] then
  local b = lim - tonumber(ARGV[2])
  redis.call('INCRBY', KEYS[1], string.format('%d', b))
  redis.call('INCRBY', KEYS[2], string.format('%d', b))
  redis.call('HSET', KEYS[3], 'limit', ARGV[1], 'gen', ARGV[3])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    -- A bucket of one quota period: its keys go away some time after the period ended
    -- (INCRBY/DECRBY by leases, flushes and give-backs keep the expiry).
    if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], '0') end
    for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
  end
  return {0}
end
if tonumber(ARGV[3]) < tonumber(cur[2]) then return {1} end
local d = lim - tonumber(cur[1])
if d ~= 0 then
  redis.call('INCRBY', KEYS[1], string.format('%d', d))
  redis.call('INCRBY', KEYS[2], string.format('%d', d))
end
redis.call('HSET', KEYS[3], 'limit', ARGV[1], 'gen', ARGV[3])
if d == 0 then return {1} end
return {0}
"#;

// KEYS: cursor. ARGV: seq. Moves the fleet's credit cursor forward only. Returns the cursor.
const CURSOR_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if n > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return n
end
return cur
"#;

// Rate-limit sync. KEYS: the bank's marker (for routing only). ARGV: prefix, ttl, then six per subject: subject, minute, and the counts
// (requests, tokens) to add to the previous and the current minute. Returns four totals per
// subject: previous requests, previous tokens, current requests, current tokens.
const RATES_LUA: &str = r#"
local out = {}
local i = 3
while i + 5 <= #ARGV do
  local base = ARGV[1] .. 'rl:' .. ARGV[i] .. ':'
  local m = tonumber(ARGV[i + 1])
  local kp = base .. string.format('%d', m - 1)
  local kc = base .. ARGV[i + 1]
  if tonumber(ARGV[i + 2]) > 0 then redis.call('HINCRBY', kp, 'r', ARGV[i + 2]) end
  if tonumber(ARGV[i + 3]) > 0 then redis.call('HINCRBY', kp, 't', ARGV[i + 3]) end
  if tonumber(ARGV[i + 4]) > 0 then redis.call('HINCRBY', kc, 'r', ARGV[i + 4]) end
  if tonumber(ARGV[i + 5]) > 0 then redis.call('HINCRBY', kc, 't', ARGV[i + 5]) end
  redis.call('EXPIRE', kc, ARGV[2])
  local p = redis.call('HMGET', kp, 'r', 't')
  local c = redis.call('HMGET', kc, 'r', 't')
  table.insert(out, tonumber(p[1] or '0'))
  table.insert(out, tonumber(p[2] or '0'))
  table.insert(out, tonumber(c[1] or '0'))
  table.insert(out, tonumber(c[2] or '0'))
  i = i + 6
end
return out
"#;

// One request for every subject, or none (cluster-wide request limits). KEYS: the bank's marker
// (for routing only). ARGV: prefix, ttl,
// minute, elapsed ms of the minute, then (subject, rpm or 0) pairs. The fleet's sliding-window
// count of each subject with an RPM (the current minute's requests plus the previous minute's
// weighted by its overlap, as `tenancy::limits` counts) must leave room for one more; then every
// subject's current minute counts it. Returns 0 (admitted) or the 1-based index of the subject
// that refused.
const ADMIT_LUA: &str = r#"
local m = tonumber(ARGV[3])
local elapsed = tonumber(ARGV[4])
local n = (#ARGV - 4) / 2
for i = 1, n do
  local rpm = tonumber(ARGV[4 + 2 * i])
  if rpm > 0 then
    local base = ARGV[1] .. 'rl:' .. ARGV[3 + 2 * i] .. ':'
    local c = tonumber(redis.call('HGET', base .. ARGV[3], 'r') or '0')
    local p = tonumber(redis.call('HGET', base .. string.format('%d', m - 1), 'r') or '0')
    if c + math.floor(p * (60000 - elapsed) / 60000) + 1 > rpm then return i end
  end
end
for i = 1, n do
  local kc = ARGV[1] .. 'rl:' .. ARGV[3 + 2 * i] .. ':' .. ARGV[3]
  redis.call('HINCRBY', kc, 'r', 1)
  redis.call('EXPIRE', kc, ARGV[2])
end
return 0
"#;

// All or nothing, once per batch id. Returns {0} applied, {1} replay, {-1, i, lease, amount}
// charge i exceeds its lease (nothing applied), {-2} id used for another batch.
const FLUSH_LUA: &str = r#"
local m = redis.call('GET', KEYS[1])
if m then
  if m ~= ARGV[3] then return {-2} end
  return {1}
end
local n = (#KEYS - 2) / 3
for i = 1, n do
  local l = tonumber(redis.call('GET', KEYS[3 * i]) or '0')
  local a = tonumber(ARGV[3 + 2 * i])
  if a > l then return {-1, i, l, a} end
end
for i = 1, n do
  local a = ARGV[3 + 2 * i]
  local left = redis.call('DECRBY', KEYS[3 * i], a)
  redis.call('INCRBY', KEYS[3 * i + 1], a)
  if left == 0 then
    redis.call('DEL', KEYS[3 * i])
    redis.call('SREM', KEYS[3 * i + 2], ARGV[2])
    redis.call('SREM', KEYS[2], ARGV[2 + 2 * i])
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[1])
return {0}
"#;

// KEYS: held. ARGV: prefix, node. Every lease of the node goes back to its tenant's bal.
// Returns a flat list {tenant, amount, ...} of what was moved.
const RECLAIM_LUA: &str = r#"
local out = {}
for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local lk = ARGV[1] .. 'lease:' .. ARGV[2] .. ':' .. t
  local l = redis.call('GET', lk)
  if l then
    redis.call('INCRBY', ARGV[1] .. 'bal:' .. t, l)
    redis.call('DEL', lk)
    table.insert(out, t)
    table.insert(out, l)
  end
  redis.call('SREM', ARGV[1] .. 'nodes:' .. t, ARGV[2])
end
redis.call('DEL', KEYS[1])
return out
"#;

// KEYS: bal, spent, credited, nodes. ARGV: prefix, tenant.
// Returns {bal, spent, credited, node, lease, node, lease, ...} as strings.
const SNAPSHOT_LUA: &str = r#"
local out = {
  redis.call('GET', KEYS[1]) or '0',
  redis.call('GET', KEYS[2]) or '0',
  redis.call('GET', KEYS[3]) or '0'
}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  table.insert(out, n)
  table.insert(out, redis.call('GET', ARGV[1] .. 'lease:' .. n .. ':' .. ARGV[2]) or '0')
end
return out
"#;

// The rebuild's scripts (not fenced: they run while a node has no bank).
// KEYS: alive (sorted set). ARGV: member. Records that the process is alive now (Redis's clock).
const HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
return now
"#;

// KEYS: bank, ready (set), alive (sorted set), credit cursor. ARGV: the bank seen ('' for
// none), the new bank's id, prefix, the cursor to start at, then the node ids that must be
// ready.
// {'moved', bank}: the bank is not the one seen; {'wait', who}: a node or live process is not
// ready; {'wipe', bank}: a stale bank must be deleted first; {'published', id}.
const PUBLISH_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {'moved', cur} end
local ready = {}
local nodes = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  ready[m] = true
  local n = string.match(m, '^(.*):[0-9]+$')
  if n then nodes[n] = true end
end
for i = 5, #ARGV do
  if not nodes[ARGV[i]] then return {'wait', ARGV[i]} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now - 3000, '+inf')) do
  if not ready[m] then return {'wait', m} end
end
if cur ~= '' then return {'wipe', cur} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'wait', ''} end
local members = ARGV[3] .. 'members:' .. ARGV[2]
redis.call('RENAME', KEYS[2], members)
redis.call('EXPIRE', members, 86400)
redis.call('SET', KEYS[4], ARGV[4])
redis.call('SET', KEYS[1], ARGV[2])
return {'published', ARGV[2]}
"#;

// KEYS: bank. ARGV: the bank's id. Replaces it by a stale one (so that it is wiped before a
// rebuild) if it is still the one there.
const POISON_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'stale:' .. ARGV[1])
  return 1
end
return 0
"#;

// KEYS: bank. ARGV: a stale bank's id. Deletes it if it is still the one there.
const DROP_STALE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

struct RebuildScripts {
    heartbeat: Script,
    publish: Script,
    drop_stale: Script,
    poison: Script,
}

/// What [`Bank::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Redis holds another bank than the one seen (`""`: none): look again.
    Moved(String),
    /// This node id (in the registry) or live process (`node:epoch`) is not ready yet.
    Waiting(String),
    /// The new bank's identity.
    Published(String),
}

/// `s` with the glob characters of Redis's MATCH escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Scripts {
    credit: Script,
    lease: Script,
    give_back: Script,
    flush: Script,
    reclaim: Script,
    snapshot: Script,
    seed: Script,
    limit: Script,
    cursor: Script,
    rates: Script,
    admit: Script,
    /// Their source, to load them up front.
    codes: Vec<String>,
}

/// A Lua string literal holding `s` (every byte but plain ones as a decimal escape).
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_:{}-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
    out.push('"');
    out
}

impl Scripts {
    /// The scripts of a node serving on bank `marker`: each first checks, atomically with
    /// its writes, that Redis still holds that bank (`<prefix>bank`), and refuses with a
    /// `TGBANK` error otherwise. So no write of a node ever lands in a Redis that lost its
    /// state (an empty bank would take a credit replay or a seed without the charges other
    /// nodes have not recorded yet), whatever its probe has seen so far.
    fn new(prefix: &str, marker: &str) -> Scripts {
        let fence = format!(
            "if redis.call('GET', {}) ~= {} then return redis.error_reply('TGBANK this node serves on another credit bank') end\n",
            lua_string(&format!("{prefix}bank")),
            lua_string(marker)
        );
        let codes: Vec<String> = [
            CREDIT_LUA,
            LEASE_LUA,
            GIVE_BACK_LUA,
            FLUSH_LUA,
            RECLAIM_LUA,
            SNAPSHOT_LUA,
            SEED_LUA,
            LIMIT_LUA,
            CURSOR_LUA,
            RATES_LUA,
            ADMIT_LUA,
        ]
        .iter()
        .map(|code| format!("{fence}{code}"))
        .collect();
        let s = |i: usize| Script::new(&codes[i]);
        Scripts {
            credit: s(0),
            lease: s(1),
            give_back: s(2),
            flush: s(3),
            reclaim: s(4),
            snapshot: s(5),
            seed: s(6),
            limit: s(7),
            cursor: s(8),
            rates: s(9),
            admit: s(10),
            codes,
        }
    }
}

/// The shared credit bank: one Redis, many nodes.
pub struct Bank {
    /// The Redis the bank talks to: the URL's, or the master Sentinel names (it changes on a
    /// failover).
    client: RwLock<Option<redis::Client>>,
    /// `redis+sentinel://` URLs: the Sentinels to ask for the current master.
    sentinel: Option<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    manager_cfg: ConnectionManagerConfig,
    conn: RwLock<Conn>,
    /// Redis Cluster: the slot every key of the bank hashes to (its primary answers the
    /// commands that carry no key).
    slot: Option<redis::cluster_routing::Route>,
    /// Redis Cluster: the client, to open a fresh connection when the bank's slot stops
    /// answering (see `Bank::probe`).
    cluster_client: Option<redis::cluster::ClusterClient>,
    node: String,
    prefix: String,
    epoch: u64,
    cfg: BankConfig,
    /// The scripts, fenced on the bank this node serves on (replaced by `Bank::adopt`).
    scripts: RwLock<Arc<Scripts>>,
    rebuild_scripts: RebuildScripts,
    /// Consecutive calls that timed out.
    timeouts: AtomicU32,
    /// Whether the last probe (`Bank::probe`) got Redis's answer: readiness follows it.
    reachable: AtomicBool,
    /// Sentinel: replicas connected to the master at the last probe. While there is one, a
    /// write that moves credit returns only once a replica has it (`run_durable`).
    replicas: AtomicU32,
    /// Writes a replica did not confirm in time (they could be lost by a failover).
    unreplicated: AtomicU64,
    /// The identity of the bank this node serves on (`<prefix>bank`, a random id written when
    /// the bank was created or rebuilt; empty: none yet). When the probe finds it gone or
    /// changed, Redis lost its state (restarted empty, or a replica promoted before its
    /// first sync).
    marker: RwLock<String>,
    /// Redis does not hold this node's bank (lost since it connected, or none at start): it
    /// refuses to move credit (fail closed) until it takes part in the rebuild (`fleet.rs`).
    lost: AtomicBool,
    /// The highest value of this process's write clock (`<prefix>clock:<node>:<epoch>`,
    /// incremented after every write of this process that moves credit) seen after a write
    /// that was durable (replicated, behind Sentinel or in a Redis Cluster).
    clock: AtomicI64,
}

impl std::fmt::Debug for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bank")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("epoch", &self.epoch)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_amount(amount: i64, allow_negative: bool) -> Result<(), BankError> {
    let low = if allow_negative { -MAX_AMOUNT } else { 0 };
    if amount < low || amount > MAX_AMOUNT {
        return Err(BankError::InvalidAmount { amount });
    }
    Ok(())
}

fn ttl_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn reply_code(v: &[i64], what: &str) -> Result<i64, BankError> {
    v.first()
        .copied()
        .ok_or_else(|| BankError::Protocol(format!("{what}: empty reply")))
}

fn reply_at(v: &[i64], i: usize, what: &str) -> Result<i64, BankError> {
    v.get(i)
        .copied()
        .ok_or_else(|| BankError::Protocol(format!("{what}: short reply {v:?}")))
}

/// FNV-1a over the batch content: a flush id replayed with other content is refused.
fn fingerprint(charges: &[(i64, i64)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (t, a) in charges {
        for b in t.to_le_bytes().iter().chain(a.to_le_bytes().iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{}:{h:016x}", charges.len())
}

/// `redis+sentinel://[user:password@]host:port[,host:port...]/master_name[/db]`: the Sentinels
/// and the name of the master they watch; the credentials and database are the master's.
#[derive(Debug, PartialEq)]
struct SentinelUrl {
    sentinels: Vec<String>,
    master: String,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

impl SentinelUrl {
    fn parse(url: &str) -> Result<Option<SentinelUrl>, BankError> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Ok(None);
        };
        let bad = |why| BankError::Invalid(why);
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("redis+sentinel:// needs /<master name> after the Sentinels"))?;
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{h}"))
            .collect();
        if sentinels.is_empty() {
            return Err(bad("redis+sentinel:// names no Sentinel"));
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or("").to_string();
        if master.is_empty() {
            return Err(bad("redis+sentinel:// names no master"));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse()
                .map_err(|_| bad("redis+sentinel:// database must be a number"))?,
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(Some(SentinelUrl {
            sentinels,
            master,
            db,
            username,
            password,
        }))
    }

    fn client(&self) -> Result<redis::sentinel::SentinelClient, BankError> {
        let mut info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            info = info.set_username(u);
        }
        if let Some(p) = &self.password {
            info = info.set_password(p);
        }
        let node =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        Ok(redis::sentinel::SentinelClient::build(
            self.sentinels.clone(),
            self.master.clone(),
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )?)
    }
}

impl Bank {
    /// Connect with the default configuration. `prefix` is prepended to every key (e.g. `tg:`).
    pub async fn connect(url: &str, node: &str, prefix: &str) -> Result<Bank, BankError> {
        Bank::connect_with(url, node, prefix, BankConfig::default()).await
    }

    pub async fn connect_with(
        url: &str,
        node: &str,
        prefix: &str,
        cfg: BankConfig,
    ) -> Result<Bank, BankError> {
        if node.is_empty() || node.chars().any(char::is_whitespace) {
            return Err(BankError::Invalid(
                "node id must be non-empty without whitespace",
            ));
        }
        if let Some(nodes) = cluster_nodes(url)? {
            return Bank::connect_cluster(&nodes, node, &cluster_prefix(prefix), cfg).await;
        }
        let (client, sentinel) = match SentinelUrl::parse(url)? {
            None => (redis::Client::open(url)?, None),
            Some(s) => {
                let mut sc = s.client()?;
                let ms = cfg.op_timeout.as_millis() as u64;
                let client = tokio::time::timeout(cfg.op_timeout, sc.async_get_client())
                    .await
                    .map_err(|_| BankError::Timeout { ms })??;
                (client, Some(tokio::sync::Mutex::new(sc)))
            }
        };
        // Our own timeout (op_timeout) bounds every call and replaces the connection when it
        // fires, which also covers a silently dead peer (the manager only reconnects on errors).
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let ms = cfg.op_timeout.as_millis() as u64;
        let conn = tokio::time::timeout(
            cfg.op_timeout,
            ConnectionManager::new_with_config(client.clone(), manager_cfg.clone()),
        )
        .await
        .map_err(|_| BankError::Timeout { ms })??;
        Bank::start(
            Conn::One(conn),
            Some(client),
            sentinel,
            manager_cfg,
            None,
            node,
            prefix,
            cfg,
        )
        .await
    }

    /// Redis Cluster: connects through `nodes` and keeps every key in the slot of `prefix`'s
    /// hash tag.
    async fn connect_cluster(
        nodes: &[String],
        node: &str,
        prefix: &str,
        cfg: BankConfig,
    ) -> Result<Bank, BankError> {
        let ms = cfg.op_timeout.as_millis() as u64;
        // Our own timeout (op_timeout) bounds every call; the client's own bounds each
        // request it sends, so a silent node errors out and the slot map is refreshed.
        let client = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(cfg.connect_timeout)
            .response_timeout(cfg.op_timeout)
            .retries(2)
            .build()?;
        let conn = tokio::time::timeout(cfg.op_timeout * 4, client.get_async_connection())
            .await
            .map_err(|_| BankError::Timeout { ms })??;
        let slot = redis::cluster_routing::Route::with_slot(
            redis::cluster_routing::Slot::for_key(format!("{prefix}bank")),
            redis::cluster_routing::SlotAddr::Master,
        );
        let mut bank = Bank::start(
            Conn::Cluster(conn),
            None,
            None,
            ConnectionManagerConfig::new(),
            Some(slot),
            node,
            prefix,
            cfg,
        )
        .await?;
        bank.cluster_client = Some(client);
        Ok(bank)
    }

    /// The connection is up: the node's epoch, the bank's identity and the scripts.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        mut conn: Conn,
        client: Option<redis::Client>,
        sentinel: Option<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
        manager_cfg: ConnectionManagerConfig,
        slot: Option<redis::cluster_routing::Route>,
        node: &str,
        prefix: &str,
        cfg: BankConfig,
    ) -> Result<Bank, BankError> {
        let ms = cfg.op_timeout.as_millis() as u64;
        let epoch: u64 = tokio::time::timeout(
            cfg.op_timeout,
            redis::cmd("INCR")
                .arg(format!("{prefix}epoch:{node}"))
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| BankError::Timeout { ms })??;
        let key = format!("{prefix}bank");
        let marker: Option<String> = if cfg.create_bank {
            let fresh = format!("{:032x}", rand::random::<u128>());
            let (m,): (String,) = tokio::time::timeout(
                cfg.op_timeout,
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn),
            )
            .await
            .map_err(|_| BankError::Timeout { ms })??;
            Some(m)
        } else {
            tokio::time::timeout(
                cfg.op_timeout,
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await
            .map_err(|_| BankError::Timeout { ms })??
        };
        // A bank marked stale (`Bank::went_back`) is no bank: this node waits for the rebuild.
        let marker = marker.filter(|m| !m.starts_with("stale:"));
        let lost = marker.is_none();
        let marker = marker.unwrap_or_default();
        let bank = Bank {
            client: RwLock::new(client),
            sentinel,
            manager_cfg,
            conn: RwLock::new(conn),
            slot,
            cluster_client: None,
            node: node.to_string(),
            prefix: prefix.to_string(),
            epoch,
            cfg,
            scripts: RwLock::new(Arc::new(Scripts::new(prefix, &marker))),
            rebuild_scripts: RebuildScripts {
                heartbeat: Script::new(HEARTBEAT_LUA),
                publish: Script::new(PUBLISH_LUA),
                drop_stale: Script::new(DROP_STALE_LUA),
                poison: Script::new(POISON_LUA),
            },
            clock: AtomicI64::new(0),
            timeouts: AtomicU32::new(0),
            reachable: AtomicBool::new(!lost),
            replicas: AtomicU32::new(0),
            unreplicated: AtomicU64::new(0),
            marker: RwLock::new(marker),
            lost: AtomicBool::new(lost),
        };
        bank.load_scripts().await?;
        Ok(bank)
    }

    /// Loads the scripts up front (one round trip), so a first call whose answer is lost is
    /// not a NOSCRIPT that never got retried. In a cluster, on the bank slot's primary.
    async fn load_scripts(&self) -> Result<(), BankError> {
        let scripts = self.scripts();
        let ms = self.cfg.op_timeout.as_millis() as u64;
        let mut conn = self.connection();
        match (&mut conn, &self.slot) {
            (Conn::Cluster(c), Some(route)) => {
                for code in &scripts.codes {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(code);
                    tokio::time::timeout(
                        self.cfg.op_timeout,
                        c.route_command(load, on_slot(route)),
                    )
                    .await
                    .map_err(|_| BankError::Timeout { ms })??;
                }
            }
            _ => {
                let mut pipe = redis::pipe();
                for code in &scripts.codes {
                    pipe.cmd("SCRIPT").arg("LOAD").arg(code);
                }
                let _: Vec<String> =
                    tokio::time::timeout(self.cfg.op_timeout, pipe.query_async(&mut conn))
                        .await
                        .map_err(|_| BankError::Timeout { ms })??;
            }
        }
        Ok(())
    }

    fn scripts(&self) -> Arc<Scripts> {
        match self.scripts.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Incremented by every connect of this node id: ids generated with it never repeat.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn key(&self, kind: &str, tenant: i64) -> String {
        format!("{}{kind}:{tenant}", self.prefix)
    }

    fn lease_key(&self, tenant: i64) -> String {
        format!("{}lease:{}:{tenant}", self.prefix, self.node)
    }

    fn held_key(&self) -> String {
        format!("{}held:{}", self.prefix, self.node)
    }

    fn op_key(&self, kind: char, id: &str) -> String {
        format!("{}op:{kind}:{id}", self.prefix)
    }

    fn connection(&self) -> Conn {
        match self.conn.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A fresh connection to one Redis. A cluster connection is never replaced: it reconnects
    /// and follows the slot map itself, and its response timeout turns silence into errors.
    fn replace_connection(&self) {
        let client = match self.client.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let Some(client) = client else { return };
        match ConnectionManager::new_lazy_with_config(client, self.manager_cfg.clone()) {
            Ok(fresh) => match self.conn.write() {
                Ok(mut c) => *c = Conn::One(fresh),
                Err(p) => *p.into_inner() = Conn::One(fresh),
            },
            Err(e) => tracing::warn!(error = %e, "credit bank: cannot replace redis connection"),
        }
    }

    /// [`Bank::run`] for a script that moves credit. Behind Sentinel, while the master has a
    /// replica, the answer is returned only once a replica has the write too (`WAIT 1`): an
    /// asynchronous replica promoted by a failover would otherwise lack the last charges and
    /// leases the nodes were told were done, and the tenant's balance would grow back by them.
    /// A master that dies before the replica confirmed is an error, which each caller already
    /// treats like a timeout (retried or resolved by its id). A replica that does not confirm
    /// within the timeout (slow or just gone) is counted and the write stands.
    async fn run_durable<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, BankError> {
        // Read before the write: any increment issued after a completed one returns more, so a
        // value not above it can only come from a Redis that went back (concurrent writes of
        // this process raise it in any order).
        let before = self.clock.load(Ordering::Relaxed);
        let r = self.run(inv).await?;
        // This process's write clock, after the write: a Redis that shows a clock below one
        // this process saw went back to a state before that write (also checked by
        // `Bank::probe`). Until it is counted the write is not taken as done: an error here is
        // one more ambiguous outcome, resolved by its id.
        let clock: i64 = {
            let mut c = redis::cmd("INCR");
            c.arg(self.clock_key());
            self.keyed(c).await?
        };
        if clock <= before {
            self.went_back(before, clock).await;
            return Err(BankError::Lost);
        }
        let mut durable = true;
        if (self.sentinel.is_some() || self.slot.is_some())
            && self.replicas.load(Ordering::Relaxed) > 0
        {
            let ms = self.cfg.op_timeout.as_millis() as u64;
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(1).arg(ms / 2);
            let acked: i64 = self.keyless(cmd).await?;
            if acked < 1 {
                durable = false;
                self.unreplicated.fetch_add(1, Ordering::Relaxed);
                crate::metrics::METRICS.credit_bank_unreplicated.inc();
            }
        }
        if durable {
            self.clock.fetch_max(clock, Ordering::Relaxed);
        }
        Ok(r)
    }

    /// This process's write clock: only this process increments it, so no other node's
    /// writes can hide that Redis lost some of this one's.
    fn clock_key(&self) -> String {
        format!("{}clock:{}", self.prefix, self.member())
    }

    /// Redis went back in time: its write clock is below one this node saw after a write of
    /// its own (restarted from an older snapshot or from an append-only file that had not
    /// synced the last writes, or a replica promoted without them). The bank's identity is
    /// replaced by a stale one, so that every node's scripts refuse, and the fleet rebuilds
    /// the bank from the record (the stale keys wiped first).
    async fn went_back(&self, seen: i64, now: i64) {
        tracing::error!(
            clock = now,
            seen,
            "credit bank: Redis went back in time (restored from an older snapshot, or an append-only file or replica without the last writes); the bank is rebuilt from the record"
        );
        let mut inv = self.rebuild_scripts.poison.prepare_invoke();
        inv.key(format!("{}bank", self.prefix)).arg(self.marker());
        if let Err(e) = self.run::<i64>(&inv).await {
            tracing::warn!(error = %e, "credit bank: cannot mark the bank stale; other nodes notice at their next write");
        }
        self.mark_lost();
    }

    /// A command without a key, on the Redis that holds the bank (in a cluster: the primary of
    /// the bank's slot, not whichever node the client would pick), within the operation timeout.
    async fn keyless<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BankError> {
        let ms = self.cfg.op_timeout.as_millis() as u64;
        let mut conn = self.connection();
        let answer = async {
            match (&mut conn, &self.slot) {
                (Conn::Cluster(c), Some(route)) => {
                    let v = c.route_command(cmd, on_slot(route)).await?;
                    Ok(T::from_redis_value(v).map_err(redis::RedisError::from)?)
                }
                _ => cmd.query_async::<T>(&mut conn).await,
            }
        };
        tokio::time::timeout(self.cfg.op_timeout, answer)
            .await
            .map_err(|_| BankError::Timeout { ms })?
            .map_err(BankError::from)
    }

    async fn run<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, BankError> {
        let mut conn = self.connection();
        match tokio::time::timeout(self.cfg.op_timeout, inv.invoke_async(&mut conn)).await {
            Ok(Err(e)) if e.code() == Some("TGBANK") => {
                self.timeouts.store(0, Ordering::Relaxed);
                self.mark_lost();
                Err(BankError::Lost)
            }
            Ok(r) => {
                self.timeouts.store(0, Ordering::Relaxed);
                Ok(r?)
            }
            Err(_) => {
                // A slow Redis answers on the same connection later; a connection that timed
                // out twice in a row is taken for dead (the manager itself only reconnects on
                // errors, never on silence).
                if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= 2 {
                    self.timeouts.store(0, Ordering::Relaxed);
                    self.replace_connection();
                }
                Err(BankError::Timeout {
                    ms: self.cfg.op_timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Asks Redis whether it answers (PING), and with Sentinel whether it is still the master
    /// (ROLE), within the operation timeout; with Sentinel, a failed probe asks the Sentinels
    /// for the current master and moves the connection there. Remembers and returns whether
    /// the bank is usable (`is_reachable`).
    pub async fn probe(&self) -> bool {
        let mut ok = self.probe_once().await;
        if !ok && self.sentinel.is_some() && self.follow_master().await {
            ok = self.probe_once().await;
        }
        if !ok && self.reconnect_cluster().await {
            ok = self.probe_once().await;
        }
        if ok && !self.lost.load(Ordering::Relaxed) {
            if let Ok(v) = self.current_marker().await {
                if v.as_deref() != Some(self.marker().as_str()) {
                    self.mark_lost();
                }
            }
        }
        if ok && !self.lost.load(Ordering::Relaxed) {
            let seen = self.clock.load(Ordering::Relaxed);
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.clock_key());
            if let Ok(now) = self.keyed::<Option<i64>>(cmd).await {
                let now = now.unwrap_or(0);
                if now < seen {
                    self.went_back(seen, now).await;
                }
            }
        }
        let ok = ok && !self.lost.load(Ordering::Relaxed);
        self.reachable.store(ok, Ordering::Relaxed);
        ok
    }

    /// Whether Redis does not hold the bank this node serves on (see `Bank::probe`).
    pub fn state_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::Relaxed) {
            self.reachable.store(false, Ordering::Relaxed);
            tracing::error!(
                node = %self.node,
                "credit bank: Redis lost its state (restarted empty, flushed, or an unsynced replica promoted); this node refuses calls until the fleet has rebuilt the bank from the record (docs/billing.md)"
            );
        }
    }

    /// The identity of the bank this node serves on (empty: none yet).
    pub fn marker(&self) -> String {
        match self.marker.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The identity of the bank Redis holds now (`None`: no bank).
    pub async fn current_marker(&self) -> Result<Option<String>, BankError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}bank", self.prefix));
        self.keyed(cmd).await
    }

    /// A command on the bank's keys (routed by its key), within the operation timeout.
    async fn keyed<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BankError> {
        let mut conn = self.connection();
        let ms = self.cfg.op_timeout.as_millis() as u64;
        Ok(
            tokio::time::timeout(self.cfg.op_timeout, cmd.query_async::<T>(&mut conn))
                .await
                .map_err(|_| BankError::Timeout { ms })??,
        )
    }

    /// This process in the rebuild's bookkeeping: the node id and its epoch (two processes
    /// with one node id, as during an upgrade hand-over, are told apart).
    fn member(&self) -> String {
        format!("{}:{}", self.node, self.epoch)
    }

    /// Says that this process is alive (every few hundred ms, whatever the bank's state): a
    /// rebuild waits for every live process.
    pub async fn heartbeat(&self) -> Result<(), BankError> {
        let mut inv = self.rebuild_scripts.heartbeat.prepare_invoke();
        inv.key(format!("{}alive", self.prefix)).arg(self.member());
        let _: i64 = self.run(&inv).await?;
        Ok(())
    }

    /// After losing the bank: this process has put every charge it made into the record
    /// and dropped its leases and unflushed batches (`Allowances::abandon`).
    pub async fn rebuild_ready(&self) -> Result<(), BankError> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(format!("{}rebuild:ready", self.prefix))
            .arg(self.member());
        let _: i64 = self.keyed(cmd).await?;
        Ok(())
    }

    /// Tries to publish a new, empty bank: only when Redis still holds `seen` as the bank
    /// (`""`: none), every node id in `required` (the record's registry of running nodes) has
    /// a process ready, and every process alive in the last 3 s is ready. An old bank still
    /// there (a replica promoted with stale data) is wiped first. Its credit cursor is
    /// `cursor` (the record's last credit entry): tenants are seeded from the record as they
    /// are used (credits up to the cursor, every charge), and the replay goes on from there.
    pub async fn publish(
        &self,
        seen: &str,
        required: &[String],
        cursor: i64,
    ) -> Result<Publish, BankError> {
        let fresh = format!("{:032x}", rand::random::<u128>());
        let mut inv = self.rebuild_scripts.publish.prepare_invoke();
        inv.key(format!("{}bank", self.prefix))
            .key(format!("{}rebuild:ready", self.prefix))
            .key(format!("{}alive", self.prefix))
            .key(self.cursor_key())
            .arg(seen)
            .arg(&fresh)
            .arg(&self.prefix)
            .arg(cursor);
        for n in required {
            inv.arg(n);
        }
        let v: Vec<String> = self.run(&inv).await?;
        match v.as_slice() {
            [what, x] if what == "moved" => Ok(Publish::Moved(x.clone())),
            [what, x] if what == "wait" => Ok(Publish::Waiting(x.clone())),
            [what, _] if what == "published" => Ok(Publish::Published(fresh)),
            [what, old] if what == "wipe" => {
                let n = self.wipe(old).await?;
                tracing::warn!(keys = n, stale = %old, "credit bank: removed the keys of a stale bank before the rebuild");
                Ok(Publish::Moved(String::new()))
            }
            _ => Err(BankError::Protocol(format!("publish: {v:?}"))),
        }
    }

    /// Deletes every key of a stale bank (one Redis holds the bank: SCAN there), except the
    /// rebuild's own and the node epochs, then the stale identity `old` itself. One process at
    /// a time (`rebuild:lock`, refreshed at every batch), and only while Redis still holds
    /// `old`: a wipe can never reach the keys of a bank published meanwhile.
    async fn wipe(&self, old: &str) -> Result<u64, BankError> {
        let lock_key = format!("{}rebuild:lock", self.prefix);
        let me = self.member();
        let mut take = redis::cmd("SET");
        take.arg(&lock_key).arg(&me).arg("NX").arg("PX").arg(30_000);
        let taken: Option<String> = self.keyed(take).await?;
        if taken.is_none() {
            return Ok(0); // another process is wiping
        }
        let keep = [
            format!("{}rebuild:ready", self.prefix),
            format!("{}alive", self.prefix),
            format!("{}bank", self.prefix),
            lock_key.clone(),
        ];
        let epochs = format!("{}epoch:", self.prefix);
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor = 0u64;
        let mut n = 0u64;
        let still_stale = loop {
            if self.current_marker().await?.as_deref() != Some(old) {
                break false;
            }
            let mut refresh = redis::cmd("PEXPIRE");
            refresh.arg(&lock_key).arg(30_000);
            let _: i64 = self.keyed(refresh).await?;
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.keyless(scan).await?;
            let doomed: Vec<&String> = keys
                .iter()
                .filter(|k| !keep.contains(k) && !k.starts_with(&epochs))
                .collect();
            if !doomed.is_empty() {
                let mut del = redis::cmd("DEL");
                for k in &doomed {
                    del.arg(k.as_str());
                }
                let d: u64 = self.keyless(del).await?;
                n += d;
            }
            if next == 0 {
                break true;
            }
            cursor = next;
        };
        if still_stale {
            let mut inv = self.rebuild_scripts.drop_stale.prepare_invoke();
            inv.key(format!("{}bank", self.prefix)).arg(old);
            let _: i64 = self.run(&inv).await?;
        }
        let mut release = redis::cmd("DEL");
        release.arg(&lock_key);
        let _: i64 = self.keyed(release).await?;
        Ok(n)
    }

    /// Serve on bank `marker`, if this process was ready when it was published (it is in
    /// the bank's member set). Its fenced scripts are replaced and loaded; the caller drops
    /// every cached view of the old bank (`Fleet`).
    pub async fn adopt(&self, marker: &str) -> Result<bool, BankError> {
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(format!("{}members:{marker}", self.prefix))
            .arg(self.member());
        let member: bool = self.keyed(cmd).await?;
        if !member {
            return Ok(false);
        }
        let scripts = Arc::new(Scripts::new(&self.prefix, marker));
        match self.scripts.write() {
            Ok(mut s) => *s = scripts,
            Err(p) => *p.into_inner() = scripts,
        }
        match self.marker.write() {
            Ok(mut m) => *m = marker.to_string(),
            Err(p) => *p.into_inner() = marker.to_string(),
        }
        self.load_scripts().await?;
        self.timeouts.store(0, Ordering::Relaxed);
        self.clock.store(0, Ordering::Relaxed);
        self.lost.store(false, Ordering::Relaxed);
        Ok(true)
    }

    async fn probe_once(&self) -> bool {
        if self.sentinel.is_none() && self.slot.is_none() {
            return self.keyless::<String>(redis::cmd("PING")).await.is_ok();
        }
        match self.keyless::<redis::Value>(redis::cmd("ROLE")).await {
            Ok(redis::Value::Array(v)) => {
                let master = matches!(
                    v.first(),
                    Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
                );
                // ["master", offset, [[ip, port, offset], ...]]
                let replicas = match v.get(2) {
                    Some(redis::Value::Array(r)) if master => r.len() as u32,
                    _ => 0,
                };
                self.replicas.store(replicas, Ordering::Relaxed);
                master
            }
            _ => false,
        }
    }

    /// Writes that moved credit and that no replica confirmed within the operation timeout.
    pub fn unreplicated_writes(&self) -> u64 {
        self.unreplicated.load(Ordering::Relaxed)
    }

    /// Sentinel: asks for the current master; when it moved, the bank's connection follows.
    /// Whether a master was found.
    async fn follow_master(&self) -> bool {
        let Some(sentinel) = &self.sentinel else {
            return false;
        };
        let mut sc = sentinel.lock().await;
        let found = tokio::time::timeout(self.cfg.op_timeout, sc.async_get_client()).await;
        let Ok(Ok(client)) = found else {
            return false;
        };
        let moved = match self.client.read() {
            Ok(c) => c.as_ref().is_none_or(|c| {
                c.get_connection_info().addr() != client.get_connection_info().addr()
            }),
            Err(_) => true,
        };
        if moved {
            tracing::warn!(master = %client.get_connection_info().addr(), "credit bank: Sentinel names a new master; following it");
            match self.client.write() {
                Ok(mut c) => *c = Some(client),
                Err(p) => *p.into_inner() = Some(client),
            }
        }
        // A fresh connection either way: the old one may be stuck on a demoted or dead server.
        self.replace_connection();
        true
    }

    /// Redis Cluster: a fresh connection (it reads the slot map anew), in place of one that
    /// keeps failing on the bank's slot, e.g. still aimed at a primary that died before its
    /// replica was promoted. Whether one was made.
    async fn reconnect_cluster(&self) -> bool {
        let Some(client) = &self.cluster_client else {
            return false;
        };
        match tokio::time::timeout(self.cfg.op_timeout * 4, client.get_async_connection()).await {
            Ok(Ok(fresh)) => {
                match self.conn.write() {
                    Ok(mut c) => *c = Conn::Cluster(fresh),
                    Err(p) => *p.into_inner() = Conn::Cluster(fresh),
                }
                true
            }
            _ => false,
        }
    }

    /// Whether Redis answered the last probe.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Idempotent credit (top-up, grant, redemption, adjustment): `bal += amount` and
    /// `credited += amount`, once per `entry_id`. A negative amount is refused with
    /// `Insufficient` unless the unallocated balance covers it (leased allowance is not taken
    /// back). Returns the unallocated balance (on a replay: the current one).
    pub async fn credit(&self, tenant: i64, amount: i64, entry_id: &str) -> Result<i64, BankError> {
        self.credit_inner(tenant, amount, entry_id, false).await
    }

    /// [`Bank::credit`] that applies a debit even when the unallocated balance cannot cover it
    /// (the balance goes negative until leases come back). For replaying a negative adjustment
    /// the SQL record already holds: the record wins.
    pub async fn credit_forced(
        &self,
        tenant: i64,
        amount: i64,
        entry_id: &str,
    ) -> Result<i64, BankError> {
        self.credit_inner(tenant, amount, entry_id, true).await
    }

    async fn credit_inner(
        &self,
        tenant: i64,
        amount: i64,
        entry_id: &str,
        force: bool,
    ) -> Result<i64, BankError> {
        check_amount(amount, true)?;
        let scripts = self.scripts();
        let mut inv = scripts.credit.prepare_invoke();
        inv.key(self.key("bal", tenant))
            .key(self.key("credited", tenant))
            .key(self.op_key('c', entry_id))
            .arg(amount)
            .arg(ttl_secs(self.cfg.op_marker_ttl))
            .arg(format!("{tenant}:{amount}"))
            .arg(if force { "1" } else { "0" });
        let v: Vec<i64> = self.run_durable(&inv).await?;
        match reply_code(&v, "credit")? {
            0 | 1 => reply_at(&v, 1, "credit"),
            -1 => Err(BankError::Insufficient {
                available: reply_at(&v, 1, "credit")?,
            }),
            -2 => Err(BankError::IdConflict {
                id: entry_id.to_string(),
            }),
            c => Err(BankError::Protocol(format!("credit: code {c}"))),
        }
    }

    /// Atomically move `min(want, bal)` from the balance into this node's lease. Returns what was
    /// granted (`0..=want`). Not idempotent: see [`Bank::lease_once`].
    pub async fn lease(&self, tenant: i64, want: i64) -> Result<i64, BankError> {
        self.lease_inner(tenant, want, None).await
    }

    /// [`Bank::lease`] applied once per `op_id`: a replay returns what the first call granted.
    /// Calling it with `want = 0` resolves a call whose answer was lost: it returns what that
    /// call granted, or 0 and voids the id so the lost call can no longer apply.
    pub async fn lease_once(&self, tenant: i64, want: i64, op_id: &str) -> Result<i64, BankError> {
        self.lease_inner(tenant, want, Some(op_id)).await
    }

    async fn lease_inner(
        &self,
        tenant: i64,
        want: i64,
        op_id: Option<&str>,
    ) -> Result<i64, BankError> {
        check_amount(want, false)?;
        let scripts = self.scripts();
        let mut inv = scripts.lease.prepare_invoke();
        inv.key(self.key("bal", tenant))
            .key(self.lease_key(tenant))
            .key(self.key("nodes", tenant))
            .key(self.held_key());
        if let Some(id) = op_id {
            inv.key(self.op_key('l', id));
        }
        inv.arg(want)
            .arg(&self.node)
            .arg(tenant)
            .arg(ttl_secs(self.cfg.lease_marker_ttl));
        let v: Vec<i64> = self.run_durable(&inv).await?;
        match reply_code(&v, "lease")? {
            0 | 1 => reply_at(&v, 1, "lease"),
            -2 => Err(BankError::IdConflict {
                id: op_id.unwrap_or_default().to_string(),
            }),
            c => Err(BankError::Protocol(format!("lease: code {c}"))),
        }
    }

    /// Record charges settled locally from this node's lease, many tenants in one round trip:
    /// for each `(tenant, amount)`, `lease -= amount` and `spent += amount`. Applied once per
    /// `batch_id`; a charge above the lease fails the whole batch with `Overdrawn` (nothing
    /// applied). Repeated tenants are summed.
    pub async fn flush(&self, batch_id: &str, charges: &[(i64, i64)]) -> Result<(), BankError> {
        let mut merged: BTreeMap<i64, i64> = BTreeMap::new();
        for &(t, a) in charges {
            check_amount(a, false)?;
            let e = merged.entry(t).or_insert(0);
            *e = e
                .checked_add(a)
                .filter(|s| *s <= MAX_AMOUNT)
                .ok_or(BankError::InvalidAmount { amount: a })?;
        }
        merged.retain(|_, a| *a > 0);
        if merged.is_empty() {
            return Ok(());
        }
        let list: Vec<(i64, i64)> = merged.into_iter().collect();
        let scripts = self.scripts();
        let mut inv = scripts.flush.prepare_invoke();
        inv.key(self.op_key('f', batch_id)).key(self.held_key());
        for &(t, _) in &list {
            inv.key(self.lease_key(t))
                .key(self.key("spent", t))
                .key(self.key("nodes", t));
        }
        inv.arg(ttl_secs(self.cfg.flush_marker_ttl))
            .arg(&self.node)
            .arg(fingerprint(&list));
        for &(t, a) in &list {
            inv.arg(t).arg(a);
        }
        let v: Vec<i64> = self.run_durable(&inv).await?;
        match reply_code(&v, "flush")? {
            0 | 1 => Ok(()),
            -1 => {
                let i = reply_at(&v, 1, "flush")?;
                let tenant = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| list.get(i))
                    .map(|c| c.0)
                    .ok_or_else(|| BankError::Protocol(format!("flush: index {i}")))?;
                Err(BankError::Overdrawn {
                    tenant,
                    lease: reply_at(&v, 2, "flush")?,
                    amount: reply_at(&v, 3, "flush")?,
                })
            }
            -2 => Err(BankError::IdConflict {
                id: batch_id.to_string(),
            }),
            c => Err(BankError::Protocol(format!("flush: code {c}"))),
        }
    }

    /// Give unused allowance back: `lease -= amount`, `bal += amount`, once per `op_id`; the
    /// amount is capped at the lease. Returns what was returned (a replay returns the same).
    pub async fn give_back(&self, tenant: i64, amount: i64, op_id: &str) -> Result<i64, BankError> {
        check_amount(amount, false)?;
        let scripts = self.scripts();
        let mut inv = scripts.give_back.prepare_invoke();
        inv.key(self.key("bal", tenant))
            .key(self.lease_key(tenant))
            .key(self.key("nodes", tenant))
            .key(self.held_key())
            .key(self.op_key('g', op_id))
            .arg(amount)
            .arg(&self.node)
            .arg(tenant)
            .arg(ttl_secs(self.cfg.op_marker_ttl));
        let v: Vec<i64> = self.run_durable(&inv).await?;
        match reply_code(&v, "give_back")? {
            0 | 1 => reply_at(&v, 1, "give_back"),
            -2 => Err(BankError::IdConflict {
                id: op_id.to_string(),
            }),
            c => Err(BankError::Protocol(format!("give_back: code {c}"))),
        }
    }

    /// After a crash or restart of THIS node (and before it leases again): every lease still
    /// recorded for this node id goes back to its tenant's balance. Charges the dead process had
    /// not flushed are lost revenue, never overspend. Never call it while another live process
    /// uses the same node id. Returns `(tenant, amount)` moved.
    pub async fn reclaim_own_leases(&self) -> Result<Vec<(i64, i64)>, BankError> {
        let scripts = self.scripts();
        let mut inv = scripts.reclaim.prepare_invoke();
        inv.key(self.held_key()).arg(&self.prefix).arg(&self.node);
        let v: Vec<String> = self.run_durable(&inv).await?;
        let mut out = Vec::with_capacity(v.len() / 2);
        for pair in v.chunks(2) {
            match pair {
                [t, a] => out.push((parse_i64(t)?, parse_i64(a)?)),
                _ => return Err(BankError::Protocol("reclaim: odd reply".into())),
            }
        }
        if !out.is_empty() {
            tracing::info!(node = %self.node, tenants = out.len(), "credit bank: reclaimed leases of a previous run");
        }
        Ok(out)
    }

    /// Whether the bank knows `tenant` (it was seeded or credited).
    pub async fn is_known(&self, tenant: i64) -> Result<bool, BankError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.key("credited", tenant));
        let n: i64 = self.keyed(cmd).await?;
        Ok(n == 1)
    }

    /// Initialise a tenant from the SQL record summed at credit cursor `cursor`: `credited`
    /// (credits with a sequence number up to the cursor) and `spent` (every charge). Once per
    /// tenant; `Ok(false)` when the cursor moved meanwhile (sum again and retry).
    pub async fn seed(
        &self,
        tenant: i64,
        credited: i64,
        spent: i64,
        cursor: i64,
    ) -> Result<bool, BankError> {
        check_amount(credited, true)?;
        check_amount(spent, true)?;
        let scripts = self.scripts();
        let mut inv = scripts.seed.prepare_invoke();
        inv.key(self.key("bal", tenant))
            .key(self.key("credited", tenant))
            .key(self.key("spent", tenant))
            .key(self.cursor_key())
            .arg(credited)
            .arg(spent)
            .arg(cursor);
        let v: Vec<i64> = self.run_durable(&inv).await?;
        match reply_code(&v, "seed")? {
            0 | 1 => Ok(true),
            -3 => Ok(false),
            c => Err(BankError::Protocol(format!("seed: code {c}"))),
        }
    }

    /// Set the limit of a quota bucket (see `LIMIT_LUA`): the first call makes its balance
    /// `limit - spent`, later ones move it by the change of limit; calls carrying an older
    /// `generation` than the last applied are ignored; `expire`: the keys of a per-period
    /// bucket expire that long after it was first set. Returns whether anything changed.
    pub async fn set_limit(
        &self,
        bucket: i64,
        limit: i64,
        spent: i64,
        generation: i64,
        expire: Option<Duration>,
    ) -> Result<bool, BankError> {
        check_amount(limit, true)?;
        check_amount(spent, true)?;
        let scripts = self.scripts();
        let mut inv = scripts.limit.prepare_invoke();
        inv.key(self.key("bal", bucket))
            .key(self.key("credited", bucket))
            .key(self.key("limit", bucket))
            .key(self.key("spent", bucket))
            .arg(limit)
            .arg(spent)
            .arg(generation)
            .arg(expire.map_or(0, |d| d.as_secs().max(1)));
        let v: Vec<i64> = self.run_durable(&inv).await?;
        Ok(reply_code(&v, "limit")? == 0)
    }

    fn cursor_key(&self) -> String {
        format!("{}credit_cursor", self.prefix)
    }

    /// The fleet's credit cursor: every SQL credit entry up to this sequence number is
    /// applied in Redis.
    pub async fn cursor(&self) -> Result<i64, BankError> {
        let scripts = self.scripts();
        let mut inv = scripts.cursor.prepare_invoke();
        inv.key(self.cursor_key()).arg(0);
        self.run(&inv).await
    }

    /// Move the credit cursor forward to `seq` (never back). Returns the cursor.
    pub async fn advance_cursor(&self, seq: i64) -> Result<i64, BankError> {
        let scripts = self.scripts();
        let mut inv = scripts.cursor.prepare_invoke();
        inv.key(self.cursor_key()).arg(seq);
        self.run_durable(&inv).await
    }

    /// Push this node's rate-limit counts and read the fleet's totals, all subjects in one
    /// round trip (keys expire three minutes after their minute).
    pub async fn sync_rates(
        &self,
        deltas: &[crate::tenancy::limits::RateDelta],
    ) -> Result<Vec<crate::tenancy::limits::RateTotals>, BankError> {
        use crate::tenancy::limits::RateTotals;
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let scripts = self.scripts();
        let mut inv = scripts.rates.prepare_invoke();
        // The script names its keys itself; the bank's key only routes it (in a cluster).
        inv.key(format!("{}bank", self.prefix));
        inv.arg(&self.prefix).arg(180);
        for d in deltas {
            inv.arg(d.subject())
                .arg(d.minute)
                .arg(d.prev.0)
                .arg(d.prev.1)
                .arg(d.cur.0)
                .arg(d.cur.1);
        }
        let v: Vec<i64> = self.run(&inv).await?;
        if v.len() != deltas.len() * 4 {
            return Err(BankError::Protocol(format!(
                "rates: {} values for {} subjects",
                v.len(),
                deltas.len()
            )));
        }
        let n = |x: i64| u64::try_from(x).unwrap_or(0);
        Ok(v.chunks(4)
            .map(|c| RateTotals {
                prev: (n(c[0]), n(c[1])),
                cur: (n(c[2]), n(c[3])),
            })
            .collect())
    }

    /// Admit one request against the fleet's request counts of every subject (all or none; the
    /// same Redis counters `sync_rates` keeps): `None` when admitted and counted, else the index
    /// of the subject whose RPM has no room. `subjects`: the Redis name and the RPM (0: none).
    pub async fn admit_request(
        &self,
        now_ms: u64,
        subjects: &[(String, u64)],
    ) -> Result<Option<usize>, BankError> {
        let scripts = self.scripts();
        let mut inv = scripts.admit.prepare_invoke();
        inv.key(format!("{}bank", self.prefix));
        inv.arg(&self.prefix)
            .arg(180)
            .arg(now_ms / 60_000)
            .arg(now_ms % 60_000);
        for (name, rpm) in subjects {
            inv.arg(name).arg(*rpm);
        }
        let i: i64 = self.run(&inv).await?;
        Ok(usize::try_from(i).ok().filter(|&i| i > 0).map(|i| i - 1))
    }

    /// The tenant's totals, read atomically.
    pub async fn snapshot(&self, tenant: i64) -> Result<TenantTotals, BankError> {
        let scripts = self.scripts();
        let mut inv = scripts.snapshot.prepare_invoke();
        inv.key(self.key("bal", tenant))
            .key(self.key("spent", tenant))
            .key(self.key("credited", tenant))
            .key(self.key("nodes", tenant))
            .arg(&self.prefix)
            .arg(tenant);
        let v: Vec<String> = self.run(&inv).await?;
        let [bal, spent, credited, rest @ ..] = v.as_slice() else {
            return Err(BankError::Protocol("snapshot: short reply".into()));
        };
        let mut totals = TenantTotals {
            bal: parse_i64(bal)?,
            spent: parse_i64(spent)?,
            credited: parse_i64(credited)?,
            ..TenantTotals::default()
        };
        for pair in rest.chunks(2) {
            match pair {
                [n, l] => {
                    let l = parse_i64(l)?;
                    totals.leases = totals.leases.saturating_add(l);
                    totals.by_node.push((n.clone(), l));
                }
                _ => return Err(BankError::Protocol("snapshot: odd reply".into())),
            }
        }
        totals.by_node.sort();
        Ok(totals)
    }
}

fn parse_i64(s: &str) -> Result<i64, BankError> {
    s.parse()
        .map_err(|_| BankError::Protocol(format!("not an integer: {s:?}")))
}

// ---------------------------------------------------------------------------------------------
// Client-side allowance manager.

#[derive(Debug, Clone)]
pub struct AllowanceConfig {
    /// Smallest amount leased from Redis at a time.
    pub lease_chunk: i64,
    /// Allowance unused for this long is given back to the shared balance.
    pub idle_return_after: Duration,
    /// After Redis granted less than asked (its balance is empty), refuse without asking again
    /// for this long.
    pub dry_backoff: Duration,
    /// After a failed Redis call, refuse calls that need Redis for this long (fail closed fast).
    pub down_backoff: Duration,
    /// Most tenants in one flush script.
    pub max_batch: usize,
    /// How long shutdown waits for holds in flight and for Redis.
    pub shutdown_grace: Duration,
}

impl AllowanceConfig {
    pub fn new(lease_chunk: i64) -> AllowanceConfig {
        AllowanceConfig {
            lease_chunk: lease_chunk.clamp(1, MAX_AMOUNT),
            idle_return_after: Duration::from_secs(5),
            dry_backoff: Duration::from_millis(100),
            down_backoff: Duration::from_millis(250),
            max_batch: 1_000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Local {
    /// Leased from Redis and neither held nor charged.
    free: i64,
    /// Held by reservations in flight.
    held: i64,
    /// Charged by settlements, not yet in a flush batch.
    queued: i64,
    /// The charge-log tickets of the charges in `queued` (`billing::chargelog`).
    tickets: Vec<u64>,
    last_used: Instant,
    dry_until: Option<Instant>,
}

struct Slot {
    local: Mutex<Local>,
    /// One lease call in flight per tenant; the others wait and look again.
    gate: tokio::sync::Mutex<()>,
}

/// This node's view of a tenant, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LocalAllowance {
    pub free: i64,
    pub held: i64,
    pub queued: i64,
}

/// Charges taken for a batch: (bucket, amount), their (bucket, ticket), whether more wait.
type Queued = (Vec<(i64, i64)>, Vec<(i64, u64)>, bool);

#[derive(Debug, Clone)]
struct Batch {
    id: String,
    charges: Vec<(i64, i64)>,
    /// (bucket, charge-log ticket) of the charges it carries.
    tickets: Vec<(i64, u64)>,
}

#[derive(Debug, Clone)]
struct UnsureLease {
    tenant: i64,
    op_id: String,
}

#[derive(Debug, Clone)]
struct UnsureReturn {
    tenant: i64,
    amount: i64,
    op_id: String,
}

/// What shutdown could not settle before its grace period ended (leased amounts stay recorded
/// in Redis for this node id until `reclaim_own_leases`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub free: i64,
    pub held: i64,
    /// Charges not flushed (queued or in the pending batch).
    pub unflushed: i64,
    /// Redis calls whose outcome is still unknown.
    pub unsure: usize,
}

impl Leftover {
    pub fn is_clean(&self) -> bool {
        *self == Leftover::default()
    }
}

enum Take {
    Done,
    Refused(i64),
    Short(i64),
}

/// Counts a `reserve` in progress until dropped (a cancelled call included).
struct Reserving<'a>(&'a AtomicI64);

impl Drop for Reserving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-node allowance manager: the request path's view of the credit bank.
pub struct Allowances {
    bank: Arc<Bank>,
    cfg: AllowanceConfig,
    tenants: Mutex<HashMap<i64, Arc<Slot>>>,
    /// Serialises flushes, give-backs and resolutions.
    upkeep: tokio::sync::Mutex<()>,
    /// The batch being flushed: retried with the same id until Redis answers.
    batch: Mutex<Option<Batch>>,
    unsure_leases: Arc<Mutex<Vec<UnsureLease>>>,
    unsure_returns: Mutex<Vec<UnsureReturn>>,
    seq: AtomicU64,
    ops: Arc<AtomicU64>,
    down_until: Arc<Mutex<Option<Instant>>>,
    closed: AtomicBool,
    uncollected: AtomicI64,
    lost: AtomicI64,
    /// Where each batch is announced before it is sent and confirmed after, so that a crash
    /// loses no charge and applies none twice (`billing::chargelog`).
    charge_log: std::sync::OnceLock<Arc<crate::billing::chargelog::ChargeLog>>,
    /// `reserve` calls in progress (a bank rebuild waits for none, see `Allowances::busy`).
    reserving: Arc<AtomicI64>,
    /// Incremented when the allowances of a lost bank are dropped (`abandon`): a lease granted
    /// by the old bank and answered later is not added to the new bank's allowance.
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for Allowances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allowances")
            .field("bank", &self.bank)
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn mark_down(down: &Mutex<Option<Instant>>, backoff: Duration) {
    *lock(down) = Some(Instant::now() + backoff);
}

impl Allowances {
    pub fn new(bank: Arc<Bank>, lease_chunk: i64) -> Arc<Self> {
        Allowances::with_config(bank, AllowanceConfig::new(lease_chunk))
    }

    pub fn with_config(bank: Arc<Bank>, cfg: AllowanceConfig) -> Arc<Self> {
        Arc::new(Allowances {
            bank,
            cfg,
            tenants: Mutex::new(HashMap::new()),
            upkeep: tokio::sync::Mutex::new(()),
            batch: Mutex::new(None),
            unsure_leases: Arc::new(Mutex::new(Vec::new())),
            unsure_returns: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            ops: Arc::new(AtomicU64::new(0)),
            down_until: Arc::new(Mutex::new(None)),
            closed: AtomicBool::new(false),
            uncollected: AtomicI64::new(0),
            lost: AtomicI64::new(0),
            charge_log: std::sync::OnceLock::new(),
            reserving: Arc::new(AtomicI64::new(0)),
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Announce and confirm flush batches in this charge log (once, at start).
    pub fn set_charge_log(&self, log: Arc<crate::billing::chargelog::ChargeLog>) {
        let _ = self.charge_log.set(log);
    }

    pub fn bank(&self) -> &Arc<Bank> {
        &self.bank
    }

    /// Redis round trips made by this manager (failed attempts included).
    pub fn redis_ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Charges settlements could not collect (actual cost above hold + free allowance).
    pub fn uncollected(&self) -> i64 {
        self.uncollected.load(Ordering::Relaxed)
    }

    /// Charges dropped because Redis no longer recorded the lease they were spent from (another
    /// process reclaimed this node id's leases, or Redis lost data): lost revenue, never
    /// overspend. Non-zero means misconfiguration; it is logged as an error.
    pub fn lost(&self) -> i64 {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn local(&self, tenant: i64) -> LocalAllowance {
        let map = lock(&self.tenants);
        match map.get(&tenant) {
            Some(s) => {
                let l = lock(&s.local);
                LocalAllowance {
                    free: l.free,
                    held: l.held,
                    queued: l.queued,
                }
            }
            None => LocalAllowance::default(),
        }
    }

    /// Forget that the tenant's shared balance looked empty (call after crediting it).
    pub fn notify_credit(&self, tenant: i64) {
        if let Some(s) = lock(&self.tenants).get(&tenant) {
            lock(&s.local).dry_until = None;
        }
    }

    fn slot(&self, tenant: i64) -> Arc<Slot> {
        lock(&self.tenants)
            .entry(tenant)
            .or_insert_with(|| {
                Arc::new(Slot {
                    local: Mutex::new(Local {
                        free: 0,
                        held: 0,
                        queued: 0,
                        tickets: Vec::new(),
                        last_used: Instant::now(),
                        dry_until: None,
                    }),
                    gate: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    fn next_id(&self, kind: char) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}:{}:{kind}{n}", self.bank.node(), self.bank.epoch())
    }

    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|d| Instant::now() < d)
    }

    fn mark_up(&self) {
        *lock(&self.down_until) = None;
    }

    fn try_take(slot: &Slot, amount: i64) -> Take {
        let now = Instant::now();
        let mut l = lock(&slot.local);
        l.last_used = now;
        if l.free >= amount {
            l.free -= amount;
            l.held += amount;
            return Take::Done;
        }
        if l.dry_until.is_some_and(|d| now < d) {
            return Take::Refused(l.free);
        }
        Take::Short(amount - l.free)
    }

    /// Hold `amount` for a call. Served from the allowance this node holds; when short, leases
    /// `max(lease_chunk, shortfall)` more (one lease in flight per tenant). `Insufficient` when
    /// the shared balance cannot cover it; when Redis is unreachable only held allowance is
    /// served, anything else fails closed (`Unavailable`, `Timeout` or `Redis`).
    pub async fn reserve(&self, tenant: i64, amount: i64) -> Result<(), BankError> {
        check_amount(amount, true)?;
        if amount <= 0 {
            return Ok(());
        }
        self.reserving.fetch_add(1, Ordering::AcqRel);
        let _reserving = Reserving(&self.reserving);
        if self.closed.load(Ordering::Relaxed) || self.bank.state_lost() {
            return Err(BankError::Unavailable);
        }
        let slot = self.slot(tenant);
        for _ in 0..3 {
            match Self::try_take(&slot, amount) {
                Take::Done => return Ok(()),
                Take::Refused(available) => return Err(BankError::Insufficient { available }),
                Take::Short(_) => {}
            }
            if self.is_down() {
                return Err(BankError::Unavailable);
            }
            let _gate = slot.gate.lock().await;
            let need = match Self::try_take(&slot, amount) {
                Take::Done => return Ok(()),
                Take::Refused(available) => return Err(BankError::Insufficient { available }),
                Take::Short(need) => need,
            };
            if self.is_down() {
                return Err(BankError::Unavailable);
            }
            let want = need.max(self.cfg.lease_chunk).min(MAX_AMOUNT);
            let granted = self.lease_detached(tenant, want, &slot).await?;
            if granted >= need {
                continue; // take it (unless a concurrent caller was faster: then lease again)
            }
            // Redis's balance did not cover the shortfall: what was granted stays here (given
            // back when idle) and the call is refused unless a settlement freed enough meanwhile.
            return match Self::try_take(&slot, amount) {
                Take::Done => Ok(()),
                Take::Refused(_) | Take::Short(_) => Err(BankError::Insufficient {
                    available: lock(&slot.local).free,
                }),
            };
        }
        match Self::try_take(&slot, amount) {
            Take::Done => Ok(()),
            _ => Err(BankError::Insufficient {
                available: lock(&slot.local).free,
            }),
        }
    }

    /// Lease in a task of its own, so a cancelled `reserve` (the client went away) cannot lose
    /// a grant: the task credits the local allowance, or records the call for resolution.
    async fn lease_detached(
        &self,
        tenant: i64,
        want: i64,
        slot: &Arc<Slot>,
    ) -> Result<i64, BankError> {
        let bank = self.bank.clone();
        let slot = slot.clone();
        let unsure = self.unsure_leases.clone();
        let ops = self.ops.clone();
        let down = self.down_until.clone();
        let dry = self.cfg.dry_backoff;
        let down_backoff = self.cfg.down_backoff;
        let op_id = self.next_id('l');
        let generation = self.generation.clone();
        let leased_in = generation.load(Ordering::Acquire);
        let task = tokio::spawn(async move {
            ops.fetch_add(1, Ordering::Relaxed);
            match bank.lease_once(tenant, want, &op_id).await {
                Ok(g) => {
                    *lock(&down) = None;
                    let mut l = lock(&slot.local);
                    if generation.load(Ordering::Acquire) != leased_in {
                        // Granted by a bank that is gone (rebuilt meanwhile): not ours to spend.
                        return Err(BankError::Lost);
                    }
                    l.free += g;
                    if g < want {
                        // Redis's balance is now empty.
                        l.dry_until = Some(Instant::now() + dry);
                    }
                    Ok(g)
                }
                Err(e) => {
                    if e.is_unavailable() {
                        mark_down(&down, down_backoff);
                    }
                    if e.is_ambiguous() {
                        lock(&unsure).push(UnsureLease { tenant, op_id });
                    }
                    tracing::warn!(tenant, error = %e, "credit bank: lease failed");
                    Err(e)
                }
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(BankError::Protocol(format!("lease task: {e}"))),
        }
    }

    /// Settle a call: release its hold and charge `actual`, capped at what the hold plus the
    /// free allowance cover. Returns the amount charged; it is flushed to Redis later.
    pub fn settle(&self, tenant: i64, held: i64, actual: i64) -> i64 {
        self.settle_many(&[(tenant, held)], actual, None)
    }

    /// Settle one call that holds allowance in several buckets (a tenant's balance and the
    /// quotas it is spent under): release every hold, then charge the same amount to each,
    /// capped by the bucket that can pay least. Returns the amount charged.
    /// `ticket`: where the charge is in the charge log, flushed with it.
    pub fn settle_many(&self, holds: &[(i64, i64)], actual: i64, ticket: Option<u64>) -> i64 {
        let mut slots: Vec<(i64, i64, Arc<Slot>)> =
            holds.iter().map(|&(t, h)| (t, h, self.slot(t))).collect();
        // A fixed lock order (other paths lock one slot at a time).
        slots.sort_by_key(|s| s.0);
        slots.dedup_by_key(|s| s.0);
        let mut guards: Vec<MutexGuard<'_, Local>> =
            slots.iter().map(|s| lock(&s.2.local)).collect();
        for (g, (_, held, _)) in guards.iter_mut().zip(&slots) {
            let release = (*held).clamp(0, g.held.max(0));
            g.held -= release;
            g.free += release;
        }
        let actual = actual.max(0);
        let cap = guards.iter().map(|g| g.free.max(0)).min().unwrap_or(0);
        let charged = actual.min(cap);
        let now = Instant::now();
        for g in guards.iter_mut() {
            g.free -= charged;
            g.queued += charged;
            g.last_used = now;
            if let (Some(t), true) = (ticket, charged > 0) {
                g.tickets.push(t);
            }
        }
        drop(guards);
        if actual > charged {
            self.uncollected
                .fetch_add(actual - charged, Ordering::Relaxed);
        }
        charged
    }

    fn take_queued(&self) -> Queued {
        let map = lock(&self.tenants);
        let mut charges = Vec::new();
        let mut tickets = Vec::new();
        for (t, s) in map.iter() {
            let mut l = lock(&s.local);
            if l.queued > 0 {
                if charges.len() >= self.cfg.max_batch.max(1) {
                    return (charges, tickets, true);
                }
                charges.push((*t, l.queued));
                tickets.extend(l.tickets.drain(..).map(|k| (*t, k)));
                l.queued = 0;
            }
        }
        (charges, tickets, false)
    }

    /// Announce a batch in the charge log before it is sent.
    fn announce(&self, b: &Batch) {
        if let Some(log) = self.charge_log.get() {
            log.intent(&b.id, &b.charges, &b.tickets);
        }
    }

    /// Flush queued charges in one round trip (plus one when a failed batch is retried first).
    /// A batch whose outcome is unknown is retried with the same id, so it applies once; charges
    /// are never dropped while Redis records the lease they were spent from.
    pub async fn flush_now(&self) -> Result<(), BankError> {
        let _upkeep = self.upkeep.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> Result<(), BankError> {
        let mut budget = 16 + self.cfg.max_batch;
        loop {
            let (batch, more) = {
                let mut slot = lock(&self.batch);
                let mut more = false;
                if slot.is_none() {
                    let (charges, tickets, m) = self.take_queued();
                    more = m;
                    if !charges.is_empty() {
                        let b = Batch {
                            id: self.next_id('f'),
                            charges,
                            tickets,
                        };
                        self.announce(&b);
                        *slot = Some(b);
                    }
                }
                match slot.clone() {
                    Some(b) => (b, more),
                    None => return Ok(()),
                }
            };
            self.ops.fetch_add(1, Ordering::Relaxed);
            match self.bank.flush(&batch.id, &batch.charges).await {
                Ok(()) => {
                    self.mark_up();
                    *lock(&self.batch) = None;
                    if let Some(log) = self.charge_log.get() {
                        log.flushed(&batch.id, &batch.tickets);
                    }
                    if !more {
                        return Ok(());
                    }
                }
                Err(BankError::Overdrawn {
                    tenant,
                    lease,
                    amount,
                }) => {
                    // Nothing was applied. Redis records less lease than this node spent: its
                    // leases were reclaimed by another process with our node id, or Redis lost
                    // data. Charge what the lease covers, never more, and stop using phantom
                    // allowance for that tenant.
                    let lease = lease.max(0);
                    tracing::error!(tenant, lease, amount, node = %self.bank.node(),
                        "credit bank: charges exceed this node's lease in redis; capping (duplicate node id or redis data loss?)");
                    self.lost.fetch_add(amount - lease, Ordering::Relaxed);
                    lock(&self.slot(tenant).local).free = 0;
                    let mut charges = batch.charges;
                    for c in charges.iter_mut() {
                        if c.0 == tenant {
                            c.1 = lease.min(c.1);
                        }
                    }
                    charges.retain(|c| c.1 > 0);
                    // The old id will never be applied: not to be sent again after a crash.
                    if let Some(log) = self.charge_log.get() {
                        log.flushed(&batch.id, &[]);
                    }
                    let next = (!charges.is_empty()).then(|| Batch {
                        id: self.next_id('f'),
                        charges,
                        tickets: batch.tickets.clone(),
                    });
                    if let Some(b) = next.as_ref() {
                        self.announce(b);
                    }
                    *lock(&self.batch) = next;
                }
                Err(BankError::IdConflict { id }) => {
                    tracing::error!(%id, "credit bank: flush id already used; reissuing the batch");
                    if let Some(log) = self.charge_log.get() {
                        log.flushed(&batch.id, &[]);
                    }
                    let b = Batch {
                        id: self.next_id('f'),
                        charges: batch.charges,
                        tickets: batch.tickets,
                    };
                    self.announce(&b);
                    *lock(&self.batch) = Some(b);
                }
                Err(e) => {
                    if e.is_unavailable() {
                        mark_down(&self.down_until, self.cfg.down_backoff);
                    }
                    return Err(e);
                }
            }
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return Err(BankError::Protocol("flush: too many rounds".into()));
            }
        }
    }

    /// Resolve lease calls whose answer was lost: what they granted joins the local allowance,
    /// and those never applied are voided.
    async fn resolve_leases(&self) -> Result<(), BankError> {
        let pending = std::mem::take(&mut *lock(&self.unsure_leases));
        let mut result = Ok(());
        let mut left = Vec::new();
        for u in pending {
            if result.is_err() {
                left.push(u);
                continue;
            }
            self.ops.fetch_add(1, Ordering::Relaxed);
            match self.bank.lease_once(u.tenant, 0, &u.op_id).await {
                Ok(g) => {
                    self.mark_up();
                    if g > 0 {
                        lock(&self.slot(u.tenant).local).free += g;
                    }
                }
                Err(BankError::IdConflict { id }) => {
                    tracing::error!(%id, "credit bank: lease id conflict while resolving");
                }
                Err(e) => {
                    if e.is_unavailable() {
                        mark_down(&self.down_until, self.cfg.down_backoff);
                    }
                    left.push(u);
                    result = Err(e);
                }
            }
        }
        lock(&self.unsure_leases).extend(left);
        result
    }

    /// Give back what is not used: every tenant's free allowance (`all`), or only that of tenants
    /// idle for `idle_return_after`. Returns recorded first are retried with their own ids.
    async fn return_allowance(&self, all: bool) -> Result<(), BankError> {
        let now = Instant::now();
        {
            let map = lock(&self.tenants);
            let mut returns = lock(&self.unsure_returns);
            for (t, s) in map.iter() {
                let mut l = lock(&s.local);
                if l.free > 0
                    && (all || now.duration_since(l.last_used) >= self.cfg.idle_return_after)
                {
                    returns.push(UnsureReturn {
                        tenant: *t,
                        amount: l.free,
                        op_id: self.next_id('g'),
                    });
                    l.free = 0;
                }
            }
        }
        let pending = std::mem::take(&mut *lock(&self.unsure_returns));
        let mut result = Ok(());
        let mut left = Vec::new();
        for r in pending {
            if result.is_err() {
                left.push(r);
                continue;
            }
            self.ops.fetch_add(1, Ordering::Relaxed);
            match self.bank.give_back(r.tenant, r.amount, &r.op_id).await {
                Ok(returned) => {
                    self.mark_up();
                    if returned < r.amount {
                        tracing::error!(
                            tenant = r.tenant,
                            asked = r.amount,
                            returned,
                            "credit bank: redis records less lease than this node holds"
                        );
                    }
                }
                Err(BankError::IdConflict { id }) => {
                    tracing::error!(%id, "credit bank: give-back id conflict");
                }
                Err(e) => {
                    if e.is_unavailable() {
                        mark_down(&self.down_until, self.cfg.down_backoff);
                    }
                    // Retried with the same id: applied once whatever happened to this call.
                    left.push(r);
                    result = Err(e);
                }
            }
        }
        lock(&self.unsure_returns).extend(left);
        result
    }

    fn prune(&self) {
        let now = Instant::now();
        let idle = self.cfg.idle_return_after;
        lock(&self.tenants).retain(|_, s| {
            if Arc::strong_count(s) > 1 {
                return true;
            }
            let l = lock(&s.local);
            l.free != 0
                || l.held != 0
                || l.queued != 0
                || now.duration_since(l.last_used) < idle
                || l.dry_until.is_some_and(|d| now < d)
        });
    }

    /// One round of upkeep: resolve unknown outcomes, flush, give back idle allowance.
    pub async fn upkeep(&self) -> Result<(), BankError> {
        if self.bank.state_lost() {
            // Nothing can be applied to the bank until it is rebuilt (`abandon`).
            return Err(BankError::Lost);
        }
        let _upkeep = self.upkeep.lock().await;
        let mut result = Ok(());
        if !lock(&self.unsure_leases).is_empty() {
            result = result.and(self.resolve_leases().await);
        }
        result = result.and(self.flush_locked().await);
        if result.is_ok() {
            result = self.return_allowance(false).await;
        }
        self.prune();
        result
    }

    fn leftover(&self) -> Leftover {
        let mut left = Leftover::default();
        for s in lock(&self.tenants).values() {
            let l = lock(&s.local);
            left.free += l.free;
            left.held += l.held;
            left.unflushed += l.queued;
        }
        if let Some(b) = lock(&self.batch).as_ref() {
            left.unflushed += b.charges.iter().map(|c| c.1).sum::<i64>();
        }
        left.unsure = lock(&self.unsure_leases).len() + lock(&self.unsure_returns).len();
        left
    }

    /// Held by this node's calls in flight, over every bucket.
    pub fn held(&self) -> i64 {
        lock(&self.tenants)
            .values()
            .map(|s| lock(&s.local).held)
            .sum()
    }

    /// Whether a call of this node holds allowance or is being admitted: a bank rebuild drops
    /// this node's allowances only once nothing is (`abandon`).
    pub fn busy(&self) -> bool {
        self.reserving.load(Ordering::Acquire) != 0 || self.held() != 0
    }

    /// The bank this node served on is gone (`Bank::state_lost`) and every call of this node
    /// has settled (`held() == 0`), its charges in the record: forget every lease, queued
    /// charge, unflushed batch and unresolved Redis call, since the rebuilt bank is seeded from
    /// the record, which has all of them. The charge log is told, so that a crash replay does
    /// not send them either. Returns the charges dropped from Redis's view (in the record).
    pub async fn abandon(&self) -> i64 {
        let _upkeep = self.upkeep.lock().await;
        let log = self.charge_log.get();
        let mut dropped = 0i64;
        if let Some(b) = lock(&self.batch).take() {
            dropped += b.charges.iter().map(|c| c.1).sum::<i64>();
            if let Some(log) = log {
                log.flushed(&b.id, &b.tickets);
            }
        }
        loop {
            let (charges, tickets, more) = self.take_queued();
            if charges.is_empty() {
                break;
            }
            dropped += charges.iter().map(|c| c.1).sum::<i64>();
            if let Some(log) = log {
                let id = self.next_id('a');
                log.intent(&id, &charges, &tickets);
                log.flushed(&id, &tickets);
            }
            if !more {
                break;
            }
        }
        lock(&self.unsure_leases).clear();
        lock(&self.unsure_returns).clear();
        {
            // Under each slot's lock after the generation moved: a lease of the old bank
            // answered from now on is dropped (`lease_detached`).
            let tenants = lock(&self.tenants);
            self.generation.fetch_add(1, Ordering::AcqRel);
            for s in tenants.values() {
                let mut l = lock(&s.local);
                l.free = 0;
                l.dry_until = None;
            }
        }
        lock(&self.tenants).clear();
        *lock(&self.down_until) = None;
        dropped
    }

    /// Stop leasing, wait (up to `shutdown_grace`) for holds in flight to settle, flush
    /// everything and give every allowance back. Returns what could not be settled.
    pub async fn shutdown(&self) -> Leftover {
        self.closed.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        loop {
            {
                let _upkeep = self.upkeep.lock().await;
                let _ = self.resolve_leases().await;
                let _ = self.flush_locked().await;
                let _ = self.return_allowance(true).await;
            }
            let left = self.leftover();
            if left.is_clean() {
                return left;
            }
            if Instant::now() >= deadline {
                tracing::warn!(?left, node = %self.bank.node(),
                    "credit bank: shutdown incomplete; reclaim_own_leases on the next start returns the rest");
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Background upkeep: every `every`, resolve lost answers, flush queued charges and give back
    /// allowance idle for `idle_return_after`. When `shutdown` turns true (or its sender is
    /// dropped), runs [`Allowances::shutdown`] and returns.
    pub async fn run_flusher(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Leftover {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            }
            match self.upkeep().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("credit bank: redis reachable again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "credit bank: upkeep failed; retrying");
                    }
                    failing = true;
                }
            }
        }
        self.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::process::{Child, Command, Stdio};

    #[test]
    fn cluster_urls_and_prefixes() {
        assert_eq!(cluster_nodes("redis://h:1/").unwrap(), None);
        assert_eq!(
            cluster_nodes("redis+cluster://a:7000,b:7001/").unwrap(),
            Some(vec!["redis://a:7000".to_string(), "redis://b:7001".into()])
        );
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@w@a:1").unwrap(),
            Some(vec!["redis://u:p@w@a:1".to_string()])
        );
        assert!(cluster_nodes("redis+cluster://").is_err());
        assert!(cluster_nodes("redis+cluster://a:1/2").is_err());
        assert_eq!(cluster_prefix("tg:"), "{tg}:");
        assert_eq!(cluster_prefix(""), "{tg}:");
        assert_eq!(cluster_prefix("{acme}:"), "{acme}:");
        assert_eq!(cluster_prefix("gw{x}:"), "gw{x}:");
        // An empty tag hashes the whole key: not a tag.
        assert_eq!(cluster_prefix("{}:"), "{{}}:");
        assert_eq!(
            redis::cluster_routing::Slot::for_key("{tg}:bal:1"),
            redis::cluster_routing::Slot::for_key("{tg}:lease:n1:99")
        );
    }

    #[test]
    fn sentinel_urls_are_read_and_bad_ones_refused() {
        assert_eq!(SentinelUrl::parse("redis://h:1/0").unwrap(), None);
        let u = SentinelUrl::parse("redis+sentinel://:pw@a:26379,b:26380/tg/2")
            .unwrap()
            .unwrap();
        assert_eq!(u.sentinels, ["redis://a:26379", "redis://b:26380"]);
        assert_eq!((u.master.as_str(), u.db), ("tg", 2));
        assert_eq!((u.username, u.password.as_deref()), (None, Some("pw")));
        let u = SentinelUrl::parse("redis+sentinel://me:p@ss@a:1/m")
            .unwrap()
            .unwrap();
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("me"), Some("p@ss"))
        );
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel:///m",
            "redis+sentinel://a:1/",
            "redis+sentinel://a:1/m/x",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// A redis-server of the test's own, on a free port; killed on drop.
    struct Server {
        port: u16,
        child: Option<Child>,
        dir: Option<std::path::PathBuf>,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Server {
        fn start() -> Server {
            let mut s = Server {
                port: free_port(),
                child: None,
                dir: None,
            };
            s.spawn();
            s
        }

        /// With an append-only file (fsync on every write) in a directory of its own.
        fn start_persistent() -> Server {
            let port = free_port();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!("tg-bank-{port}-{nanos}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut s = Server {
                port,
                child: None,
                dir: Some(dir),
            };
            s.spawn();
            s
        }

        fn spawn(&mut self) {
            let mut cmd = Command::new("redis-server");
            cmd.arg("--port")
                .arg(self.port.to_string())
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--save")
                .arg("");
            match &self.dir {
                Some(dir) => {
                    cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                        .arg(dir);
                }
                None => {
                    cmd.args(["--appendonly", "no"]);
                }
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(client) = redis::Client::open(self.url()) {
                    if let Ok(mut c) = client.get_connection() {
                        if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                            return;
                        }
                    }
                }
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// SIGKILL: a crash, no chance to write anything more.
        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.kill();
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn fast() -> BankConfig {
        BankConfig {
            op_timeout: Duration::from_millis(400),
            connect_timeout: Duration::from_millis(200),
            ..BankConfig::default()
        }
    }

    async fn bank(s: &Server, node: &str) -> Arc<Bank> {
        Arc::new(
            Bank::connect_with(&s.url(), node, "tg:", fast())
                .await
                .unwrap(),
        )
    }

    /// `bal + Σ leases + spent = credited`, nothing negative, and the `nodes:{t}` index covers
    /// every lease key (cross-checked with SCAN).
    async fn check(b: &Bank, s: &Server, t: i64) -> TenantTotals {
        let v = b.snapshot(t).await.unwrap();
        assert!(v.balanced(), "invariant broken: {v:?}");
        assert!(v.bal >= 0, "{v:?}");
        assert!(v.spent >= 0 && v.spent <= v.credited, "{v:?}");
        assert!(v.by_node.iter().all(|(_, l)| *l > 0), "{v:?}");
        let client = redis::Client::open(s.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("tg:lease:*:{t}"))
            .query_async(&mut c)
            .await
            .unwrap();
        let mut scanned = 0i64;
        for k in keys {
            let l: i64 = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
            scanned += l;
        }
        assert_eq!(scanned, v.leases, "a lease key is missing from nodes:{t}");
        v
    }

    #[tokio::test]
    async fn quota_limits_move_by_the_change_and_period_buckets_expire() {
        let s = Server::start();
        let b = bank(&s, "n1").await;
        // First sight: balance = limit - what was spent under it already.
        assert!(b.set_limit(-5, 1_000, 300, 1, None).await.unwrap());
        let v = check(&b, &s, -5).await;
        assert_eq!((v.bal, v.credited), (700, 700));
        // Raised by 500 at generation 2; a stale node (generation 1) cannot undo it.
        assert!(b.set_limit(-5, 1_500, 0, 2, None).await.unwrap());
        assert!(!b.set_limit(-5, 1_000, 0, 1, None).await.unwrap());
        assert!(!b.set_limit(-5, 1_500, 0, 2, None).await.unwrap());
        let v = check(&b, &s, -5).await;
        assert_eq!((v.bal, v.credited), (1_200, 1_200));
        // A per-period bucket expires; a lifetime one does not.
        b.set_limit(-9, 100, 0, 1, Some(Duration::from_secs(3 * 86_400)))
            .await
            .unwrap();
        let client = redis::Client::open(s.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        for key in ["tg:bal:-9", "tg:credited:-9", "tg:limit:-9", "tg:spent:-9"] {
            let ttl: i64 = redis::cmd("TTL")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert!((86_400..=3 * 86_400).contains(&ttl), "{key}: {ttl}");
        }
        let ttl: i64 = redis::cmd("TTL")
            .arg("tg:bal:-5")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(ttl, -1);
    }

    #[tokio::test]
    async fn credit_is_idempotent_and_debits_need_cover() {
        let s = Server::start();
        let b = bank(&s, "n1").await;
        check(&b, &s, 1).await;
        assert_eq!(b.credit(1, 1_000, "topup:1").await.unwrap(), 1_000);
        check(&b, &s, 1).await;
        assert_eq!(b.credit(1, 1_000, "topup:1").await.unwrap(), 1_000);
        let v = check(&b, &s, 1).await;
        assert_eq!((v.bal, v.credited), (1_000, 1_000));
        assert!(matches!(
            b.credit(1, 999, "topup:1").await,
            Err(BankError::IdConflict { .. })
        ));
        assert!(matches!(
            b.credit(2, 1_000, "topup:1").await,
            Err(BankError::IdConflict { .. })
        ));
        assert_eq!(b.credit(1, -300, "adj:1").await.unwrap(), 700);
        check(&b, &s, 1).await;
        // Leased allowance is not taken back by a debit.
        assert_eq!(b.lease(1, 500).await.unwrap(), 500);
        check(&b, &s, 1).await;
        assert!(matches!(
            b.credit(1, -201, "adj:2").await,
            Err(BankError::Insufficient { available: 200 })
        ));
        // Refused entries leave no marker: the same id may be used once it is covered.
        assert_eq!(b.credit(1, 1, "adj:2").await.unwrap(), 201);
        let v = check(&b, &s, 1).await;
        assert_eq!((v.bal, v.leases, v.spent, v.credited), (201, 500, 0, 701));
        assert!(matches!(
            b.credit(1, MAX_AMOUNT + 1, "big").await,
            Err(BankError::InvalidAmount { .. })
        ));
        // Totals past 2^53 stay exact (Redis integer arithmetic).
        for i in 0..3 {
            b.credit(1, MAX_AMOUNT, &format!("big:{i}")).await.unwrap();
        }
        let v = check(&b, &s, 1).await;
        assert_eq!(v.credited, 701 + 3 * MAX_AMOUNT);
        assert_eq!(b.lease(1, MAX_AMOUNT).await.unwrap(), MAX_AMOUNT);
        check(&b, &s, 1).await;
        // A tenant untouched so far balances trivially.
        assert_eq!(check(&b, &s, 2).await, TenantTotals::default());
    }

    #[tokio::test]
    async fn lease_never_exceeds_the_balance() {
        let s = Server::start();
        let b1 = bank(&s, "n1").await;
        let b2 = bank(&s, "n2").await;
        b1.credit(5, 1_000, "c").await.unwrap();
        assert_eq!(b1.lease(5, 600).await.unwrap(), 600);
        check(&b1, &s, 5).await;
        assert_eq!(b2.lease(5, 600).await.unwrap(), 400);
        check(&b1, &s, 5).await;
        assert_eq!(b2.lease(5, 1).await.unwrap(), 0);
        let v = check(&b1, &s, 5).await;
        assert_eq!(v.bal, 0);
        assert_eq!(v.by_node, vec![("n1".into(), 600), ("n2".into(), 400)]);
        assert!(matches!(
            b1.lease(5, -1).await,
            Err(BankError::InvalidAmount { .. })
        ));

        // Many concurrent leases from two nodes: exactly the balance is handed out.
        b1.credit(6, 10_000, "c6").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let b = if i % 2 == 0 { b1.clone() } else { b2.clone() };
            tasks.push(tokio::spawn(async move { b.lease(6, 300).await.unwrap() }));
        }
        let mut granted = 0;
        for t in tasks {
            let g = t.await.unwrap();
            assert!((0..=300).contains(&g));
            granted += g;
        }
        assert_eq!(granted, 10_000);
        let v = check(&b1, &s, 6).await;
        assert_eq!((v.bal, v.leases), (0, 10_000));

        // lease_once: a replay returns the first grant and moves nothing more.
        b1.credit(7, 1_000, "c7").await.unwrap();
        assert_eq!(b1.lease_once(7, 300, "l1").await.unwrap(), 300);
        assert_eq!(b1.lease_once(7, 300, "l1").await.unwrap(), 300);
        let v = check(&b1, &s, 7).await;
        assert_eq!((v.bal, v.leases), (700, 300));
        // Resolving (want = 0) an id never applied voids it for good.
        assert_eq!(b1.lease_once(7, 0, "l2").await.unwrap(), 0);
        assert_eq!(b1.lease_once(7, 300, "l2").await.unwrap(), 0);
        assert!(matches!(
            b1.lease_once(8, 300, "l1").await,
            Err(BankError::IdConflict { .. })
        ));
        let v = check(&b1, &s, 7).await;
        assert_eq!((v.bal, v.leases), (700, 300));
    }

    #[tokio::test]
    async fn give_back_is_idempotent_and_capped_at_the_lease() {
        let s = Server::start();
        let b = bank(&s, "n1").await;
        b.credit(3, 1_000, "c").await.unwrap();
        assert_eq!(b.lease(3, 500).await.unwrap(), 500);
        check(&b, &s, 3).await;
        assert_eq!(b.give_back(3, 200, "g1").await.unwrap(), 200);
        check(&b, &s, 3).await;
        assert_eq!(b.give_back(3, 200, "g1").await.unwrap(), 200);
        let v = check(&b, &s, 3).await;
        assert_eq!((v.bal, v.leases), (700, 300));
        assert!(matches!(
            b.give_back(3, 201, "g1").await,
            Err(BankError::IdConflict { .. })
        ));
        assert_eq!(b.give_back(3, 1_000, "g2").await.unwrap(), 300);
        let v = check(&b, &s, 3).await;
        assert_eq!((v.bal, v.leases, v.credited), (1_000, 0, 1_000));
        assert!(v.by_node.is_empty(), "{v:?}");
        assert_eq!(b.give_back(3, 1_000, "g2").await.unwrap(), 300);
        assert_eq!(b.give_back(3, 50, "g3").await.unwrap(), 0);
        check(&b, &s, 3).await;
        // Nothing left for this node to reclaim.
        assert!(b.reclaim_own_leases().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn flush_is_idempotent_and_all_or_nothing() {
        let s = Server::start();
        let b = bank(&s, "n1").await;
        b.credit(1, 1_000, "c1").await.unwrap();
        b.credit(2, 1_000, "c2").await.unwrap();
        b.lease(1, 400).await.unwrap();
        b.lease(2, 100).await.unwrap();
        check(&b, &s, 1).await;
        check(&b, &s, 2).await;
        b.flush("b1", &[(1, 150), (2, 60), (1, 50)]).await.unwrap();
        let v1 = check(&b, &s, 1).await;
        let v2 = check(&b, &s, 2).await;
        assert_eq!((v1.leases, v1.spent), (200, 200));
        assert_eq!((v2.leases, v2.spent), (40, 60));
        // The same batch again: applied once.
        b.flush("b1", &[(1, 150), (2, 60), (1, 50)]).await.unwrap();
        assert_eq!(check(&b, &s, 1).await, v1);
        assert_eq!(check(&b, &s, 2).await, v2);
        assert!(matches!(
            b.flush("b1", &[(1, 10)]).await,
            Err(BankError::IdConflict { .. })
        ));
        // One charge above its lease: nothing of the batch is applied.
        match b.flush("b2", &[(1, 10), (2, 41)]).await {
            Err(BankError::Overdrawn {
                tenant: 2,
                lease: 40,
                amount: 41,
            }) => {}
            other => panic!("expected Overdrawn, got {other:?}"),
        }
        assert_eq!(check(&b, &s, 1).await, v1);
        assert_eq!(check(&b, &s, 2).await, v2);
        // Another node's lease does not cover this node's charges.
        let other = bank(&s, "n2").await;
        other.lease(1, 500).await.unwrap();
        assert!(matches!(
            b.flush("b3", &[(1, 201)]).await,
            Err(BankError::Overdrawn { .. })
        ));
        check(&b, &s, 1).await;
        // A lease spent to zero leaves the indexes.
        b.flush("b4", &[(2, 40)]).await.unwrap();
        let v2 = check(&b, &s, 2).await;
        assert_eq!((v2.bal, v2.leases, v2.spent), (900, 0, 100));
        assert!(v2.by_node.is_empty());
        b.flush("b5", &[]).await.unwrap();
        assert!(matches!(
            b.flush("b6", &[(1, -1)]).await,
            Err(BankError::InvalidAmount { .. })
        ));
        check(&b, &s, 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_share_one_balance_without_overspending() {
        const TENANT: i64 = 42;
        const CREDIT: i64 = 1_000_000;
        const REQUESTS: usize = 2_000;
        let s = Server::start();
        let admin = bank(&s, "admin").await;
        admin.credit(TENANT, CREDIT, "topup").await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut nodes = Vec::new();
        let mut flushers = Vec::new();
        for n in ["n1", "n2", "n3"] {
            let a = Allowances::new(bank(&s, n).await, 25_000);
            flushers.push(tokio::spawn(
                a.clone()
                    .run_flusher(Duration::from_millis(50), stop_rx.clone()),
            ));
            nodes.push(a);
        }
        // Invariant checked continuously while the requests run.
        let running = Arc::new(AtomicBool::new(true));
        let checker = {
            let admin = admin.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    let v = admin.snapshot(TENANT).await.unwrap();
                    assert!(v.balanced() && v.bal >= 0, "{v:?}");
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n
            })
        };
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(REQUESTS);
        for i in 0..REQUESTS {
            let a = nodes[i % 3].clone();
            tasks.push(tokio::spawn(async move {
                let x = (i as u64).wrapping_mul(6_364_136_223_846_793_005) >> 33;
                tokio::time::sleep(Duration::from_millis(x % 200)).await;
                match a.reserve(TENANT, 1_000).await {
                    Ok(()) => {
                        tokio::time::sleep(Duration::from_millis(x % 5)).await;
                        let actual = 400 + (x % 900) as i64; // sometimes above the hold
                        let charged = a.settle(TENANT, 1_000, actual);
                        assert!(charged <= actual);
                        Ok(charged)
                    }
                    Err(e) => Err(e),
                }
            }));
        }
        let (mut served, mut refused, mut charged) = (0, 0, 0i64);
        for t in tasks {
            match t.await.unwrap() {
                Ok(c) => {
                    served += 1;
                    charged += c;
                }
                Err(BankError::Insufficient { .. }) => refused += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let elapsed = started.elapsed();
        running.store(false, Ordering::Relaxed);
        let snapshots = checker.await.unwrap();
        stop_tx.send(true).unwrap();
        for f in flushers {
            f.await.unwrap();
        }
        let v = check(&admin, &s, TENANT).await;
        let ops: u64 = nodes.iter().map(|a| a.redis_ops()).sum();
        eprintln!(
            "served {served}, refused {refused}, charged {charged}, redis ops {ops} \
             ({:.4} per request), {snapshots} snapshots, {elapsed:?}",
            ops as f64 / REQUESTS as f64
        );
        assert!(
            served > 0 && refused > 0,
            "served {served} refused {refused}"
        );
        assert_eq!(v.leases, 0, "{v:?}");
        assert_eq!(
            v.spent, charged,
            "every settled charge applied exactly once"
        );
        assert!(v.spent <= CREDIT);
        assert_eq!(v.bal, CREDIT - charged);
        assert_eq!(v.credited, CREDIT);
        // The balance really was exhausted, up to what other nodes held when a node went dry
        // (at most about a lease chunk each): refusals were not spurious.
        assert!(v.bal < 3 * 25_000, "{v:?}");
        assert!(
            (ops as usize) * 10 < REQUESTS,
            "{ops} redis round trips for {REQUESTS} requests"
        );
        for a in &nodes {
            assert_eq!(a.lost(), 0);
            assert_eq!(a.local(TENANT), LocalAllowance::default());
        }
    }

    /// The rebuild protocol on one Redis: a stale bank (a replica promoted with old data) fences
    /// every write of a node, and a new bank is published only once every node of the
    /// registry and every live process is ready; the stale keys go, the epochs stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_bank_is_fenced_then_published_once_everyone_is_ready() {
        let s = Server::start();
        let b1 = bank(&s, "n1").await;
        let b2 = bank(&s, "n2").await;
        b1.credit(1, 1_000_000, "topup").await.unwrap();
        assert_eq!(b1.lease(1, 400_000).await.unwrap(), 400_000);
        let client = redis::Client::open(s.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("tg:bank")
            .arg("stale")
            .query_async(&mut c)
            .await
            .unwrap();
        // The fence: nothing is written into a bank this node does not serve on.
        assert!(matches!(
            b1.credit(1, 5, "late").await,
            Err(BankError::Lost)
        ));
        assert!(b1.state_lost());
        assert!(!b2.probe().await, "the probe sees the changed bank");
        assert!(b2.state_lost());
        let bal: Option<String> = redis::cmd("GET")
            .arg("tg:bal:1")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            bal.as_deref(),
            Some("600000"),
            "the fenced credit wrote nothing"
        );

        b1.heartbeat().await.unwrap();
        b2.heartbeat().await.unwrap();
        b1.rebuild_ready().await.unwrap();
        let nodes = ["n1".to_string(), "n2".to_string()];
        // n3 is in the registry but not ready; then n2's process is alive but not ready.
        let with_n3 = ["n1".to_string(), "n3".to_string()];
        assert_eq!(
            b1.publish("stale", &with_n3, 7).await.unwrap(),
            Publish::Waiting("n3".into())
        );
        assert_eq!(
            b1.publish("stale", &nodes[..1], 7).await.unwrap(),
            Publish::Waiting(format!("n2:{}", b2.epoch()))
        );
        b2.rebuild_ready().await.unwrap();
        // The stale bank is wiped first (its balance, leases, markers), then published.
        assert_eq!(
            b1.publish("stale", &nodes, 7).await.unwrap(),
            Publish::Moved(String::new())
        );
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("tg:*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut left: Vec<&str> = left
            .iter()
            .map(String::as_str)
            .filter(|k| !k.starts_with("tg:epoch:"))
            .collect();
        left.sort();
        assert_eq!(left, ["tg:alive", "tg:rebuild:ready"]);
        let id = match b1.publish("", &nodes, 7).await.unwrap() {
            Publish::Published(id) => id,
            other => panic!("{other:?}"),
        };
        // Published once: a second try sees the new bank.
        assert_eq!(
            b2.publish("", &nodes, 9).await.unwrap(),
            Publish::Moved(id.clone())
        );
        assert!(b1.adopt(&id).await.unwrap());
        assert!(b2.adopt(&id).await.unwrap());
        assert!(!b1.state_lost() && b2.probe().await);
        assert_eq!(b1.cursor().await.unwrap(), 7);
        assert_eq!(b1.snapshot(1).await.unwrap(), TenantTotals::default());
        assert!(b1.seed(1, 1_000_000, 250_000, 7).await.unwrap());
        assert_eq!(b2.lease(1, 900_000).await.unwrap(), 750_000);
        // A wipe decided before the publish (a second coordinator) no longer touches anything.
        assert_eq!(b2.wipe("stale").await.unwrap(), 0);
        let after = b1.snapshot(1).await.unwrap();
        assert_eq!(
            (after.credited, after.spent, after.leases),
            (1_000_000, 250_000, 750_000)
        );
        // A process that was not ready when the bank was published does not adopt it.
        let late = Bank::connect_with(
            &s.url(),
            "n4",
            "tg:",
            BankConfig {
                create_bank: false,
                ..fast()
            },
        )
        .await
        .unwrap();
        assert!(
            !late.adopt(&id).await.unwrap(),
            "not a member of the rebuild"
        );
        assert_eq!(
            late.marker(),
            id,
            "a node starting now serves on the bank Redis holds"
        );
        assert!(!late.state_lost());
    }

    /// Redis goes back to before one node's last write while another node keeps writing: the
    /// first still sees it (its clock is its own), and the bank is marked stale for everyone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn going_back_in_time_is_seen_by_the_writer_whatever_the_others_write() {
        let s = Server::start();
        let b1 = bank(&s, "n1").await;
        let b2 = bank(&s, "n2").await;
        b1.credit(1, 1_000, "c1").await.unwrap();
        b1.credit(1, 1_000, "c2").await.unwrap();
        let client = redis::Client::open(s.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("tg:clock:n1:{}", b1.epoch()))
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        for i in 0..5 {
            b2.credit(2, 10, &format!("x{i}")).await.unwrap();
        }
        assert!(b2.probe().await, "n2 lost none of its writes");
        assert!(!b1.probe().await, "n1's clock is behind what it saw");
        assert!(b1.state_lost());
        let m: String = redis::cmd("GET")
            .arg("tg:bank")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(m.starts_with("stale:"), "{m}");
        assert!(matches!(b2.credit(2, 10, "y").await, Err(BankError::Lost)));
        // A node starting now does not serve on the stale bank: it waits for the rebuild.
        let b3 = bank(&s, "n3").await;
        assert!(b3.state_lost());
        assert!(b3.marker().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_restart_fails_closed_then_recovers() {
        const T: i64 = 9;
        let mut s = Server::start_persistent();
        // A restarted server fsyncs every write of its append-only file: on a loaded test
        // machine a call can take longer than `fast()`'s 400 ms.
        let b = Arc::new(
            Bank::connect_with(
                &s.url(),
                "n1",
                "tg:",
                BankConfig {
                    op_timeout: Duration::from_millis(1500),
                    ..fast()
                },
            )
            .await
            .unwrap(),
        );
        b.credit(T, 1_000_000, "topup").await.unwrap();
        let cfg = AllowanceConfig {
            down_backoff: Duration::from_millis(50),
            ..AllowanceConfig::new(50_000)
        };
        let a = Allowances::with_config(b.clone(), cfg);
        let mut charged = 0;
        for _ in 0..10 {
            a.reserve(T, 1_000).await.unwrap();
            charged += a.settle(T, 1_000, 1_000);
        }
        a.flush_now().await.unwrap();
        check(&b, &s, T).await;
        assert_eq!(a.local(T).free, 40_000);

        s.kill();
        // Served from the allowance already held, without Redis...
        for _ in 0..40 {
            a.reserve(T, 1_000).await.unwrap();
            charged += a.settle(T, 1_000, 1_000);
        }
        // ...then refused: fail closed, not Insufficient.
        for _ in 0..3 {
            let e = a.reserve(T, 1_000).await.unwrap_err();
            assert!(e.is_unavailable(), "{e:?}");
        }
        assert!(a.flush_now().await.is_err());
        assert!(a.upkeep().await.is_err());
        assert!(a.flush_now().await.is_err());
        assert_eq!(a.local(T).free, 0);

        s.spawn(); // same port, same append-only file
        check(&b, &s, T).await;
        // The manager reconnects on its own; the failed batch goes again under its id.
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.flush_now().await.is_err() {
            assert!(Instant::now() < deadline, "no reconnection");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let v = check(&b, &s, T).await;
        assert_eq!(v.spent, charged);
        for _ in 0..5 {
            a.reserve(T, 1_000).await.unwrap();
            charged += a.settle(T, 1_000, 700);
        }
        check(&b, &s, T).await;
        assert!(a.shutdown().await.is_clean());
        let v = check(&b, &s, T).await;
        assert_eq!((v.leases, v.spent), (0, charged));
        assert_eq!(v.bal, 1_000_000 - charged);
    }

    #[tokio::test]
    async fn a_crashed_node_reclaims_its_leases_on_restart() {
        const T: i64 = 11;
        let s = Server::start();
        let admin = bank(&s, "admin").await;
        admin.credit(T, 100_000, "topup").await.unwrap();
        {
            let a = Allowances::new(bank(&s, "n1").await, 30_000);
            for _ in 0..10 {
                a.reserve(T, 1_000).await.unwrap();
                a.settle(T, 1_000, 1_000);
            }
            a.flush_now().await.unwrap();
            check(&admin, &s, T).await;
            for _ in 0..5 {
                a.reserve(T, 1_000).await.unwrap();
                a.settle(T, 1_000, 1_000);
            }
            a.reserve(T, 2_000).await.unwrap(); // in flight at the crash
            check(&admin, &s, T).await;
            // Crash: dropped without flushing or giving back.
        }
        let v = check(&admin, &s, T).await;
        assert_eq!((v.leases, v.spent), (20_000, 10_000));
        let b = bank(&s, "n1").await;
        assert_eq!(b.reclaim_own_leases().await.unwrap(), vec![(T, 20_000)]);
        let v = check(&admin, &s, T).await;
        assert_eq!((v.bal, v.leases, v.spent), (90_000, 0, 10_000));
        assert!(b.reclaim_own_leases().await.unwrap().is_empty());
        check(&admin, &s, T).await;
        // The restarted node's batch ids do not collide with the crashed run's.
        let a = Allowances::new(b, 30_000);
        for _ in 0..3 {
            a.reserve(T, 1_000).await.unwrap();
            a.settle(T, 1_000, 1_000);
        }
        a.flush_now().await.unwrap();
        assert_eq!(check(&admin, &s, T).await.spent, 13_000);
        assert!(a.shutdown().await.is_clean());
        let v = check(&admin, &s, T).await;
        assert_eq!((v.bal, v.leases, v.spent), (87_000, 0, 13_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_answers_are_resolved_exactly_once() {
        const T: i64 = 12;
        let s = Server::start();
        let b = bank(&s, "n1").await;
        b.credit(T, 100_000, "topup").await.unwrap();
        let cfg = AllowanceConfig {
            down_backoff: Duration::from_millis(10),
            ..AllowanceConfig::new(10_000)
        };
        let a = Allowances::with_config(b.clone(), cfg);
        let client = redis::Client::open(s.url()).unwrap();
        let mut ctl = client.get_multiplexed_async_connection().await.unwrap();
        let pause = |ms: u64| {
            redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(ms)
                .arg("WRITE")
                .clone()
        };

        // A lease whose answer never arrives (Redis paused longer than the timeout).
        let _: () = pause(1_500).query_async(&mut ctl).await.unwrap();
        let e = a.reserve(T, 1_000).await.unwrap_err();
        assert!(matches!(e, BankError::Timeout { .. }), "{e:?}");
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        // Redis ran the lease once the pause ended; this node never heard of it.
        let v = check(&b, &s, T).await;
        assert_eq!(v.leases, 10_000, "{v:?}");
        assert_eq!(a.local(T).free, 0);
        a.upkeep().await.unwrap();
        // Resolved: the local allowance matches the lease Redis records.
        assert_eq!(a.local(T).free, 10_000);
        check(&b, &s, T).await;

        let mut charged = 0;
        for _ in 0..5 {
            a.reserve(T, 1_000).await.unwrap();
            charged += a.settle(T, 1_000, 900);
        }
        // A flush whose answer never arrives, retried under the same id.
        let _: () = pause(1_500).query_async(&mut ctl).await.unwrap();
        assert!(a.flush_now().await.is_err());
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(
            check(&b, &s, T).await.spent,
            charged,
            "applied after the pause"
        );
        a.flush_now().await.unwrap();
        a.flush_now().await.unwrap();
        let v = check(&b, &s, T).await;
        assert_eq!(v.spent, charged);
        // A give-back whose answer never arrives.
        let _: () = pause(1_500).query_async(&mut ctl).await.unwrap();
        assert!(a.shutdown().await.is_clean());
        let v = check(&b, &s, T).await;
        assert_eq!((v.bal, v.leases, v.spent), (100_000 - charged, 0, charged));
    }

    #[tokio::test]
    async fn a_duplicate_node_id_costs_revenue_never_overspends() {
        const T: i64 = 13;
        let s = Server::start();
        let b = bank(&s, "n1").await;
        b.credit(T, 100_000, "topup").await.unwrap();
        let a = Allowances::new(b.clone(), 10_000);
        for _ in 0..3 {
            a.reserve(T, 1_000).await.unwrap();
            a.settle(T, 1_000, 1_000);
        }
        // A second process wrongly started with the same node id takes our leases.
        let imposter = bank(&s, "n1").await;
        assert_eq!(
            imposter.reclaim_own_leases().await.unwrap(),
            vec![(T, 10_000)]
        );
        check(&b, &s, T).await;
        a.flush_now().await.unwrap();
        assert_eq!(a.lost(), 3_000);
        let v = check(&b, &s, T).await;
        assert_eq!((v.bal, v.leases, v.spent), (100_000, 0, 0));
        // Phantom allowance is not used: the next call leases afresh and is charged.
        assert_eq!(a.local(T).free, 0);
        a.reserve(T, 1_000).await.unwrap();
        assert_eq!(a.settle(T, 1_000, 500), 500);
        assert!(a.shutdown().await.is_clean());
        let v = check(&b, &s, T).await;
        assert_eq!((v.bal, v.leases, v.spent), (99_500, 0, 500));
    }
}
