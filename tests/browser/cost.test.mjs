// Cost in money on the page: the used-tokens card, the dashed cost line of the
// trend, the cost columns of the model, key and log tables, in USD and the
// configured display currency, "unpriced" shown as such — in both languages,
// each figure equal to what the console API returns.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, launchBrowser, openPage, assertNoProblems, waitUntil, switchTab, screenshot } from './lib/harness.mjs';

const PRICING = [
  'pricing:',
  '  models:',
  '    - match: "priced-*"',
  '      input: 1.25',
  '      output: 10',
  '  display_currency: CNY',
  '  display_rate: 7.1',
].join('\n');

let stack;
let browser;

before(async () => {
  stack = await startStack({ extraYaml: PRICING });
  browser = await launchBrowser();
  const key = await stack.createKey('cost key');
  for (const model of ['priced-model', 'priced-model', 'house-model']) {
    assert.equal(await stack.chat(key.value, model, `what does ${model} cost`), 200);
  }
  await stack.waitForCalls(3);
  stack.key = key;
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** The page's money format (two decimals from 1 up, four from a cent, else six). */
function money(amount, code, lang) {
  const abs = Math.abs(amount);
  const digits = abs === 0 || abs >= 1 ? 2 : abs >= 0.01 ? 4 : 6;
  return new Intl.NumberFormat(lang === 'zh' ? 'zh-CN' : 'en-US', { style: 'currency', currency: code, minimumFractionDigits: 2, maximumFractionDigits: digits }).format(amount);
}

function cost(usd, lang) {
  return `${money(usd, 'USD', lang)} · ${money(usd * 7.1, 'CNY', lang)}`;
}

for (const lang of ['zh', 'en']) {
  test(`cost on the card, the trend and the tables (${lang})`, async (t) => {
    const stats = await stack.data('/stats');
    const unpriced = lang === 'zh' ? '未定价' : 'unpriced';
    assert.ok(stats.total_cost > 0);
    assert.equal(stats.unpriced_calls, 1);
    const { page, context, problems } = await openPage(browser, stack, { lang });
    try {
      const card = page.locator('#card-used [data-cost]');
      await waitUntil(async () => (await card.getAttribute('data-nanos')) === String(stats.total_cost_nanos), 'cost on the card');
      const cardText = await card.textContent();
      assert.ok(cardText.includes(cost(stats.total_cost, lang)), cardText);
      assert.ok(cardText.includes('1'), 'the unpriced call is counted');

      const row = (model) => page.locator(`#models-body tr[data-model="${model}"] [data-col="cost"]`);
      await waitUntil(async () => (await row('house-model').count()) === 1, 'model rows');
      const priced = stats.models.find((m) => m.name === 'priced-model');
      assert.equal(await row('priced-model').getAttribute('data-nanos'), String(priced.cost_nanos));
      assert.equal((await row('priced-model').textContent()).trim(), cost(priced.cost, lang));
      assert.equal((await row('house-model').textContent()).trim(), unpriced);

      const trend = await stack.data('/usage-trend?days=7');
      await page.locator('#trend-chart .series-cost').waitFor();
      const points = await page.locator('#trend-chart .pt-cost').evaluateAll((els) => els.map((e) => Number(e.dataset.value)));
      assert.deepEqual(points, trend.costData);
      await page.locator('#trend-chart .day').last().focus();
      const tip = await page.locator('#trend-chart .tip-value[data-series="cost"]').textContent();
      assert.equal(tip, money(trend.costData.at(-1), 'USD', lang) + ' · ' + money(trend.costData.at(-1) * 7.1, 'CNY', lang));
      await screenshot(page, `cost-dashboard-${lang}`);

      await switchTab(page, 'logs');
      const logs = await stack.data('/logs?limit=10');
      await waitUntil(async () => (await page.locator('#logs-body tr').count()) === logs.length, 'log rows');
      for (const r of logs) {
        const text = (await page.locator(`#logs-body tr[data-id="${r.id}"] [data-col="cost"]`).textContent()).trim();
        assert.equal(text, r.cost === null ? unpriced : cost(r.cost, lang), `log ${r.id}`);
      }
      await screenshot(page, `cost-logs-${lang}`);

      await switchTab(page, 'keys');
      const keys = await stack.data('/keys');
      const mine = keys.find((k) => k.id === stack.key.id);
      const keyCost = page.locator(`#keys-body tr[data-id="${mine.id}"] .key-cost`);
      await keyCost.waitFor();
      assert.equal(await keyCost.getAttribute('data-nanos'), String(mine.cost_nanos));
      assert.ok((await keyCost.textContent()).includes(cost(mine.cost, lang)));
      assertNoProblems(t, problems, assert);
    } finally {
      await context.close();
    }
  });
}
