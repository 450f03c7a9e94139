// Chinese and English: chosen from the browser, switchable, remembered; no
// label of the page is left in the other language (texts, placeholders,
// aria-labels, titles, empty states). Also the keyboard use of the tabs and
// the "unlimited" cards of a console without a budget.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, launchBrowser, openPage, assertNoProblems, switchTab, collectLabels } from './lib/harness.mjs';

const CJK = /[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]/;
// Words that are the same in both languages: product and protocol names.
// Client families and count_tokens are the API's own identifiers, the same in every language.
const SHARED = [/\b(claude-cli|codex|openai-python|openai-node|anthropic-python|anthropic-typescript|curl|count_tokens)\b/g, /console\.admin_key/g, /CONSOLE_ADMIN_KEY/g, /\bTokens?\b/g, /\bAPI\b/g, /\bLLM\b/g, /\bJSON\b/g, /\bms\b/g];

let stack;
let browser;

before(async () => {
  // No quota (unlimited) and no calls yet: the empty states are on show.
  stack = await startStack();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function collectAllTabs(page) {
  const all = [];
  for (const tab of ['dashboard', 'logs', 'keys']) {
    await switchTab(page, tab);
    await page.locator(`#panel-${tab} [data-state="loading"]`).waitFor({ state: 'detached' });
    all.push(...await collectLabels(page));
  }
  await switchTab(page, 'dashboard');
  return all;
}

const i18nKeys = (page) => page.$$eval('[data-i18n]', (els) => els.map((e) => [e.dataset.i18n, e.textContent]));

test('switching the language changes every label of the page', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh' });
  try {
    await page.waitForFunction(() => document.querySelector('#card-calls [data-value]').textContent === '0');
    assert.equal(await page.getAttribute('html', 'lang'), 'zh-CN');
    // Without a budget the cards say so.
    assert.equal(await page.textContent('#card-total [data-value]'), '不限');
    assert.equal(await page.textContent('#card-remaining [data-value]'), '不限');
    // Empty states, in Chinese.
    await page.locator('#models-state [data-state="empty"]').waitFor();
    assert.equal(await page.textContent('#models-state .state-text'), '暂无数据');

    const zh = await collectAllTabs(page);
    const zhKeys = await i18nKeys(page);
    const leftoverEnglish = zh.filter((s) => /[A-Za-z]{3,}/.test(SHARED.reduce((acc, re) => acc.replace(re, ''), s)));
    assert.deepEqual(leftoverEnglish, [], 'no English label in the Chinese page');

    await page.click('#lang-btn');
    await page.waitForFunction(() => document.documentElement.lang === 'en');
    assert.equal(await page.textContent('#card-total [data-value]'), 'Unlimited');
    assert.equal(await page.textContent('#models-state .state-text'), 'No data yet');
    const en = await collectAllTabs(page);
    const leftoverChinese = en.filter((s) => CJK.test(s));
    assert.deepEqual(leftoverChinese, [], 'no Chinese label in the English page');
    const zhCjk = new Set(zh.filter((s) => CJK.test(s)));
    assert.deepEqual(en.filter((s) => zhCjk.has(s)), []);

    // Every statically labelled element changed its text.
    const enKeys = await i18nKeys(page);
    const unchanged = zhKeys.filter(([k, v], i) => enKeys[i][1] === v).map(([k]) => k);
    assert.deepEqual(unchanged, [], 'elements whose label did not change');

    // Both tables hold the same keys.
    const tables = await page.evaluate(async () => {
      const { TRANSLATIONS } = await import('./i18n.js');
      return { zh: Object.keys(TRANSLATIONS.zh).sort(), en: Object.keys(TRANSLATIONS.en).sort() };
    });
    assert.deepEqual(tables.zh, tables.en);

    // Remembered across a reload; and back to Chinese.
    await page.reload();
    await page.waitForFunction(() => document.documentElement.lang === 'en');
    assert.equal(await page.textContent('#tab-keys'), 'Keys');
    await page.click('#lang-btn');
    await page.waitForFunction(() => document.documentElement.lang === 'zh-CN');
    assert.equal(await page.textContent('#tab-keys'), '密钥管理');
    const zhAgain = await collectAllTabs(page);
    assert.deepEqual(zhAgain.filter((s) => /[A-Za-z]{3,}/.test(SHARED.reduce((acc, re) => acc.replace(re, ''), s))), []);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('an English browser gets the English page; data-driven labels are translated too', async (t) => {
  const key = await stack.createKey('k-1');
  assert.equal(await stack.chat(key.value, 'm-1'), 200);
  assert.equal(await stack.chat(key.value, 'mock-error-500'), 500);
  await stack.waitForCalls(2);
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en' });
  try {
    await page.waitForFunction(() => document.documentElement.lang === 'en');
    await page.waitForFunction(() => document.querySelector('#card-calls [data-value]').textContent === '2');
    const en = await collectAllTabs(page);
    assert.deepEqual(en.filter((s) => CJK.test(s)), []);
    await page.click('#lang-btn');
    await page.waitForFunction(() => document.documentElement.lang === 'zh-CN');
    const zh = await collectAllTabs(page);
    assert.deepEqual(zh.filter((s) => /[A-Za-z]{3,}/.test(SHARED.reduce((acc, re) => acc.replace(re, ''), s))), []);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('the tabs are a keyboard-usable tablist', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en' });
  try {
    await page.focus('#tab-dashboard');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-usage');
    assert.equal(await page.getAttribute('#tab-usage', 'aria-selected'), 'true');
    assert.equal(await page.isVisible('#panel-usage'), true);
    assert.equal(await page.isVisible('#panel-dashboard'), false);
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-logs');
    assert.equal(await page.isVisible('#panel-logs'), true);
    await page.keyboard.press('End');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-keys');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-dashboard');
    await page.keyboard.press('ArrowLeft');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-keys');
    // Only the selected tab is in the tab order, and Tab moves into the panel.
    assert.deepEqual(await page.$$eval('[role="tab"]', (tabs) => tabs.map((x) => x.tabIndex)), [-1, -1, -1, 0]);
    await page.keyboard.press('Tab');
    const inPanel = await page.evaluate(() => document.activeElement.closest('[role="tabpanel"]')?.id || document.activeElement.closest('.top-actions')?.className);
    assert.ok(inPanel, 'focus moved on from the tablist');
    // The focus ring is visible.
    await page.focus('#tab-logs');
    await page.keyboard.press('ArrowLeft');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.equal(outline, 'solid');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});
