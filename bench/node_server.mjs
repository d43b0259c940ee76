// The reference server: socket.io 4.8 on Node doing the same work as the service, for the benchmark.
//
//   node [--expose-gc] bench/node_server.mjs --port 9000 --secret S
//        [--redis redis://127.0.0.1:6379 --redis-key K [--redis-adapter pubsub|streams]]
//
// - namespace /ws; a JWT (HS256, the same secret and checks as the service) in auth.token, the
//   Authorization header or ?token=; each connection joins user:<sub> and global, gets a
//   connection_established envelope, a token-expiry timer and a rate limiter, like the service;
// - `subscribe` with ack (room syntax, project membership, 100 rooms at most), `unsubscribe`, `ping`;
// - events in the service's envelope {id, type, timestamp, source, data};
// - the bench endpoints of bench/py_server.py (POST /bench/emit runs an emit schedule, POST
//   /bench/gc, GET /bench/ping), and a stand-in of POST /api/v1/projects and
//   PUT /api/v1/projects/{id} (an in-memory object; PUT emits project.updated) for the HTTP scenario;
// - with --redis, @socket.io/redis-adapter (pub/sub) shares every emit with the other instances; with
//   --redis-adapter streams, @socket.io/redis-streams-adapter does, with connection state recovery on
//   (maxDisconnectionDuration 120 s, the service's default window).
// socket.io's defaults otherwise (perMessageDeflate off, pingInterval 25 s, pingTimeout 20 s).

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { createRequire } from "node:module";
import { Server } from "socket.io";
import {
  Histogram,
  UUID_RE,
  agentId,
  epochNow,
  marker,
  monoNow,
  nextTurn,
  randomUUID,
  sleep,
  verifyToken,
} from "./common.mjs";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "9000" },
    secret: { type: "string", default: "your-secret-key" },
    redis: { type: "string" },
    "redis-key": { type: "string", default: "socket.io" },
    "redis-adapter": { type: "string", default: "pubsub" },
    "parent-pid": { type: "string" },
  },
});

const NAMESPACE = "/ws";
const MAX_ROOMS = 100;
const LEEWAY_SECONDS = 10;
const INSTANCE_ID = randomUUID().slice(0, 12);
const SECRET = args.secret;
const STREAMS = args["redis-adapter"] === "streams";
if (!["pubsub", "streams"].includes(args["redis-adapter"])) {
  console.error(`--redis-adapter must be pubsub or streams, not ${args["redis-adapter"]}`);
  process.exit(2);
}
const RECOVERY = args.redis && STREAMS ? { maxDisconnectionDuration: 120000 } : null;
const ADAPTER_PACKAGE = STREAMS ? "@socket.io/redis-streams-adapter" : "@socket.io/redis-adapter";

// --- the envelope ----------------------------------------------------------------------------------

/** ISO 8601 UTC with microseconds, as the service writes it (2024-11-08T10:30:00.123456Z). */
function isoNow() {
  const now = epochNow();
  const ms = Math.floor(now);
  const micros = String(Math.floor((now - ms) * 1000)).padStart(3, "0");
  return `${new Date(ms).toISOString().slice(0, -1)}${micros}Z`;
}

function envelope(type, source, data) {
  return { id: randomUUID(), type, timestamp: isoNow(), source, data };
}

// --- Socket.IO -----------------------------------------------------------------------------------

let io = null;
let redisClients = [];
function shutdown() {
  if (io) io.close();
  for (const client of redisClients) client.disconnect().catch(() => {});
  setTimeout(() => process.exit(0), 200).unref();
}
process.on("SIGTERM", shutdown);
if (args["parent-pid"]) {
  // Never outlive the benchmark that started this server.
  setInterval(() => {
    try {
      process.kill(Number(args["parent-pid"]), 0);
    } catch {
      process.exit(0);
    }
  }, 1000).unref();
}
process.on("SIGINT", shutdown);

const httpServer = createServer(handleHttp);
let adapter;
if (args.redis) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import(ADAPTER_PACKAGE);
  const pub = createClient({ url: args.redis });
  const sub = STREAMS ? null : pub.duplicate(); // the Streams adapter duplicates the client itself
  let lastError = "";
  redisClients = sub ? [pub, sub] : [pub];
  for (const client of redisClients) client.on("error", (e) => (lastError = e.message));
  const timeout = setTimeout(() => {
    console.error(`cannot reach Redis at ${args.redis} in 5 s: ${lastError}`);
    process.exit(1);
  }, 5000);
  await Promise.all(redisClients.map((client) => client.connect()));
  clearTimeout(timeout);
  for (const client of redisClients) client.on("error", (e) => console.error("redis error", e.message));
  const key = args["redis-key"];
  adapter = STREAMS
    ? createAdapter(pub, { streamName: key, channelPrefix: key, sessionKeyPrefix: `${key}:session:` })
    : createAdapter(pub, sub, { key });
}
io = new Server(httpServer, {
  ...(adapter ? { adapter } : {}),
  ...(RECOVERY ? { connectionStateRecovery: RECOVERY } : {}),
});
const nsp = io.of(NAMESPACE);

io.of(/^\/(?!ws$).*/).use((socket, next) => {
  const err = new Error(`Namespace '${socket.nsp.name}' does not exist: connect to ${NAMESPACE}`);
  err.data = { content: { code: "INVALID_NAMESPACE", message: err.message } };
  next(err);
});

function tokenOf(handshake) {
  if (handshake.auth && typeof handshake.auth.token === "string") return handshake.auth.token;
  const header = handshake.headers.authorization;
  if (typeof header === "string" && header.startsWith("Bearer ")) return header.slice(7);
  return typeof handshake.query.token === "string" ? handshake.query.token : undefined;
}

nsp.use((socket, next) => {
  try {
    const token = tokenOf(socket.handshake);
    if (!token) throw new Error("missing");
    socket.data.claims = verifyToken(SECRET, token, LEEWAY_SECONDS);
    next();
  } catch (e) {
    const err = new Error("The token was refused");
    err.data = { content: { code: "AUTH_FAILED", reason: e.message, message: err.message } };
    next(err);
  }
});

/** 20 events a second, bursts of 50, per connection (the service's limiter). */
class TokenBucket {
  constructor(rate = 20, burst = 50) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.at = performance.now();
  }
  take() {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

const ROOM_RE = /^(user|project|agent):([0-9a-fA-F-]{36})$/;
const projects = new Map(); // id -> project (the HTTP scenario's stand-in store)

function roomError(code, message) {
  return { status: "error", code, message };
}

function checkRoom(socket, data) {
  const name = typeof data === "string" ? data : data && data.room;
  if (typeof name !== "string" || name.length > 64) return [null, roomError("INVALID_ROOM", "Invalid room")];
  if (name === "global") return ["global", null];
  const match = ROOM_RE.exec(name);
  if (!match || !UUID_RE.test(match[2].toLowerCase())) return [null, roomError("INVALID_ROOM", "Invalid room")];
  const room = `${match[1]}:${match[2].toLowerCase()}`;
  const sub = socket.data.claims.sub;
  if (match[1] === "user" && match[2].toLowerCase() !== sub) return [null, roomError("ROOM_ACCESS_DENIED", "Denied")];
  if (match[1] === "project") {
    const project = projects.get(match[2].toLowerCase());
    if (!project || !project.members.includes(sub)) return [null, roomError("ROOM_ACCESS_DENIED", "Denied")];
  }
  return [room, null];
}

nsp.on("connection", (socket) => {
  const { sub, exp } = socket.data.claims;
  const limiter = new TokenBucket();
  const rooms = [`user:${sub}`, "global"];
  socket.join(rooms);
  const expiry = setTimeout(() => socket.disconnect(true), Math.max(0, (exp + LEEWAY_SECONDS) * 1000 - Date.now()));
  socket.on("disconnect", () => clearTimeout(expiry));
  const welcome = envelope("connection_established", "websocket_server", {
    connection_id: socket.id,
    user_id: sub,
    rooms,
    instance_id: INSTANCE_ID,
    protocol_version: "1.0",
    server_time: isoNow(),
  });
  socket.emit(welcome.type, welcome);

  const guarded = (handler) => (data, ack) => {
    if (typeof data === "function") [data, ack] = [undefined, data];
    const reply = limiter.take() ? handler(data) : roomError("RATE_LIMITED", "Too many requests");
    if (typeof ack === "function") ack(reply);
  };
  socket.on(
    "subscribe",
    guarded((data) => {
      const [room, error] = checkRoom(socket, data);
      if (error) return error;
      if (!socket.rooms.has(room)) {
        if (socket.rooms.size - 1 >= MAX_ROOMS) return roomError("ROOM_LIMIT", "Too many rooms");
        socket.join(room);
      }
      return { status: "success", room, message: `Subscribed to ${room}` };
    }),
  );
  socket.on(
    "unsubscribe",
    guarded((data) => {
      const name = typeof data === "string" ? data : data && data.room;
      if (typeof name !== "string") return roomError("INVALID_ROOM", "Invalid room");
      socket.leave(name.toLowerCase());
      return { status: "success", room: name.toLowerCase(), message: `Unsubscribed from ${name}` };
    }),
  );
  socket.on(
    "ping",
    guarded(() => ({ status: "pong", timestamp: isoNow() })),
  );
});

// --- the emit schedule (same semantics as bench/py_server.py) ---------------------------------------

function agentEvent(agent, seq, sched) {
  return envelope("agent.status_changed", "agent_service", {
    agent_id: agent,
    agent_name: "bench",
    status: "busy",
    availability: 5,
    previous_status: null,
    current_task: marker(seq, sched),
  });
}

async function runSchedule(spec) {
  const count = Number(spec.count);
  const rate = Number(spec.rate || 0);
  const base = Number(spec.agent_base || 0);
  const roomCount = Math.max(1, Math.min(Number(spec.rooms || 1), count));
  const maxSeconds = Number(spec.max_seconds || 60);
  if (!(count > 0 && count < 100000)) throw new Error("count must be 1..99999");
  const rooms = Array.from({ length: roomCount }, (_, k) => agentId(base + k));
  const lags = new Histogram();
  const start = monoNow() + (rate > 0 ? 20 : 0);
  const hardStop = start + maxSeconds * 1000;
  let emitted = 0;
  let aborted = false;
  let lastSched = start;
  for (let i = 0; i < count; i++) {
    let sched;
    if (rate > 0) {
      sched = start + (i * 1000) / rate;
      if (sched <= monoNow()) await nextTurn(); // behind schedule: still let I/O run between events
      // Timers have millisecond steps and may fire early: never send before the scheduled time.
      for (let wait = sched - monoNow(); wait > 0; wait = sched - monoNow()) await sleep(wait);
    } else {
      if (i > 0) await nextTurn();
      sched = monoNow();
    }
    const now = monoNow();
    if (now > hardStop) {
      aborted = true;
      break;
    }
    lags.record(now - sched);
    const agent = rooms[i % roomCount];
    const event = agentEvent(agent, i, sched);
    nsp.to(`agent:${agent}`).emit(event.type, event);
    emitted += 1;
    lastSched = sched;
  }
  const end = monoNow();
  const lag = lags.summary();
  return {
    planned: count,
    emitted,
    aborted,
    duration_s: (end - start) / 1000,
    end_lag_ms: end - lastSched,
    lag_ms: { p50: lag.p50, p99: lag.p99, max: lag.max },
    envelope_bytes: Buffer.byteLength(JSON.stringify(agentEvent(agentId(0), 0, monoNow()))),
  };
}

// --- HTTP: bench endpoints and the projects stand-in -------------------------------------------------

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString();
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch (e) {
        reject(e);
      }
    });
    req.on("error", reject);
  });
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function userOf(req) {
  const header = req.headers.authorization || "";
  if (!header.startsWith("Bearer ")) throw new Error("missing");
  return verifyToken(SECRET, header.slice(7), LEEWAY_SECONDS).sub;
}

const require = createRequire(import.meta.url);
const versions = () => ({
  kind: "node",
  node: process.version,
  "socket.io": require("socket.io/package.json").version,
  redis_adapter: args.redis ? `${ADAPTER_PACKAGE} ${require(`${ADAPTER_PACKAGE}/package.json`).version}` : null,
  recovery: RECOVERY ? `on (maxDisconnectionDuration ${RECOVERY.maxDisconnectionDuration} ms)` : "off",
  redis_client: args.redis ? require("redis/package.json").version : null,
  per_message_deflate: false,
});

async function handleHttp(req, res) {
  try {
    const url = new URL(req.url, "http://localhost");
    const path = url.pathname;
    if (req.method === "GET" && (path === "/bench/ping" || path === "/health")) {
      return send(res, 200, { ok: true, pid: process.pid, connections: io.engine.clientsCount, ...versions() });
    }
    if (req.method === "POST" && path === "/bench/gc") {
      if (global.gc) global.gc();
      return send(res, 200, { ok: true, gc: Boolean(global.gc) });
    }
    if (req.method === "POST" && path === "/bench/emit") {
      return send(res, 200, await runSchedule(await readBody(req)));
    }
    if (path === "/api/v1/projects" && req.method === "POST") {
      let user;
      try {
        user = userOf(req);
      } catch (e) {
        return send(res, 401, { error: { code: "AUTH_FAILED", reason: e.message } });
      }
      const body = await readBody(req);
      const now = isoNow();
      const project = {
        id: randomUUID(),
        name: body.name,
        description: body.description ?? null,
        repository_url: body.repository_url ?? null,
        status: body.status ?? "active",
        owner_id: user,
        members: [user],
        created_at: now,
        updated_at: now,
      };
      projects.set(project.id, project);
      return send(res, 201, project);
    }
    const match = /^\/api\/v1\/projects\/([0-9a-fA-F-]{36})$/.exec(path);
    if (match && req.method === "PUT") {
      let user;
      try {
        user = userOf(req);
      } catch (e) {
        return send(res, 401, { error: { code: "AUTH_FAILED", reason: e.message } });
      }
      const project = projects.get(match[1].toLowerCase());
      if (!project) return send(res, 404, { error: { code: "NOT_FOUND", message: "No such project" } });
      if (!project.members.includes(user)) return send(res, 403, { error: { code: "PROJECT_ACCESS_DENIED" } });
      const body = await readBody(req);
      const changes = {};
      for (const key of ["name", "description", "repository_url", "status"]) {
        if (key in body && body[key] !== project[key]) {
          project[key] = body[key];
          changes[key] = body[key];
        }
      }
      const fields = Object.keys(changes);
      let eventId = null;
      if (fields.length) {
        project.updated_at = isoNow();
        const event = envelope("project.updated", "project_service", {
          project_id: project.id,
          project_name: project.name,
          repository_url: project.repository_url,
          status: project.status,
          updated_by: user,
          changes: { ...changes, fields },
        });
        nsp.to([`project:${project.id}`, `user:${user}`]).emit(event.type, event);
        eventId = event.id;
      }
      return send(res, 200, { success: true, project, changed_fields: fields, event_id: eventId, event_delivered: true });
    }
    send(res, 404, { error: { code: "NOT_FOUND", message: `No route ${req.method} ${path}` } });
  } catch (e) {
    send(res, 500, { error: { code: "INTERNAL_ERROR", message: String(e && e.message) } });
  }
}

// --- run -----------------------------------------------------------------------------------------------

httpServer.listen(Number(args.port), "127.0.0.1", () => {
  console.log(`node reference server listening on 127.0.0.1:${args.port} (pid ${process.pid})`);
});
