//! The Lua scripts the Redis store runs. Each is one atomic step on the server; all keys share
//! the store prefix (so the gateway's ACL user can be limited to it), and Redis Cluster is not
//! supported (`check` refuses it): scripts touch several keys.
//!
//! Records are hashes `{rev, data}`: the revision apart from the JSON, so that a compare-and-set
//! needs no JSON in Lua.

/// Compare-and-set of one record. KEYS: the record, and (for a service) the index set. ARGV:
/// expected revision (`0`: must not exist), new data (empty: delete), new revision, the change
/// channel, the member name for the index, the change message. Returns `{1, rev}` when applied,
/// `{0, current rev}` when the record moved on meanwhile.
pub const CAS: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'rev')
local expected = ARGV[1]
if (cur == false and expected ~= '0') or (cur ~= false and cur ~= expected) then
  return {0, cur or '0'}
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  if #KEYS > 1 then redis.call('SREM', KEYS[2], ARGV[5]) end
else
  redis.call('HSET', KEYS[1], 'rev', ARGV[3], 'data', ARGV[2])
  if #KEYS > 1 then redis.call('SADD', KEYS[2], ARGV[5]) end
end
redis.call('PUBLISH', ARGV[4], ARGV[6])
return {1, ARGV[3]}
"#;

/// Write-back after data loss: sets the record only if the store lacks it or holds a lower
/// revision, so the newest copy any replica holds wins. KEYS: record, index set (optional).
/// ARGV: revision, data, channel, member, message. Returns 1 when written.
pub const WRITE_BACK: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'rev')
if cur ~= false and tonumber(cur) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'data', ARGV[2])
if #KEYS > 1 then redis.call('SADD', KEYS[2], ARGV[4]) end
redis.call('PUBLISH', ARGV[3], ARGV[5])
return 1
"#;

/// The whole state in one consistent read. KEYS: meta, index set, signing record. ARGV: the
/// service-record key prefix. Returns `{meta (flat hash), signing {rev, data}, name, rev, data,
/// name, rev, data, ...}`.
pub const READ_ALL: &str = r#"
local out = {}
out[1] = redis.call('HGETALL', KEYS[1])
out[2] = redis.call('HMGET', KEYS[3], 'rev', 'data')
local names = redis.call('SMEMBERS', KEYS[2])
for _, n in ipairs(names) do
  local r = redis.call('HMGET', ARGV[1] .. n, 'rev', 'data')
  table.insert(out, n)
  table.insert(out, r[1] or false)
  table.insert(out, r[2] or false)
end
return out
"#;

/// Creates the meta record if it is missing. KEYS: meta. ARGV: format version, sealing key id,
/// now (RFC 3339). Returns the meta record as a flat hash, and 1 when it was created.
pub const ENSURE_META: &str = r#"
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'keyId', ARGV[2], 'created', ARGV[3])
  created = 1
end
return {redis.call('HGETALL', KEYS[1]), created}
"#;

/// Registers this replica (its record expires unless renewed) and lists the live ones.
/// KEYS: the replica index (sorted set by expiry). ARGV: the replica-record key prefix, this
/// replica's id, its record, its time to live in seconds. Returns the live records.
pub const REGISTER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
local ttl = tonumber(ARGV[4])
redis.call('SET', ARGV[1] .. ARGV[2], ARGV[3], 'EX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('GET', ARGV[1] .. id)
  if r then table.insert(out, r) end
end
return out
"#;
