// Preloaded into NNI's node server (NODE_OPTIONS="--require <this file>") by nni-splitting:
// every TCP server the process opens listens on NNI_SPLITTING_BIND (default 127.0.0.1) instead of
// every interface.  NNI 3.0 has no option for this (its RestServer listens on 0.0.0.0).
'use strict';
const net = require('net');

const host = process.env.NNI_SPLITTING_BIND || '127.0.0.1';
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object') {
    // listen(options[, cb]): leave unix sockets and inherited handles alone
    if (first.path === undefined && first.handle === undefined && first._handle === undefined &&
        first.fd === undefined) {
      args[0] = Object.assign({}, first, { host });
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    if (typeof args[1] === 'string' || args[1] === undefined || args[1] === null) {
      args[1] = host;                       // listen(port[, host][, backlog][, cb])
    } else {
      args.splice(1, 0, host);              // listen(port, backlog | cb, ...)
    }
  } else if (first === undefined || typeof first === 'function') {
    args.splice(0, first === undefined ? 1 : 0, 0, host);  // listen([cb]): a random port
  }
  return listen.apply(this, args);
};
