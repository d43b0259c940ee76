// Card: "React Hook Example" (TypeScript) and "Unsubscribe on Cleanup", rendered with
// react-test-renderer under Node (run with `node --import tsx`). Driven by
// test_js_client.py::test_react_hook_and_cleanup_snippets.
//
// <App projectId=PROJECT_ID> renders two components:
//   * ProjectView calls the card's useProjectUpdates(projectId) and records what it returns;
//   * RoomWatcher contains the card's "Unsubscribe on Cleanup" effect. Its `socket` and `room`
//     are a second connection of the same user, subscribed to project:<PROJECT_ID> by the harness.
// Steps: mount; wait until the hook's socket is in the project room (debug:rooms on it) and
// report "ready"; the test changes the project; wait until the hook returns the change and
// report it; unmount (both cleanups run) and report the rooms of the cleanup socket; the test
// changes the project again and sends a marker to the user's room; report how many
// project.updated the cleanup socket got before the marker.
import { createElement } from "react";
import { act, create, type ReactTestRenderer } from "react-test-renderer";
import { Socket } from "socket.io-client";
import { JWT_TOKEN, WS_URL, debugRooms, poke, record, report, run, waitUntil } from "./harness.mjs";

const PROJECT_ID = process.env.PROJECT_ID as string;

// The hook creates its socket itself; a spy on Socket.prototype.emit finds it (the socket that
// emits "subscribe") and records every event the sockets emit.
const emitted: { socket: Socket; event: string; args: unknown[] }[] = [];
const realEmit = Socket.prototype.emit;
Socket.prototype.emit = function (this: Socket, event: string, ...args: any[]) {
  emitted.push({ socket: this, event, args });
  poke();
  return realEmit.call(this, event, ...args);
} as typeof Socket.prototype.emit;

// ===== BEGIN CARD SNIPPET "React Hook Example" =====
// Verbatim, except: "http://localhost:8000/ws" -> WS_URL.
import { useEffect, useState } from "react";
import io from "socket.io-client";

export const useProjectUpdates = (projectId: string) => {
  const [project, setProject] = useState(null);

  useEffect(() => {
    const socket = io(WS_URL, {
      auth: { token: localStorage.getItem("jwt_token") }
    });

    socket.on("connect", () => {
      socket.emit("subscribe", {
        room: `project:${projectId}`
      });
    });

    socket.on("project.updated", (event) => {
      setProject(event.data);
    });

    return () => socket.disconnect();
  }, [projectId]);

  return project;
};
// ===== END CARD SNIPPET =====

localStorage.setItem("jwt_token", JWT_TOKEN);

// The socket and room the "Unsubscribe on Cleanup" snippet refers to.
const socket = io(WS_URL, { auth: { token: JWT_TOKEN } });
const room = `project:${PROJECT_ID}`;
const cleanupSocketConnects = record(socket, "connect");
const cleanupSocketUpdates = record(socket, "project.updated");
const markers = record(socket, "workflow.progress");

const returned: unknown[] = [];

function ProjectView({ projectId }: { projectId: string }) {
  const project = useProjectUpdates(projectId);
  useEffect(() => {
    returned.push(project);
    poke();
  }, [project]);
  return null;
}

function RoomWatcher() {
  // ===== BEGIN CARD SNIPPET "Unsubscribe on Cleanup" (verbatim) =====
  useEffect(() => {
    return () => {
      socket.emit("unsubscribe", { room });
    };
  }, []);
  // ===== END CARD SNIPPET =====
  return null;
}

function App({ projectId }: { projectId: string }) {
  return [createElement(ProjectView, { key: "view", projectId }), createElement(RoomWatcher, { key: "watcher" })];
}

(globalThis as any).IS_REACT_ACT_ENVIRONMENT = true;

run(async () => {
  await waitUntil(() => cleanupSocketConnects.length >= 1, "the cleanup socket to connect");
  const joined = await socket.timeout(10000).emitWithAck("subscribe", { room });
  if (joined.status !== "success") {
    throw new Error(`harness subscribe failed: ${JSON.stringify(joined)}`);
  }

  let renderer: ReactTestRenderer | undefined;
  act(() => {
    renderer = create(createElement(App, { projectId: PROJECT_ID }));
  });
  const subscribe = await waitUntil(
    () => emitted.find((e) => e.event === "subscribe" && e.socket !== socket),
    "the hook's socket to emit subscribe",
  );
  const hookSocket = subscribe.socket;
  // The hook does not wait for its subscribe's ack. The service's transport handles a connection's
  // events in order, so the first debug:rooms already sees the room; plain python-socketio
  // (WEBSOCKET_TRANSPORT=stock) may answer it first, so ask again, 50 round trips at most.
  let hookRooms: string[] = [];
  for (let attempt = 0; attempt < 50 && !hookRooms.includes(room); attempt++) {
    hookRooms = (await debugRooms(hookSocket)).rooms;
  }
  report({
    ready: {
      hook_subscribe: subscribe.args,
      hook_rooms: hookRooms,
      hook_socket_id: hookSocket.id,
      returned: returned.slice(),
    },
  });

  await waitUntil(() => returned.length >= 2, "useProjectUpdates to return the update");
  await waitUntil(() => cleanupSocketUpdates.length >= 1, "the update on the cleanup socket");
  report({ updated: { returned: returned.slice(), event_data: (cleanupSocketUpdates[0] as any).data } });

  act(() => {
    renderer!.unmount();
  });
  await waitUntil(
    () => emitted.find((e) => e.event === "unsubscribe" && e.socket === socket),
    "the cleanup effect to emit unsubscribe",
  );
  await waitUntil(() => !hookSocket.connected, "the hook's socket to disconnect");
  report({
    unmounted: {
      cleanup_unsubscribe: emitted.filter((e) => e.event === "unsubscribe").map((e) => e.args),
      cleanup_socket_rooms: (await debugRooms(socket)).rooms,
      hook_socket_connected: hookSocket.connected,
    },
  });

  await waitUntil(() => markers.length >= 1, "the marker event");
  report({ marker: { workflow_id: (markers[0] as any).data.workflow_id, updates: cleanupSocketUpdates.length } });
  socket.close();
});
