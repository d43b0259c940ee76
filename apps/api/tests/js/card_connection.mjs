// Card: "Client Connection (JavaScript)", the one copy of it. Not a script of its own: the
// scripts that run a card snippet on the card's `socket` (client_connection, subscribe_updates,
// connection_errors, auto_reconnect, multiple_events) import `socket` from here, then add their
// own snippet's listeners and the harness's, in that order, before anything arrives (socket.io-
// client connects asynchronously, after the importing module has run).
//
// JWT_TOKEN is whatever the test passed: a valid token, or one the server refuses
// (connection_errors), or one that soon expires (auto_reconnect).
import { JWT_TOKEN, WS_URL } from "./harness.mjs";

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

export { socket };
