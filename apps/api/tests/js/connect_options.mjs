// Not card code: the other ways a browser client may connect, run with socket.io-client.
// Driven by test_js_client.py::test_connect_options. MODE selects the client's options:
//   polling            transports: ["polling"] only (HTTP long-polling, no WebSocket upgrade)
//   query              the token in the URL's query string: io(WS_URL + "?token=...")
//   path               path: "/ws/socket.io" (the server's path alias)
//   header             extraHeaders: { Authorization: "Bearer <token>" }
//   default_namespace  io(SERVER_URL): the default namespace "/", which the server refuses
// Once connected the harness reports "ready" (with debug:rooms and the transport in use); the
// test then sends a workflow.progress to the user's room, which the harness must receive.
import io from "socket.io-client";
import { JWT_TOKEN, SERVER_URL, WS_URL, debugRooms, poke, record, report, run, waitUntil } from "./harness.mjs";

const MODE = process.env.MODE;

function connect() {
  switch (MODE) {
    case "polling":
      return io(WS_URL, { auth: { token: JWT_TOKEN }, transports: ["polling"] });
    case "query":
      return io(`${WS_URL}?token=${encodeURIComponent(JWT_TOKEN)}`);
    case "path":
      return io(WS_URL, { auth: { token: JWT_TOKEN }, path: "/ws/socket.io" });
    case "header":
      return io(WS_URL, { extraHeaders: { Authorization: `Bearer ${JWT_TOKEN}` } });
    case "default_namespace":
      return io(SERVER_URL, { auth: { token: JWT_TOKEN } });
    default:
      throw new Error(`unknown MODE ${MODE}`);
  }
}

const socket = connect();
// The Engine.IO connection starts on HTTP long-polling and upgrades to WebSocket unless
// transports says otherwise; the harness waits for the upgrade so that what it checks next
// also went over the upgraded connection (which carries the same token, query and path).
const upgrades = [];
socket.io.engine.on("upgrade", (transport) => {
  upgrades.push(transport.name);
  poke();
});
const established = record(socket, "connection_established");
const errors = record(socket, "connect_error");
const progress = record(socket, "workflow.progress");

run(async () => {
  await waitUntil(() => established.length >= 1 || errors.length >= 1, "connection_established or connect_error");
  if (errors.length) {
    report({ refused: { error: errors[0], connected: socket.connected } });
    socket.close();
    return;
  }
  if (MODE !== "polling") {
    await waitUntil(() => upgrades.length >= 1, "the upgrade to WebSocket");
  }
  const rooms = await debugRooms(socket);
  const pong = await socket.timeout(8000).emitWithAck("ping", {});
  // a binary attachment: Socket.IO sends a text packet, then the bytes in a frame (or payload) of their own
  const binaryPong = await socket.timeout(8000).emitWithAck("ping", { blob: new Uint8Array([0, 1, 254, 255]) });
  report({
    ready: {
      event: established[0],
      socket_id: socket.id,
      debug_rooms: rooms,
      pong: pong.status,
      binary_pong: binaryPong.status,
      transport: socket.io.engine.transport.name,
      upgrades,
    },
  });
  await waitUntil(() => progress.length >= 1, "workflow.progress");
  report({ received: { event: progress[0], transport: socket.io.engine.transport.name } });
  socket.close();
});
