// Harness shared by the scripts in this folder. NOT card code.
//
// The scripts run the WebSocket quick reference card's snippets under Node against the test
// server. apps/api/tests/test_js_client.py starts them and reads their stdout: one JSON object
// per line. The harness
//   * replaces console.log so that whatever a snippet logs is printed as {"log": [...args]},
//   * provides the browser globals the snippets use (localStorage, window.location),
//   * lets a script wait, with a bounded timeout, until a condition over what it has seen holds,
//   * reports an uncaught error as {"error": ...} and exits non-zero; a script that finishes
//     prints {"done": true} and exits 0.
//
// Inputs (environment): WS_URL (the card's "http://localhost:8000/ws" on the test's port),
// SERVER_URL (the same without "/ws"), JWT_TOKEN, and per-script variables.

const STEP_TIMEOUT_MS = Number(process.env.JS_STEP_TIMEOUT_MS || 10000);
const SCRIPT_TIMEOUT_MS = Number(process.env.JS_SCRIPT_TIMEOUT_MS || 30000);

function requireEnv(name) {
  const value = process.env[name];
  if (value === undefined) {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

export const WS_URL = requireEnv("WS_URL");
export const SERVER_URL = process.env.SERVER_URL || "";
export const JWT_TOKEN = process.env.JWT_TOKEN || "";

// --- output -------------------------------------------------------------------------------

export function report(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

function plain(value) {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, data: value.data ?? null };
  }
  if (value === undefined) {
    return null;
  }
  return value;
}

/** Everything the snippets passed to console.log, in order (each entry is the argument list). */
export const logs = [];

console.log = (...args) => {
  const entry = args.map(plain);
  logs.push(entry);
  report({ log: entry });
  poke();
};

/** The log entries whose first argument is `first` (e.g. "Connected:"). */
export function logsStartingWith(first) {
  return logs.filter((entry) => entry[0] === first);
}

// --- browser globals the snippets use ------------------------------------------------------

class MemoryStorage {
  #items = new Map();
  getItem(key) {
    return this.#items.has(String(key)) ? this.#items.get(String(key)) : null;
  }
  setItem(key, value) {
    this.#items.set(String(key), String(value));
  }
  removeItem(key) {
    this.#items.delete(String(key));
  }
  clear() {
    this.#items.clear();
  }
}

Object.defineProperty(globalThis, "localStorage", {
  value: new MemoryStorage(),
  configurable: true,
  writable: true,
});

export const INITIAL_HREF = "http://localhost:3000/dashboard";
globalThis.window = globalThis.window || { location: { href: INITIAL_HREF } };

// --- waiting -------------------------------------------------------------------------------

const waiters = new Set();

/** Re-check every pending waitUntil() (called on every log; call it from harness listeners). */
export function poke() {
  for (const waiter of [...waiters]) {
    waiter();
  }
}

/** Resolves with check()'s first truthy result; rejects after `timeoutMs`. No polling: the
 * condition is re-evaluated whenever something is logged or poke() is called. */
export function waitUntil(check, what, timeoutMs = STEP_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    let timer;
    const waiter = () => {
      let result;
      try {
        result = check();
      } catch (error) {
        waiters.delete(waiter);
        clearTimeout(timer);
        reject(error);
        return;
      }
      if (result) {
        waiters.delete(waiter);
        clearTimeout(timer);
        resolve(result);
      }
    };
    timer = setTimeout(() => {
      waiters.delete(waiter);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    waiters.add(waiter);
    waiter();
  });
}

/** Records the first argument of every `name` event on `socket` (a harness listener, added
 * after the snippet's own). */
export function record(socket, name) {
  const seen = [];
  socket.on(name, (first) => {
    seen.push(plain(first));
    poke();
  });
  return seen;
}

/** `debug:rooms` with an ack (the card's troubleshooting step), bounded. */
export async function debugRooms(socket) {
  return await socket.timeout(STEP_TIMEOUT_MS).emitWithAck("debug:rooms", {});
}

// --- running -------------------------------------------------------------------------------

function fail(error) {
  report({ error: String(error?.message ?? error), stack: String(error?.stack ?? "") });
  process.exit(1);
}

process.on("uncaughtException", fail);
process.on("unhandledRejection", fail);

const watchdog = setTimeout(
  () => fail(new Error(`script did not finish within ${SCRIPT_TIMEOUT_MS} ms`)),
  SCRIPT_TIMEOUT_MS,
);

/** Runs the script's steps; exits 0 after printing {"done": true}, or 1 after {"error": ...}. */
export function run(steps) {
  Promise.resolve()
    .then(steps)
    .then(() => {
      clearTimeout(watchdog);
      report({ done: true });
      process.exit(0);
    }, fail);
}
