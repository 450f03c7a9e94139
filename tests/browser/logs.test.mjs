// The logs tab: a call made while it is open appears without a reload; the
// search box narrows the list to rows matching an endpoint, a method or a
// status; status colours by class; pause; filters; "load more"; and the
// error state when the server goes away.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, launchBrowser, openPage, assertNoProblems, waitUntil, waitForStream, fmtInt } from './lib/harness.mjs';

let stack;
let browser;
let key;

before(async () => {
  stack = await startStack();
  browser = await launchBrowser();
  key = await stack.createKey('logs key');
  assert.equal(await stack.chat(key.value, 'alpha-model'), 200);
  assert.equal(await stack.models(key.value), 200);
  // A call without a valid key is answered but not recorded; a 404 of a model no provider
  // serves is (the 4xx row of the list).
  assert.equal(await stack.chat('sk-tc-not-a-real-key', 'alpha-model'), 401);
  assert.equal(await stack.chat(key.value, 'mock-error-404'), 404);
  assert.equal(await stack.chat(key.value, 'mock-error-503'), 503);
  assert.equal(await stack.chat(key.value, 'stream-model', 'hi', { stream: true }), 200);
  assert.equal(await stack.chat(key.value, 'alpha-model', 'from curl', { headers: { 'User-Agent': 'curl/8.5.0' } }), 200);
  // Counting tokens is recorded, but apart from the calls.
  assert.equal(await stack.countTokens(key.value), 200);
  await stack.waitForCalls(6);
  await waitUntil(async () => (await stack.data('/stats')).count_tokens_calls >= 1, 'the count_tokens record');
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function visibleRows(page) {
  return page.$$eval('#logs-body tr', (trs) => trs.map((tr) => ({
    id: Number(tr.dataset.id),
    method: tr.querySelector('[data-col="method"]').textContent.trim(),
    endpoint: tr.querySelector('[data-col="endpoint"] .mono').textContent,
    status: tr.querySelector('[data-col="status"]').textContent.trim(),
    model: tr.querySelector('[data-col="model"]').textContent.trim(),
    key: tr.querySelector('[data-col="key"]').textContent.trim(),
    client: tr.querySelector('[data-col="client"] .cell > span').textContent.trim(),
    time: tr.querySelector('time').textContent,
    datetime: tr.querySelector('time').getAttribute('datetime'),
    tokens: tr.querySelector('[data-col="tokens"] [data-raw]').textContent,
  })));
}

async function waitForRowCount(page, n) {
  await page.waitForFunction((count) => document.querySelectorAll('#logs-body tr').length === count, n, { timeout: 15000 });
}

test('the logs show the recorded calls newest first, with local times and coloured statuses', async (t) => {
  const logs = await stack.data('/logs?limit=100');
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh', hash: 'logs' });
  try {
    await waitForRowCount(page, logs.length);
    const rows = await visibleRows(page);
    assert.deepEqual(rows.map((r) => r.id), logs.map((l) => l.id), 'same rows, newest first');
    for (const [i, l] of logs.entries()) {
      const r = rows[i];
      assert.equal(r.method, l.method);
      assert.equal(r.endpoint, l.endpoint);
      assert.equal(r.status, String(l.status));
      assert.equal(r.tokens, fmtInt(l.tokens));
      assert.equal(r.key, l.key_name ?? '无密钥');
      assert.equal(r.client, l.client || '—', 'the client family, or a dash when none was sent');
      // The browser's time zone (the context runs in Asia/Shanghai).
      const expected = new Intl.DateTimeFormat('zh-CN', {
        year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
        hour12: false, timeZone: 'Asia/Shanghai',
      }).format(new Date(l.timestamp));
      assert.equal(r.time, expected);
    }
    // A streamed call carries its badge and its time to first token.
    const streamed = logs.find((l) => l.model === 'stream-model');
    assert.equal(streamed.stream, true);
    const streamRow = page.locator(`#logs-body tr[data-id="${streamed.id}"]`);
    assert.equal(await streamRow.locator('[data-col="endpoint"] .badge').textContent(), '流式');
    if (streamed.ttft !== null) {
      assert.equal(await streamRow.locator('[data-col="duration"] .sub').textContent(), `首字 ${fmtInt(streamed.ttft)} ms`);
    }
    const colour = (status) => page.locator(`#logs-body tr[data-status="${status}"] .status`).first()
      .evaluate((el) => [el.className, getComputedStyle(el).color]);
    assert.deepEqual(await colour(200), ['status status-2xx', 'rgb(21, 128, 61)']);
    assert.deepEqual(await colour(404), ['status status-4xx', 'rgb(161, 98, 7)']);
    assert.deepEqual(await colour(503), ['status status-5xx', 'rgb(185, 28, 28)']);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('a call made while the logs tab is open appears without a reload', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en', hash: 'logs' });
  try {
    const logs = await stack.data('/logs');
    await waitForRowCount(page, logs.length);
    await waitForStream(page);
    await page.evaluate(() => { window.__notReloaded = true; });
    assert.equal(await stack.chat(key.value, 'live-model'), 200);
    await page.waitForFunction(() => [...document.querySelectorAll('#logs-body tr [data-col="model"]')].some((td) => td.textContent === 'live-model'), null, { timeout: 15000 });
    const rows = await visibleRows(page);
    assert.equal(rows[0].model, 'live-model', 'the new call is on top');
    assert.equal(rows[0].key, 'logs key');
    assert.equal(await page.evaluate(() => window.__notReloaded), true);

    // Paused: new calls wait behind a button instead of moving the list.
    await page.locator('#live-toggle').uncheck();
    assert.equal(await page.textContent('#stream-status-text'), 'Paused');
    assert.equal(await stack.chat(key.value, 'paused-model'), 200);
    await page.locator('#pending-btn').waitFor({ state: 'visible', timeout: 15000 });
    assert.equal(await page.textContent('#pending-btn'), 'Show 1 new');
    assert.ok(!(await visibleRows(page)).some((r) => r.model === 'paused-model'));
    await page.click('#pending-btn');
    await page.waitForFunction(() => document.querySelector('#logs-body tr [data-col="model"]').textContent === 'paused-model');
    assert.equal(await page.isChecked('#live-toggle'), true);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('typing an endpoint, a method or a status narrows the list to matching rows', async (t) => {
  const all = await stack.data('/logs?limit=1000');
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh', hash: 'logs' });
  try {
    await waitForRowCount(page, all.length);
    const search = page.locator('#log-search');
    // [typed text, which rows match, what the page asks the server]
    const cases = [
      ['/v1/models', (r) => r.endpoint.includes('/v1/models'), { q: '/v1/models' }],
      ['GET', (r) => r.method === 'GET', { q: 'GET' }],
      ['404', (r) => String(r.status) === '404', { q: '404' }],
      ['5xx', (r) => r.status >= 500, { status: '5xx' }],
      ['/v1/chat/completions', (r) => r.endpoint.includes('/v1/chat/completions'), { q: '/v1/chat/completions' }],
    ];
    for (const [q, pred, serverParams] of cases) {
      await search.fill('');
      await waitForRowCount(page, all.length);
      await search.pressSequentially(q);
      const expected = all.filter(pred).map((r) => r.id);
      assert.ok(expected.length > 0 && expected.length < all.length, `"${q}" should narrow the list`);
      await page.waitForFunction((ids) => {
        const shown = [...document.querySelectorAll('#logs-body tr')].map((tr) => Number(tr.dataset.id));
        return shown.length === ids.length && shown.every((id, i) => id === ids[i]);
      }, expected, { timeout: 15000 });
      // Still right once the server's answer to the same query has arrived.
      await page.waitForFunction((query) => {
        const t = document.getElementById('logs-table');
        return !t.hasAttribute('aria-busy') && (t.dataset.query || '').includes(query);
      }, new URLSearchParams(serverParams).toString());
      const shown = (await visibleRows(page)).map((r) => r.id);
      assert.deepEqual(shown, expected, `rows for "${q}"`);
    }
    await search.fill('no-such-endpoint-anywhere');
    await page.locator('#logs-state [data-state="empty"]').waitFor();
    assert.equal(await page.textContent('#logs-state .state-text'), '没有匹配的日志');
    await search.fill('');
    await waitForRowCount(page, all.length);

    // Status class and model filters.
    await page.selectOption('#filter-status', '4xx');
    await page.waitForFunction(() => [...document.querySelectorAll('#logs-body tr')].every((tr) => tr.dataset.status.startsWith('4')));
    await waitForRowCount(page, all.filter((r) => r.status >= 400 && r.status < 500).length);
    await page.selectOption('#filter-status', '');
    await page.selectOption('#filter-model', 'alpha-model');
    await waitForRowCount(page, all.filter((r) => r.model === 'alpha-model').length);
    await page.selectOption('#filter-model', '');
    await page.selectOption('#filter-key', String(key.id));
    await waitForRowCount(page, all.filter((r) => r.key_id === key.id).length);
    await page.selectOption('#filter-key', '');
    // Client family and kind (calls, or Anthropic's count_tokens).
    const curl = all.filter((r) => r.client === 'curl');
    assert.equal(curl.length, 1, 'one call was made with curl\'s User-Agent');
    await page.selectOption('#filter-client', 'curl');
    await waitForRowCount(page, 1);
    assert.deepEqual((await visibleRows(page)).map((r) => r.id), curl.map((r) => r.id));
    await page.selectOption('#filter-client', '');
    const counts = all.filter((r) => r.endpoint === '/v1/messages/count_tokens');
    assert.equal(counts.length, 1);
    await page.selectOption('#filter-kind', 'count_tokens');
    await waitForRowCount(page, 1);
    assert.deepEqual((await visibleRows(page)).map((r) => r.id), counts.map((r) => r.id));
    await page.selectOption('#filter-kind', 'call');
    await waitForRowCount(page, all.length - 1);
    await page.selectOption('#filter-kind', '');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('"load more" pages back with before_id and the refresh button reloads', async (t) => {
  const start = (await stack.data('/stats')).api_call_count;
  const batch = [];
  for (let i = 0; i < 110; i++) batch.push(stack.chat(key.value, 'bulk-model', `call ${i}`));
  for (const status of await Promise.all(batch)) assert.equal(status, 200);
  await stack.waitForCalls(start + 110);
  const all = await stack.data('/logs?limit=1000');
  assert.ok(all.length > 100);

  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh', hash: 'logs' });
  try {
    await waitForRowCount(page, 100);
    await waitForStream(page);
    assert.equal(await page.isVisible('#logs-more'), true);
    await page.click('#logs-more');
    await waitForRowCount(page, all.length);
    const ids = (await visibleRows(page)).map((r) => r.id);
    assert.deepEqual(ids, all.map((r) => r.id));
    assert.equal(await page.isVisible('#logs-end'), true);

    // Refresh (the guide's 刷新) picks up calls made while paused.
    await page.locator('#live-toggle').uncheck();
    assert.equal(await stack.chat(key.value, 'refresh-model'), 200);
    await stack.waitForCalls(start + 111);
    await page.click('#logs-refresh');
    await page.waitForFunction(() => document.querySelector('#logs-body tr [data-col="model"]').textContent === 'refresh-model');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('when the server is down the page says so', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh', hash: 'logs' });
  try {
    await page.locator('#logs-body tr').first().waitFor();
    await waitForStream(page);
    await stack.stop();
    await page.click('#logs-refresh');
    await page.locator('#logs-state [data-state="error"]').waitFor({ timeout: 15000 });
    assert.equal(await page.textContent('#logs-state .state-text'), '无法连接服务器，请确认服务正在运行。');
    await page.waitForFunction(() => document.documentElement.dataset.stream === 'reconnecting', null, { timeout: 15000 });
    assert.equal(await page.textContent('#stream-status-text'), '连接中断，正在重连…');
    // The rows already loaded stay visible.
    assert.ok(await page.locator('#logs-body tr').count() > 0);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});
