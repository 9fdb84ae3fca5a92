// Eddy console: polls the process's JSON endpoints (/api/overview, /api/metrics, /api/user,
// /api/top) and draws them. No library: the charts are a few lines of <canvas>.
'use strict';

const $ = (sel) => document.querySelector(sel);
const POINTS = 120;          // points kept per chart (two minutes at one poll a second)
const METRICS_MS = 1000;
const OVERVIEW_MS = 2000;

// ---- helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
}

// 'head': column names (a leading '#' right-aligns a numeric column); 'rows': arrays of cells.
function fillTable(t, head, rows, empty) {
  const num = head.map((h) => h.startsWith('#'));
  const th = head.map((h, i) => el('th', num[i] ? {class: 'num'} : {}, h.replace(/^#/, '')));
  const body = rows.length
    ? rows.map((r) => el('tr', {}, ...r.map((c, i) => el('td', num[i] ? {class: 'num'} : {}, c))))
    : [el('tr', {}, el('td', {colspan: head.length, class: 'muted'}, empty || 'none'))];
  t.replaceChildren(el('thead', {}, el('tr', {}, ...th)), el('tbody', {}, ...body));
}

function ago(ms) {
  if (ms === undefined || ms === null || ms < 0) return '-';
  const s = ms / 1000;
  if (s < 90) return s.toFixed(0) + ' s';
  if (s < 5400) return (s / 60).toFixed(0) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return '-';
  return Number(v).toLocaleString('en-US', {maximumFractionDigits: digits === undefined ? 2 : digits});
}

function when(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '-'; }

function showError(msg) {
  const e = $('#error');
  e.textContent = msg || '';
  e.hidden = !msg;
}

// ---- the API, with the token kept for the session ------------------------------------------

class NeedToken extends Error {}
let retry = null;  // what to run again once a token is given

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem('eddy-token');
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch('/api/' + path, {headers, cache: 'no-store'});
  let body;
  try { body = await r.json(); } catch (e) { body = {error: r.status + ' ' + r.statusText}; }
  if (r.status === 401 || r.status === 403) {
    $('#token-why').textContent = body.error || '';
    $('#token-box').hidden = false;
    throw new NeedToken(body.error);
  }
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

$('#token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem('eddy-token', $('#token').value.trim());
  $('#token').value = '';
  $('#token-box').hidden = true;
  if (retry) retry();
});

// ---- charts --------------------------------------------------------------------------------

// A line chart of up to two series ({name, color, points: [number|null]}), newest right.
function drawChart(canvas, series, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 44, bottom = h - 16, top = 8, right = w - 6;
  let max = 0, drawn = 0;
  for (const s of series) for (const v of s.points) if (v !== null && v > max) max = v;
  max = max > 0 ? niceCeil(max) : 1;
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = '#667085';
  g.strokeStyle = '#e4e7ec';
  g.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = top + (bottom - top) * i / 2;
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    g.fillText(fmt(max * (2 - i) / 2, 2) + unit, 2, y + 4);
  }
  g.fillText('-' + POINTS + ' s', left, h - 3);
  g.fillText('now', right - 22, h - 3);
  const x = (i) => left + (right - left) * i / (POINTS - 1);
  const y = (v) => bottom - (bottom - top) * v / max;
  for (const s of series) {
    const off = POINTS - s.points.length;
    g.strokeStyle = s.color;
    g.lineWidth = 2;
    g.beginPath();
    let pen = false;
    s.points.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      if (pen) g.lineTo(x(off + i), y(v)); else g.moveTo(x(off + i), y(v));
      pen = true;
      drawn++;
    });
    g.stroke();
    // a point between gaps draws no segment: mark each such one with a dot
    g.fillStyle = s.color;
    s.points.forEach((v, i) => {
      if (v === null || (i > 0 && s.points[i - 1] !== null) || (i + 1 < s.points.length && s.points[i + 1] !== null)) return;
      g.beginPath(); g.arc(x(off + i), y(v), 2.5, 0, 2 * Math.PI); g.fill();
    });
  }
  canvas.dataset.points = drawn;  // read by the browser test
  canvas.dataset.max = series.reduce((m, s) => Math.max(m, ...s.points.filter((v) => v !== null), 0), 0);
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > POINTS) arr.shift();
}

// ---- metrics: rates and quantiles from the difference of two polls -------------------------

function series(fams, name, match) {
  const f = fams[name];
  if (!f) return null;
  return f.series.find((s) => Object.entries(match || {}).every(([k, v]) => s.labels[k] === v)) || null;
}

function total(fams, name) {
  const f = fams[name];
  return f ? f.series.reduce((a, s) => a + (s.value || 0), 0) : null;
}

// The q-quantile of the observations between two snapshots of a histogram series (linear
// inside a bucket, as Prometheus's histogram_quantile), null if there were none.
function quantile(q, bounds, now, prev) {
  if (!now || !prev) return null;
  const d = now.buckets.map((c, i) => c - prev.buckets[i]);
  const n = d[d.length - 1];
  if (n <= 0) return null;
  const rank = q * n;
  let i = d.findIndex((c) => c >= rank);
  if (i >= bounds.length) return bounds[bounds.length - 1];
  const lo = i === 0 ? 0 : bounds[i - 1], below = i === 0 ? 0 : d[i - 1];
  return lo + (bounds[i] - lo) * (rank - below) / Math.max(d[i] - below, 1);
}

const charts = {
  node: [
    {title: 'Events/s (accepted)', unit: '', lines: [{name: 'events/s', color: '#2f6fed'}],
     value: (m, p, dt) => [Math.max(0, total(m, 'eddy_events_ingested_total') - total(p, 'eddy_events_ingested_total')) / dt]},
    {title: 'Acknowledgement latency, Ingest (ms) p50 / p99', unit: '',
     lines: [{name: 'p50', color: '#12b76a'}, {name: 'p99', color: '#f79009'}],
     value: (m, p) => latency(m, p, 'grpc_server_handling_seconds', {grpc_method: 'Ingest'})},
    {title: 'Recommend latency (ms) p50 / p99', unit: '',
     lines: [{name: 'p50', color: '#12b76a'}, {name: 'p99', color: '#f79009'}],
     value: (m, p) => latency(m, p, 'eddy_serving_seconds', {method: 'Recommend'})},
  ],
  coordinator: [
    {title: 'Cluster events/s (sum of the nodes)', unit: '', lines: [{name: 'events/s', color: '#2f6fed'}],
     value: () => [clusterRate()]},
    {title: 'Offline partitions', unit: '', lines: [{name: 'offline', color: '#d92d20'}],
     value: (m) => [total(m, 'eddy_offline_partitions')]},
    {title: 'Resident memory (MiB)', unit: '', lines: [{name: 'rss', color: '#7a5af8'}],
     value: (m) => [total(m, 'process_resident_memory_bytes') / 1048576]},
  ],
};

function latency(m, p, name, match) {
  const f = m[name];
  if (!f) return [null, null];
  const now = series(m, name, match), prev = series(p, name, match);
  const ms = (v) => (v === null ? null : v * 1000);
  return [ms(quantile(0.5, f.bounds, now, prev)), ms(quantile(0.99, f.bounds, now, prev))];
}

const state = {kind: null, overview: null, prev: null, points: [[[]], [[], []], [[], []]]};

function clusterRate() {
  const st = state.overview && state.overview.status;
  return st ? st.nodes.reduce((a, n) => a + (n.events_per_second || 0), 0) : null;
}

function setupCharts(kind) {
  charts[kind].forEach((c, i) => {
    $('#cap-' + i).textContent = c.title;
    state.points[i] = c.lines.map(() => []);
  });
}

async function pollMetrics() {
  if (!state.kind) return;
  const m = await api('metrics');
  const prev = state.prev;
  state.prev = m;
  if (!prev) return;
  const dt = Math.max((m.time_ms - prev.time_ms) / 1000, 0.001);
  charts[state.kind].forEach((c, i) => {
    const vals = c.value(m.families, prev.families, dt);
    vals.forEach((v, k) => push(state.points[i][k], v === undefined ? null : v));
    drawChart($('#chart-' + i), c.lines.map((l, k) => ({...l, points: state.points[i][k]})), c.unit);
  });
  const tile = $('#tile-rate');
  if (tile) tile.textContent = fmt(state.points[0][0][state.points[0][0].length - 1], 1);
  const lag = total(m.families, 'eddy_watermark_lag_seconds');
  if ($('#tile-lag')) $('#tile-lag').textContent = lag === null ? '-' : fmt(lag, 1) + ' s';
  const q = total(m.families, 'eddy_queue_depth');
  if ($('#tile-queue')) $('#tile-queue').textContent = fmt(q, 0);
}

// ---- overview ------------------------------------------------------------------------------

function tile(label, value, id) {
  return el('div', {class: 'tile'}, el('b', id ? {id} : {}, value), el('span', {}, label));
}

function renderOverview(o) {
  const p = o.process, st = o.status;
  if (state.kind !== p.kind) { state.kind = p.kind; setupCharts(p.kind); }
  const id = p.id || (st && st.answered_by) || '';
  $('#who').textContent = `${p.kind} ${id} · ${p.mode} · ${p.version}`;
  document.title = `Eddy ${p.kind} ${id}`;
  for (const page of ['user', 'top']) $('#nav-' + page).hidden = p.kind !== 'node';
  const tiles = [tile(p.kind === 'node' ? 'node (' + p.roles + ')' : 'coordinator', id),
                 tile('up', ago(p.now_ms - p.started_ms))];
  if (!st) {
    $('#tiles').replaceChildren(...tiles, tile('cluster', 'not joined yet'));
    return;
  }
  tiles.push(tile('cluster', st.cluster || '-'), tile('partitions', st.config_partitions),
             tile('nodes', st.nodes.length), tile('events/s', '-', 'tile-rate'));
  if (p.kind === 'node') tiles.push(tile('watermark lag', '-', 'tile-lag'), tile('writer queue', '-', 'tile-queue'));
  if (st.leader_id) tiles.push(tile('leader', st.leader_id));
  if (st.replication_factor) tiles.push(tile('replication', `${st.replication_factor} (min in-sync ${st.min_insync})`));
  $('#tiles').replaceChildren(...tiles);

  fillTable($('#nodes'), ['node', 'roles', 'gRPC', 'console', 'zone', '#owned', '#followed', '#events/s', 'started'],
    st.nodes.map((n) => [n.id, n.roles.join(','), n.grpc_addr,
      n.metrics_addr ? el('a', {href: 'http://' + n.metrics_addr + '/'}, n.metrics_addr) : '-',
      n.zone || '-', n.partitions_owned, n.partitions_followed || 0,
      fmt(n.events_per_second, 1), when(n.started_ms) + (n.draining ? ' (draining)' : '')]),
    'no nodes registered');
  fillTable($('#moves'), ['#partition', 'from', 'to', 'phase', 'age'],
    (st.moves || []).map((m) => [m.partition, m.from, m.to, m.phase, ago(m.age_ms)]),
    'no moves in progress');
  $('#partitions-title').textContent = `Partitions (${st.partitions.length})`;
  fillTable($('#partitions'), ['#partition', 'owner', 'replicas', 'in sync', '#epoch', 'checkpoint age'],
    st.partitions.map((x) => [x.partition, x.owner || 'unassigned', (x.replicas || []).join(', ') || '-',
      (x.in_sync || []).join(', ') || '-', x.epoch, ago(x.checkpoint_age_ms)]));
}

async function pollOverview() {
  renderOverview(state.overview = await api('overview'));
}

// ---- user ----------------------------------------------------------------------------------

function affinities(list) {
  return list.map((a) => [a.name, fmt(a.score, 3)]);
}

function items(list) {
  return list.map((r) => [r.product_id, r.category || '-', when(r.timestamp_ms)]);
}

function section(title, head, rows, empty) {
  const t = el('table');
  fillTable(t, head, rows, empty);
  return el('div', {}, el('h3', {}, title), t);
}

async function showUser(id) {
  $('#user-id').value = id;
  retry = () => showUser(id);
  const u = await api('user?id=' + encodeURIComponent(id) + '&n=10');
  const out = [];
  const recs = u.recommendations;
  const head = el('h2', {}, 'User ' + u.user_id + ' ');
  if (recs.cold_start) head.append(el('span', {class: 'badge'}, 'cold start: popular products'));
  out.push(head);
  const recTable = el('table', {id: 'recs'});
  fillTable(recTable, ['#rank', 'product', 'category', '#score', 'why'],
    recs.items.map((r, i) => [i + 1, r.product_id, r.category || '-', fmt(r.score, 3), r.reason]),
    'nothing to recommend');
  out.push(el('h3', {}, 'Recommendations'), recTable);
  const p = u.profile;
  if (!p) {
    out.push(el('p', {class: 'muted'}, 'No state for this user yet.'));
  } else {
    const pr = p.price_range || {};
    out.push(el('p', {id: 'profile-summary'}, `${p.event_count} events · last ${when(p.last_update_ms)} · prices `
      + `${fmt(pr.min)} to ${fmt(pr.max)} (mean ${fmt(pr.mean)})`));
    out.push(el('div', {class: 'cols'},
      section('Categories', ['category', '#affinity'], affinities(p.category_affinities)),
      section('Brands', ['brand', '#affinity'], affinities(p.brand_affinities)),
      section('Cart', ['product', 'category', 'added'], items(p.cart), 'empty')));
    out.push(el('div', {class: 'cols'},
      section('Recent views and clicks', ['product', 'category', 'when'], items(p.recent_views)),
      section('Recent purchases', ['product', 'category', 'when'], items(p.recent_purchases)),
      section('Recent searches', ['query', 'when'], p.recent_searches.map((s) => [s.query, when(s.timestamp_ms)]))));
  }
  $('#user-out').replaceChildren(...out);
}

$('#user-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  location.hash = '#user/' + encodeURIComponent($('#user-id').value.trim());
});

// ---- top products --------------------------------------------------------------------------

async function showTop() {
  retry = showTop;
  const q = new URLSearchParams({window: $('#top-window').value, type: $('#top-type').value,
                                 category: $('#top-category').value.trim(), limit: '20'});
  const t = await api('top?' + q);
  $('#top-note').textContent = 'Windows closed up to ' + when(t.watermark_ms) + ' (open windows included).';
  fillTable($('#top-table'), ['#rank', 'product', 'category', '#views', '#clicks', '#carts', '#purchases', '#total'],
    t.products.map((p, i) => [i + 1, p.product_id, p.category || '-', p.counts.view, p.counts.click,
      p.counts.add_to_cart, p.counts.purchase, p.counts.total]),
    'no events in this window');
}

$('#top-form').addEventListener('submit', (ev) => { ev.preventDefault(); run(showTop); });

// ---- pages ---------------------------------------------------------------------------------

async function run(fn) {
  try {
    await fn();
    showError('');
  } catch (e) {
    if (!(e instanceof NeedToken)) showError(e.message);
  }
}

function route() {
  const [page, arg] = (location.hash.replace(/^#/, '') || 'overview').split('/');
  const name = ['overview', 'user', 'top'].includes(page) ? page : 'overview';
  for (const p of ['overview', 'user', 'top']) {
    $('#page-' + p).hidden = p !== name;
    $('#nav-' + p).classList.toggle('on', p === name);
  }
  if (name === 'user' && arg) run(() => showUser(decodeURIComponent(arg)));
  if (name === 'top') run(showTop);
}

window.addEventListener('hashchange', route);
route();
run(pollOverview).then(() => run(pollMetrics));
setInterval(() => run(pollOverview), OVERVIEW_MS);
setInterval(() => run(pollMetrics), METRICS_MS);
