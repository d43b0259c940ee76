// Card: "Auto-Reconnect with Token Refresh" (on the "Client Connection" socket of card_connection.mjs).
// Driven by test_js_client.py::test_auto_reconnect_with_token_refresh_snippet.
//
// JWT_TOKEN expires about 2 s after it was made: the server then disconnects the connection
// ("io server disconnect", after which socket.io-client does not reconnect by itself). The
// snippet refreshes the token through refreshToken() (harness: returns REFRESH_TOKEN), stores
// it in localStorage and reconnects. The harness reports both connection_established events.
import { socket } from "./card_connection.mjs";
import { debugRooms, logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

const REFRESH_TOKEN = process.env.REFRESH_TOKEN;
let refreshCalls = 0;

/** What the application would call its token endpoint with; the test made the new token. */
async function refreshToken() {
  refreshCalls += 1;
  return REFRESH_TOKEN;
}

// ===== BEGIN CARD SNIPPET "Auto-Reconnect with Token Refresh" (verbatim) =====
socket.on("disconnect", async () => {
  // Refresh token
  const newToken = await refreshToken();
  localStorage.setItem("jwt_token", newToken);

  // Reconnect with new token
  socket.auth.token = newToken;
  socket.connect();
});
// ===== END CARD SNIPPET =====

const established = record(socket, "connection_established");
const disconnects = record(socket, "disconnect");
const errors = record(socket, "connect_error");

run(async () => {
  await waitUntil(() => established.length >= 1, "the first connection_established");
  report({ first: { event: established[0], socket_id: socket.id } });
  await waitUntil(() => established.length >= 2 || errors.length >= 1, "a second connection_established");
  if (errors.length) {
    throw new Error(`reconnecting failed: ${JSON.stringify(errors[0])}`);
  }
  const rooms = await debugRooms(socket);
  report({
    second: {
      event: established[1],
      socket_id: socket.id,
      disconnects,
      refresh_calls: refreshCalls,
      stored_token_is_refreshed: localStorage.getItem("jwt_token") === REFRESH_TOKEN,
      auth_token_is_refreshed: socket.auth.token === REFRESH_TOKEN,
      connected_logs: logsStartingWith("Connected:").length,
      disconnected_logs: logsStartingWith("Disconnected").length,
      debug_rooms: rooms,
    },
  });
  // Leave without socket.disconnect(): the snippet would reconnect on that disconnect too.
});
