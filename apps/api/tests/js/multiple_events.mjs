// Card: "Listen for Multiple Events" (on the "Client Connection" socket of card_connection.mjs).
// Driven by test_js_client.py::test_listen_for_multiple_events_snippet.
//
// The harness subscribes to project:<PROJECT_ID> and agent:<AGENT_ID> and reports "ready"; the
// test then changes the project, and broadcasts an agent status change and workflow progress.
// The snippet logs each as "<event>:", <envelope>.
import { socket } from "./card_connection.mjs";
import { logsStartingWith, record, report, run, waitUntil } from "./harness.mjs";

// ===== BEGIN CARD SNIPPET "Listen for Multiple Events" (verbatim) =====
const events = [
  "project.updated",
  "agent.status_changed",
  "workflow.progress"
];

events.forEach(event => {
  socket.on(event, (data) => {
    console.log(`${event}:`, data);
  });
});
// ===== END CARD SNIPPET =====

const established = record(socket, "connection_established");

run(async () => {
  await waitUntil(() => established.length >= 1, "connection_established");
  const acks = [];
  for (const room of [`project:${process.env.PROJECT_ID}`, `agent:${process.env.AGENT_ID}`]) {
    acks.push(await socket.timeout(8000).emitWithAck("subscribe", { room }));
  }
  report({ ready: acks });
  const names = ["project.updated:", "agent.status_changed:", "workflow.progress:"];
  await waitUntil(() => names.every((name) => logsStartingWith(name).length >= 1), "all three events");
  socket.close();
});
