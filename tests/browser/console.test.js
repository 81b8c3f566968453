// Browser test of the Redoubt web console: Playwright (playwright-core) drives Debian's
// chromium against a running console (`redoubt lab up`). It logs in, runs the Change
// Replication Group wizard to add an LV, watches the checkmarks appear step by step until the
// initialization is done and the Configuration Summary returns, triggers a snapshot; then makes
// a step fail (a replica LV removed behind Redoubt's back), sees the failed step with its error
// and Retry, repairs, retries from the page until done; fails over to dr-b and back from the
// dashboard, which must name the acting production; and fails on any error the page logs.
//
//   REDOUBT_CONSOLE=https://127.0.0.1:PORT REDOUBT_TOKEN_FILE=DIR/console/token \
//   REDOUBT_LAB_DIR=DIR NODE_EXTRA_CA_CERTS=DIR/tls/ca.pem \
//   [REDOUBT_SCREENSHOTS=docs/screenshots] node --test tests/browser/console.test.js
//
// The lab's console serves HTTPS with a certificate of the lab's CA: node (Playwright's
// requests) trusts that CA through NODE_EXTRA_CA_CERTS; chromium accepts exactly the lab
// console's key (--ignore-certificate-errors-spki-list with its SPKI hash), nothing else.
//
// Run by crates/redoubt/tests/browser.rs, which starts and stops the lab.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const CONSOLE = process.env.REDOUBT_CONSOLE;
const TOKEN_FILE = process.env.REDOUBT_TOKEN_FILE;
// The lab's directory (`redoubt lab up --dir`), for the failure the test causes.
const LAB_DIR = process.env.REDOUBT_LAB_DIR;
const SCREENSHOTS = process.env.REDOUBT_SCREENSHOTS || '';
const CHROMIUM = process.env.REDOUBT_CHROMIUM || '/usr/bin/chromium';
const crypto = require('node:crypto');

// Chromium's flags that make it accept the lab console's certificate (and only its key).
function trustLabConsole() {
  if (!CONSOLE.startsWith('https://')) { return []; }
  assert.ok(LAB_DIR, 'REDOUBT_LAB_DIR is set (the lab console certificate is in DIR/tls)');
  const pem = fs.readFileSync(path.join(LAB_DIR, 'tls', 'console.pem'), 'utf8');
  const spki = new crypto.X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' });
  const pin = crypto.createHash('sha256').update(spki).digest('base64');
  return ['--ignore-certificate-errors-spki-list=' + pin];
}
// Bounds of every wait, so a broken console fails the test instead of hanging it.
const STEP_TIMEOUT_MS = 20000;
const INIT_TIMEOUT_MS = 90000;

async function shot(page, name) {
  if (!SCREENSHOTS) { return; }
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, name + '.png'), fullPage: true });
}

test('web console: login, wizard adds an LV with live checkmarks, summary returns, snapshot', async (t) => {
  assert.ok(CONSOLE, 'REDOUBT_CONSOLE is set');
  assert.ok(TOKEN_FILE, 'REDOUBT_TOKEN_FILE is set');
  const token = fs.readFileSync(TOKEN_FILE, 'utf8').trim();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'redoubt-browser-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...trustLabConsole()],
  });
  t.after(async () => {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  });
  const errors = [];
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('console', (message) => {
    if (message.type() === 'error') { errors.push('console: ' + message.text()); }
  });
  page.on('pageerror', (error) => errors.push('page error: ' + error.message));
  // Every refresh of the Configuration Window records which steps are checked off, so the
  // test sees the checkmarks appear one refresh at a time (no sampling race).
  await page.addInitScript(() => {
    window.__doneSteps = [];
    document.addEventListener('DOMContentLoaded', () => {
      const container = document.getElementById('window-container');
      if (!container) { return; }
      const record = () => {
        const done = Array.from(container.querySelectorAll('li.step[data-state="done"]')).map((li) => li.dataset.step);
        const running = Array.from(container.querySelectorAll('li.step[data-state="running"]')).map((li) => li.dataset.step);
        const summary = container.querySelector('[data-testid="summary"]') !== null;
        window.__doneSteps.push({ done, running, summary });
      };
      record();
      new MutationObserver(record).observe(container, { childList: true, subtree: true });
    });
  });

  // Log in: a wrong token is refused with a message, the right one opens the dashboard.
  await page.goto(CONSOLE + '/ui');
  assert.match(page.url(), /\/ui\/login$/, 'an anonymous visit goes to the login page');
  await shot(page, 'login');
  await page.fill('#token', 'not-the-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('p.error');
  assert.match(await page.textContent('p.error'), /not valid/);
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(CONSOLE + '/ui'), page.click('button[type=submit]')]);
  const cookies = await context.cookies(CONSOLE);
  const session = cookies.find((c) => c.name === 'redoubt_session');
  assert.ok(session, 'a session cookie is set');
  assert.strictEqual(session.httpOnly, true, 'the session cookie is HttpOnly');
  assert.strictEqual(session.sameSite, 'Strict', 'the session cookie is SameSite=Strict');
  await page.waitForSelector('section.group[data-group="erp"] [data-testid="group-state"]');
  await page.waitForSelector('section.group svg.plot');

  // A mutating request that rides on the session cookie without its CSRF token is refused.
  const forged = await page.request.post(CONSOLE + '/v1/init/erp/retry');
  assert.strictEqual(forged.status(), 403, 'no CSRF token, no change');
  assert.match((await forged.json()).error, /CSRF/);
  await shot(page, 'dashboard');

  // The Configuration Window shows the summary while nothing runs.
  await page.goto(CONSOLE + '/ui/groups/erp');
  await page.waitForSelector('[data-testid="summary"]');
  assert.ok(await page.isVisible('tr[data-volume="lv_data01"]'));
  assert.ok(!(await page.isVisible('tr[data-volume="lv_web"]')));
  await shot(page, 'configuration-summary');

  // The wizard: add an LV, walk the panels, read the exact plan, finish.
  await Promise.all([page.waitForURL(CONSOLE + '/ui/groups/erp/change'), page.click('#change-group')]);
  await page.click('#add-volume');
  await page.fill('table.add-volumes input[name="add_name"]', 'lv_web');
  await page.fill('table.add-volumes input[name="add_size"]', '16MiB');
  for (let panel = 0; panel < 4; panel += 1) {
    await page.click('#next');
  }
  await page.waitForSelector('#plan li[data-step="13"]');
  const plan = await page.textContent('#plan');
  assert.match(plan, /Set new logical volume lv_web as requiring replication/);
  assert.match(plan, /volume lv_web/);
  assert.match(plan, /20\.\s*Verify configuration/);
  assert.ok(await page.isEnabled('#finish'));
  await shot(page, 'wizard-summary');
  await page.click('#finish');
  await page.waitForSelector('#confirm-dialog[open]');
  await Promise.all([page.waitForURL(CONSOLE + '/ui/groups/erp'), page.click('#confirm-ok')]);

  // The step list replaces the summary, checkmarks appear step by step, then the summary
  // returns with the new LV.
  await page.waitForSelector('li.step');
  await shot(page, 'initialization-progress');
  await page.waitForFunction(() => {
    const container = document.getElementById('window-container');
    return container && container.querySelector('[data-testid="summary"] tr[data-volume="lv_web"]');
  }, null, { timeout: INIT_TIMEOUT_MS });
  const observed = await page.evaluate(() => window.__doneSteps);
  const during = observed.filter((o) => !o.summary);
  assert.ok(during.length >= 2, 'the step list was shown and refreshed: ' + JSON.stringify(observed));
  const counts = during.map((o) => o.done.length);
  for (let i = 1; i < counts.length; i += 1) {
    assert.ok(counts[i] >= counts[i - 1], 'checkmarks are never taken back: ' + JSON.stringify(counts));
  }
  const distinct = new Set(counts);
  assert.ok(distinct.size >= 3, 'checkmarks appeared step by step, not all at once: ' + JSON.stringify(observed));
  assert.ok(during.some((o) => o.running.length > 0), 'a running step was highlighted: ' + JSON.stringify(observed));
  assert.ok(observed[observed.length - 1].summary, 'the summary returned');
  const log = await page.textContent('#event-log');
  assert.match(log, /step 13 volume lv_web: done/);
  assert.match(log, /initialization to version \d+ done/);
  await shot(page, 'configuration-summary-after');

  // Trigger a snapshot from the dashboard's recovery panel.
  await page.goto(CONSOLE + '/ui');
  const form = 'form[data-action="snapshot"][data-group="erp"]';
  await page.selectOption(form + ' select[name="server"]', 'dr-b');
  await page.fill(form + ' input[name="at"]', 'latest');
  await page.fill(form + ' input[name="name"]', 'browser-snap');
  await page.click(form + ' button[type="submit"]');
  await page.waitForFunction(() => {
    const result = document.querySelector('[data-result="erp"]');
    return result && /Snapshot|Refused/.test(result.textContent);
  });
  const result = await page.textContent('[data-result="erp"]');
  assert.match(result, /Snapshot browser-snap of dr-b at seq \d+/, 'snapshot created: ' + result);
  await page.waitForSelector('[data-snapshots="erp"] tr[data-snapshot="browser-snap"]');

  // An event marker appears among the restore points' markers.
  const mark = 'form[data-action="mark"][data-group="erp"]';
  await page.fill(mark + ' input[name="name"]', 'before-upgrade');
  await page.click(mark + ' button[type="submit"]');
  await page.waitForFunction(() => /Marker before-upgrade written at seq \d+/.test(document.querySelector('[data-result="erp"]').textContent));
  await page.waitForSelector('[data-points="erp"] ul.markers li:has-text("before-upgrade")');
  // A destructive action asks first; Cancel changes nothing.
  const rollback = 'form[data-action="rollback"][data-group="erp"]';
  await page.fill(rollback + ' input[name="to"]', 'mark:before-upgrade');
  await page.click(rollback + ' button[type="submit"]');
  await page.waitForSelector('#confirm-dialog[open]');
  assert.match(await page.textContent('#confirm-text'), /Roll the replica back/);
  await page.click('#confirm-cancel');
  await page.waitForFunction(() => /Cancelled: nothing was changed/.test(document.querySelector('[data-result="erp"]').textContent));
  await shot(page, 'dashboard-snapshot');

  // A failed step shows its error and Retry; after the repair, Retry runs it to the end.
  assert.ok(LAB_DIR, 'REDOUBT_LAB_DIR is set');
  const replica = path.join(LAB_DIR, 'data/dr-c/groups/erp/replication/lv_web');
  const size = fs.statSync(replica).size;
  fs.unlinkSync(replica);
  await page.goto(CONSOLE + '/ui/groups/erp/change');
  for (let panel = 0; panel < 3; panel += 1) {
    await page.click('#next');
  }
  await page.fill('input[name="retention"]', '48h');
  await page.click('#next');
  await page.waitForSelector('#plan li[data-step="20"]');
  assert.match(await page.textContent('#plan'), /retention/);
  await page.click('#finish');
  await page.waitForSelector('#confirm-dialog[open]');
  await Promise.all([page.waitForURL(CONSOLE + '/ui/groups/erp'), page.click('#confirm-ok')]);
  // The server-rendered failed state (the live updates come first, the render after the final
  // event): the Retry button of that render is the one to press.
  await page.waitForSelector('#window[data-init-state="failed"] li.step.failed button.retry', { timeout: INIT_TIMEOUT_MS });
  // (Step 15 reopens the apply process, which misses the LV first; step 20 would catch it too.)
  const failed = await page.textContent('li.step.failed');
  assert.match(failed, /lv_web/, 'the error names the missing LV: ' + failed);
  assert.match(failed, /dr-c/);
  await shot(page, 'initialization-failed');
  const handle = fs.openSync(replica, 'w');
  fs.ftruncateSync(handle, size);
  fs.closeSync(handle);
  await page.click('#window[data-init-state="failed"] li.step.failed button.retry');
  await page.waitForSelector('[data-testid="summary"]', { timeout: INIT_TIMEOUT_MS });
  assert.match(await page.textContent('[data-testid="retention"]'), /^(48h|2d)$/);
  assert.match(await page.textContent('#event-log'), /step 20 on dr-c: done/);

  // A planned failover from the dashboard: afterwards the dashboard names dr-b as production,
  // says where applications connect now and that prod-a follows; no `undefined` anywhere.
  await page.goto(CONSOLE + '/ui');
  const failover = 'form[data-action="failover"][data-group="erp"]';
  await page.selectOption(failover + ' select[name="server"]', 'dr-b');
  await page.click(failover + ' button[type="submit"]');
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /failover \S+ (done|failed)/.test(document.querySelector('[data-result="erp"]').textContent), null, { timeout: INIT_TIMEOUT_MS });
  assert.match(await page.textContent('[data-result="erp"]'), /failover \S+ done/);
  await page.goto(CONSOLE + '/ui');
  await page.waitForSelector('[data-testid="failover"]', { timeout: STEP_TIMEOUT_MS });
  const notice = await page.textContent('[data-testid="failover"]');
  assert.match(notice, /dr-b serves the group since seq \d+ \(planned failover/, notice);
  assert.match(notice, /configured production prod-a follows it/, notice);
  assert.match(notice, /Applications connect to nbd:\/\/127\.0\.0\.1:\d+\/lv_data01/, notice);
  assert.strictEqual(await page.textContent('[data-testid="production"]'), 'dr-b');
  assert.match(await page.textContent('section.group[data-group="erp"] p.facts'), /direction dr-b -> dr-c, prod-a/);
  await page.waitForSelector('[data-points="erp"] table');
  assert.doesNotMatch(await page.textContent('main'), /undefined/);
  await shot(page, 'dashboard-failed-over');
  // Failback: the configured production serves again, and the notice is gone.
  const failback = 'form[data-action="failback"][data-group="erp"]';
  await page.click(failback + ' button[type="submit"]');
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /failback \S+ (done|failed)/.test(document.querySelector('[data-result="erp"]').textContent), null, { timeout: INIT_TIMEOUT_MS });
  assert.match(await page.textContent('[data-result="erp"]'), /failback \S+ done/);
  await page.goto(CONSOLE + '/ui');
  assert.strictEqual(await page.textContent('[data-testid="production"]'), 'prod-a');
  assert.strictEqual(await page.$('[data-testid="failover"]'), null);

  assert.deepStrictEqual(errors, [], 'the pages logged no error');
});
