// Card: "Client Connection (JavaScript)". Driven by test_js_client.py::test_client_connection_snippet.
//
// The snippet connects and logs "Connected: <connection_id>". The test then disconnects this
// connection from the server side, and the snippet must log "Disconnected".
import { JWT_TOKEN, WS_URL, logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

// ===== BEGIN CARD SNIPPET "Client Connection (JavaScript)" =====
// Verbatim, except: "http://localhost:8000/ws" -> WS_URL, "your-jwt-token" -> JWT_TOKEN.
import io from "socket.io-client";

const socket = io(WS_URL, {
  auth: { token: JWT_TOKEN }
});

// Listen for connection
socket.on("connection_established", (event) => {
  console.log("Connected:", event.data.connection_id);
});

// Listen for disconnection
socket.on("disconnect", () => {
  console.log("Disconnected");
});
// ===== END CARD SNIPPET =====

const established = record(socket, "connection_established");
const disconnects = record(socket, "disconnect");

run(async () => {
  await waitUntil(() => logsStartingWith("Connected:").length === 1, '"Connected:" log');
  report({ connected: { socket_id: socket.id, event: established[0] } });
  // The test disconnects this connection server-side now.
  await waitUntil(() => logsStartingWith("Disconnected").length === 1, '"Disconnected" log');
  await waitUntil(() => disconnects.length === 1, "disconnect event");
  report({ disconnected: { reason: disconnects[0], still_connected: socket.connected } });
  socket.close();
});
