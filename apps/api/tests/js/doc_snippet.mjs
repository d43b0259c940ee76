// A block of WEBSOCKET_API.md or WEBSOCKET_INTEGRATION_GUIDE.md that uses `socket`, run as the doc
// gives it (DOC_SNIPPET, read from the doc by the test) on the card's socket once it is connected.
// Driven by test_js_client.py's test_the_guides_debugging_snippet, test_the_apis_debug_rooms_example
// and test_the_apis_ping_example.
//
// Reports {"snippet_logs": [...]}: the argument lists of the snippet's console.log calls, once it
// has made DOC_LOGS of them.
import { socket } from "./card_connection.mjs";
import { logs, record, report, run, waitUntil } from "./harness.mjs";

const established = record(socket, "connection_established");

run(async () => {
  await waitUntil(() => established.length >= 1, "connection_established");
  const before = logs.length; // the card's own "Connected:" line is before
  new Function("socket", process.env.DOC_SNIPPET)(socket);
  const expected = Number(process.env.DOC_LOGS);
  await waitUntil(() => logs.length - before >= expected, `${expected} console.log calls of the snippet`);
  report({ snippet_logs: logs.slice(before) });
});
