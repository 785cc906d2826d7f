//! Rate-limit buckets in the shared store (contract §7): the one script a request runs for all
//! of its service's policies (`limit::fleet` makes its keys and reads its answer; `state`
//! connects the two).
//!
//! A bucket is one string key, `Prl:SERVICE:POLICY:BY:BUCKET` (`P` the store prefix, `BUCKET`
//! 16 hex digits: an IPv4 address or an IPv6 /64 for `by = "client"`, the key slot (1, 2) or a
//! SHA-256-derived hash of the token's `iss` and `sub` for `by = "credential"`, 0 for
//! `by = "service"`; never a key or a token). Its value is `TAT:T:TAU`: the GCRA theoretical
//! arrival time on the store's clock and the parameters it was written with, all in
//! microseconds; it expires when the bucket is full again, so idle buckets cost nothing.
//!
//! The script is loaded once and called by its SHA-1 (`EVALSHA`, loaded again on `NOSCRIPT`,
//! e.g. after a Redis restart). A request waits for it at most `rate_limit_timeout` (default
//! 50 ms); the call itself is a store command like the others (`state.redis.timeout`, counted in
//! `scoregate_store_operations_total{op="script"}`, and towards the store being unreachable,
//! after which no call is made until a PING answers).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use fred::types::scripts::Script;

use super::RedisStore;
use crate::store::StoreError;

/// All of a service's buckets, all or nothing, on the store's clock. KEYS: one bucket per
/// policy. ARGV: per policy its emission interval `t` and depth `tau` (µs). A bucket reads as
/// its TAT (0, or at most "now": full); one written under other parameters (a reload changed
/// the policy) keeps its level, capped at the new depth, as `limit::gcra::Gcra::convert` does.
/// If any bucket lacks a token none is taken (a converted bucket is written back as converted,
/// so that it refills at the new rate from then on); otherwise each takes one:
/// `max(tat, now) + t`, expiring when full again. Returns `{admitted (0/1), now, tat_1, ...}`,
/// the TATs as read, for the caller's `gcra::decide` (the same arithmetic).
pub const TAKE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n = #KEYS
local tats = {}
local converted = {}
local admitted = 1
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = 0
  local v = redis.call('GET', KEYS[i])
  if v then
    local a, b, c = string.match(v, '^(%d+):(%d+):(%d+)$')
    if a then
      tat = tonumber(a)
      local ot, otau = tonumber(b), tonumber(c)
      if tat <= now then
        tat = 0
      elseif ot ~= t or otau ~= tau then
        local level = math.floor((otau - math.min(tat - now, otau)) * t / ot)
        if level >= tau then tat = 0 else tat = now + (tau - level) end
        converted[i] = true
      end
    end
  end
  tats[i] = tat
  local debt = tat - now
  if debt < 0 then debt = 0 end
  if debt + t > tau then admitted = 0 end
end
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local nxt = tats[i]
  if admitted == 1 then nxt = math.max(tats[i], now) + t end
  if admitted == 1 or converted[i] then
    if nxt > now then
      redis.call('SET', KEYS[i], string.format('%.0f:%.0f:%.0f', nxt, t, tau),
        'PX', math.ceil((nxt - now) / 1000))
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
local out = {admitted, now}
for i = 1, n do out[i + 2] = tats[i] end
return out
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(TAKE));

/// The script's answer: whether it admitted (one token taken from every bucket) or refused
/// (none), the store's "now" and each bucket as it was read (µs; 0: full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub admitted: bool,
    pub now_us: u64,
    pub tats_us: Vec<u64>,
}

impl RedisStore {
    /// One rate-limit decision (`TAKE`) as a store operation: under the store's command
    /// `timeout`, counted, and tracking reachability like every other command.
    pub async fn take_tokens(
        &self,
        keys: Vec<String>,
        params: Vec<i64>,
    ) -> Result<Taken, StoreError> {
        let n = keys.len();
        let raw: Vec<i64> = self
            .op(
                "script",
                SCRIPT.evalsha_with_reload(&self.client, keys, params),
            )
            .await?;
        if raw.len() != n + 2 {
            return Err(StoreError::Unavailable(format!(
                "the rate-limit script answered {} values for {n} buckets",
                raw.len()
            )));
        }
        Ok(Taken {
            admitted: raw[0] == 1,
            now_us: raw[1].max(0) as u64,
            tats_us: raw[2..].iter().map(|&t| t.max(0) as u64).collect(),
        })
    }

    /// `take_tokens` for one request that waits at most `wait` (`rate_limit_timeout`): the call
    /// runs in a task of its own, and the request, past `wait`, is decided locally while the call
    /// goes on to its own end under the store's command timeout. So the store's reachability
    /// follows what Redis did (a late answer is still an answer; a command that fails is a
    /// failure), not how long one request was willing to wait. A late call may still take its
    /// tokens in Redis: the fleet then counts a locally decided request twice, never less.
    /// While the store is known to be unreachable nothing is sent.
    pub async fn take_within(
        self: Arc<Self>,
        keys: Vec<String>,
        params: Vec<i64>,
        wait: Duration,
    ) -> Result<Taken, String> {
        if !self.is_up() {
            return Err("the shared store is unreachable".into());
        }
        let call = tokio::spawn(async move { self.take_tokens(keys, params).await });
        match tokio::time::timeout(wait, call).await {
            Ok(Ok(answer)) => answer.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("the rate-limit call ended: {e}")),
            Err(_) => Err(format!(
                "the rate-limit script did not answer within {wait:?}"
            )),
        }
    }

    /// The live replicas at the registry's last successful read (0: never read).
    pub fn live_replica_count(&self) -> u64 {
        self.metrics.replicas.get().max(0) as u64
    }
}
