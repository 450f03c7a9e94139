// The dashboard's forecast line ("at this rate, runs out on …"), the anomalies
// it marks and the alerts it lists, against /api/console/stats, /anomalies and
// /alerts, in both languages; the alerts go to a local webhook receiver.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startStack, launchBrowser, openPage, assertNoProblems, fmtInt, waitUntil, switchTab } from './lib/harness.mjs';

let stack;
let browser;
let receiver;
const received = [];

before(async () => {
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      received.push(JSON.parse(body));
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const hook = `http://127.0.0.1:${receiver.address().port}/hook`;
  const extraYaml = [
    'alerts:',
    '  interval_ms: 100',
    '  rules: {budget_percent: [1], forecast_days: 0}',
    `  targets: [{kind: webhook, name: team-hook, url: "${hook}"}]`,
  ].join('\n');
  stack = await startStack({ totalTokens: 2000, extraYaml });
  browser = await launchBrowser();
  const key = await stack.createKey('watched key');
  let n = 0;
  // Twelve failures of one model within the hour: an error-rate anomaly.
  const small = { maxTokens: 5 };
  for (let i = 0; i < 12; i++, n++) assert.equal(await stack.chat(key.value, 'mock-error-500', `fail ${i}`, small), 500);
  // And enough tokens to cross 1% of the 2,000-token budget.
  for (let used = 0; used < 20; n++) {
    assert.equal(await stack.chat(key.value, 'gpt-test', `hello there ${n}`, small), 200);
    used = (await stack.waitForCalls(n + 1)).used_tokens;
  }
  // A limit on the key: its row in the keys tab says when it runs out.
  const { status } = await stack.api('PATCH', `/keys/${key.id}`, { token_limit: 100000 });
  assert.equal(status, 200);
  stack.key = key;
  await waitUntil(async () => {
    const alerts = await stack.data('/alerts');
    return alerts.length >= 2 && alerts.every((a) => a.deliveries.every((d) => d.status === 'sent')) ? alerts : null;
  }, 'the budget and anomaly alerts delivered');
});

after(async () => {
  await browser?.close();
  await stack?.stop();
  await new Promise((resolve) => receiver?.close(resolve));
});

test('the forecast line, the anomalies and the alerts show what the API returns, in both languages', async (t) => {
  const stats = await stack.data('/stats');
  const anomalies = await stack.data('/anomalies');
  const alerts = await stack.data('/alerts?limit=20');
  assert.ok(stats.forecast.runs_out_at, 'the budget runs out at some instant');
  assert.ok(stats.forecast.rate_per_day > 0);
  assert.deepEqual(anomalies.map((a) => [a.model, a.kind, a.calls, a.failures]), [['mock-error-500', 'error_rate', 12, 12]]);
  assert.deepEqual(alerts.map((a) => a.event).sort(), ['anomaly_detected', 'threshold_crossed']);
  assert.equal(received.length, alerts.length, 'one payload per alert at the receiver');

  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh' });
  try {
    // The forecasts the page itself received (each answer moves with the clock).
    const seen = [];
    page.on('response', (res) => {
      if (!new URL(res.url()).pathname.endsWith('/api/console/stats')) return;
      // A body still unread when the page goes away is not a forecast it showed.
      res.json().then((body) => seen.push(body.data.forecast), () => {});
    });
    await page.reload();
    const line = page.locator('#usage-forecast');
    await waitUntil(async () => (await line.textContent()).includes('预计') && seen.length > 0, 'the forecast line');
    const text = await line.textContent();
    const runsOutAt = await line.getAttribute('data-runs-out-at');
    const forecast = seen.find((f) => f.runs_out_at === runsOutAt);
    assert.ok(forecast, `the line shows a forecast the page received: ${JSON.stringify(seen)}`);
    const rate = fmtInt(Math.round(forecast.rate_per_day), 'zh');
    assert.ok(text.startsWith('按当前速度') && text.includes(`每天 ${rate} Token`) && text.endsWith('用完'), text);
    const shown = await page.evaluate((iso) => new Intl.DateTimeFormat('zh-CN', {
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
    }).format(new Date(iso)), forecast.runs_out_at);
    assert.ok(text.includes(shown), `${text} names ${shown}`);

    // The anomaly: listed, and its model marked in the table.
    const item = page.locator('#anomalies-list li[data-model="mock-error-500"]');
    await item.waitFor();
    assert.equal(await item.getAttribute('data-kind'), 'error_rate');
    assert.ok((await item.textContent()).includes('12 次调用失败 12 次'), await item.textContent());
    const marked = page.locator('#models-body tr[data-model="mock-error-500"] [data-anomaly]');
    assert.equal(await marked.textContent(), '异常');
    assert.equal(await page.locator('#models-body tr[data-model="gpt-test"] [data-anomaly]').count(), 0);

    // The alerts, newest first, each with its delivery.
    const rows = page.locator('#alerts-body tr');
    await waitUntil(async () => (await rows.count()) === alerts.length, 'the alert rows');
    for (let i = 0; i < alerts.length; i++) {
      const row = rows.nth(i);
      assert.equal(await row.getAttribute('data-id'), String(alerts[i].id));
      assert.equal(await row.locator('[data-col="message"]').textContent(), alerts[i].message);
      assert.equal(await row.locator('[data-col="delivery"]').textContent(), 'team-hook：已发送（1 次）');
    }
    const budgetRow = page.locator('#alerts-body tr[data-rule="budget_1"]');
    assert.equal(await budgetRow.locator('[data-col="event"]').textContent(), '额度达到阈值');
    assert.equal(await budgetRow.locator('[data-col="subject"]').textContent(), '全局额度');

    // English.
    await page.click('#lang-btn');
    await waitUntil(async () => (await line.textContent()).startsWith('At this rate'), 'the English forecast line');
    const en = await line.textContent();
    assert.ok(en.includes(`${fmtInt(Math.round(forecast.rate_per_day), 'en')} tokens a day`) && en.includes('runs out on'), en);
    assert.equal(await budgetRow.locator('[data-col="event"]').textContent(), 'Budget threshold crossed');
    assert.equal(await budgetRow.locator('[data-col="delivery"]').textContent(), 'team-hook: sent (1 tries)');
    assert.ok((await item.textContent()).includes('12 of 12 calls failed'), await item.textContent());
    assert.equal(await marked.textContent(), 'Anomaly');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('a key with a limit shows when it runs out at its rate', async (t) => {
  const keys = await stack.data('/keys');
  const key = keys.find((k) => k.id === stack.key.id);
  assert.ok(key.forecast.runs_out_at && key.forecast.rate_per_day > 0, JSON.stringify(key.forecast));
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en' });
  try {
    await switchTab(page, 'keys');
    const line = page.locator(`#keys-body tr[data-id="${key.id}"] .key-forecast`);
    await line.waitFor();
    assert.ok((await line.textContent()).startsWith('At this rate, runs out on '), await line.textContent());
    const at = Date.parse(await line.getAttribute('data-runs-out-at'));
    // Within a minute of what /keys said a moment ago (the instant moves with the clock).
    assert.ok(Math.abs(at - Date.parse(key.forecast.runs_out_at)) < 60_000, `${at} vs ${key.forecast.runs_out_at}`);
    await page.click('#lang-btn');
    await waitUntil(async () => (await line.textContent()).startsWith('按当前速度预计'), 'the Chinese line');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});
