#!/usr/bin/env node
// Eddy from Node.js: send a few events for one user, then ask for recommendations and the
// user's profile over the public gRPC API (service eddy.v1.Eddy).
//
//   npm ci                       # once, installs @grpc/grpc-js and @grpc/proto-loader
//   node eddy_example.js [--endpoint HOST:PORT] [--user ID]
//                        [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token TOKEN]
//
// The service definition is loaded at run time from ../../proto/eddy/v1/eddy.proto with
// @grpc/proto-loader: no code generation step.
//
// Exit codes: 0 success, 1 an RPC failed (after retries for Ingest), 2 bad usage.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');

// Codes after which resending the same Ingest batch is safe and may succeed: the node is
// starting, stopping or overloaded, and did not record the batch; event ids make a resent
// batch idempotent anyway (already recorded events come back as duplicates).
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

function usage(code) {
  const out = code === 0 ? console.log : console.error;
  out(`usage: node eddy_example.js [--endpoint HOST:PORT] [--user ID] [--timeout SECONDS]
                          [--retries N] [--proto-dir DIR]
                          [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token TOKEN]

  --endpoint   node address (env EDDY_ENDPOINT; default 127.0.0.1:7070)
  --user       user id (default u-example-node)
  --timeout    deadline of each call in seconds (default 5)
  --retries    Ingest retries on UNAVAILABLE / RESOURCE_EXHAUSTED (default 5)
  --proto-dir  directory holding eddy/v1/eddy.proto (default ../../proto)
  --tls-ca     PEM CA of the node's certificate: TLS on (env EDDY_TLS_CA)
  --tls-cert   PEM client certificate, for a node that requests or requires one (env EDDY_TLS_CERT)
  --tls-key    PEM private key of --tls-cert (env EDDY_TLS_KEY)
  --token      bearer token, for a node started with --token-file (env EDDY_TOKEN)`);
  process.exit(code);
}

function parseArgs(argv) {
  const a = {
    endpoint: process.env.EDDY_ENDPOINT || '127.0.0.1:7070',
    user: 'u-example-node',
    timeout: 5,
    retries: 5,
    protoDir: PROTO_DIR,
    tlsCa: process.env.EDDY_TLS_CA || '',
    tlsCert: process.env.EDDY_TLS_CERT || '',
    tlsKey: process.env.EDDY_TLS_KEY || '',
    token: process.env.EDDY_TOKEN || '',
  };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s);
    if (flag === '-h' || flag === '--help') usage(0);
    const known = { '--endpoint': 'endpoint', '--user': 'user', '--timeout': 'timeout',
                    '--retries': 'retries', '--proto-dir': 'protoDir', '--tls-ca': 'tlsCa',
                    '--tls-cert': 'tlsCert', '--tls-key': 'tlsKey', '--token': 'token' };
    if (!(flag in known)) {
      console.error(`eddy_example: unknown argument ${argv[i]}`);
      usage(2);
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) {
        console.error(`eddy_example: ${flag} needs a value`);
        usage(2);
      }
      value = argv[++i];
    }
    a[known[flag]] = value;
  }
  a.timeout = Number(a.timeout);
  a.retries = Number(a.retries);
  if (!(a.timeout > 0) || !Number.isInteger(a.retries) || a.retries < 0) {
    console.error('eddy_example: --timeout must be > 0 and --retries an integer >= 0');
    usage(2);
  }
  if (!a.tlsCert !== !a.tlsKey) {
    console.error('eddy_example: --tls-cert and --tls-key go together');
    usage(2);
  }
  return a;
}

// TLS credentials when --tls-ca is given (with the client certificate if any), else
// plaintext.
function credentials(a) {
  if (!a.tlsCa) return grpc.credentials.createInsecure();
  const read = (p) => (p ? fs.readFileSync(p) : null);
  return grpc.credentials.createSsl(read(a.tlsCa), read(a.tlsKey), read(a.tlsCert));
}

function loadEddy(protoDir) {
  const def = protoLoader.loadSync('eddy/v1/eddy.proto', {
    includeDirs: [protoDir],
    keepCase: true,   // field names as in the .proto: user_id, timestamp_ms, ...
    longs: String,    // int64/uint64 (timestamp_ms, event_count) as decimal strings
    enums: String,    // enums by name: 'EVENT_TYPE_VIEW'
    defaults: true,   // absent fields read as their default (0, '', [], false)
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).eddy.v1;
}

// The metadata of every call: "authorization: Bearer <token>" with --token.
function callMetadata(a) {
  const md = new grpc.Metadata();
  if (a.token) md.set('authorization', `Bearer ${a.token}`);
  return md;
}

// Promise wrapper of a unary call with its own deadline.
function call(client, method, request, timeoutS, md) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutS * 1000);
    client[method](request, md, { deadline }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// The delay a tenant quota names (trailing metadata retry-after-ms), or 0.
function retryAfterMs(err) {
  const v = err.metadata ? err.metadata.get('retry-after-ms') : [];
  return v.length ? Number(v[0]) || 0 : 0;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// call() with a fresh deadline per attempt; retries RETRYABLE codes after the delay the
// server names (a tenant over its quota), else with exponential backoff (100 ms doubling
// up to 5 s, with jitter).
async function callWithRetry(client, method, request, timeoutS, retries, md) {
  let delay = 100;
  for (let attempt = 0; ; attempt++) {
    try {
      return await call(client, method, request, timeoutS, md);
    } catch (err) {
      if (!RETRYABLE.has(err.code) || attempt >= retries) throw err;
      const wait = Math.max(Math.round(delay * (0.5 + Math.random() / 2)), retryAfterMs(err));
      console.error(`${method}: ${grpc.status[err.code]} (${err.details}); retrying in ` +
                    `${wait} ms (${attempt + 1}/${retries})`);
      await sleep(wait);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

// A short shopping session: two views, a search, add to cart, a purchase, and one invalid
// event (a view without product_id) to show how rejections come back.
function sampleEvents(user, nowMs) {
  const run = nowMs.toString(16); // event ids unique per run; a retry reuses them
  const session = `s-${run}`;
  const base = nowMs - 10000;     // event time: a few seconds ago (not in the future)
  const ev = (i, eventType, fields) => ({
    event_id: `${user}-${run}-${i}`, user_id: user, session_id: session,
    timestamp_ms: String(base + i * 1000), event_type: eventType, ...fields,
  });
  const espresso = { product_id: 'p-espresso', category: 'kitchen', brand: 'chefco', price: 129.0 };
  return [
    ev(0, 'EVENT_TYPE_VIEW', { product_id: 'p-kettle', category: 'kitchen', brand: 'chefco',
                               price: 39.0, metadata: { ref: 'home' } }),
    ev(1, 'EVENT_TYPE_VIEW', { product_id: 'p-toaster', category: 'kitchen', brand: 'acme',
                               price: 25.5 }),
    ev(2, 'EVENT_TYPE_SEARCH', { search_query: 'espresso machine', category: 'kitchen' }),
    ev(3, 'EVENT_TYPE_VIEW', espresso),
    ev(4, 'EVENT_TYPE_ADD_TO_CART', espresso),
    ev(5, 'EVENT_TYPE_PURCHASE', espresso),
    ev(6, 'EVENT_TYPE_ADD_TO_CART', { product_id: 'p-grinder', category: 'kitchen',
                                      brand: 'chefco', price: 45.0 }),
    ev(7, 'EVENT_TYPE_VIEW', { category: 'kitchen' }), // invalid: no product_id
  ];
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const eddy = loadEddy(args.protoDir);
  const client = new eddy.Eddy(args.endpoint, credentials(args));
  const md = callMetadata(args);
  try {
    // 1. Ingest: one batch; the answer counts what was recorded and lists each invalid
    //    event with its index, field and reason.
    const events = sampleEvents(args.user, Date.now());
    const r = await callWithRetry(client, 'Ingest', { events }, args.timeout, args.retries, md);
    console.log(`ingest: accepted=${r.accepted} duplicates=${r.duplicates} late=${r.late} ` +
                `rejected=${r.rejected.length}`);
    for (const rej of r.rejected) {
      console.log(`  rejected #${rej.index} (${events[rej.index].event_id}): ` +
                  `field=${rej.field} reason=${rej.reason}`);
    }

    // 2. Recommend, with the page the user is on: neighbours of the current product and of
    //    the cart rank high; cart, purchased and current items never appear. Viewed items
    //    are left out by default; on an empty node they are the only candidates, so this
    //    request lets them back (EXCLUSION_PURCHASED).
    const rec = await call(client, 'Recommend', {
      user_id: args.user,
      context: { current_page: 'product', current_product: 'p-kettle', shopping_cart: ['p-grinder'] },
      max_recommendations: 5,
      exclude: 'EXCLUSION_PURCHASED',
    }, args.timeout, md);
    console.log(`recommendations for ${args.user}: ${rec.items.length} (cold_start=${rec.cold_start})`);
    rec.items.forEach((it, i) => {
      console.log(`  ${i + 1}. ${it.product_id} score=${it.score.toFixed(4)} ` +
                  `category=${it.category || '-'} reason=${it.reason}`);
    });

    // 3. The user's profile (NOT_FOUND if the node has no state for the user).
    const { profile: p } = await call(client, 'GetUserProfile', { user_id: args.user }, args.timeout, md);
    const aff = (list) => list.map((a) => `${a.name}=${a.score.toFixed(3)}`).join(', ');
    const ids = (list) => list.map((v) => v.product_id).join(', ');
    console.log(`profile of ${p.user_id}: events=${p.event_count} last_update_ms=${p.last_update_ms}`);
    console.log(`  categories: ${aff(p.category_affinities)}`);
    console.log(`  brands: ${aff(p.brand_affinities)}`);
    const pr = p.price_range || { min: 0, max: 0, mean: 0 };
    console.log(`  price: min=${pr.min} max=${pr.max} mean=${pr.mean.toFixed(2)}`);
    console.log(`  recent views: ${ids(p.recent_views)}`);
    console.log(`  recent searches: ${p.recent_searches.map((s) => `'${s.query}'`).join(', ')}`);
    console.log(`  purchases: ${ids(p.recent_purchases)}`);
    console.log(`  cart: ${ids(p.cart)}`);
    return 0;
  } catch (err) {
    if (err.code === undefined) throw err; // not a gRPC status: a bug, show the stack
    console.error(`eddy_example: ${grpc.status[err.code]}: ${err.details} (endpoint ${args.endpoint})`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(err);
  process.exitCode = 1;
});
