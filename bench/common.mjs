// Shared by the Node reference server and the load generator: the clock, tokens, the benchmark's
// agent ids and event format, and a compact latency histogram.

import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { performance } from "node:perf_hooks";

// --- clocks ------------------------------------------------------------------------------------------
// Latency is measured between processes (server and load generator), so every timestamp the
// benchmark compares is CLOCK_MONOTONIC in milliseconds: one clock for the whole machine, read by
// process.hrtime() here and time.monotonic() in Python. (Wall-clock offsets computed per process
// drift apart while NTP slews the clock.)

export function monoNow() {
  const [seconds, nanos] = process.hrtime();
  return seconds * 1e3 + nanos / 1e6;
}

// Wall clock with sub-millisecond resolution, for the envelope's timestamp only.
const EPOCH_OFFSET = (() => {
  const start = Date.now();
  let now = start;
  while (now === start) now = Date.now();
  return now - performance.now();
})();

export function epochNow() {
  return EPOCH_OFFSET + performance.now();
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
export const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

// --- ids, rooms, the event's marker ------------------------------------------------------------

/** The agent id of benchmark room ``n`` (the same formula in bench/py_server.py). */
export function agentId(n) {
  return `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
}

/** ``current_task`` of event ``seq`` scheduled at ``schedMs`` (monoNow()): fixed width, so every
 * envelope has the same size. The load generator reads the scheduled send time back from it. The
 * time is cut (not rounded) to 0.1 ms: rounded up, an event delivered within 0.05 ms of its send
 * time would seem to arrive before it was sent. */
export function marker(seq, schedMs) {
  const cut = Math.floor(schedMs * 10) / 10;
  return `${String(seq).padStart(5, "0")}:${cut.toFixed(1).padStart(15, "0")}`;
}

/** ``[seq, schedMs]`` from a marker (also inside ``"bench <marker>"``, the HTTP scenario's name). */
export function parseMarker(text) {
  if (typeof text !== "string") return null;
  const start = text.lastIndexOf(" ") + 1;
  const colon = text.indexOf(":", start);
  if (colon < 0) return null;
  const seq = Number(text.slice(start, colon));
  const end = text.indexOf(":", colon + 1);
  const sched = Number(text.slice(colon + 1, end < 0 ? undefined : end));
  return Number.isFinite(seq) && Number.isFinite(sched) ? [seq, sched] : null;
}

// --- JWT HS256 ------------------------------------------------------------------------------------

const b64url = (buffer) => Buffer.from(buffer).toString("base64url");

export function signToken(secret, sub, ttlSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, exp: now + ttlSeconds, iat: now }));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The claims of a valid HS256 token, or throws an Error whose message is the reason (the same
 * checks as the service: algorithm, signature, exp with a 10 s leeway, nbf, sub a UUID). */
export function verifyToken(secret, token, leewaySeconds = 10) {
  if (typeof token !== "string" || token.length > 8192) throw new Error("malformed");
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("malformed");
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  } catch {
    throw new Error("malformed");
  }
  if (header.alg !== "HS256") throw new Error("bad_algorithm");
  const expected = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new Error("bad_signature");
  const now = Date.now() / 1000;
  if (typeof claims.exp !== "number" || typeof claims.sub !== "string") throw new Error("missing_claim");
  if (claims.exp + leewaySeconds < now) throw new Error("expired");
  if (typeof claims.nbf === "number" && claims.nbf - leewaySeconds > now) throw new Error("not_yet_valid");
  const sub = claims.sub.toLowerCase();
  if (!UUID_RE.test(sub)) throw new Error("invalid_subject");
  return { ...claims, sub };
}

export { randomUUID, UUID_RE };

// --- latency histogram ------------------------------------------------------------------------------
// Log buckets of 1 % width over microseconds (1 us .. ~20 min): percentiles within 1 %, exact min,
// max and mean; histograms of several processes merge by adding counts.
const GROWTH = Math.log(1.01);
const BUCKETS = 2200;

export class Histogram {
  constructor() {
    this.counts = new Float64Array(BUCKETS);
    this.n = 0;
    this.sum = 0;
    this.min = Infinity;
    this.max = -Infinity;
    this.negative = 0;
  }

  record(ms) {
    if (ms < 0) {
      this.negative += 1;
      ms = 0;
    }
    const us = ms * 1000;
    const index = us <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(us) / GROWTH));
    this.counts[index] += 1;
    this.n += 1;
    this.sum += ms;
    if (ms < this.min) this.min = ms;
    if (ms > this.max) this.max = ms;
  }

  toJSON() {
    const sparse = {};
    this.counts.forEach((count, index) => {
      if (count) sparse[index] = count;
    });
    return { sparse, n: this.n, sum: this.sum, min: this.min, max: this.max, negative: this.negative };
  }

  merge(json) {
    for (const [index, count] of Object.entries(json.sparse)) this.counts[Number(index)] += count;
    this.n += json.n;
    this.sum += json.sum;
    this.negative += json.negative;
    if (json.n) {
      this.min = Math.min(this.min, json.min);
      this.max = Math.max(this.max, json.max);
    }
  }

  percentile(p) {
    if (!this.n) return null;
    const rank = Math.max(1, Math.ceil((p / 100) * this.n));
    let seen = 0;
    for (let index = 0; index < BUCKETS; index++) {
      seen += this.counts[index];
      if (seen >= rank) {
        const upper = Math.exp(index * GROWTH) / 1000;
        return Math.min(Math.max(upper, this.min), this.max);
      }
    }
    return this.max;
  }

  summary() {
    if (!this.n) return { n: 0 };
    const round = (v) => Math.round(v * 1000) / 1000;
    return {
      n: this.n,
      min: round(this.min),
      mean: round(this.sum / this.n),
      p50: round(this.percentile(50)),
      p90: round(this.percentile(90)),
      p99: round(this.percentile(99)),
      p999: round(this.percentile(99.9)),
      max: round(this.max),
      negative: this.negative,
    };
  }
}
