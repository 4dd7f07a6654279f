/**
 * The redis plugin's pure half: the ring-buffer record of `redis.bpf.c` (struct redis_event)
 * decoded, and mapped to bounded label values (command names, error classes). No FFI, no
 * kernel: decode_test.ts tests it without privileges.
 *
 * @module
 */

/** How a command ended (enum redis_outcome). */
export const RedisOutcome = {
  ok: 0,
  /** An error reply: `error` holds its first word. */
  error: 1,
  /** No reply after `request_timeout`. */
  timeout: 2,
  /** The connection closed before the reply came. */
  closed: 3,
} as const;

/** struct redis_event: its size and field offsets (decode_test.ts checks them against BTF). */
export const REDIS_EVENT_SIZE = 96;
export const NAME_MAX = 16;
export const EXE_MAX = 32;
const OFF = {
  startNs: 0,
  durationNs: 8,
  tgid: 16,
  nameTotal: 20,
  outcome: 24,
  nameLen: 25,
  errLen: 26,
  name: 32,
  err: 48,
  exe: 64,
} as const;

/** The `stats` map's counters at indices 1.. (enum redis_stat), as `kernelCounters`. */
export const REDIS_KERNEL_COUNTERS = [
  "connections",
  "conn_table_full",
  "commands_untimed",
  "replies_unmatched",
  "replies_late",
  "framing_lost",
  "commands_lost",
  "timeouts",
  "closed_pending",
  "io_unsupported",
  "pushes",
  "records_dropped",
] as const;

export interface RedisEvent {
  /** bpf_ktime_get_ns() when the command was written. */
  startNs: bigint;
  durationSeconds: number;
  tgid: number;
  outcome: number;
  /** The command name's first bytes as sent (at most NAME_MAX), any case. */
  name: string;
  /** The name's length on the wire (more than `name.length` when it was cut). */
  nameTotal: number;
  /** The first bytes of the error reply's first word ("" unless outcome is error). */
  error: string;
  /** The error word's length on the wire (saturates at 255). */
  errorTotal: number;
  /** The executable's file name, "" when unknown or cut. */
  exe: string;
}

const latin1 = new TextDecoder("latin1");

function cString(bytes: Uint8Array, offset: number, max: number, len = max): string {
  const field = bytes.subarray(offset, offset + Math.min(max, len));
  const end = field.indexOf(0);
  return latin1.decode(end < 0 ? field : field.subarray(0, end));
}

/** One record -> event. Throws on a short record. Copies what it keeps. */
export function decodeRedisEvent(bytes: Uint8Array): RedisEvent {
  if (bytes.length < REDIS_EVENT_SIZE) {
    throw new RangeError(`redis record of ${bytes.length} bytes, expected ${REDIS_EVENT_SIZE}`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // bpf_probe_read_kernel_str always ends with a NUL: a name that fills the field may be cut.
  const exeField = bytes.subarray(OFF.exe, OFF.exe + EXE_MAX);
  const nul = exeField.indexOf(0);
  const exe = nul < 0 || nul === EXE_MAX - 1 ? "" : latin1.decode(exeField.subarray(0, nul));
  return {
    startNs: v.getBigUint64(OFF.startNs, true),
    durationSeconds: Number(v.getBigUint64(OFF.durationNs, true)) / 1e9,
    tgid: v.getUint32(OFF.tgid, true),
    outcome: v.getUint8(OFF.outcome),
    name: cString(bytes, OFF.name, NAME_MAX, v.getUint8(OFF.nameLen)),
    nameTotal: v.getUint32(OFF.nameTotal, true),
    error: cString(bytes, OFF.err, NAME_MAX, v.getUint8(OFF.errLen)),
    errorTotal: v.getUint8(OFF.errLen),
    exe,
  };
}

/**
 * Redis's top-level command names (Redis 7.0's `COMMAND LIST`, plus 7.2-8.0 additions): the
 * bounded set of `db_operation` values. Anything else is `_OTHER`.
 */
export const REDIS_COMMANDS: ReadonlySet<string> = new Set(
  (
    "ACL APPEND ASKING AUTH BGREWRITEAOF BGSAVE BITCOUNT BITFIELD BITFIELD_RO BITOP BITPOS " +
    "BLMOVE BLMPOP BLPOP BRPOP BRPOPLPUSH BZMPOP BZPOPMAX BZPOPMIN CLIENT CLUSTER COMMAND " +
    "CONFIG COPY DBSIZE DEBUG DECR DECRBY DEL DISCARD DUMP ECHO EVAL EVALSHA EVALSHA_RO " +
    "EVAL_RO EXEC EXISTS EXPIRE EXPIREAT EXPIRETIME FAILOVER FCALL FCALL_RO FLUSHALL FLUSHDB " +
    "FUNCTION GEOADD GEODIST GEOHASH GEOPOS GEORADIUS GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO " +
    "GEORADIUS_RO GEOSEARCH GEOSEARCHSTORE GET GETBIT GETDEL GETEX GETRANGE GETSET HDEL HELLO " +
    "HEXISTS HGET HGETALL HINCRBY HINCRBYFLOAT HKEYS HLEN HMGET HMSET HRANDFIELD HSCAN HSET " +
    "HSETNX HSTRLEN HVALS INCR INCRBY INCRBYFLOAT INFO KEYS LASTSAVE LATENCY LCS LINDEX " +
    "LINSERT LLEN LMOVE LMPOP LOLWUT LPOP LPOS LPUSH LPUSHX LRANGE LREM LSET LTRIM MEMORY MGET " +
    "MIGRATE MODULE MONITOR MOVE MSET MSETNX MULTI OBJECT PERSIST PEXPIRE PEXPIREAT " +
    "PEXPIRETIME PFADD PFCOUNT PFDEBUG PFMERGE PFSELFTEST PING PSETEX PSUBSCRIBE PSYNC PTTL " +
    "PUBLISH PUBSUB PUNSUBSCRIBE QUIT RANDOMKEY READONLY READWRITE RENAME RENAMENX REPLCONF " +
    "REPLICAOF RESET RESTORE RESTORE-ASKING ROLE RPOP RPOPLPUSH RPUSH RPUSHX SADD SAVE SCAN " +
    "SCARD SCRIPT SDIFF SDIFFSTORE SELECT SET SETBIT SETEX SETNX SETRANGE SHUTDOWN SINTER " +
    "SINTERCARD SINTERSTORE SISMEMBER SLAVEOF SLOWLOG SMEMBERS SMISMEMBER SMOVE SORT SORT_RO " +
    "SPOP SPUBLISH SRANDMEMBER SREM SSCAN SSUBSCRIBE STRLEN SUBSCRIBE SUBSTR SUNION " +
    "SUNIONSTORE SUNSUBSCRIBE SWAPDB SYNC TIME TOUCH TTL TYPE UNLINK UNSUBSCRIBE UNWATCH WAIT " +
    "WATCH XACK XADD XAUTOCLAIM XCLAIM XDEL XGROUP XINFO XLEN XPENDING XRANGE XREAD " +
    "XREADGROUP XREVRANGE XSETID XTRIM ZADD ZCARD ZCOUNT ZDIFF ZDIFFSTORE ZINCRBY ZINTER " +
    "ZINTERCARD ZINTERSTORE ZLEXCOUNT ZMPOP ZMSCORE ZPOPMAX ZPOPMIN ZRANDMEMBER ZRANGE " +
    "ZRANGEBYLEX ZRANGEBYSCORE ZRANGESTORE ZRANK ZREM ZREMRANGEBYLEX ZREMRANGEBYRANK " +
    "ZREMRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX ZREVRANGEBYSCORE ZREVRANK ZSCAN ZSCORE ZUNION " +
    "ZUNIONSTORE " +
    // 7.2 - 8.0
    "WAITAOF HEXPIRE HPEXPIRE HEXPIREAT HPEXPIREAT HTTL HPTTL HEXPIRETIME HPEXPIRETIME " +
    "HPERSIST HGETDEL HGETEX HSETEX"
  ).split(" "),
);

/**
 * `db_operation`: the upper-cased command name when it is a known command, else `_OTHER`. A
 * name longer than the record holds is known when exactly one command has that prefix and
 * length (GEORADIUSBYMEMBER vs GEORADIUSBYMEMBER_RO).
 */
export function dbOperation(name: string, nameTotal: number): string {
  const upper = name.toUpperCase();
  if (nameTotal === upper.length) return REDIS_COMMANDS.has(upper) ? upper : "_OTHER";
  if (upper.length < NAME_MAX || nameTotal < upper.length) return "_OTHER";
  let found: string | undefined;
  for (const c of REDIS_COMMANDS) {
    if (c.length === nameTotal && c.startsWith(upper)) {
      if (found) return "_OTHER";
      found = c;
    }
  }
  return found ?? "_OTHER";
}

/** Redis's error prefixes (the first word of an error reply): `error_type` values. */
export const REDIS_ERRORS: ReadonlySet<string> = new Set(
  (
    "ERR WRONGTYPE MOVED ASK NOAUTH NOPERM WRONGPASS LOADING BUSY BUSYKEY BUSYGROUP NOSCRIPT " +
    "READONLY MASTERDOWN MISCONF EXECABORT OOM NOREPLICAS NOTBUSY UNKILLABLE CROSSSLOT " +
    "CLUSTERDOWN TRYAGAIN NOGOODSLAVE NOPROTO UNBLOCKED NOQUORUM NOMASTERLINK NOTREADY"
  ).split(" "),
);

/**
 * `error_type`: "" when the command succeeded; the error reply's first word when it is one of
 * Redis's (else `_OTHER`); `timeout` or `closed` when no reply came.
 */
export function errorType(e: Pick<RedisEvent, "outcome" | "error" | "errorTotal">): string {
  switch (e.outcome) {
    case RedisOutcome.ok:
      return "";
    case RedisOutcome.error:
      return e.errorTotal === e.error.length && REDIS_ERRORS.has(e.error) ? e.error : "_OTHER";
    case RedisOutcome.timeout:
      return "timeout";
    case RedisOutcome.closed:
      return "closed";
    default:
      return "_OTHER";
  }
}

/** `"30s"`, `"500ms"`, `"2m"`, or a number of milliseconds -> milliseconds; undefined if not. */
export function parseTimeoutMs(v: string | number): number | undefined {
  if (typeof v === "number") return Number.isFinite(v) && v > 0 ? v : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$/.exec(v);
  if (!m) return undefined;
  const ms = Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as "ms" | "s" | "m"];
  return ms > 0 ? ms : undefined;
}
