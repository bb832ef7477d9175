// Browser test of the Kiln admin web UI (src/admin/ui) against a running cluster.
//
// Plain node script, no test framework: exits 0 on success, non-zero with a message on failure.
//
//   KILN_ADMIN_URL       admin URL of a node of a running 3-node cluster (required)
//   KILN_JOIN_NODE_ID    id of a running 4th node that is not yet a member (required)
//   KILN_JOIN_PEER_ADDR  its peer address, e.g. 127.0.0.1:7074 (required)
//   KILN_LOOKUP_SERVICE  object to look up (default Counter)
//   KILN_LOOKUP_KEY      (default ui-key)
//   KILN_ARTIFACTS_DIR   where screenshots go (default <repo>/target/ui-artifacts)
//   CHROMIUM_PATH        chromium binary (default /usr/bin/chromium or /usr/bin/chromium-browser)
//
//   cd tests/ui && npm ci && KILN_ADMIN_URL=… KILN_JOIN_NODE_ID=n4 KILN_JOIN_PEER_ADDR=… node ui.test.mjs
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');

const ADMIN = (process.env.KILN_ADMIN_URL ?? '').replace(/\/+$/, '');
const JOIN_ID = process.env.KILN_JOIN_NODE_ID ?? '';
const JOIN_PEER = process.env.KILN_JOIN_PEER_ADDR ?? '';
const LOOKUP_SERVICE = process.env.KILN_LOOKUP_SERVICE || 'Counter';
const LOOKUP_KEY = process.env.KILN_LOOKUP_KEY || 'ui-key';
const ARTIFACTS = path.resolve(process.env.KILN_ARTIFACTS_DIR || path.join(repoRoot, 'target', 'ui-artifacts'));
const CHROMIUM = process.env.CHROMIUM_PATH
  || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const JOIN_TIMEOUT_MS = 60_000;
const START_TIMEOUT_MS = 30_000;
const OVERALL_TIMEOUT_MS = 180_000;

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };
const log = (msg) => console.log(`ui: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function checkInputs() {
  const missing = [];
  if (!ADMIN) missing.push('KILN_ADMIN_URL');
  if (!JOIN_ID) missing.push('KILN_JOIN_NODE_ID');
  if (!JOIN_PEER) missing.push('KILN_JOIN_PEER_ADDR');
  if (missing.length) fail(`missing environment variable(s): ${missing.join(', ')}`);
  if (!CHROMIUM || !existsSync(CHROMIUM)) {
    fail(`no chromium binary (looked at ${CHROMIUM ?? '/usr/bin/chromium, /usr/bin/chromium-browser'}); set CHROMIUM_PATH`);
  }
}

async function getJson(url) {
  const res = await fetch(url);
  const text = await res.text();
  if (!res.ok) fail(`GET ${url} → ${res.status}: ${text}`);
  return JSON.parse(text);
}

// What the node table shows, read from the DOM.
async function readUi(page) {
  return page.evaluate(() => {
    const rows = [...document.querySelectorAll('tr[data-node-id]')].map((tr) => ({
      id: tr.getAttribute('data-node-id'),
      status: tr.querySelector('[data-field="status"]')?.textContent.trim() ?? '',
      partitionsText: tr.querySelector('[data-field="partitions"]')?.textContent.trim() ?? '',
    }));
    const rb = document.getElementById('rebalance');
    const banner = document.getElementById('error-banner');
    const visible = (el) => !!el && !el.hidden && getComputedStyle(el).display !== 'none';
    return {
      rows: rows.map((r) => ({ ...r, partitions: /^\d+$/.test(r.partitionsText) ? Number(r.partitionsText) : NaN })),
      ringNodes: [...document.querySelectorAll('[data-ring-node]')].map((e) => e.getAttribute('data-ring-node')),
      epoch: document.getElementById('epoch')?.textContent.trim() ?? '',
      rebalancing: visible(rb),
      rebalanceText: visible(rb) ? rb.textContent.replace(/\s+/g, ' ').trim() : '',
      bannerVisible: visible(banner),
      bannerText: visible(banner) ? banner.textContent.replace(/\s+/g, ' ').trim() : '',
    };
  });
}

function describe(s) {
  return `rows=[${s.rows.map((r) => `${r.id}:${r.status}:${r.partitionsText}`).join(' ')}] ring=[${s.ringNodes.join(',')}]`
    + ` epoch=${s.epoch} rebalancing=${s.rebalancing}${s.bannerVisible ? ` banner="${s.bannerText}"` : ''}`;
}

async function waitFor(page, what, timeoutMs, pred, onTick) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await readUi(page);
    if (onTick) await onTick(last);
    if (pred(last)) return last;
    if (Date.now() > deadline) fail(`timed out after ${timeoutMs / 1000}s waiting for ${what}; UI shows ${describe(last)}`);
    await sleep(150);
  }
}

async function run(browser) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const shot = async (page, name, fullPage = true) => {
    await page.evaluate(() => window.scrollTo(0, 0)); // the sticky header would land mid-page
    await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage });
    log(`screenshot ${path.join(ARTIFACTS, name)}`);
  };
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  let consoleErrors = 0;
  page.on('console', (msg) => {
    if (msg.type() === 'error') { consoleErrors += 1; console.error(`browser console error: ${msg.text()}`); }
  });
  page.on('pageerror', (err) => { consoleErrors += 1; console.error(`browser page error: ${err.message}`); });
  run.page = page;

  // 1. The page loads and shows the 3-node cluster.
  const res = await page.goto(`${ADMIN}/ui`, { waitUntil: 'load' });
  if (!res || !res.ok()) fail(`GET ${ADMIN}/ui → ${res ? res.status() : 'no response'}`);
  const initial = await waitFor(page, '3 alive nodes in the table and 3 nodes on the ring', START_TIMEOUT_MS, (s) =>
    s.rows.filter((r) => r.status === 'alive').length >= 3 && s.ringNodes.length >= 3
    && s.rows.every((r) => Number.isInteger(r.partitions)) && !s.rebalancing);
  if (initial.bannerVisible) fail(`error banner shown on a healthy cluster: ${initial.bannerText}`);
  if (initial.rows.some((r) => r.id === JOIN_ID)) fail(`${JOIN_ID} is already a member: ${describe(initial)}`);
  if (!/^\d+$/.test(initial.epoch)) fail(`#epoch is not a number: "${initial.epoch}"`);
  const sum0 = initial.rows.reduce((s, r) => s + r.partitions, 0);
  if (sum0 !== 1024) fail(`partition counts add up to ${sum0}, not 1024: ${describe(initial)}`);
  log(`cluster shown: ${describe(initial)}`);
  await sleep(300); // let the ring finish its first paint
  await shot(page, '01-ring.png');

  // 2. "Who owns this key": the form agrees with the API.
  const expected = await getJson(`${ADMIN}/cluster/owner?service=${encodeURIComponent(LOOKUP_SERVICE)}&key=${encodeURIComponent(LOOKUP_KEY)}`);
  await page.fill('#lookup-service', LOOKUP_SERVICE);
  await page.fill('#lookup-key', LOOKUP_KEY);
  await page.click('#lookup-go');
  try {
    await page.waitForFunction((node) => document.getElementById('lookup-owner')?.textContent === node, expected.node, { timeout: 10_000 });
  } catch {
    const shown = await page.evaluate(() => [document.getElementById('lookup-owner')?.textContent,
      document.getElementById('lookup-error')?.textContent]);
    fail(`lookup ${LOOKUP_SERVICE}/${LOOKUP_KEY}: #lookup-owner shows "${shown[0]}" (error "${shown[1]}"), API says node ${expected.node}`);
  }
  const shownPartition = (await page.textContent('#lookup-partition'))?.trim();
  if (shownPartition !== String(expected.partition)) {
    fail(`lookup ${LOOKUP_SERVICE}/${LOOKUP_KEY}: #lookup-partition shows "${shownPartition}", API says ${expected.partition}`);
  }
  log(`lookup ${LOOKUP_SERVICE}/${LOOKUP_KEY} → partition ${expected.partition} on ${expected.node}`);
  await shot(page, '02-lookup.png');

  // 3. Add the 4th node and watch the rebalance in the UI.
  const before = new Map(initial.rows.map((r) => [r.id, r.partitions]));
  const epochBefore = Number(initial.epoch);
  const join = await fetch(`${ADMIN}/cluster/nodes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ id: JOIN_ID, peerAddr: JOIN_PEER }),
  });
  const joinBody = await join.text();
  if (join.status !== 202) fail(`POST ${ADMIN}/cluster/nodes → ${join.status} (expected 202): ${joinBody}`);
  log(`join ${JOIN_ID} accepted: ${joinBody}`);

  let caught = false;
  const done = await waitFor(page, `${JOIN_ID} to join with all 1024 partitions placed and no rebalance running`, JOIN_TIMEOUT_MS, (s) => {
    const added = s.rows.find((r) => r.id === JOIN_ID);
    return s.rows.length === before.size + 1 && !!added && added.partitions > 0
      && s.rows.reduce((sum, r) => sum + r.partitions, 0) === 1024 && !s.rebalancing;
  }, async (s) => {
    if (s.rebalancing && !caught) {
      caught = true;
      log(`rebalance in progress: ${s.rebalanceText}`);
      await shot(page, '03-rebalancing.png', false); // viewport only: quick, the rebalance may be short
      if (!(await readUi(page)).rebalancing) log('the rebalance ended while 03-rebalancing.png was taken; it may show the finished state');
    }
  });
  if (!caught) log('rebalance finished before it could be captured (no 03-rebalancing.png)');
  await sleep(300);
  await shot(page, '04-after-join.png');

  // 4. The new node took partitions from every original node.
  const after = await readUi(page);
  const moved = after.rows.find((r) => r.id === JOIN_ID).partitions;
  for (const [id, n] of before) {
    const now = after.rows.find((r) => r.id === id);
    if (!now) fail(`node ${id} disappeared from the table after the join: ${describe(after)}`);
    if (!(now.partitions < n)) fail(`node ${id} still has ${now.partitions} partitions (had ${n} before ${JOIN_ID} joined)`);
  }
  if (after.ringNodes.length !== before.size + 1 || !after.ringNodes.includes(JOIN_ID)) {
    fail(`ring shows nodes [${after.ringNodes.join(',')}], expected ${JOIN_ID} too`);
  }
  if (!(Number(after.epoch) > epochBefore)) fail(`#epoch did not grow: ${epochBefore} → ${after.epoch}`);
  if (after.bannerVisible) fail(`error banner shown after the join: ${after.bannerText}`);
  log(`after join: ${describe(done)}`);
  log(`partitions moved to ${JOIN_ID}: ${moved}`);

  // 5. The deployments table agrees with GET /deployments: each row's drain status and count.
  const api = (await getJson(`${ADMIN}/deployments`)).deployments;
  if (!api.length) fail('GET /deployments lists no deployment; the test registers one');
  try {
    await page.waitForFunction((n) => document.querySelectorAll('#deploy-body tr .pill').length === n, api.length, { timeout: 15_000 });
  } catch {
    fail(`#deploy-body shows ${await page.evaluate(() => document.querySelectorAll('#deploy-body tr .pill').length)} rows, GET /deployments ${api.length}`);
  }
  const shown = await page.evaluate(() => [...document.querySelectorAll('#deploy-body tr')].map((tr) => ({
    id: tr.cells[0].textContent.trim(), status: tr.querySelector('.pill').textContent.trim(), pinned: tr.cells[4].textContent.trim(),
  })));
  for (const d of api) {
    const row = shown.find((r) => r.id === d.id);
    if (!row || row.status !== d.status || !/^[\d,]+/.test(row.pinned)) fail(`deployment ${d.id} (${d.status}, ${d.pinnedInvocations} pinned) shown as ${JSON.stringify(row)}`);
  }
  log(`deployments shown: ${shown.map((r) => `${r.id}:${r.status}:${r.pinned}`).join(' ')}`);
  await page.locator('.deploy-card').screenshot({ path: path.join(ARTIFACTS, '05-deployments.png') });
  log(`screenshot ${path.join(ARTIFACTS, '05-deployments.png')}`);
  if (consoleErrors) console.error(`ui: ${consoleErrors} browser console error(s) (see above)`);
}

async function main() {
  checkInputs();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  const guard = setTimeout(() => {
    console.error(`ui test FAILED: did not finish within ${OVERALL_TIMEOUT_MS / 1000}s`);
    process.exit(1);
  }, OVERALL_TIMEOUT_MS);
  try {
    await run(browser);
  } catch (e) {
    if (run.page) {
      try {
        await run.page.screenshot({ path: path.join(ARTIFACTS, '99-failure.png'), fullPage: true });
        console.error(`ui: failure screenshot ${path.join(ARTIFACTS, '99-failure.png')}`);
      } catch { /* the page may be gone */ }
    }
    throw e;
  } finally {
    clearTimeout(guard);
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`ui test FAILED: ${e instanceof Failure ? e.message : (e && e.stack) || e}`);
    process.exit(1);
  },
);
