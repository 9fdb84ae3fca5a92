// Drives the installed npm package (require('eddy-client')) through one scenario and prints
// what happened as one JSON object; test_client_packages.py runs it from a clean directory
// and checks the same answers as for the Python package (driver.py).
//   node driver.js '{"scenario": "batch", "endpoint": "...", "user": "..."}'
'use strict';

const { Client, EddyError, event } = require('eddy-client');

const summary = (r) => (r === null ? null : {
  accepted: r.accepted, duplicates: r.duplicates, late: r.late, batches: r.batches,
  rejected: r.rejected.map((x) => [x.index, x.event_id, x.field]),
});
const error = (e) => {
  if (!(e instanceof EddyError)) throw e;
  return { code: e.codeName, attempts: e.attempts };
};
const client = (a, o = {}) => new Client(a.endpoint, {
  token: a.token, tlsCa: a.tls_ca, tlsCert: a.tls_cert, tlsKey: a.tls_key, ...o,
});

async function batch(a) {
  const u = a.user;
  const evs = [];
  for (let i = 0; i < 7; i++) evs.push(event(u, 'view', `p-${i}`, { event_id: `${u}-b${i}`, category: 'books' }));
  evs[5] = event(u, 'view', '', { event_id: `${u}-b5`, category: 'books' }); // invalid: no product_id
  const c = client(a, { batchSize: 3 });
  const out = { ingest: summary(await c.ingest(evs)), adds: [] };
  for (let i = 0; i < 4; i++) {
    out.adds.push(summary(await c.add(event(u, 'purchase', 'p-1', { event_id: `${u}-a${i}` }))));
  }
  out.flush = summary(await c.flush());
  await c.add(event(u, 'add_to_cart', 'p-9', { event_id: `${u}-closed` })); // sent by close()
  await c.close();
  return out;
}

async function reads(a) {
  const u = a.user;
  const c = client(a);
  const out = {};
  const r = await c.recommend(u, { limit: 3 });
  out.recommend = { ids: r.items.map((i) => i.product_id), cold_start: r.cold_start };
  const p = (await c.getUserProfile(u)).profile;
  out.profile = { events: Number(p.event_count), views: p.recent_views.map((v) => v.product_id),
                  cart: p.cart.map((v) => v.product_id) };
  const t = await c.topProducts({ category: 'reads', includeOpen: true, limit: 3, eventType: 'purchase' });
  out.top = t.products.map((s) => [s.product_id, Number(s.counts.purchase)]);
  const n = await c.eventCounts({ userId: u, includeOpen: true });
  out.counts = n.windows.reduce((s, w) => s + Number(w.counts.total), 0);
  for (const [what, fn] of [['missing', () => c.getUserProfile('u-nobody')],
                            ['deadline', () => c.recommend(u, { timeoutMs: 0.001 })]]) {
    try {
      await fn();
      out[what] = null;
    } catch (e) {
      out[what] = error(e);
    }
  }
  await c.close();
  return out;
}

async function retry(a) {
  const seen = [];
  const c = client(a, {
    retries: a.retries === undefined ? 2 : a.retries, backoffMs: [20, 100],
    onRetry: (r) => seen.push({ code: r.codeName, delay_ms: r.delayMs, attempt: r.attempt,
                                retry_after_ms: r.retryAfterMs }),
  });
  const out = { retries: seen };
  try {
    for (let i = 0; i < (a.calls || 1); i++) await c.recommend(a.user || 'u-1');
    out.error = null;
  } catch (e) {
    out.error = error(e);
  }
  await c.close();
  return out;
}

async function secure(a) {
  const u = a.user;
  const c = client(a);
  const r = await c.ingest([event(u, 'view', 'p-tls', { event_id: `${u}-tls` })]);
  const p = (await c.getUserProfile(u)).profile;
  await c.close();
  return { ingest: summary(r), events: Number(p.event_count) };
}

async function main() {
  const a = JSON.parse(process.argv[2]);
  const out = await { batch, reads, retry, secure }[a.scenario](a);
  out.module = require.resolve('eddy-client');
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
