// Connection state recovery with the card's socket, unchanged (card_connection.mjs): the test
// takes the network away (a TCP proxy between this script and the server), sends events to rooms
// the socket subscribed to, gives the network back; socket.io-client reconnects by itself, and
// the server gives it back its rooms and what it missed, or connects it afresh. Driven by
// apps/api/tests/test_recovery.py.
//
// Environment: ROOMS (comma-separated, subscribed to once connected), EXPECTED (events to wait
// for), CONNECTS (connections to wait for), FRESH_TOKEN (if set: a refusal of the token as
// expired makes the script hand it over and connect again, as the guide's handler does).
// Reports: {ready} once subscribed; {connects: [...]} at each connect (socket.id, socket.recovered);
// {seen: n} as events arrive; {refused: ...} on connect_error; at the end {result: {...}}.
import { socket } from "./card_connection.mjs";
import { poke, record, report, run, waitUntil } from "./harness.mjs";

const ROOMS = process.env.ROOMS.split(",");
const EXPECTED = Number(process.env.EXPECTED);
const CONNECTS = Number(process.env.CONNECTS || 2);
const FRESH_TOKEN = process.env.FRESH_TOKEN;
const established = record(socket, "connection_established");
const disconnects = [];
const connects = [];
const refusals = [];
const names = [];
const extraArgs = [];

function seen(name, rest) {
  names.push(name);
  extraArgs.push(rest.length);
  report({ seen: names.length });
  poke();
}
socket.on("agent.status_changed", (event, ...rest) => seen(event.data.agent_name, rest));
socket.on("project.updated", (event, ...rest) => seen(event.data.changes.label, rest));
socket.on("disconnect", (reason) => {
  disconnects.push(reason);
  report({ disconnected: reason });
});
socket.on("connect", () => {
  connects.push({ id: socket.id, recovered: socket.recovered });
  report({ connects });
  poke();
});
socket.on("connect_error", (error) => {
  refusals.push(error.data?.content ?? error.message);
  report({ refused: refusals.at(-1) });
  if (FRESH_TOKEN && error.data?.content?.reason === "expired") {
    socket.auth.token = FRESH_TOKEN;
    socket.connect();
  }
});

run(async () => {
  await waitUntil(() => established.length >= 1, "connection_established");
  const acks = [];
  for (const room of ROOMS) {
    acks.push(await socket.timeout(5000).emitWithAck("subscribe", { room }));
  }
  report({ ready: acks });
  await waitUntil(() => connects.length >= CONNECTS && names.length >= EXPECTED, "the connections and events", 30000);
  const rooms = await socket.timeout(5000).emitWithAck("debug:rooms", {});
  report({
    result: {
      names,
      connects,
      disconnects,
      refusals,
      rooms: rooms.rooms,
      extra_args: [...new Set(extraArgs)],
    },
  });
});
