// Card: "Subscribe to Updates" (on the "Client Connection" socket of card_connection.mjs).
// Driven by test_js_client.py::test_subscribe_to_updates_snippet.
//
// The snippet hard-codes project 550e8400-e29b-41d4-a716-446655440000; the test makes this
// script's user a member of a project with that id. Its three statements run at three moments:
//   1. subscribe (with the ack that logs the response) and the project.updated listener, once
//      connected; the test changes the project when the ack is logged;
//   2. unsubscribe (no ack), once "Project updated:" is logged; the harness then asks
//      debug:rooms and reports the rooms; the test changes the project again and sends a marker
//      event to this user's room;
//   3. once the marker is in, the harness reports how many "Project updated:" were logged.
import { socket } from "./card_connection.mjs";
import { debugRooms, logs, logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

const markers = record(socket, "workflow.progress");

function subscribeAndListen() {
  // ===== BEGIN CARD SNIPPET "Subscribe to Updates" (first two statements, verbatim) =====
  // Subscribe to room
  socket.emit("subscribe", {
    room: "project:550e8400-e29b-41d4-a716-446655440000"
  }, (response) => {
    console.log(response); // {status: "success", ...}
  });

  // Listen for project updates
  socket.on("project.updated", (event) => {
    console.log("Project updated:", event.data);
  });
  // ===== END CARD SNIPPET =====
}

function unsubscribe() {
  // ===== BEGIN CARD SNIPPET "Subscribe to Updates" (last statement, verbatim) =====
  // Unsubscribe
  socket.emit("unsubscribe", {
    room: "project:550e8400-e29b-41d4-a716-446655440000"
  });
  // ===== END CARD SNIPPET =====
}

/** The subscribe ack the snippet logged: console.log(response), a single object with "status". */
const loggedAck = () => logs.find((entry) => entry.length === 1 && entry[0] !== null && typeof entry[0] === "object");

run(async () => {
  await waitUntil(() => logsStartingWith("Connected:").length === 1, '"Connected:" log');
  subscribeAndListen();
  const [ack] = await waitUntil(loggedAck, "the subscribe ack to be logged");
  report({ subscribed: ack });
  await waitUntil(() => logsStartingWith("Project updated:").length >= 1, '"Project updated:" log');
  unsubscribe();
  report({ rooms_after_unsubscribe: (await debugRooms(socket)).rooms });
  await waitUntil(() => markers.length >= 1, "the marker event");
  report({ marker: { workflow_id: markers[0].data.workflow_id, updates: logsStartingWith("Project updated:").length } });
  socket.close();
});
