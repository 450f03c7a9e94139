// Calls made through the gateway appear on the dashboard: the four cards, the
// usage bar, latency and counts, the trend chart (blue tokens, purple calls,
// one point per day) and the sortable per-model table, all equal to what
// /api/console/stats and /api/console/usage-trend return.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, launchBrowser, openPage, assertNoProblems, fmtInt, waitUntil } from './lib/harness.mjs';

const BLUE = 'rgb(59, 130, 246)';
const GREEN = 'rgb(22, 163, 74)';
const YELLOW = 'rgb(234, 179, 8)';
const RED = 'rgb(220, 38, 38)';
const PURPLE = 'rgb(139, 92, 246)';

let stack;
let browser;

before(async () => {
  stack = await startStack({ totalTokens: 100000 });
  browser = await launchBrowser();
  const key = await stack.createKey('dashboard key');
  const calls = [
    ['alpha-model', 3],
    ['beta-model', 2],
    ['gamma-model', 1],
  ];
  let n = 0;
  for (const [model, count] of calls) {
    for (let i = 0; i < count; i++) {
      assert.equal(await stack.chat(key.value, model, `hello ${model} ${i}`), 200);
      n++;
    }
  }
  // An upstream failure, recorded as a 5xx call of its model.
  assert.equal(await stack.chat(key.value, 'mock-error-500'), 500);
  n++;
  await stack.waitForCalls(n);
  stack.key = key;
  stack.expectedCalls = n;
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** The number shown in a text such as "1,234 ms" or "99.5%". */
function num(text) {
  return Number(String(text).replace(/[^\d.-]/g, ''));
}

test('the cards, usage bar and counts show what /api/console/stats returns', async (t) => {
  const stats = await stack.data('/stats');
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh' });
  try {
    const value = (id) => page.locator(`#${id} [data-value]`);
    await waitUntil(async () => (await value('card-calls').textContent()) === fmtInt(stats.api_call_count), 'calls card');
    assert.equal(await value('card-total').textContent(), fmtInt(stats.total_tokens));
    assert.equal(stats.total_tokens, 100000);
    assert.equal(await value('card-used').textContent(), fmtInt(stats.used_tokens));
    assert.equal(await value('card-remaining').textContent(), fmtInt(stats.remaining_tokens));
    assert.equal(await value('card-calls').textContent(), fmtInt(stats.api_call_count));
    assert.ok(stats.used_tokens > 0, 'the gateway calls used tokens');

    // The guide's colours: total blue, used green, remaining yellow, calls red.
    const dot = (id) => page.locator(`#${id} .dot`).evaluate((el) => getComputedStyle(el).backgroundColor);
    assert.equal(await dot('card-total'), BLUE);
    assert.equal(await dot('card-used'), GREEN);
    assert.equal(await dot('card-remaining'), YELLOW);
    assert.equal(await dot('card-calls'), RED);

    // Usage bar.
    const bar = page.locator('#usage-bar');
    assert.equal(Number(await bar.getAttribute('aria-valuenow')), Math.min(100, stats.usage_percent));
    const width = await page.locator('#usage-fill').evaluate((el) => el.style.width);
    assert.equal(width, `${Math.min(100, stats.usage_percent)}%`);

    // Success and error counts, latency percentiles.
    const metric = (name) => page.locator(`#perf-list [data-metric="${name}"] dd`).textContent();
    assert.equal(await metric('success'), fmtInt(stats.success_count));
    assert.equal(await metric('errors'), fmtInt(stats.error_count));
    assert.equal(stats.error_count, 1);
    for (const p of ['p50', 'p95', 'p99']) {
      assert.ok(Math.abs(num(await metric(p)) - stats.latency_ms[p]) <= 0.5, `${p} shown as ${await metric(p)}, API ${stats.latency_ms[p]}`);
    }
    const tokenRow = (name) => page.locator(`#token-list [data-metric="${name}"] dd`).textContent();
    assert.equal(await tokenRow('prompt'), fmtInt(stats.prompt_tokens));
    assert.equal(await tokenRow('completion'), fmtInt(stats.completion_tokens));
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('the trend chart draws tokens in blue and calls in purple, one point per day', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en' });
  try {
    for (const days of [7, 30, 90]) {
      const trend = await stack.data(`/usage-trend?days=${days}`);
      assert.equal(trend.labels.length, days);
      await page.click(`#trend-range [data-days="${days}"]`);
      assert.equal(await page.getAttribute(`#trend-range [data-days="${days}"]`, 'aria-pressed'), 'true');
      await page.waitForFunction((n) => document.querySelectorAll('#trend-chart circle[data-series="tokens"]').length === n, days);

      const colours = await page.evaluate(() => ({
        tokens: getComputedStyle(document.querySelector('#trend-chart path[data-series="tokens"]')).stroke,
        calls: getComputedStyle(document.querySelector('#trend-chart path[data-series="calls"]')).stroke,
      }));
      assert.equal(colours.tokens, BLUE);
      assert.equal(colours.calls, PURPLE);

      const points = await page.evaluate(() => ({
        tokens: [...document.querySelectorAll('#trend-chart circle[data-series="tokens"]')].map((c) => Number(c.dataset.value)),
        calls: [...document.querySelectorAll('#trend-chart circle[data-series="calls"]')].map((c) => Number(c.dataset.value)),
        labels: [...document.querySelectorAll('#trend-chart .day')].map((g) => g.dataset.label),
      }));
      assert.deepEqual(points.tokens, trend.tokenData.map(Number));
      assert.deepEqual(points.calls, trend.callData.map(Number));
      assert.deepEqual(points.labels, trend.labels);
    }

    // Today's calls are on the last point.
    const trend = await stack.data('/usage-trend?days=7');
    await page.click('#trend-range [data-days="7"]');
    await page.waitForFunction(() => document.querySelectorAll('#trend-chart .day').length === 7);
    assert.equal(trend.callData.at(-1), stack.expectedCalls);

    // Values on hover: the tooltip shows the day's numbers.
    const last = page.locator('#trend-chart .day').last();
    await last.locator('.hit').hover();
    const tip = page.locator('#trend-chart .chart-tip');
    await tip.waitFor({ state: 'visible' });
    assert.equal(await tip.locator('.tip-title').textContent(), trend.labels.at(-1));
    assert.equal(await tip.locator('[data-series="tokens"]').textContent(), fmtInt(trend.tokenData.at(-1), 'en'));
    assert.equal(await tip.locator('[data-series="calls"]').textContent(), fmtInt(trend.callData.at(-1), 'en'));

    // Keyboard: the points are focusable, arrows move between days.
    await page.mouse.move(0, 0);
    await page.focus('#trend-chart .day[tabindex="0"]');
    assert.equal(await page.evaluate(() => document.activeElement.dataset.label), trend.labels.at(-1));
    await page.keyboard.press('ArrowLeft');
    assert.equal(await page.evaluate(() => document.activeElement.dataset.label), trend.labels.at(-2));
    await tip.waitFor({ state: 'visible' });
    assert.equal(await tip.locator('.tip-title').textContent(), trend.labels.at(-2));
    const aria = await page.evaluate(() => document.activeElement.getAttribute('aria-label'));
    assert.ok(aria.includes(trend.labels.at(-2)), aria);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('the per-model table matches /api/console/stats and sorts by any column', async (t) => {
  const stats = await stack.data('/stats');
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh' });
  try {
    await page.waitForFunction((n) => document.querySelectorAll('#models-body tr').length === n, stats.models.length);
    const rows = await page.$$eval('#models-body tr', (trs) => trs.map((tr) => ({
      name: tr.querySelector('[data-col="name"]').textContent,
      calls: tr.querySelector('[data-col="call_count"]').textContent,
      tokens: tr.querySelector('[data-col="token_count"]').textContent,
      avg: tr.querySelector('[data-col="avg_time"]').textContent,
      rate: tr.querySelector('[data-col="success_rate"]').textContent,
    })));
    const shownName = (m) => m.name || '（无模型）';
    assert.deepEqual(rows.map((r) => r.name).sort(), stats.models.map(shownName).sort());
    for (const m of stats.models) {
      const row = rows.find((r) => r.name === shownName(m));
      assert.equal(row.calls, fmtInt(m.call_count), `${m.name} calls`);
      assert.equal(row.tokens, fmtInt(m.token_count), `${m.name} tokens`);
      assert.ok(Math.abs(num(row.avg) - m.avg_time) <= 0.5, `${m.name} avg ${row.avg} vs ${m.avg_time}`);
      assert.ok(Math.abs(num(row.rate) - m.success_rate) <= 0.005, `${m.name} rate ${row.rate} vs ${m.success_rate}`);
    }
    const alpha = stats.models.find((m) => m.name === 'alpha-model');
    assert.equal(alpha.call_count, 3);
    assert.equal(stats.models.find((m) => m.name === 'mock-error-500').success_rate, 0);

    const names = () => page.$$eval('#models-body tr [data-col="name"]', (els) => els.map((e) => e.textContent));
    const byCallsDesc = [...stats.models].sort((a, b) => b.call_count - a.call_count || a.name.localeCompare(b.name)).map((m) => m.name);
    assert.deepEqual(await names(), byCallsDesc, 'sorted by calls, most first');
    assert.equal(await page.getAttribute('#models-table th[data-sort="call_count"]', 'aria-sort'), 'descending');

    await page.click('#models-table th[data-sort="call_count"] button');
    assert.equal(await page.getAttribute('#models-table th[data-sort="call_count"]', 'aria-sort'), 'ascending');
    const byCallsAsc = [...stats.models].sort((a, b) => a.call_count - b.call_count || a.name.localeCompare(b.name)).map((m) => m.name);
    assert.deepEqual(await names(), byCallsAsc);

    await page.click('#models-table th[data-sort="name"] button');
    assert.deepEqual(await names(), [...stats.models.map((m) => m.name)].sort((a, b) => a.localeCompare(b)));

    await page.click('#models-table th[data-sort="success_rate"] button');
    const rates = await page.$$eval('#models-body tr [data-col="success_rate"]', (els) => els.map((e) => Number(e.textContent.replace(/[^\d.]/g, ''))));
    assert.deepEqual(rates, [...rates].sort((a, b) => b - a));
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('the dashboard refreshes itself when a call arrives', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh' });
  try {
    const before = await stack.data('/stats');
    await page.waitForFunction((v) => document.querySelector('#card-calls [data-value]').textContent === v, fmtInt(before.api_call_count));
    await page.waitForFunction(() => document.documentElement.dataset.stream === 'open');
    await page.evaluate(() => { window.__notReloaded = true; });
    assert.equal(await stack.chat(stack.key.value, 'delta-model'), 200);
    const after = await stack.waitForCalls(before.api_call_count + 1);
    await page.waitForFunction((v) => document.querySelector('#card-calls [data-value]').textContent === v, fmtInt(after.api_call_count), { timeout: 15000 });
    await page.waitForFunction(() => [...document.querySelectorAll('#models-body [data-col="name"]')].some((e) => e.textContent === 'delta-model'));
    await page.waitForFunction((v) => document.querySelector('#card-used [data-value]').textContent === v, fmtInt(after.used_tokens));
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'updated without a reload');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});
