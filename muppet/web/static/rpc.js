// The console's connection to the daemon: JSON-RPC 2.0 over the websocket API
// (docs/api.md), the same API the `muppet` command uses.
//
// - call(method, params) -> Promise of the result, rejected with an RpcError;
// - one subscription to the event log (events.subscribe) for every view, resumed
//   after a lost connection from the last event number seen, so no event is lost
//   or seen twice (docs/api.md, "Subscribing to events");
// - a browser's WebSocket cannot send an Authorization header, so a token is
//   presented on the connection with session.authenticate, again after each
//   reconnect.

export class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

const UNAUTHORIZED = -32004;

export class Api {
  constructor(url) {
    this.url = url;
    this.token = null;
    this.role = null;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Set(); // (events) => void
    this.stateListeners = new Set(); // (state, detail) => void
    this.position = null; // the last event number seen
    this.subscription = null;
    this.opened = null; // a Promise of the open connection
    this.delay = 500;
    this.closedByUs = false;
  }

  onEvents(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
  }

  setState(state, detail) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state, detail);
  }

  // Connect (or wait for the connection being made); resolves once the token,
  // if any, is presented and the event subscription runs.
  connect() {
    if (!this.opened) this.opened = this.open();
    return this.opened;
  }

  open() {
    return new Promise((resolve, reject) => {
      this.setState("connecting");
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let ready = false;
      ws.onopen = async () => {
        try {
          if (this.token) {
            try {
              const who = await this.send("session.authenticate", { token: this.token });
              this.role = who.role;
            } catch (error) {
              if (!isUnauthorized(error)) throw error;
              this.token = null; // no longer in the tokens file: ask again
              this.role = null;
            }
          }
          // calls may go as soon as the token is presented; the
          // subscription's reply need not be waited for
          ready = true;
          this.delay = 500;
          resolve();
          await this.subscribe();
          this.setState("live");
        } catch (error) {
          reject(error);
          ws.close();
        }
      };
      ws.onmessage = (message) => this.receive(message.data);
      ws.onclose = (close) => {
        for (const { reject: fail } of this.pending.values()) fail(new RpcError(0, "connection lost"));
        this.pending.clear();
        this.subscription = null;
        if (!ready) reject(new RpcError(0, `cannot reach the MUPPET daemon at ${this.url}`));
        if (this.closedByUs) return;
        this.setState("reconnecting", close.reason);
        this.opened = null;
        setTimeout(() => {
          this.connect().then(() => this.setState("live", "resumed"), () => {});
        }, this.delay);
        this.delay = Math.min(this.delay * 2, 10000);
      };
    });
  }

  // The one subscription every view listens to; without the role to read
  // (a tokens file, no token yet) it waits for authenticate().
  async subscribe() {
    try {
      const sub = await this.send("events.subscribe", { since: this.position });
      this.subscription = sub.subscription;
      if (this.position === null) this.position = sub.position;
    } catch (error) {
      if (!isUnauthorized(error)) throw error;
    }
  }

  // A request, and the Promise of its reply (JSON-RPC 2.0: matched by id).
  request(method, params) {
    const id = this.nextId++;
    const promise = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    return [{ jsonrpc: "2.0", method, params: params || {}, id }, promise];
  }

  send(method, params) {
    const [request, promise] = this.request(method, params);
    this.ws.send(JSON.stringify(request));
    return promise;
  }

  async call(method, params) {
    await this.connect();
    return this.send(method, params);
  }

  // Several calls in one message (a JSON-RPC batch, docs/api.md "Requests,
  // replies, batches"): one round trip, and the daemon runs them side by side.
  async batch(calls) {
    await this.connect();
    const made = calls.map(([method, params]) => this.request(method, params));
    this.ws.send(JSON.stringify(made.map(([request]) => request)));
    return Promise.all(made.map(([, promise]) => promise));
  }

  receive(text) {
    const message = JSON.parse(text);
    for (const reply of Array.isArray(message) ? message : [message]) {
      if (reply.method === "events") {
        const events = reply.params.events.filter((e) => this.position === null || e.id > this.position);
        if (!events.length) continue;
        this.position = events[events.length - 1].id;
        for (const fn of this.listeners) fn(events);
        continue;
      }
      const waiting = this.pending.get(reply.id);
      if (!waiting) continue;
      this.pending.delete(reply.id);
      if (reply.error) waiting.reject(new RpcError(reply.error.code, reply.error.message, reply.error.data));
      else waiting.resolve(reply.result);
    }
  }

  // Present a token's secret; its role decides which actions the page offers.
  async authenticate(token) {
    await this.connect();
    const who = await this.send("session.authenticate", { token });
    this.token = token;
    this.role = who.role;
    if (this.subscription === null) await this.subscribe();
    return who;
  }
}

export function isUnauthorized(error) {
  return error instanceof RpcError && error.code === UNAUTHORIZED;
}
