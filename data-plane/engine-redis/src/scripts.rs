//! The server-side scripts: each operation on a channel is one atomic round trip.
//!
//! Keys of one channel share the hash tag `{app:channel}`, so they live in one slot of a Redis
//! Cluster. A channel's meta hash holds its epoch (`e`) and newest offset (`t`); its stream holds
//! history as entries `0-<offset>` with the store time (`t`) and the body (`b`). Presence is a
//! sorted set (connection → expiry), a hash (connection → announce flag and member) and a hash
//! (client id → connections).

use crate::occupancy;

/// Lua helpers of the scripts that touch a channel's stream.
const STREAM_HELPERS: &str = r#"
-- The id of this Redis process: it changes with every restart and on a failover.
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
end

-- The channel's epoch. A new epoch starts from nothing: a stream left behind by an expired or
-- evicted meta key belongs to the old epoch and would collide with the new offsets. An epoch
-- last used under another Redis process (a restart from a snapshot, a failover to a replica)
-- may have lost its tail, and new messages would reuse the lost ones' offsets: unless restarts
-- are trusted (`trust` = '1', for AOF with `appendfsync always`), it is replaced too, so a
-- client recovering from it is told `recovered: false` instead of being shown a silent gap.
local function epoch_of(meta, stream, fresh, trust)
  local run = run_id()
  local epoch = redis.call('HGET', meta, 'e')
  if epoch and redis.call('HGET', meta, 'r') ~= run then
    if trust == '1' then
      redis.call('HSET', meta, 'r', run)
    else
      epoch = nil
    end
  end
  if not epoch then
    epoch = fresh
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch, 't', 0, 'r', run)
  end
  return epoch
end

-- Drops history entries older than the cutoff (oldest first; they are in time order). The
-- oldest entry alone is read first: on almost every publish it is fresh and nothing more is read.
local function trim_age(stream, cutoff)
  local count = 1
  while true do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', count)
    if #first == 0 then return end
    for _, entry in ipairs(first) do
      if tonumber(entry[2][2]) >= cutoff then return end
      redis.call('XDEL', stream, entry[1])
    end
    count = 32
  end
end

"#;

/// Lua helpers of the presence scripts.
const PRESENCE_HELPERS: &str = r#"
-- The app's durable feed, when it has one (its marker key exists): presence changes are
-- written to it by the script that makes them. Set by feed_init, which every presence script
-- calls first with its last four arguments: feed stream, marker, channel name, most entries.
-- The app's presence index (channel -> when its earliest entry may expire, a zset next to the
-- marker: `<prefix>:fp:{app}`) lets the feed's reader sweep channels no node serves any more.
local feed_target = nil
local function feed_init(stream, marker, channel, max_len)
  if stream ~= '' and redis.call('EXISTS', marker) == 1 then
    local head, tag = string.match(marker, '^(.*):fe:({[^{}]*})$')
    feed_target = {stream, channel, max_len, head .. ':fp:' .. tag}
  end
end
local function feed_add(kind, member)
  if feed_target then
    redis.call('XADD', feed_target[1], 'MAXLEN', '~', feed_target[3], '*', 'c', feed_target[2], 'k', kind, 'b', member)
  end
end

-- Removes a connection's presence entry; returns 1 when it was its client's last connection
-- (the leave is announced if the entry was joined announcing).
local function drop_conn(zset, members, counts, conn, channel)
  local record = redis.call('HGET', members, conn)
  redis.call('ZREM', zset, conn)
  if not record then return 0 end
  redis.call('HDEL', members, conn)
  local client = cjson.decode(string.sub(record, 2)).client_id
  if redis.call('HINCRBY', counts, client, -1) > 0 then return 0 end
  redis.call('HDEL', counts, client)
  feed_add('l', string.sub(record, 2))
  if string.sub(record, 1, 1) == '1' then
    redis.call('SPUBLISH', channel, 'l' .. string.sub(record, 2))
  end
  return 1
end

-- Removes expired presence entries, announcing leaves for the last connection of a client.
local function sweep(zset, members, counts, now, channel)
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now)) do
    drop_conn(zset, members, counts, conn, channel)
  end
end
"#;

/// The clock helper, which every script needs.
const CLOCK: &str = r#"
-- Redis's own clock, so that every node agrees (milliseconds).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

"#;

/// Stores a run of publications of one channel, in order: one call for as many messages as the
/// engine's writer had queued for the channel (see `publish.rs`), so the epoch check, the
/// expiries and the trimming are paid once per run rather than once per message.
/// KEYS: meta, stream, then one idempotency key per message (the meta key for a message without
/// one).
/// ARGV: fresh epoch, trust restarts (`1`), history size, history ttl ms, idempotency window s,
/// pub/sub channel, meta ttl ms, the app's feed (empty when there are no feeds), channel name,
/// the app's durable feed stream and its marker (empty when there are none), its most entries;
/// then for each message: has an idempotency key (`1`), body.
/// Returns `{epoch, {offset, ts, duplicate, offset, ts, duplicate, ...}}`.
const PUBLISH: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
local epoch = epoch_of(meta, stream, ARGV[1], ARGV[2])
local now = now_ms()
local size, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
-- The app's feed only while a node listens (one lookup otherwise), in the same script as the
-- channel's messages: a node gets every publication of the app, in each channel's order.
local feed = ARGV[8] ~= '' and redis.call('PUBSUB', 'SHARDNUMSUB', ARGV[8])[2] > 0
-- The durable feed only for apps that have one (its marker exists): one lookup otherwise.
local durable = ARGV[10] ~= '' and redis.call('EXISTS', ARGV[11]) == 1
-- Numbers are turned into text once each: Lua's number formatting is most of a message's cost.
local at = string.format('%d', now)
local out = {}
for i = 1, #KEYS - 2 do
  local idem, keyed, body = KEYS[i + 2], ARGV[11 + 2 * i] == '1', ARGV[12 + 2 * i]
  local previous = keyed and redis.call('GET', idem)
  local e, o, t
  if previous then e, o, t = string.match(previous, '^(.-):(%d+):(%d+)$') end
  if previous and e == epoch then
    out[#out + 1] = tonumber(o)
    out[#out + 1] = tonumber(t)
    out[#out + 1] = 1
  else
    local offset = redis.call('HINCRBY', meta, 't', 1)
    local number = string.format('%d', offset)
    if size > 0 then
      redis.call('XADD', stream, 'MAXLEN', ARGV[3], '0-' .. number, 't', at, 'b', body)
    end
    if keyed then
      redis.call('SET', idem, epoch .. ':' .. number .. ':' .. at, 'EX', ARGV[5])
    end
    local position = epoch .. '\n' .. number .. '\n' .. at .. '\n'
    redis.call('SPUBLISH', ARGV[6], 'p' .. position .. body)
    if feed then
      redis.call('SPUBLISH', ARGV[8], 'P' .. ARGV[9] .. '\n' .. position .. body)
    end
    if durable then
      redis.call('XADD', ARGV[10], 'MAXLEN', '~', ARGV[12], '*', 'c', ARGV[9], 'k', 'm', 'b', position .. body)
    end
    out[#out + 1] = offset
    out[#out + 1] = now
    out[#out + 1] = 0
  end
end
if size > 0 then
  trim_age(stream, now - ttl)
  redis.call('PEXPIRE', stream, ttl)
end
-- Only ever extended: a read with a shorter TTL must not make the epoch expire sooner.
redis.call('PEXPIRE', meta, ARGV[7], 'GT')
if redis.call('PTTL', meta) == -1 then redis.call('PEXPIRE', meta, ARGV[7]) end
return {epoch, out}
"#;

/// KEYS: meta, stream. ARGV: fresh epoch, trust restarts (`1`), history size, history ttl ms, direction
/// (`f`/`b`), since (empty for none), limit, meta ttl ms.
/// Returns `{epoch, top, oldest (-1 for none), entries}`.
const HISTORY: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
local epoch = epoch_of(meta, stream, ARGV[1], ARGV[2])
local top = tonumber(redis.call('HGET', meta, 't') or 0)
local size = tonumber(ARGV[3])
if size == 0 then
  redis.call('DEL', stream)
else
  redis.call('XTRIM', stream, 'MAXLEN', size)
  trim_age(stream, now_ms() - tonumber(ARGV[4]))
end
redis.call('PEXPIRE', meta, ARGV[8], 'GT')
if redis.call('PTTL', meta) == -1 then redis.call('PEXPIRE', meta, ARGV[8]) end
local oldest = -1
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^0%-(%d+)$')) end
local limit = tonumber(ARGV[7])
local entries = {}
if limit > 0 then
  if ARGV[5] == 'f' then
    local from = '-'
    if ARGV[6] ~= '' then from = '(0-' .. ARGV[6] end
    entries = redis.call('XRANGE', stream, from, '+', 'COUNT', limit)
  else
    local to = '+'
    if ARGV[6] ~= '' then to = '(0-' .. ARGV[6] end
    entries = redis.call('XREVRANGE', stream, to, '-', 'COUNT', limit)
  end
end
return {epoch, top, oldest, entries}
"#;

/// KEYS: presence zset, members hash, counts hash. ARGV: conn id, client id, record
/// (announce flag then member JSON), ttl ms, whether the member carries state (`1`), pub/sub
/// channel, then the feed's four (see `feed_init`). Returns 1 when this was the client's first
/// connection.
const PRESENCE_JOIN: &str = r#"
local zset, members, counts = KEYS[1], KEYS[2], KEYS[3]
feed_init(ARGV[7], ARGV[8], ARGV[9], ARGV[10])
local now = now_ms()
sweep(zset, members, counts, now, ARGV[6])
local expiry = now + tonumber(ARGV[4])
local known = redis.call('ZSCORE', zset, ARGV[1])
redis.call('ZADD', zset, expiry, ARGV[1])
local count = 0
if not known then
  redis.call('HSET', members, ARGV[1], ARGV[3])
  count = redis.call('HINCRBY', counts, ARGV[2], 1)
elseif ARGV[5] == '1' then
  -- A refresh that carries state replaces it; a bare heartbeat keeps the state set before.
  redis.call('HSET', members, ARGV[1], ARGV[3])
end
-- After the writes, so every key exists and gets its expiry: an abandoned channel's presence
-- disappears even if no node sweeps it.
local keep = math.max(tonumber(redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')[2] or expiry), expiry) - now + 60000
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, keep) end
if feed_target then redis.call('ZADD', feed_target[4], 'LT', expiry, feed_target[2]) end
if known then return 0 end
if count == 1 then
  feed_add('j', string.sub(ARGV[3], 2))
  if string.sub(ARGV[3], 1, 1) == '1' then
    redis.call('SPUBLISH', ARGV[6], 'j' .. string.sub(ARGV[3], 2))
  end
  return 1
end
return 0
"#;

/// KEYS: presence zset, members hash, counts hash. ARGV: conn id, pub/sub channel, then the
/// feed's four. Returns 1 when this was the client's last connection.
const PRESENCE_LEAVE: &str = r#"
local zset, members, counts = KEYS[1], KEYS[2], KEYS[3]
feed_init(ARGV[3], ARGV[4], ARGV[5], ARGV[6])
sweep(zset, members, counts, now_ms(), ARGV[2])
return drop_conn(zset, members, counts, ARGV[1], ARGV[2])
"#;

/// KEYS: presence zset, members hash, counts hash. ARGV: conn id, member JSON, client id,
/// pub/sub channel, then the feed's four. Returns 1 when the connection was present for that
/// client (and the update was announced).
const PRESENCE_UPDATE: &str = r#"
local zset, members, counts = KEYS[1], KEYS[2], KEYS[3]
feed_init(ARGV[5], ARGV[6], ARGV[7], ARGV[8])
sweep(zset, members, counts, now_ms(), ARGV[4])
local record = redis.call('HGET', members, ARGV[1])
if not record then return 0 end
if cjson.decode(string.sub(record, 2)).client_id ~= ARGV[3] then return 0 end
redis.call('HSET', members, ARGV[1], string.sub(record, 1, 1) .. ARGV[2])
feed_add('u', ARGV[2])
redis.call('SPUBLISH', ARGV[4], 'u' .. ARGV[2])
return 1
"#;

/// KEYS: presence zset, members hash, counts hash. ARGV: pub/sub channel, then the feed's four.
/// Returns `{members, client count, connection count}` after removing expired entries.
const PRESENCE_READ: &str = r#"
local zset, members, counts = KEYS[1], KEYS[2], KEYS[3]
feed_init(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
sweep(zset, members, counts, now_ms(), ARGV[1])
return {redis.call('HVALS', members), redis.call('HLEN', counts), redis.call('ZCARD', zset)}
"#;

/// The upkeep of a channel a node serves, in one round trip: expired presence entries leave,
/// and the channel keeps its epoch however quiet it is.
/// KEYS: presence zset, members hash, counts hash, meta. ARGV: pub/sub channel, meta ttl ms,
/// then the feed's four. Returns the milliseconds until the earliest remaining presence entry
/// expires, or -1 when there is none.
const UPKEEP: &str = r#"
feed_init(ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local now = now_ms()
sweep(KEYS[1], KEYS[2], KEYS[3], now, ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[2], 'GT')
local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
if earliest then return math.max(tonumber(earliest) - now, 0) end
return -1
"#;

/// The feed reader's sweep of an app's presence: the channels whose entries may have expired
/// (from the app's presence index), whether or not a node still serves them — the one that did
/// may have been killed — so every expiry's leave reaches the feed.
/// KEYS: feed stream, marker, presence index. ARGV: key prefix, app, most feed entries, most
/// channels per call. Returns how many channels were swept.
const PRESENCE_EXPIRE: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, channel in ipairs(due) do
  local tag = '{' .. ARGV[2] .. ':' .. channel .. '}'
  local zset = ARGV[1] .. ':pz:' .. tag
  feed_target = {KEYS[1], channel, ARGV[3], KEYS[3]}
  sweep(zset, ARGV[1] .. ':pm:' .. tag, ARGV[1] .. ':pc:' .. tag, now, ARGV[1] .. ':c:' .. tag)
  local earliest = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')[2]
  if earliest then redis.call('ZADD', KEYS[3], earliest, channel) else redis.call('ZREM', KEYS[3], channel) end
end
return #due
"#;

/// Sets or clears a channel's retained message unless the one in place is newer (the same
/// epoch, a higher offset). Stored as `<offset>|<epoch>|<publication>`, with nothing after the
/// second `|` for a clear (kept, so an older set arriving later cannot bring the value back).
/// KEYS: the app's retained hash. ARGV: channel, epoch, offset, encoded publication or "".
/// Returns 1 when applied.
const RETAIN: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local offset, epoch = string.match(current, '^(%d+)|([^|]*)|')
  if epoch == ARGV[2] and tonumber(offset) > tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. '|' .. ARGV[2] .. '|' .. ARGV[4])
return 1
"#;

/// KEYS: the stored value's hash. ARGV: version, value, ttl ms.
/// Stores `{v: version, d: value}` unless the hash holds a version as high (a value, or the
/// version of one taken). Returns 1 when stored.
const PUT: &str = r#"
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: the stored value's hash. Returns `{version}` or `{version, value}` (version 0:
/// none) and keeps only the version, until the hash's TTL ends.
const TAKE: &str = r#"
local taken = redis.call('HMGET', KEYS[1], 'v', 'd')
if not taken[1] then return {0} end
if not taken[2] then return {tonumber(taken[1])} end
redis.call('HDEL', KEYS[1], 'd')
return {tonumber(taken[1]), taken[2]}
"#;

/// Reads an app's durable feed.
/// KEYS: feed stream, marker. ARGV: read after this entry id (empty: from the oldest), most
/// entries. Returns `{entries, gap}`: gap is 1 when entries the reader has not read may have
/// been trimmed, or the feed is gone. Trimming removes the oldest entries first, so anything
/// after the reader's position was trimmed only if its position itself was (it is older than
/// the stream's first entry); a new reader (empty position) has missed something when the
/// stream was ever trimmed (more entries added than it holds). Never a missed gap; a rare
/// false one when trimming stopped right after the reader's position.
const FEED_READ: &str = r#"
local after = ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 0 then
  if after == '' then return {{}, 0} end
  return {{}, 1}
end
local from = '-'
if after ~= '' then from = '(' .. after end
local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[2])
local gap = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local first, added, length = nil, 0, 0
  for i = 1, #info, 2 do
    if info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
    if info[i] == 'entries-added' then added = tonumber(info[i + 1]) end
    if info[i] == 'length' then length = tonumber(info[i + 1]) end
  end
  if after == '' then
    if added > length then gap = 1 end
  elseif first then
    local fms, fseq = string.match(first, '^(%d+)-(%d+)$')
    local ams, aseq = string.match(after, '^(%d+)-(%d+)$')
    fms, fseq, ams, aseq = tonumber(fms), tonumber(fseq), tonumber(ams), tonumber(aseq)
    if fms > ams or (fms == ams and fseq > aseq) then gap = 1 end
  end
end
return {entries, gap}
"#;

/// Writes a connection's lifecycle event to an app's durable feed, if the app has one.
/// KEYS: feed stream, marker. ARGV: kind (`c` connected, `d` disconnected), the connection as
/// JSON, most entries. Returns 1 when written.
const FEED_CLIENT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'c', '', 'k', ARGV[1], 'b', ARGV[2])
return 1
"#;

/// The scripts, loaded once per engine.
pub struct Scripts {
    /// See [`PUBLISH`]: sent whole with `EVAL` rather than by hash. A channel's runs of
    /// publishes are sent without waiting for each other, and `EVALSHA` after Redis lost its
    /// script cache (a restart) fails and is retried after loading the script, which could let
    /// a later run take its offsets first.
    pub publish: std::sync::Arc<str>,
    /// See [`HISTORY`].
    pub history: redis::Script,
    /// See [`PRESENCE_JOIN`].
    pub presence_join: redis::Script,
    /// See [`PRESENCE_LEAVE`].
    pub presence_leave: redis::Script,
    /// See [`PRESENCE_UPDATE`].
    pub presence_update: redis::Script,
    /// See [`PRESENCE_READ`].
    pub presence_read: redis::Script,
    /// See [`UPKEEP`].
    pub upkeep: redis::Script,
    /// See [`PRESENCE_EXPIRE`].
    pub presence_expire: redis::Script,
    /// See [`RETAIN`].
    pub retain: redis::Script,
    /// See [`PUT`].
    pub put: redis::Script,
    /// See [`TAKE`].
    pub take: redis::Script,
    /// See [`FEED_READ`].
    pub feed_read: redis::Script,
    /// See [`FEED_CLIENT`].
    pub feed_client: redis::Script,
    /// See [`crate::occupancy::SYNC`].
    pub occupancy_sync: redis::Script,
    /// See [`crate::occupancy::SWEEP`].
    pub occupancy_sweep: redis::Script,
    /// See [`crate::occupancy::FORGET`].
    pub occupancy_forget: redis::Script,
}

/// The text sent to Redis: the helpers and the body, without comments or indentation (Redis
/// hashes the text of every `EVAL`).
fn code(helpers: &str, body: &str) -> String {
    format!("{CLOCK}\n{helpers}\n{body}")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn script(helpers: &str, body: &str) -> redis::Script {
    redis::Script::new(&code(helpers, body))
}

impl Scripts {
    /// Builds every script (Redis caches them by hash on first use).
    pub fn new() -> Self {
        Self {
            publish: code(STREAM_HELPERS, PUBLISH).into(),
            history: script(STREAM_HELPERS, HISTORY),
            presence_join: script(PRESENCE_HELPERS, PRESENCE_JOIN),
            presence_leave: script(PRESENCE_HELPERS, PRESENCE_LEAVE),
            presence_update: script(PRESENCE_HELPERS, PRESENCE_UPDATE),
            presence_read: script(PRESENCE_HELPERS, PRESENCE_READ),
            upkeep: script(PRESENCE_HELPERS, UPKEEP),
            presence_expire: script(PRESENCE_HELPERS, PRESENCE_EXPIRE),
            retain: script("", RETAIN),
            put: script("", PUT),
            take: script("", TAKE),
            feed_read: script("", FEED_READ),
            feed_client: script("", FEED_CLIENT),
            occupancy_sync: script(occupancy::HELPERS, occupancy::SYNC),
            occupancy_sweep: script(occupancy::HELPERS, occupancy::SWEEP),
            occupancy_forget: script("", occupancy::FORGET),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
