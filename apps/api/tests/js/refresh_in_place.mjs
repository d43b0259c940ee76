// The integration guide's "Keep the connection when the token nears its end" block, run as the
// guide gives it (GUIDE_SNIPPET, read from WEBSOCKET_INTEGRATION_GUIDE.md by the test) on the
// card's socket. Driven by test_js_client.py::test_the_guides_token_refresh_in_place.
//
// JWT_TOKEN expires soon (the server warns at once); refreshToken() returns REFRESH_TOKEN. The
// script subscribes to AGENT_ROOM, then waits for the agent event to it, which the test sends
// once the original token has expired (another connection with it was closed then).
import { socket } from "./card_connection.mjs";
import { record, report, run, waitUntil } from "./harness.mjs";

const REFRESH_TOKEN = process.env.REFRESH_TOKEN;
let refreshCalls = 0;
async function refreshToken() {
  refreshCalls += 1;
  return REFRESH_TOKEN;
}

const snippet = new Function("socket", "refreshToken", "localStorage", process.env.GUIDE_SNIPPET);
snippet(socket, refreshToken, localStorage);

const established = record(socket, "connection_established");
const warnings = record(socket, "token.expiring");
const closings = record(socket, "connection.closing");
const disconnects = record(socket, "disconnect");
const agentEvents = record(socket, "agent.connected");

run(async () => {
  await waitUntil(() => established.length >= 1, "connection_established");
  const ack = await socket.timeout(5000).emitWithAck("subscribe", { room: process.env.AGENT_ROOM });
  await waitUntil(() => warnings.length >= 1 && refreshCalls >= 1, "token.expiring and a refresh");
  report({ first: { subscribed: ack, warning: warnings[0] } });
  await waitUntil(
    () => agentEvents.some((event) => event.data.agent_id === process.env.MARKER_AGENT),
    "the marker sent after the old token expired",
    20000,
  );
  const rooms = await socket.timeout(5000).emitWithAck("debug:rooms", {});
  report({
    after: {
      connected: socket.connected,
      connections: established.length,
      closings,
      disconnects,
      refresh_calls: refreshCalls,
      stored: localStorage.getItem("jwt_token") === REFRESH_TOKEN,
      auth_token: socket.auth.token === REFRESH_TOKEN,
      rooms: rooms.rooms,
    },
  });
});
