// The Usage tab against /api/console/usage: the table for each group-by equals
// the API's rows, the stacked chart's bars equal each day's tokens (the
// largest groups' segments their own days), the CSV download holds the same
// figures, in Chinese and in English; screenshots of both.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startStack, launchBrowser, openPage, assertNoProblems, switchTab, screenshot, fmtInt, XSS } from './lib/harness.mjs';

let stack;
let browser;

before(async () => {
  stack = await startStack();
  browser = await launchBrowser();
  const alpha = await stack.createKey('alpha');
  const beta = await stack.createKey('beta');
  const plan = [
    [alpha.value, 'gpt-4o-mini', 'alice', 4],
    [alpha.value, 'claude-sonnet-4-6', 'bob', 2],
    [beta.value, 'gpt-4o-mini', XSS, 1],
    [beta.value, 'mock-error-500', 'alice', 1],
    [beta.value, 'gpt-4o-mini', null, 2],
  ];
  let n = 0;
  for (const [key, model, user, count] of plan) {
    for (let i = 0; i < count; i++) {
      const headers = user ? { 'x-token-console-user': user, 'User-Agent': 'curl/8.5.0' } : {};
      await stack.chat(key, model, `call ${i} of ${user}`, { headers });
      n++;
    }
  }
  await stack.waitForCalls(n);
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** The table as [group, calls, total tokens] per row, in the order shown. */
function tableRows(page) {
  return page.$$eval('#usage-body tr', (trs) => trs.map((tr) => [
    tr.querySelector('[data-col="name"]').textContent,
    tr.querySelector('[data-col="calls"]').textContent,
    tr.querySelector('[data-col="total_tokens"]').textContent,
  ]));
}

/** What the table should show for the API's rows grouped by `dim`. */
function expectedRows(rows, dim, lang, labels) {
  return rows.map((r) => {
    let name = dim === 'key' ? r.key_name : r[dim];
    if (name === '') name = labels[dim] || labels.none;
    return [name, fmtInt(r.calls, lang), fmtInt(r.total_tokens, lang)];
  });
}

async function waitForTable(page, dim) {
  await page.waitForFunction((d) => document.getElementById('usage-group').value === d
    && document.querySelectorAll('#usage-body tr').length > 0
    && document.querySelector('#usage-chart .stacked-svg'), dim);
}

for (const [lang, labels] of [
  ['zh', { user: '（未标明用户）', none: '（无）', tab: '用量', groupBy: '分组', rest: '其余' }],
  ['en', { user: '(no user named)', none: '(none)', tab: 'Usage', groupBy: 'Group by', rest: 'Everything else' }],
]) {
  test(`usage view (${lang}): table, chart and CSV match the API for every group-by`, async (t) => {
    const { page, context, problems } = await openPage(browser, stack, { lang });
    try {
      await switchTab(page, 'usage');
      assert.equal(await page.locator('#tab-usage').textContent(), labels.tab);
      assert.equal(await page.locator('.uv-field > span').textContent(), labels.groupBy);
      for (const dim of ['model', 'key', 'user', 'client', 'provider', 'endpoint']) {
        await page.selectOption('#usage-group', dim);
        await waitForTable(page, dim);
        const api = await stack.data(`/usage?group_by=${dim}&days=7&limit=1000`);
        assert.deepEqual(await tableRows(page), expectedRows(api.rows, dim, lang, labels), dim);

        // One bar a day for 7 days; each bar's total is the day's tokens, the largest groups'
        // segments their tokens that day.
        const trend = await stack.data('/usage-trend?days=7');
        const bars = await page.$$eval('#usage-chart .day', (gs) => gs.map((g) => [g.dataset.day, Number(g.dataset.total)]));
        assert.deepEqual(bars, trend.dates.map((d, i) => [d, trend.tokenData[i]]), `${dim} bars`);
        const today = trend.dates[trend.dates.length - 1];
        const segments = await page.$$eval(`#usage-chart .day[data-day="${today}"] .seg-bar`, (rs) => rs.map((r) => [Number(r.dataset.series), Number(r.dataset.value)]));
        const top = api.rows.filter((r) => (dim === 'key' ? true : r[dim] !== '')).slice(0, 5);
        for (const [k, row] of top.entries()) {
          const filter = dim === 'key' ? `key_id=${row.key_id}` : `${dim}=${encodeURIComponent(row[dim])}`;
          const days = await stack.data(`/usage?group_by=day&days=7&${filter}`);
          const todays = days.rows.find((r) => r.day === today)?.total_tokens || 0;
          const shown = segments.find(([s]) => s === k)?.[1] || 0;
          assert.equal(shown, todays, `${dim} segment ${k}`);
        }
        const legend = await page.$$eval('#usage-legend .legend-item', (items) => items.map((i) => i.textContent));
        assert.equal(legend.length, top.length + 1);
        assert.equal(legend[legend.length - 1], labels.rest);
      }

      // Sorting by calls, ascending then descending.
      await page.selectOption('#usage-group', 'user');
      await waitForTable(page, 'user');
      await page.click('#usage-table th[data-sort="calls"] button');
      const calls = async () => (await tableRows(page)).map((r) => Number(r[1].replace(/[^\d]/g, '')));
      const desc = await calls();
      assert.deepEqual(desc, [...desc].sort((a, b) => b - a));
      await page.click('#usage-table th[data-sort="calls"] button');
      const asc = await calls();
      assert.deepEqual(asc, [...asc].sort((a, b) => a - b));
      assert.equal(await page.locator('#usage-table th[data-sort="calls"]').getAttribute('aria-sort'), 'ascending');
      // The user named like an HTML injection is shown as text.
      assert.equal(await page.locator(`#usage-body th[data-col="name"]:text-is("${XSS}")`).count(), 1);

      // The CSV holds the API's figures, the injection-named cell as text.
      const [download] = await Promise.all([page.waitForEvent('download'), page.click('#usage-csv')]);
      assert.equal(download.suggestedFilename(), 'token-usage-user-7d.csv');
      const csv = fs.readFileSync(await download.path(), 'utf8').trim().split('\r\n');
      assert.equal(csv[0].split(',').slice(0, 3).join(','), 'user,calls,errors');
      const api = await stack.data('/usage?group_by=user&days=7&limit=1000');
      const byUser = new Map(csv.slice(1).map((line) => {
        const cells = line.split(',');
        return [cells[0], [Number(cells[1]), Number(cells[2]), Number(cells[9])]];
      }));
      assert.equal(byUser.size, api.rows.length);
      for (const r of api.rows) assert.deepEqual(byUser.get(r.user), [r.calls, r.errors, r.total_tokens], r.user);

      if (lang === 'zh' || lang === 'en') {
        await page.selectOption('#usage-group', 'model');
        await waitForTable(page, 'model');
        await screenshot(page, `usage-${lang}-desktop`);
      }
      assertNoProblems(t, problems, assert);
    } finally {
      await context.close();
    }
  });
}
