// The load generator: socket.io-client 4.8 connections (WebSocket transport only) spread over
// several Node worker processes, driven by bench/run.py.
//
//   node bench/loadgen.mjs [--workers 3] [--max-seconds 900]
//
// The parent reads one JSON command per line on stdin and answers one JSON line on stdout (with
// the command's "id"); logs go to stderr. Workers (child_process.fork) hold the connections,
// record per-event latency (receipt time minus the scheduled send time carried in the event) in a
// log-bucket histogram, and report to the parent over IPC. Every wait is bounded; the process
// exits by itself when stdin closes or after --max-seconds.
//
// Commands:
//   connect    {urls, count, rooms, secret, user?, rate, max_pending, timeout_s}
//              opens `count` more clients (indices continue from the last), client i on
//              urls[i % urls.length], each subscribing to `rooms` ("{agent}" is replaced by the
//              agent id of i); at most `rate` new connections a second and `max_pending` in flight;
//              answers how long each took (`connect_ms`: from opening to `connect`, timeouts apart)
//              and when the last one connected (`last_connected_s`, from the command's start)
//   subscribe  {from, to, room, batch, deadline_s}  clients with index in [from, to) join `room`
//              ("{agent}": the agent id of each), in index order, `batch` at a time, until
//              deadline_s; answers `upto`: exactly the clients in [from, upto) were asked
//   disconnect {from, to}           close clients with index in [from, to)
//   arm        {}                   reset the recorded events
//   wait       {expected, quiet_s, deadline_s}  until `expected` events arrived, or none arrived
//              for quiet_s, or deadline_s passed
//   collect    {}                   the recorded events: counts, latency summary, per-event figures
//   put        {url, token, project_id, count, rate}  paced HTTP PUTs renaming the project
//              "bench <seq>:<scheduled send time>" (the HTTP scenario)
//   quit       {}

import { fork } from "node:child_process";
import http from "node:http";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";
import { Histogram, agentId, marker, monoNow, parseMarker, randomUUID, signToken, sleep } from "./common.mjs";

const { values: args } = parseArgs({
  options: {
    worker: { type: "boolean", default: false },
    workers: { type: "string", default: "3" },
    "max-seconds": { type: "string", default: "900" },
  },
});

const log = (...parts) => process.stderr.write(`[loadgen${args.worker ? ` ${process.pid}` : ""}] ${parts.join(" ")}\n`);

// ====================================================================================================
// Worker: holds connections, records events.
// ====================================================================================================

function runWorker() {
  const clients = new Map(); // index -> socket
  const closing = new Set();
  let disconnects = 0;
  let lastDisconnectReason = null;
  let extensions = null;
  let stats = null;

  function arm() {
    stats = {
      hist: new Histogram(),
      perSeq: new Map(), // seq -> [count, max latency ms]
      received: 0,
      unexpected: 0,
      firstRecv: Infinity,
      lastRecv: -Infinity,
      minSched: Infinity,
    };
  }
  arm();

  function record(text) {
    const now = monoNow();
    const parsed = parseMarker(text);
    if (!parsed) {
      stats.unexpected += 1;
      return;
    }
    const [seq, sched] = parsed;
    const latency = now - sched;
    stats.hist.record(latency);
    stats.received += 1;
    if (now < stats.firstRecv) stats.firstRecv = now;
    if (now > stats.lastRecv) stats.lastRecv = now;
    if (sched < stats.minSched) stats.minSched = sched;
    const entry = stats.perSeq.get(seq);
    if (entry) {
      entry[0] += 1;
      if (latency > entry[1]) entry[1] = latency;
    } else {
      stats.perSeq.set(seq, [1, latency]);
    }
  }

  const onAgent = (event) => record(event && event.data && event.data.current_task);
  const onProject = (event) => record(event && event.data && event.data.project_name);

  function open(spec, secret, user, connectHist) {
    return new Promise((resolve) => {
      const opened = monoNow();
      const socket = io(spec.url, {
        auth: { token: signToken(secret, user || randomUUID()) },
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
        timeout: 20000,
      });
      let settled = false;
      const finish = (result) => {
        if (settled) return;
        settled = true;
        if (!result.ok) {
          closing.add(spec.index);
          socket.close();
        }
        resolve(result);
      };
      socket.on("connect", async () => {
        connectHist.record(monoNow() - opened);
        if (extensions === null) {
          const ws = socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.ws;
          extensions = (ws && ws.extensions) || "";
        }
        for (const room of spec.rooms) {
          try {
            const reply = await socket.timeout(20000).emitWithAck("subscribe", { room });
            if (!reply || reply.status !== "success") return finish({ ok: false, error: `subscribe: ${reply && reply.code}` });
          } catch {
            return finish({ ok: false, error: "subscribe: no ack in 20 s" });
          }
        }
        clients.set(spec.index, socket);
        finish({ ok: true });
      });
      socket.on("connect_error", (error) => finish({ ok: false, error: `connect_error: ${error.message}` }));
      socket.on("disconnect", (reason) => {
        if (!closing.has(spec.index)) {
          disconnects += 1;
          lastDisconnectReason = reason;
        }
      });
      socket.on("agent.status_changed", onAgent);
      socket.on("project.updated", onProject);
    });
  }

  function connectMany({ specs, secret, user, rate, maxPending, deadline }) {
    return new Promise((resolve) => {
      let next = 0;
      let pending = 0;
      let ok = 0;
      let failed = 0;
      const errors = {};
      const connectHist = new Histogram();
      let lastOk = null; // when the last client to connect did (monoNow)
      let budget = 1;
      const tickMs = 5;
      const perTick = (rate * tickMs) / 1000;
      const settle = () => {
        clearInterval(timer);
        resolve({ ok, failed, errors, connect_ms: connectHist.toJSON(), last_ok: lastOk });
      };
      const done = () => ok + failed === specs.length;
      const timer = setInterval(() => {
        if (monoNow() > deadline) {
          failed += specs.length - next + pending; // pending ones are closed when they settle
          errors["deadline"] = (errors["deadline"] || 0) + specs.length - next + pending;
          next = specs.length;
          settle();
          return;
        }
        budget = Math.min(budget + perTick, Math.max(2, perTick * 2));
        while (budget >= 1 && pending < maxPending && next < specs.length) {
          budget -= 1;
          pending += 1;
          const spec = specs[next++];
          open(spec, secret, user, connectHist).then((result) => {
            pending -= 1;
            if (monoNow() > deadline) {
              if (result.ok) {
                closing.add(spec.index);
                clients.get(spec.index)?.close();
                clients.delete(spec.index);
              }
              return;
            }
            if (result.ok) {
              ok += 1;
              lastOk = monoNow();
            } else {
              failed += 1;
              errors[result.error] = (errors[result.error] || 0) + 1;
            }
            if (done()) settle();
          });
        }
        if (specs.length === 0) settle();
      }, tickMs);
    });
  }

  async function subscribeRange({ from, to, room }) {
    let ok = 0;
    let failed = 0;
    const jobs = [];
    for (const [index, socket] of clients) {
      if (index < from || index >= to) continue;
      jobs.push(
        socket
          .timeout(20000)
          .emitWithAck("subscribe", { room: room.replaceAll("{agent}", agentId(index)) })
          .then((reply) => (reply && reply.status === "success" ? ok++ : failed++))
          .catch(() => failed++),
      );
      if (jobs.length % 200 === 0) await sleep(5); // do not flood the server
    }
    await Promise.all(jobs);
    return { ok, failed };
  }

  function disconnectRange({ from, to }) {
    let closed = 0;
    for (const [index, socket] of clients) {
      if (index < from || index >= to) continue;
      closing.add(index);
      socket.disconnect();
      clients.delete(index);
      closed += 1;
    }
    return { closed, clients: clients.size };
  }

  function collect() {
    const seqs = [];
    const counts = [];
    const maxima = [];
    for (const [seq, [count, max]] of stats.perSeq) {
      seqs.push(seq);
      counts.push(count);
      maxima.push(max);
    }
    return {
      hist: stats.hist.toJSON(),
      seqs,
      counts,
      maxima,
      received: stats.received,
      unexpected: stats.unexpected,
      // (IPC is JSON: Infinity would arrive as null)
      firstRecv: Number.isFinite(stats.firstRecv) ? stats.firstRecv : null,
      lastRecv: Number.isFinite(stats.lastRecv) ? stats.lastRecv : null,
      minSched: Number.isFinite(stats.minSched) ? stats.minSched : null,
      clients: clients.size,
      disconnects,
      lastDisconnectReason,
      extensions,
      rss_mb: process.memoryUsage().rss / 2 ** 20,
    };
  }

  let lastReported = -1;
  setInterval(() => {
    if (stats.received !== lastReported) {
      lastReported = stats.received;
      process.send({ type: "progress", received: stats.received });
    }
  }, 50);

  process.on("message", async (message) => {
    let reply;
    try {
      switch (message.cmd) {
        case "connect":
          reply = await connectMany(message);
          reply.extensions = extensions;
          reply.clients = clients.size;
          break;
        case "subscribe":
          reply = await subscribeRange(message);
          break;
        case "disconnect":
          reply = disconnectRange(message);
          break;
        case "arm":
          arm();
          disconnects = 0;
          lastReported = -1;
          reply = {};
          break;
        case "collect":
          reply = collect();
          break;
        default:
          reply = { error: `unknown worker command ${message.cmd}` };
      }
    } catch (error) {
      reply = { error: String(error && error.stack) };
    }
    process.send({ type: "reply", id: message.id, ...reply });
  });
  process.on("disconnect", () => process.exit(0)); // the parent is gone
}

// ====================================================================================================
// Parent: commands on stdin, workers over IPC.
// ====================================================================================================

async function runParent() {
  const count = Math.max(1, Number(args.workers));
  const self = fileURLToPath(import.meta.url);
  const workers = [];
  const received = new Array(count).fill(0);
  const waiting = new Map();
  let nextId = 0;
  for (let k = 0; k < count; k++) {
    const child = fork(self, ["--worker"], { stdio: ["ignore", 2, 2, "ipc"] });
    child.on("message", (message) => {
      if (message.type === "progress") received[k] = message.received;
      else if (message.type === "reply") {
        const resolve = waiting.get(message.id);
        waiting.delete(message.id);
        if (resolve) resolve(message);
      }
    });
    child.on("exit", (code) => {
      log(`worker ${k} exited with ${code}`);
      process.exit(3);
    });
    workers.push(child);
  }
  const call = (k, message) =>
    new Promise((resolve) => {
      const id = nextId++;
      waiting.set(id, resolve);
      workers[k].send({ ...message, id });
    });
  const all = (makeMessage) => Promise.all(workers.map((_, k) => call(k, makeMessage(k))));

  let nextIndex = 0;

  async function connect(command) {
    const start = monoNow();
    const first = nextIndex;
    nextIndex += command.count;
    const perWorker = workers.map(() => []);
    for (let index = first; index < nextIndex; index++) {
      const rooms = (command.rooms || []).map((room) => room.replaceAll("{agent}", agentId(index)));
      perWorker[index % count].push({ index, url: command.urls[index % command.urls.length], rooms });
    }
    const deadline = start + (command.timeout_s || 120) * 1000;
    const replies = await all((k) => ({
      cmd: "connect",
      specs: perWorker[k],
      secret: command.secret,
      user: command.user,
      rate: (command.rate || 1000) / count,
      maxPending: Math.max(1, Math.ceil((command.max_pending || 300) / count)),
      deadline,
    }));
    const seconds = (monoNow() - start) / 1000;
    const errors = {};
    for (const reply of replies) for (const [key, n] of Object.entries(reply.errors || {})) errors[key] = (errors[key] || 0) + n;
    const ok = replies.reduce((s, r) => s + r.ok, 0);
    const connectHist = new Histogram();
    for (const reply of replies) if (reply.connect_ms) connectHist.merge(reply.connect_ms);
    const lastOk = Math.max(...replies.map((r) => r.last_ok ?? -Infinity));
    return {
      connect_ms: connectHist.summary(),
      // until the last client that connected did (seconds: until every client connected or failed)
      last_connected_s: Number.isFinite(lastOk) ? (lastOk - start) / 1000 : null,
      connected: ok,
      failed: replies.reduce((s, r) => s + r.failed, 0),
      errors,
      seconds,
      per_second: ok / seconds,
      first_index: first,
      next_index: nextIndex,
      clients: replies.reduce((s, r) => s + r.clients, 0),
      extensions: replies.map((r) => r.extensions).find((e) => e !== null && e !== undefined) ?? null,
    };
  }

  // In index order, `batch` clients at a time, until `deadline_s`: the clients that joined are
  // exactly those with index in [from, upto).
  async function subscribe(command) {
    const start = monoNow();
    const batch = command.batch || 200;
    const deadline = start + (command.deadline_s || 120) * 1000;
    let ok = 0;
    let failed = 0;
    let upto = command.from;
    while (upto < command.to && monoNow() < deadline) {
      const end = Math.min(command.to, upto + batch);
      const replies = await all(() => ({ cmd: "subscribe", from: upto, to: end, room: command.room }));
      ok += replies.reduce((s, r) => s + r.ok, 0);
      failed += replies.reduce((s, r) => s + r.failed, 0);
      upto = end;
    }
    const seconds = (monoNow() - start) / 1000;
    return { ok, failed, upto, seconds, per_second: ok / seconds };
  }

  async function disconnect(command) {
    const replies = await all(() => ({ cmd: "disconnect", from: command.from, to: command.to }));
    if (command.to >= nextIndex) nextIndex = Math.min(nextIndex, command.from);
    return {
      closed: replies.reduce((s, r) => s + r.closed, 0),
      clients: replies.reduce((s, r) => s + r.clients, 0),
      next_index: nextIndex,
    };
  }

  async function wait(command) {
    const start = monoNow();
    const expected = command.expected ?? Infinity;
    let last = -1;
    let lastChange = start;
    for (;;) {
      const total = received.reduce((a, b) => a + b, 0);
      const now = monoNow();
      if (total !== last) {
        last = total;
        lastChange = now;
      }
      if (total >= expected) return { received: total, reason: "complete", seconds: (now - start) / 1000 };
      if (now - lastChange > (command.quiet_s ?? 2) * 1000)
        return { received: total, reason: "quiet", seconds: (now - start) / 1000 };
      if (now - start > (command.deadline_s ?? 30) * 1000)
        return { received: total, reason: "deadline", seconds: (now - start) / 1000 };
      await sleep(20);
    }
  }

  async function collect() {
    const replies = await all(() => ({ cmd: "collect" }));
    const hist = new Histogram();
    const perSeq = new Map();
    let firstRecv = Infinity;
    let lastRecv = -Infinity;
    let minSched = Infinity;
    for (const reply of replies) {
      hist.merge(reply.hist);
      reply.seqs.forEach((seq, i) => {
        const entry = perSeq.get(seq);
        if (entry) {
          entry[0] += reply.counts[i];
          entry[1] = Math.max(entry[1], reply.maxima[i]);
        } else perSeq.set(seq, [reply.counts[i], reply.maxima[i]]);
      });
      if (reply.received) {
        firstRecv = Math.min(firstRecv, reply.firstRecv);
        lastRecv = Math.max(lastRecv, reply.lastRecv);
        minSched = Math.min(minSched, reply.minSched);
      }
    }
    const completions = new Histogram();
    const burstRates = [];
    for (const [count, max] of perSeq.values()) {
      completions.record(max);
      if (max > 0) burstRates.push(count / (max / 1000));
    }
    burstRates.sort((a, b) => a - b);
    const sum = (key) => replies.reduce((s, r) => s + r[key], 0);
    const received = sum("received");
    return {
      received,
      unexpected: sum("unexpected"),
      latency_ms: hist.summary(),
      events_seen: perSeq.size,
      completion_ms: completions.summary(),
      burst_deliveries_per_s: burstRates.length ? burstRates[Math.floor(burstRates.length / 2)] : null,
      span_s: received ? (lastRecv - minSched) / 1000 : null,
      deliveries_per_s: received && lastRecv > minSched ? received / ((lastRecv - minSched) / 1000) : null,
      clients: sum("clients"),
      disconnects: sum("disconnects"),
      last_disconnect_reason: replies.map((r) => r.lastDisconnectReason).find(Boolean) ?? null,
      extensions: replies.map((r) => r.extensions).find((e) => e !== null) ?? null,
      workers_rss_mb: Math.round(sum("rss_mb")),
    };
  }

  async function put(command) {
    const url = new URL(`/api/v1/projects/${command.project_id}`, command.url);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const hist = new Histogram();
    const statuses = {};
    const start = monoNow() + 20;
    const request = (body) =>
      new Promise((resolve) => {
        const text = JSON.stringify(body);
        const req = http.request(
          url,
          {
            method: "PUT",
            agent,
            timeout: 10000,
            headers: {
              authorization: `Bearer ${command.token}`,
              "content-type": "application/json",
              "content-length": Buffer.byteLength(text),
            },
          },
          (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode));
          },
        );
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", (error) => resolve(`error: ${error.message}`));
        req.end(text);
      });
    for (let i = 0; i < command.count; i++) {
      const sched = start + (i * 1000) / command.rate;
      for (let wait = sched - monoNow(); wait > 0; wait = sched - monoNow()) await sleep(wait);
      const sent = monoNow();
      const status = await request({ name: `bench ${marker(i, sched)}` });
      hist.record(monoNow() - sent);
      statuses[status] = (statuses[status] || 0) + 1;
    }
    agent.destroy();
    return { sent: command.count, statuses, http_ms: hist.summary() };
  }

  const handlers = {
    connect,
    subscribe,
    disconnect,
    wait,
    collect,
    put,
    arm: async () => {
      await all(() => ({ cmd: "arm" }));
      received.fill(0);
      return {};
    },
    quit: async () => {
      setTimeout(() => process.exit(0), 50);
      return {};
    },
  };

  const stop = () => {
    for (const worker of workers) worker.kill();
    process.exit(0);
  };
  setTimeout(() => {
    log(`exiting after --max-seconds ${args["max-seconds"]}`);
    stop();
  }, Number(args["max-seconds"]) * 1000).unref();

  const lines = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  lines.on("line", (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let command;
      let reply;
      try {
        command = JSON.parse(line);
        const handler = handlers[command.cmd];
        if (!handler) throw new Error(`unknown command ${command.cmd}`);
        reply = { ok: true, ...(await handler(command)) };
      } catch (error) {
        reply = { ok: false, error: String(error && error.stack) };
      }
      process.stdout.write(`${JSON.stringify({ id: command && command.id, ...reply })}\n`);
    });
  });
  lines.on("close", () => queue.then(stop));
  process.stdout.write(`${JSON.stringify({ ready: true, workers: count, pids: workers.map((w) => w.pid) })}\n`);
}

if (args.worker) runWorker();
else await runParent();
