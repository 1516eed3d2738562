// A Socket.IO 4 server: clients join a room with `join`, and `pub` sends an event to everyone
// else in the room, the usual way to build pub/sub on Socket.IO. WebSocket transport only (no
// long-poll upgrade dance), which is Socket.IO at its fastest. Usage: node socketio-server.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 8080);
const server = http.createServer();
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });

io.on('connection', (socket) => {
  socket.on('join', (room) => socket.join(room));
  socket.on('pub', (room, data) => socket.to(room).emit('m', data));
});
server.listen({ host: '127.0.0.1', port, backlog: 4096 });
