// Kiln cluster dashboard. Plain JS, no build step: polls the admin API (docs/cluster.md) once a
// second and renders the ring, the nodes, actor placement, invocations and object state.
'use strict';

const POLL_MS = 1000;
// Drain status counts unfinished invocations on every node: asked less often.
const DEPLOYMENTS_POLL_MS = 5000;
const FETCH_TIMEOUT_MS = 5000;
const MAX_OBJECT_ROWS = 500;
const PALETTE = ['#38bdf8', '#a78bfa', '#34d399', '#fbbf24', '#f472b6', '#2dd4bf',
  '#fb923c', '#a3e635', '#818cf8', '#e879f9', '#facc15', '#4ade80'];
const FINISHED = new Set(['completed', 'failed', 'killed']);
const COMPLETABLE = new Set(['call', 'sleep', 'awakeable', 'get_promise', 'peek_promise', 'complete_promise']);
const KIND_GROUP = Object.fromEntries(Object.entries({
  io: 'input output', state: 'get_state get_state_keys set_state clear_state clear_all_state', run: 'run',
  comm: 'call send', wait: 'sleep awakeable complete_awakeable get_promise peek_promise complete_promise', ctl: 'select cancelled',
}).flatMap(([group, kinds]) => kinds.split(' ').map((k) => [k, group])));

const ui = {
  cluster: null, partitions: null, ring: null, objects: null, invocations: null, deployments: null,
  deploymentsAt: 0,      // when /deployments was last asked
  colors: new Map(),
  bandSig: '', vnodeSig: '', markerSig: '',
  lookup: null,          // last /cluster/owner answer
  selectedInv: null,     // id of the invocation shown in the detail panel
  invDetail: null,
  watched: null,         // {service, key} whose state is shown
  polling: false,
  layout: 'index',      // 'hash' (ring position) or 'index'
  layoutChosen: false,
  lastRebalance: null,   // {total, epoch, doneAt} of the last rebalance this page saw
};

// ---------- helpers ----------

const $ = (id) => document.getElementById(id);

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

async function api(path) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  try {
    const res = await fetch(path, { signal: ctrl.signal, headers: { accept: 'application/json' }, cache: 'no-store' });
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = text; }
    if (!res.ok) {
      const msg = body && typeof body === 'object' && body.message ? body.message : `HTTP ${res.status}`;
      const err = new Error(`${path.split('?')[0]}: ${msg}`);
      err.status = res.status;
      throw err;
    }
    return body;
  } catch (e) {
    if (e.name === 'AbortError') throw new Error(`${path.split('?')[0]}: timed out`);
    if (e.status) throw e;
    throw new Error(`${path.split('?')[0]}: ${e.message || e}`);
  } finally {
    clearTimeout(timer);
  }
}

const byNatural = (a, b) => String(a).localeCompare(String(b), undefined, { numeric: true });

function colorOf(id) {
  if (id == null) return '#64748b';
  if (!ui.colors.has(id)) ui.colors.set(id, PALETTE[ui.colors.size % PALETTE.length]);
  return ui.colors.get(id);
}

function nodeChip(id) {
  if (id == null) return '<span class="muted">–</span>';
  return `<span class="node-chip"><i style="background:${colorOf(id)}"></i>${esc(id)}</span>`;
}

function fmtNum(n) { return n == null ? '–' : Number(n).toLocaleString('en-US'); }

function ago(ms) {
  if (!ms) return '–';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 0) return `in ${-s}s`;
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return new Date(ms).toLocaleString();
}

function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : '–'; }

// A payload from the API: text (usually JSON) or {bytes:[…]} when not UTF-8.
function showValue(v, max = 160) {
  if (v == null) return '<span class="muted">∅</span>';
  if (typeof v === 'object' && Array.isArray(v.bytes)) return `<span class="muted">&lt;${v.bytes.length} bytes&gt;</span>`;
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  const short = s.length > max ? `${s.slice(0, max)}…` : s;
  return `<code class="val" title="${esc(s)}">${esc(short)}</code>`;
}

const failTag = (f) => `<span class="fail">✗ ${esc(f.code ?? '')} ${esc(f.message)}</span>`;

function showResult(r) {
  if (!r) return '<span class="pending-tag">pending</span>';
  if (r.failure) return failTag(r.failure);
  if ('value' in r) return `→ ${showValue(r.value)}`;
  return '<span class="ok">✓ done</span>';
}

// ---------- polling ----------

async function poll() {
  const objQ = qs({ service: $('obj-service').value.trim(), key: $('obj-key').value.trim(), limit: 1000 });
  const invQ = qs({ limit: 50, service: $('inv-service').value.trim(), key: $('inv-key').value.trim(), status: $('inv-status').value });
  const jobs = [['cluster', '/cluster'], ['partitions', '/cluster/partitions'], ['ring', '/cluster/ring'],
    ['objects', `/cluster/objects${objQ}`], ['invocations', `/cluster/invocations${invQ}`]];
  if (Date.now() - ui.deploymentsAt >= DEPLOYMENTS_POLL_MS) {
    ui.deploymentsAt = Date.now();
    jobs.push(['deployments', '/deployments']);
  }
  const results = await Promise.allSettled(jobs.map(([, path]) => api(path)));
  const errors = [];
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') ui[jobs[i][0]] = r.value;
    else errors.push(r.reason.message);
  });
  setConnection(errors);
  [renderCluster, renderRing, renderObjects, renderDeployments, renderInvocations].forEach(safely);
  if (ui.lookup && ui.cluster && ui.cluster.epoch !== ui.lookup.epoch) lookup(ui.lookup.service, ui.lookup.key, true);
  if (ui.selectedInv && !(ui.invDetail && FINISHED.has(ui.invDetail.status))) loadInvocation(ui.selectedInv, true);
  if (ui.watched) loadState(true);
}

function safely(fn) {
  try { fn(); } catch (e) { console.error(`render ${fn.name} failed`, e); }
}

async function loop() {
  if (!ui.polling) {
    ui.polling = true;
    try { await poll(); } catch (e) { console.error(e); setConnection([String(e.message || e)]); }
    ui.polling = false;
  }
  setTimeout(loop, POLL_MS);
}

function setConnection(errors) {
  const banner = $('error-banner');
  document.body.classList.toggle('stale', errors.length > 0);
  if (errors.length) {
    const byReason = new Map();
    errors.forEach((e) => {
      const i = e.indexOf(': ');
      const [where, why] = i > 0 ? [e.slice(0, i), e.slice(i + 2)] : ['', e];
      byReason.set(why, [...(byReason.get(why) ?? []), where].filter(Boolean));
    });
    $('error-text').textContent = [...byReason].map(([why, where]) => `${why}${where.length ? ` (${where.join(', ')})` : ''}`).join(' · ');
    banner.hidden = false;
    $('conn-dot').className = 'dot bad';
    $('conn-text').textContent = 'disconnected';
  } else {
    banner.hidden = true;
    $('conn-dot').className = 'dot ok';
    $('conn-text').textContent = `live · ${new Date().toLocaleTimeString()}`;
  }
}

// ---------- cluster & nodes ----------

function sortedNodes() {
  return (ui.cluster?.nodes ?? []).slice().sort((a, b) => byNatural(a.id, b.id));
}

function renderCluster() {
  const c = ui.cluster;
  if (!c) return;
  const nodes = sortedNodes();
  nodes.forEach((n) => colorOf(n.id));
  $('epoch').textContent = String(c.epoch);
  $('ring-epoch').textContent = String(c.epoch);
  $('via-node').textContent = `via ${c.nodeId}${c.member === false ? ' (not a member yet)' : ''}`;
  const dead = nodes.filter((n) => n.status === 'dead').map((n) => n.id);
  $('stat-nodes').textContent = dead.length ? `${nodes.length - dead.length}/${nodes.length}` : String(nodes.length);
  $('stat-nodes').title = dead.length ? `dead: ${dead.join(', ')}` : '';
  $('stat-nodes').classList.toggle('alert', dead.length > 0);
  $('stat-partitions').textContent = fmtNum(c.partitions);
  $('stat-objects').textContent = fmtNum(nodes.reduce((s, n) => s + (n.activeObjects ?? 0), 0));
  $('stat-inflight').textContent = fmtNum(nodes.reduce((s, n) => s + (n.inflight ?? 0), 0));
  $('ring-sub').textContent = `${nodes.length} node${nodes.length === 1 ? '' : 's'}`;
  $('ring-caption').textContent = `${c.virtualNodes} virtual nodes per node · ${fmtNum(c.partitions)} partitions `
    + (ui.layout === 'hash' ? 'at their hash position (owned by the next virtual node clockwise)' : 'by index (0 at the top, clockwise)');
  $('nodes-caption').innerHTML = dead.length
    ? `<span class="fail">${dead.length} dead: ${esc(dead.join(', '))}</span>`
    : ['alive', 'joining', 'leaving'].map((st) => [st, nodes.filter((n) => n.status === st).length])
      .filter(([, k]) => k > 0).map(([st, k]) => `${k} ${st}`).join(' · ');

  const total = c.partitions || 1024;
  $('nodes-body').innerHTML = nodes.map((n) => {
    const share = ((n.partitions ?? 0) / total) * 100;
    const addr = (label, v, link) => `<div><span class="k">${label}</span>${v == null ? '<span class="muted">unknown</span>'
      : link ? `<a href="http://${esc(v)}/ui">${esc(v)}</a>` : esc(v)}</div>`;
    return `<tr data-node-id="${esc(n.id)}" class="st-${esc(n.status)}">
      <td>${nodeChip(n.id)}${n.id === c.nodeId ? ' <span class="badge">this node</span>' : ''}</td>
      <td><span class="pill pill-${esc(n.status)}" data-field="status">${esc(n.status)}</span></td>
      <td class="addr">${addr('peer', n.peerAddr)}${addr('ingress', n.ingressAddr)}${addr('admin', n.adminAddr, true)}</td>
      <td class="num mono" data-field="partitions">${n.partitions ?? 0}</td>
      <td class="share-col"><div class="share"><div style="width:${share.toFixed(2)}%;background:${colorOf(n.id)}"></div></div>
        <span class="small muted">${share.toFixed(1)}%</span></td>
      <td class="num mono" data-field="activeObjects">${n.activeObjects == null ? '–' : n.activeObjects}</td>
      <td class="num mono" data-field="inflight">${n.inflight == null ? '–' : n.inflight}</td>
    </tr>`;
  }).join('') || '<tr><td colspan="7" class="empty">No nodes</td></tr>';

  const rb = c.rebalance && c.rebalance.running !== false ? c.rebalance : null;
  $('rebalance').hidden = !rb;
  // Rebalances can be quick: after one ends, say so for a while.
  if (rb) ui.lastRebalance = { total: rb.total, epoch: c.epoch, doneAt: null };
  else if (ui.lastRebalance && !ui.lastRebalance.doneAt) Object.assign(ui.lastRebalance, { doneAt: Date.now(), epoch: c.epoch });
  const last = ui.lastRebalance?.doneAt && Date.now() - ui.lastRebalance.doneAt < 60_000 ? ui.lastRebalance : null;
  $('rebalance-done').hidden = !last;
  if (last) $('rebalance-done').textContent = `✓ Rebalance complete at ${fmtTime(last.doneAt)}: ${fmtNum(last.total)} partitions moved (epoch ${last.epoch})`;
  if (rb) {
    const pct = rb.total ? Math.min(100, (rb.moved / rb.total) * 100) : 0;
    $('rebalance-epochs').textContent = rb.from != null && rb.to != null ? `epoch ${rb.from} → ${rb.to}` : `to epoch ${c.epoch}`;
    $('rebalance-count').textContent = `${fmtNum(rb.moved)} / ${fmtNum(rb.total)} partitions (${pct.toFixed(0)}%)`;
    $('rebalance-bar').style.width = `${pct}%`;
  }

  $('ring-nodes').innerHTML = nodes.map((n) =>
    `<span class="legend-node st-${esc(n.status)}">${nodeChip(n.id)} <span class="muted small">${n.partitions ?? 0}</span></span>`).join('');
}

// ---------- ring ----------

const CX = 220, CY = 220;
const BAND_IN = 176, BAND_OUT = 200, MOVE_IN = 203, MOVE_OUT = 211;
const TICK_IN = 146, TICK_OUT = 172;

function polar(r, a) {
  const t = 2 * Math.PI * a;
  return [CX + r * Math.sin(t), CY - r * Math.cos(t)];
}

function arcPath(a0, a1, r0, r1) {
  if (a1 - a0 >= 0.9999) { // full circle: two halves
    return `${arcPath(a0, a0 + 0.5, r0, r1)} ${arcPath(a0 + 0.5, a1, r0, r1)}`;
  }
  const large = a1 - a0 > 0.5 ? 1 : 0;
  const p = (r, a) => polar(r, a).map((x) => x.toFixed(2)).join(' ');
  return `M ${p(r1, a0)} A ${r1} ${r1} 0 ${large} 1 ${p(r1, a1)} L ${p(r0, a1)} A ${r0} ${r0} 0 ${large} 0 ${p(r0, a0)} Z`;
}

// Where partition p sits on the ring: the runtime's StableRingHash of the u16 (FNV-1a over its
// big-endian bytes, then the splitmix64 finaliser), as a fraction of the circle. This copies
// src/cluster/membership.rs; the UI checks it against the owner table (see hashLayoutFits) and
// falls back to laying partitions out by index if they disagree.
const M64 = (1n << 64n) - 1n;
const partitionAngles = new Map();
function partitionAngle(p) {
  if (!partitionAngles.has(p)) {
    let h = 0xcbf29ce484222325n;
    for (const b of [(p >> 8) & 0xff, p & 0xff]) h = ((h ^ BigInt(b)) * 0x100000001b3n) & M64;
    h = ((h ^ (h >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
    h = ((h ^ (h >> 27n)) * 0x94d049bb133111ebn) & M64;
    h ^= h >> 31n;
    partitionAngles.set(p, Number(h >> 11n) / 2 ** 53);
  }
  return partitionAngles.get(p);
}

// True when the placement (targets, or owners at rest) matches the ring under partitionAngle.
let fitsCache = { key: '', value: false };
function hashLayoutFits(owners, vnodes) {
  const key = `${owners.join(',')}|${vnodes.map((v) => v.position ?? v.angle).join(',')}`;
  if (key !== fitsCache.key) fitsCache = { key, value: computeFits(owners, vnodes) };
  return fitsCache.value;
}

function computeFits(owners, vnodes) {
  if (!vnodes.length) return false;
  const ring = vnodes.slice().sort((a, b) => a.angle - b.angle);
  let agree = 0;
  owners.forEach((owner, p) => {
    const a = partitionAngle(p);
    const v = ring.find((x) => x.angle >= a) ?? ring[0];
    if (v.node === owner) agree += 1;
  });
  return agree >= owners.length * 0.97;
}

// Angular slot of each partition: [{p, a0, a1}], either centred on its hash position or by index.
function slots(n) {
  if (ui.layout !== 'hash') return Array.from({ length: n }, (_, p) => ({ p, a0: p / n, a1: (p + 1) / n }));
  const sorted = Array.from({ length: n }, (_, p) => ({ p, a: partitionAngle(p) })).sort((x, y) => x.a - y.a);
  return sorted.map((s, i) => {
    const prev = i === 0 ? sorted[n - 1].a - 1 : sorted[i - 1].a;
    const next = i === n - 1 ? sorted[0].a + 1 : sorted[i + 1].a;
    return { p: s.p, a0: (prev + s.a) / 2, a1: (s.a + next) / 2 };
  });
}

function markerAngle(p, n) {
  return ui.layout === 'hash' ? partitionAngle(p) : (p + 0.5) / n;
}

function setLayout(layout) {
  ui.layout = layout;
  ui.layoutChosen = true;
  ui.bandSig = '';
  ui.markerSig = '';
  document.querySelectorAll('[data-layout]').forEach((b) => b.classList.toggle('active', b.dataset.layout === layout));
  safely(renderRing);
}

function renderRing() {
  const p = ui.partitions;
  const ring = ui.ring;
  const statusOf = new Map((ui.cluster?.nodes ?? []).map((n) => [n.id, n.status]));
  // Validate against the targets (or, without them, the owners while nothing moves).
  const placed = Array.isArray(p?.targets) ? p.targets : !(p?.moving ?? []).length ? p?.owners : null;
  if (Array.isArray(placed) && ring && Array.isArray(ring.virtualNodes) && placed.length <= 4096) {
    const fits = hashLayoutFits(placed, ring.virtualNodes);
    $('layout-hash').disabled = !fits;
    $('layout-hash').title = fits ? 'partitions at their hash position on the ring'
      : 'the owner table does not match this UI\u2019s copy of the ring hash';
    if (!ui.layoutChosen && ui.layout !== (fits ? 'hash' : 'index')) { ui.layout = fits ? 'hash' : 'index'; ui.bandSig = ''; ui.markerSig = ''; }
    if (!fits && ui.layout === 'hash') setLayout('index');
    document.querySelectorAll('[data-layout]').forEach((b) => b.classList.toggle('active', b.dataset.layout === ui.layout));
  }
  if (p && Array.isArray(p.owners)) {
    const n = p.owners.length || 1024;
    const moving = new Set(p.moving ?? []);
    const sig = `${ui.layout}|${p.epoch}|${p.owners.join(',')}|${[...moving].join(',')}|${[...statusOf].join(',')}`;
    if (sig !== ui.bandSig) {
      ui.bandSig = sig;
      const sl = slots(n);
      const band = [];
      const mov = [];
      for (let i = 0; i < sl.length;) {
        let j = i;
        const owner = p.owners[sl[i].p];
        while (j + 1 < sl.length && p.owners[sl[j + 1].p] === owner) j += 1;
        const ps = sl.slice(i, j + 1).map((s) => s.p).sort((a, b) => a - b);
        const dead = statusOf.get(owner) === 'dead';
        const title = `${ps.length} partition${ps.length === 1 ? '' : 's'} → ${owner}${dead ? ' (dead)' : ''}: ${ps.slice(0, 12).join(', ')}${ps.length > 12 ? ', …' : ''}`;
        const d = arcPath(sl[i].a0, sl[j].a1, BAND_IN, BAND_OUT);
        band.push(`<path class="seg${dead ? ' seg-dead' : ''}" d="${d}" fill="${colorOf(owner)}" data-owner="${esc(owner)}"><title>${esc(title)}</title></path>`
          + (dead ? `<path class="seg-hatch" d="${d}" fill="url(#hatch)"/>` : ''));
        i = j + 1;
      }
      sl.forEach((s) => {
        if (moving.has(s.p)) mov.push(`<path class="moving" d="${arcPath(s.a0, s.a1, MOVE_IN, MOVE_OUT)}"><title>moving: partition ${s.p}</title></path>`);
      });
      $('ring-band').innerHTML = band.join('');
      $('ring-moving').innerHTML = mov.join('');
    }
  }
  if (ring && Array.isArray(ring.virtualNodes)) {
    const ids = new Set(ring.virtualNodes.map((v) => v.node));
    (ui.cluster?.nodes ?? []).forEach((nd) => ids.add(nd.id));
    const sig = `${ring.epoch}|${ring.virtualNodes.length}|${[...ids].join(',')}|${[...statusOf].join(',')}`;
    if (sig !== ui.vnodeSig) {
      ui.vnodeSig = sig;
      $('ring-vnodes').innerHTML = [...ids].sort(byNatural).map((id) => {
        const ticks = ring.virtualNodes.filter((v) => v.node === id).map((v) => {
          const [x1, y1] = polar(TICK_IN, v.angle);
          const [x2, y2] = polar(TICK_OUT, v.angle);
          return `<line x1="${x1.toFixed(2)}" y1="${y1.toFixed(2)}" x2="${x2.toFixed(2)}" y2="${y2.toFixed(2)}"><title>${esc(id)} @ ${esc(v.position)}</title></line>`;
        }).join('');
        const st = statusOf.get(id) ?? 'alive';
        return `<g class="vnodes st-${esc(st)}" data-ring-node="${esc(id)}" stroke="${colorOf(id)}">${ticks}</g>`;
      }).join('');
    }
  }
  renderMarker();
  renderPartitionMap();
}

// 1024 cells by partition index; built once, then only fills and classes change.
function renderPartitionMap() {
  const p = ui.partitions;
  if (!p || !Array.isArray(p.owners)) return;
  const svg = $('pmap');
  const n = p.owners.length;
  const cols = 64, cell = 10;
  if (svg.childElementCount !== n) {
    const rows = Math.ceil(n / cols);
    svg.setAttribute('viewBox', `0 0 ${cols * cell} ${rows * cell}`);
    svg.innerHTML = p.owners.map((_, i) =>
      `<rect x="${(i % cols) * cell + 0.5}" y="${Math.floor(i / cols) * cell + 0.5}" width="${cell - 1}" height="${cell - 1}" rx="1.5"><title></title></rect>`).join('');
  }
  const statusOf = new Map((ui.cluster?.nodes ?? []).map((nd) => [nd.id, nd.status]));
  const moving = new Set(p.moving ?? []);
  const looked = ui.lookup?.partition;
  [...svg.children].forEach((rect, i) => {
    const owner = p.owners[i];
    const fill = colorOf(owner);
    if (rect.getAttribute('fill') !== fill) rect.setAttribute('fill', fill);
    const cls = `${moving.has(i) ? 'cell-moving' : ''}${statusOf.get(owner) === 'dead' ? ' cell-dead' : ''}${looked === i ? ' cell-looked' : ''}`.trim();
    if ((rect.getAttribute('class') ?? '') !== cls) rect.setAttribute('class', cls);
    const title = `partition ${i} → ${owner}${moving.has(i) ? ' (moving)' : ''}`;
    if (rect.firstChild.textContent !== title) rect.firstChild.textContent = title;
  });
}

function renderMarker() {
  const l = ui.lookup;
  const n = ui.partitions?.owners?.length || ui.cluster?.partitions || 1024;
  const sig = l ? `${ui.layout}|${l.partition}|${l.node}|${n}` : '';
  if (sig === ui.markerSig) return;
  ui.markerSig = sig;
  if (!l) { $('ring-marker').innerHTML = ''; return; }
  const a = markerAngle(l.partition, n);
  const [x0, y0] = polar(BAND_IN - 4, a);
  const [x1, y1] = polar(MOVE_OUT + 8, a);
  const [tx, ty] = polar(MOVE_OUT + 21, a);
  $('ring-marker').innerHTML = `<line class="marker" x1="${x0}" y1="${y0}" x2="${x1}" y2="${y1}"/>
    <circle class="marker-dot" cx="${x1}" cy="${y1}" r="4" fill="${colorOf(l.node)}"/>
    <text class="marker-label" x="${tx}" y="${ty}">P${l.partition}</text>`;
}

// ---------- placement ----------

function renderObjects() {
  const o = ui.objects;
  if (!o) return;
  const list = (Array.isArray(o) ? o : o.objects ?? []).slice()
    .sort((a, b) => byNatural(a.service, b.service) || byNatural(a.key, b.key));
  const perNode = new Map(sortedNodes().map((n) => [n.id, 0]));
  list.forEach((x) => perNode.set(x.node, (perNode.get(x.node) ?? 0) + 1));
  const max = Math.max(1, ...perNode.values());
  $('objects-per-node').innerHTML = [...perNode].map(([id, count]) => `<div class="per-node-row">
      ${nodeChip(id)}<div class="bar"><div style="width:${(count / max) * 100}%;background:${colorOf(id)}"></div></div>
      <span class="mono">${count}</span></div>`).join('');
  $('objects-caption').textContent = `${list.length}${o.truncated ? '+' : ''} active object${list.length === 1 ? '' : 's'}`;
  const warn = [];
  if (o.truncated) warn.push('List truncated: narrow the filter to see more.');
  if (o.unreachable?.length) warn.push(`Unreachable: ${o.unreachable.join(', ')} (their objects are not listed).`);
  $('objects-warn').hidden = warn.length === 0;
  $('objects-warn').textContent = warn.join(' ');
  const rows = list.slice(0, MAX_OBJECT_ROWS).map((x) => {
    const sel = ui.watched && ui.watched.service === x.service && ui.watched.key === x.key;
    return `<tr data-object="${esc(`${x.service}/${x.key}`)}" data-service="${esc(x.service)}" data-key="${esc(x.key)}" class="clickable${sel ? ' selected' : ''}">
      <td>${esc(x.service)}</td><td class="mono">${esc(x.key)}</td><td class="num mono">${esc(x.partition)}</td><td>${nodeChip(x.node)}</td></tr>`;
  });
  if (list.length > MAX_OBJECT_ROWS) rows.push(`<tr><td colspan="4" class="empty">… ${list.length - MAX_OBJECT_ROWS} more</td></tr>`);
  $('objects-body').innerHTML = rows.join('') || '<tr><td colspan="4" class="empty">No active objects match.</td></tr>';
}

async function lookup(service, key, quiet = false) {
  const err = $('lookup-error');
  try {
    const r = await api(`/cluster/owner${qs({ service, key })}`);
    ui.lookup = r;
    err.hidden = true;
    $('lookup-result').hidden = false;
    $('lookup-partition').textContent = String(r.partition);
    $('lookup-owner').textContent = String(r.node);
    $('lookup-swatch').style.background = colorOf(r.node);
    $('lookup-ingress').textContent = r.ingressAddr ?? 'unknown';
    $('lookup-epoch').textContent = String(r.epoch);
    renderMarker();
    renderPartitionMap();
  } catch (e) {
    if (quiet) return;
    ui.lookup = null;
    $('lookup-result').hidden = true;
    err.textContent = e.message;
    err.hidden = false;
    renderMarker();
  }
}

// ---------- object state ----------

async function loadState(quiet = false) {
  const w = ui.watched;
  if (!w) return;
  const err = $('state-error');
  try {
    const r = await api(`/objects/${encodeURIComponent(w.service)}/${encodeURIComponent(w.key)}/state`);
    if (ui.watched !== w) return;
    err.hidden = true;
    const entries = Object.entries(r.state ?? {}).sort(([a], [b]) => byNatural(a, b));
    $('state-caption').innerHTML = `${esc(w.service)}/<span class="mono">${esc(w.key)}</span> on ${nodeChip(r.node)}`;
    $('state-view').innerHTML = entries.length
      ? `<table class="state"><thead><tr><th>Key</th><th>Value</th></tr></thead><tbody>${entries.map(([k, v]) =>
        `<tr><td class="mono">${esc(k)}</td><td>${stateValue(v)}</td></tr>`).join('')}</tbody></table>`
      : '<p class="empty">This object has no state.</p>';
  } catch (e) {
    if (ui.watched !== w) return;
    err.textContent = e.message;
    err.hidden = false;
    if (!quiet) $('state-view').innerHTML = '';
  }
}

// A state value: JSON when it parsed, else {"base64": …} (or a plain base64 string).
function stateValue(v) {
  if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 1 && typeof v.base64 === 'string') {
    return `<span class="badge">binary</span> <code class="val">${esc(v.base64)}</code>`;
  }
  return `<pre>${esc(JSON.stringify(v, null, 2))}</pre>`;
}

function watch(service, key) {
  ui.watched = { service, key };
  $('state-service').value = service;
  $('state-key').value = key;
  $('state-view').innerHTML = '<p class="empty">Loading…</p>';
  loadState();
  safely(renderObjects);
}

// ---------- deployments ----------

// active: takes new invocations of a service; draining: invocations still pinned to it;
// drained: nothing pinned, safe to remove and stop.
function renderDeployments() {
  const list = ui.deployments?.deployments;
  if (!list) return;
  $('deploy-body').innerHTML = list.map((d) => {
    const newest = new Set(d.newestFor ?? []);
    const services = (d.services ?? []).map((s) => `<span class="${newest.has(s.name) ? '' : 'muted'}"
      title="${newest.has(s.name) ? 'takes new invocations' : 'a newer deployment takes new invocations'}">${esc(s.name)}</span>`).join(', ');
    const unknown = d.pinnedUnknownOn?.length ? ` <span class="muted small" title="not counted">+? (${esc(d.pinnedUnknownOn.join(', '))})</span>` : '';
    return `<tr>
      <td class="mono">${esc(d.id)}</td>
      <td class="mono small">${esc(d.uri)}</td>
      <td>${services}</td>
      <td><span class="pill dp-${esc(d.status)}">${esc(d.status)}</span></td>
      <td class="num mono">${fmtNum(d.pinnedInvocations)}${unknown}</td>
      <td class="muted small" title="${esc(new Date(d.registeredAtMs).toISOString())}">${ago(d.registeredAtMs)}</td>
    </tr>`;
  }).join('') || '<tr><td colspan="6" class="empty">No deployments registered (POST /deployments).</td></tr>';
}

// ---------- invocations ----------

function target(inv) {
  return `${esc(inv.service)}${inv.key ? `/<span class="mono">${esc(inv.key)}</span>` : ''}<span class="muted">.${esc(inv.handler)}</span>`;
}

function renderInvocations() {
  const r = ui.invocations;
  if (!r) return;
  // Each node answers up to `limit`; keep the newest 50 of the merged list.
  const list = (Array.isArray(r) ? r : r.invocations ?? []).slice()
    .sort((a, b) => (b.createdAtMs ?? 0) - (a.createdAtMs ?? 0)).slice(0, 50);
  $('inv-caption').textContent = `latest ${list.length}${r.unreachable?.length ? ` · unreachable: ${r.unreachable.join(', ')}` : ''}`;
  $('inv-body').innerHTML = list.map((inv) => `<tr data-inv-id="${esc(inv.id)}" class="clickable${inv.id === ui.selectedInv ? ' selected' : ''}">
      <td class="mono" title="${esc(inv.id)}">${esc(String(inv.id).slice(0, 14))}…</td>
      <td>${target(inv)}</td>
      <td><span class="pill inv-${esc(inv.status)}">${esc(inv.status)}</span></td>
      <td>${nodeChip(inv.node)}</td>
      <td class="num mono">${esc(inv.attempts)}</td>
      <td class="muted small" title="${esc(inv.createdAtMs ? new Date(inv.createdAtMs).toISOString() : '')}">${ago(inv.createdAtMs)}</td>
    </tr>`).join('') || '<tr><td colspan="6" class="empty">No invocations match.</td></tr>';
}

async function loadInvocation(id, quiet = false) {
  try {
    const inv = await api(`/invocations/${encodeURIComponent(id)}`);
    if (ui.selectedInv !== id) return;
    ui.invDetail = inv;
    renderDetail(inv);
  } catch (e) {
    if (ui.selectedInv !== id || quiet) return;
    $('inv-detail').innerHTML = `<div class="inline-error">${esc(e.message)}</div>`;
  }
}

function openInvocation(id) {
  ui.selectedInv = id;
  ui.invDetail = null;
  $('inv-detail').innerHTML = '<p class="empty">Loading…</p>';
  loadInvocation(id);
  safely(renderInvocations);
}

function entrySummary(e) {
  const target = (x) => `${esc(x.service)}${x.key ? `/${esc(x.key)}` : ''}.${esc(x.handler)}`;
  const link = (id) => (id ? ` <a href="#" data-open-inv="${esc(id)}" class="mono small">${esc(id.slice(0, 14))}…</a>` : '');
  switch (e.kind) {
    case 'input': return showValue(e.value);
    case 'output': return e.failure ? failTag(e.failure) : showValue(e.value);
    case 'get_state': return `<b>${esc(e.name)}</b> = ${'value' in e ? showValue(e.value) : '<span class="muted">unset</span>'}`;
    case 'get_state_keys': return (e.keys ?? []).map((k) => `<code>${esc(k)}</code>`).join(' ') || '<span class="muted">no keys</span>';
    case 'set_state': return `<b>${esc(e.name)}</b> ← ${showValue(e.value)}`;
    case 'clear_state': return `<b>${esc(e.name)}</b>`;
    case 'clear_all_state': return '<span class="muted">all keys</span>';
    case 'run': return `<b>${esc(e.name)}</b> ${e.failure ? failTag(e.failure) : 'value' in e ? `→ ${showValue(e.value)}` : '<span class="pending-tag">running</span>'}`;
    case 'call': return `${target(e)}(${showValue(e.value, 60)}) ${showResult(e.result)}${link(e.invocation_id)}`;
    case 'send': return `${target(e)}(${showValue(e.value, 60)})${e.delay_ms ? ` <span class="muted">after ${e.delay_ms} ms</span>` : ''}${link(e.invocation_id)}`;
    case 'sleep': return `until ${esc(fmtTime(e.wake_up_at_ms))} ${e.result ? showResult(e.result) : '<span class="pending-tag">sleeping</span>'}`;
    case 'awakeable': return showResult(e.result);
    case 'complete_awakeable': return `<code>${esc(e.id)}</code> ${e.failure ? failTag(e.failure) : showValue(e.value)}`;
    case 'get_promise': case 'peek_promise': return `<b>${esc(e.name)}</b> ${showResult(e.result)}`;
    case 'complete_promise': return `<b>${esc(e.name)}</b> ← ${e.failure ? failTag(e.failure) : showValue(e.value)} ${e.result ? showResult(e.result) : ''}`;
    case 'select': return `winner: entry #${esc(e.winner)}`;
    case 'cancelled': return '<span class="fail">cancellation received</span>';
    default: {
      const { index, kind, ...rest } = e;
      return showValue(JSON.stringify(rest));
    }
  }
}

function renderDetail(inv) {
  const journal = inv.journal ?? [];
  const out = inv.output;
  const output = !out ? '' : out.failure
    ? `<div class="outcome fail-box"><span class="label">Failed</span> ${esc(out.failure.code)} · ${esc(out.failure.message)}</div>`
    : `<div class="outcome ok-box"><span class="label">Output</span> ${showValue(out.value, 400)}</div>`;
  const row = (k, v) => (v == null || v === '' ? '' : `<div><dt>${k}</dt><dd>${v}</dd></div>`);
  $('inv-detail').innerHTML = `
    <div class="detail-head">
      <span class="pill inv-${esc(inv.status)}">${esc(inv.status)}</span>
      <span class="mono small">${esc(inv.id)}</span>
      <button type="button" class="ghost" data-close-inv>✕</button>
    </div>
    <h3>${target(inv)}</h3>
    <dl class="kv">
      ${row('Kind', esc(inv.kind))}${row('Attempts', esc(inv.attempts))}
      ${row('Created', `${esc(fmtTime(inv.createdAtMs))} <span class="muted">(${ago(inv.createdAtMs)})</span>`)}
      ${row('Modified', esc(fmtTime(inv.modifiedAtMs)))}
      ${row('Next retry', inv.nextRetryAtMs ? esc(ago(inv.nextRetryAtMs)) : null)}
      ${row('Runs at', inv.scheduledAtMs ? `${esc(new Date(inv.scheduledAtMs).toLocaleString())} <span class="muted">(${ago(inv.scheduledAtMs)})</span>` : null)}
      ${row('Deployment', inv.deploymentId ? `<span class="mono">${esc(inv.deploymentId)}</span>` : null)}
      ${row('Idempotency key', inv.idempotencyKey ? `<span class="mono">${esc(inv.idempotencyKey)}</span>` : null)}
    </dl>
    ${inv.lastError ? `<div class="outcome warn-box"><span class="label">Last error</span><pre class="trace">${esc(inv.lastError)}</pre></div>` : ''}
    ${output}
    <h4>Journal <span class="muted small">${journal.length} entr${journal.length === 1 ? 'y' : 'ies'}</span></h4>
    <ol class="timeline">${journal.map((e) => `<li class="tl g-${KIND_GROUP[e.kind] ?? 'ctl'}${COMPLETABLE.has(e.kind) && !e.result ? ' open' : ''}">
        <span class="tl-dot"></span><span class="tl-idx mono">#${esc(e.index)}</span>
        <span class="tl-kind">${esc(String(e.kind).replace(/_/g, ' '))}</span>
        <div class="tl-body">${entrySummary(e)}</div></li>`).join('')
      || '<li class="empty">No journal entries yet.</li>'}</ol>`;
}

// ---------- wiring ----------

function init() {
  $('lookup-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    lookup($('lookup-service').value.trim(), $('lookup-key').value.trim());
  });
  $('state-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const service = $('state-service').value.trim();
    const key = $('state-key').value.trim();
    if (service) watch(service, key);
  });
  $('objects-body').addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr[data-object]');
    if (tr) watch(tr.dataset.service, tr.dataset.key);
  });
  $('inv-body').addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr[data-inv-id]');
    if (tr) openInvocation(tr.dataset.invId);
  });
  document.querySelectorAll('[data-layout]').forEach((b) => b.addEventListener('click', () => setLayout(b.dataset.layout)));
  $('inv-detail').addEventListener('click', (ev) => {
    const a = ev.target.closest('[data-open-inv]');
    if (a) { ev.preventDefault(); openInvocation(a.dataset.openInv); return; }
    if (ev.target.closest('[data-close-inv]')) {
      ui.selectedInv = null;
      ui.invDetail = null;
      $('inv-detail').innerHTML = '<p class="empty">Click an invocation to see its journal.</p>';
      safely(renderInvocations);
    }
  });
  loop();
}

init();
