// Eddy from Node.js: a thin client of the gRPC API eddy.v1.Eddy on @grpc/grpc-js. One
// channel to a node, unary calls with a deadline each, retries of UNAVAILABLE /
// RESOURCE_EXHAUSTED with exponential backoff (or the delay the server names in
// retry-after-ms), and Ingest in batches of at most batchSize events. Messages are plain
// objects with the .proto's field names (user_id, timestamp_ms), int64 as decimal strings
// and enums by name. Types: index.d.ts.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Codes after which resending the same request is safe and may succeed: the node is
// starting, stopping or overloaded and did not do the work; event ids make a resent Ingest
// batch idempotent anyway (already recorded events come back as duplicates).
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

const EVENT_TYPES = {
  view: 'EVENT_TYPE_VIEW',
  click: 'EVENT_TYPE_CLICK',
  add_to_cart: 'EVENT_TYPE_ADD_TO_CART',
  remove_from_cart: 'EVENT_TYPE_REMOVE_FROM_CART',
  purchase: 'EVENT_TYPE_PURCHASE',
  search: 'EVENT_TYPE_SEARCH',
};

const DEFAULT_ENDPOINT = '127.0.0.1:7070';

// The protos: shipped in the package (proto/, copied by `npm pack`), else the repository's.
function protoDir() {
  const shipped = path.join(__dirname, 'proto');
  if (fs.existsSync(path.join(shipped, 'eddy', 'v1', 'eddy.proto'))) return shipped;
  return path.resolve(__dirname, '..', '..', 'proto');
}

let service = null;
function eddyService() {
  if (!service) {
    const def = protoLoader.loadSync('eddy/v1/eddy.proto', {
      includeDirs: [protoDir()],
      keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
    });
    service = grpc.loadPackageDefinition(def).eddy.v1.Eddy;
  }
  return service;
}

// A failed call: code (grpc.status number), codeName, details, retryAfterMs, attempts.
class EddyError extends Error {
  constructor(method, code, details, retryAfterMs, attempts) {
    super(`${method}: ${grpc.status[code]}: ${details}`);
    this.name = 'EddyError';
    this.method = method;
    this.code = code;
    this.codeName = grpc.status[code] || 'UNKNOWN';
    this.details = details;
    this.retryAfterMs = retryAfterMs;
    this.attempts = attempts;
  }
}

// An eddy.v1.Event: eventType is a name of EVENT_TYPES or an EventType name; the id
// defaults to a random UUID (resending the same object is idempotent) and the time to now.
function event(userId, eventType, productId = '', fields = {}) {
  const type = EVENT_TYPES[eventType] || eventType;
  if (!Object.values(EVENT_TYPES).includes(type)) {
    throw new TypeError(`unknown event type ${eventType}; one of ${Object.keys(EVENT_TYPES).join(', ')}`);
  }
  const { event_id: id, timestamp_ms: ts, ...rest } = fields;
  return {
    event_id: id || crypto.randomUUID(),
    user_id: userId,
    timestamp_ms: String(ts === undefined ? Date.now() : ts),
    event_type: type,
    product_id: productId,
    ...rest,
  };
}

function retryAfterMs(err) {
  const v = err.metadata ? err.metadata.get('retry-after-ms') : [];
  return v.length ? Number(v[0]) || 0 : 0;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Client {
  // endpoint: "host:port" (default $EDDY_ENDPOINT, else 127.0.0.1:7070); options: see
  // ClientOptions in index.d.ts.
  constructor(endpoint, options = {}) {
    const o = {
      timeoutMs: 5000, retries: 5, backoffMs: [100, 5000], batchSize: 500, ...options,
    };
    if (!(o.timeoutMs > 0) || !(o.retries >= 0) || !(o.batchSize >= 1)) {
      throw new RangeError('timeoutMs must be > 0, retries >= 0 and batchSize >= 1');
    }
    if (!o.tlsCert !== !o.tlsKey) throw new TypeError('tlsCert and tlsKey go together');
    this.endpoint = endpoint || process.env.EDDY_ENDPOINT || DEFAULT_ENDPOINT;
    this.options = o;
    let creds = grpc.credentials.createInsecure();
    const channelOptions = { ...(o.channelOptions || {}) };
    if (o.tlsCa) {
      const read = (p) => (p ? fs.readFileSync(p) : null);
      creds = grpc.credentials.createSsl(read(o.tlsCa), read(o.tlsKey), read(o.tlsCert));
      if (o.tlsServerName) channelOptions['grpc.ssl_target_name_override'] = o.tlsServerName;
    }
    this.stub = new (eddyService())(this.endpoint, creds, channelOptions);
    this.pending = [];
  }

  metadata() {
    const md = new grpc.Metadata();
    if (this.options.token) md.set('authorization', `Bearer ${this.options.token}`);
    return md;
  }

  callOnce(method, request, timeoutMs) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + (timeoutMs || this.options.timeoutMs));
      this.stub[method](request, this.metadata(), { deadline },
        (err, resp) => (err ? reject(err) : resolve(resp)));
    });
  }

  // One unary call with a fresh deadline per attempt, retried on RETRYABLE codes.
  async call(method, request, timeoutMs) {
    const [first, most] = this.options.backoffMs;
    let delay = first;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.callOnce(method, request, timeoutMs);
      } catch (err) {
        if (err.code === undefined) throw err;
        const after = retryAfterMs(err);
        if (!RETRYABLE.has(err.code) || attempt >= this.options.retries) {
          throw new EddyError(method, err.code, err.details || '', after, attempt + 1);
        }
        const wait = Math.max(Math.round(delay * (0.5 + Math.random() / 2)), after);
        if (this.options.onRetry) {
          this.options.onRetry({ method, code: err.code, codeName: grpc.status[err.code],
                                 delayMs: wait, attempt: attempt + 1, retryAfterMs: after });
        }
        await sleep(wait);
        delay = Math.min(delay * 2, most);
      }
    }
  }

  // Send events in batches of at most batchSize, in order; the result sums the answers.
  async ingest(events, { timeoutMs } = {}) {
    const result = { accepted: 0, duplicates: 0, late: 0, rejected: [], batches: 0 };
    for (let off = 0; off < events.length; off += this.options.batchSize) {
      const batch = events.slice(off, off + this.options.batchSize);
      const r = await this.call('Ingest', { events: batch }, timeoutMs);
      result.accepted += r.accepted;
      result.duplicates += r.duplicates;
      result.late += r.late;
      result.batches += 1;
      for (const rej of r.rejected) {
        result.rejected.push({ index: off + rej.index, event_id: (batch[rej.index] || {}).event_id || '',
                               field: rej.field, reason: rej.reason });
      }
    }
    return result;
  }

  // Buffer one event; when batchSize are buffered they are sent and the answer returned
  // (null otherwise). On failure the events stay buffered for the next try.
  async add(ev) {
    this.pending.push(ev);
    if (this.pending.length < this.options.batchSize) return null;
    return this.flush();
  }

  // Send the buffered events now.
  async flush({ timeoutMs } = {}) {
    const batch = this.pending;
    this.pending = [];
    try {
      return await this.ingest(batch, { timeoutMs });
    } catch (err) {
      this.pending = batch.concat(this.pending);
      throw err;
    }
  }

  recommend(userId, o = {}) {
    return this.call('Recommend', {
      user_id: userId, session_id: o.sessionId || '',
      context: { current_page: o.currentPage || '', current_product: o.currentProduct || '',
                 shopping_cart: o.cart || [] },
      max_recommendations: o.limit || 0, exclude: o.exclude || 'EXCLUSION_DEFAULT',
      allow_stale: !!o.allowStale,
    }, o.timeoutMs);
  }

  getUserProfile(userId, o = {}) {
    return this.call('GetUserProfile', { user_id: userId, allow_stale: !!o.allowStale }, o.timeoutMs);
  }

  topProducts(o = {}) {
    return this.call('TopProducts', {
      category: o.category || '', start_ms: String(o.startMs || 0), end_ms: String(o.endMs || 0),
      event_type: EVENT_TYPES[o.eventType] || o.eventType || 'EVENT_TYPE_UNSPECIFIED',
      limit: o.limit || 0, include_open: !!o.includeOpen, allow_stale: !!o.allowStale,
    }, o.timeoutMs);
  }

  eventCounts(o = {}) {
    return this.call('EventCounts', {
      user_id: o.userId || '', start_ms: String(o.startMs || 0), end_ms: String(o.endMs || 0),
      include_open: !!o.includeOpen, allow_stale: !!o.allowStale,
    }, o.timeoutMs);
  }

  deleteUser(userId, o = {}) {
    return this.call('DeleteUser', { user_id: userId }, o.timeoutMs);
  }

  // Send the buffered events, then close the channel.
  async close() {
    try {
      if (this.pending.length) await this.flush();
    } finally {
      this.stub.close();
    }
  }
}

module.exports = { Client, EddyError, event, EVENT_TYPES, RETRYABLE, status: grpc.status };
