// Card: "Handle Connection Errors" (on the "Client Connection" socket).
// Driven by test_js_client.py::test_handle_connection_errors_snippet with a token the server
// refuses (JWT_TOKEN: expired, badly signed, malformed, or empty).
//
// The snippet must send the browser to /login: window.location.href (a harness shim, initially
// INITIAL_HREF) becomes "/login". The harness reports the error the client got and the href.
import { INITIAL_HREF, JWT_TOKEN, WS_URL, logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

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

// ===== BEGIN CARD SNIPPET "Handle Connection Errors" (verbatim) =====
socket.on("connect_error", (error) => {
  if (error.data.content.code === "AUTH_FAILED") {
    // Redirect to login
    window.location.href = "/login";
  }
});
// ===== END CARD SNIPPET =====

// Runs after the snippet's listener (listeners run in the order they were added).
const errors = record(socket, "connect_error");

run(async () => {
  await waitUntil(() => errors.length >= 1, "connect_error");
  report({
    refused: {
      error: errors[0],
      initial_href: INITIAL_HREF,
      href: window.location.href,
      connected: socket.connected,
      connected_logs: logsStartingWith("Connected:").length,
    },
  });
  socket.close();
});
