// Card: "Client Connection (JavaScript)" (the snippet is in card_connection.mjs; importing it
// runs it). Driven by test_js_client.py::test_client_connection_snippet.
//
// The snippet connects and logs "Connected: <connection_id>". The test then disconnects this
// connection from the server side, and the snippet must log "Disconnected".
import { socket } from "./card_connection.mjs";
import { logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

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
