// Card: "Handle Connection Errors" (on the "Client Connection" socket of card_connection.mjs).
// Driven by test_js_client.py::test_handle_connection_errors_snippet with a token the server
// refuses (JWT_TOKEN: expired, badly signed, malformed, or empty).
//
// The snippet must send the browser to /login: window.location.href (a harness shim, initially
// INITIAL_HREF) becomes "/login". The harness reports the error the client got and the href.
import { socket } from "./card_connection.mjs";
import { INITIAL_HREF, logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

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
