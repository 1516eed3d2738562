// A plain `ws` broadcast server, as a Node.js team would write one: rooms by URL path, every
// message a client sends goes to every other client of its room. Usage: node ws-server.js PORT
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 8080);
const rooms = new Map();
// No per-message deflate (its default is off for servers too); a large backlog for the storm.
const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 4096, perMessageDeflate: false });

wss.on('connection', (socket, request) => {
  const room = request.url || '/';
  let members = rooms.get(room);
  if (!members) {
    members = new Set();
    rooms.set(room, members);
  }
  members.add(socket);
  socket.on('message', (data, isBinary) => {
    for (const other of members) {
      if (other !== socket && other.readyState === WebSocket.OPEN) {
        other.send(data, { binary: isBinary });
      }
    }
  });
  socket.on('close', () => {
    members.delete(socket);
    if (members.size === 0) rooms.delete(room);
  });
});
