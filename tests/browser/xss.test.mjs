// Text that came from requests (model names, key names, descriptions) is
// shown as literal text on every tab: no element is created from it and no
// script runs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, launchBrowser, openPage, assertNoProblems, switchTab, XSS } from './lib/harness.mjs';

let stack;
let browser;

before(async () => {
  stack = await startStack();
  browser = await launchBrowser();
  const key = await stack.createKey(XSS, XSS);
  assert.equal(await stack.chat(key.value, XSS), 200);
  assert.equal(await stack.chat(key.value, 'plain-model'), 200);
  await stack.waitForCalls(2);
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function assertInert(page) {
  const found = await page.evaluate(() => ({
    imgs: document.querySelectorAll('img').length,
    injected: [...document.querySelectorAll('[onerror]')].length,
  }));
  assert.deepEqual(found, { imgs: 0, injected: 0 }, 'no element was created from data');
}

for (const lang of ['zh', 'en']) {
  test(`names containing markup are shown as text on every tab (${lang})`, async (t) => {
    const { page, context, problems } = await openPage(browser, stack, { lang });
    try {
      // Dashboard: the model table.
      await page.waitForFunction((name) => [...document.querySelectorAll('#models-body [data-col="name"]')].some((e) => e.textContent === name), XSS);
      await assertInert(page);

      // Logs: model and key name columns.
      await switchTab(page, 'logs');
      await page.waitForFunction((name) => [...document.querySelectorAll('#logs-body [data-col="model"]')].some((e) => e.textContent === name), XSS);
      const keyNames = await page.$$eval('#logs-body [data-col="key"]', (els) => els.map((e) => e.textContent));
      assert.ok(keyNames.every((k) => k === XSS), keyNames.join(' | '));
      // The model filter lists the name as an option's text.
      const options = await page.$$eval('#filter-model option', (os) => os.map((o) => o.textContent));
      assert.ok(options.includes(XSS));
      await assertInert(page);

      // Keys: name, description, and the delete confirmation.
      await switchTab(page, 'keys');
      const name = page.locator('#keys-body [data-col="name"] .strong');
      await name.first().waitFor();
      assert.equal(await name.first().textContent(), XSS);
      assert.equal(await page.locator('#keys-body [data-col="name"] .muted').first().textContent(), XSS);
      await page.locator('#keys-body [data-action="delete"]').first().click();
      await page.locator('#confirm-dialog[open]').waitFor();
      assert.ok((await page.textContent('#confirm-body')).includes(XSS));
      await page.click('#confirm-cancel');
      await page.locator('#confirm-dialog').waitFor({ state: 'hidden' });
      await assertInert(page);
      assertNoProblems(t, problems, assert);
    } finally {
      await context.close();
    }
  });
}

test('the page is served under a strict CSP with the right content types', async () => {
  const res = await fetch(stack.consoleUrl);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  const csp = res.headers.get('content-security-policy') || '';
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const html = await res.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline script');
  assert.doesNotMatch(html, /\son[a-z]+=/i, 'no inline event handler');
  assert.doesNotMatch(html, /\sstyle=/i, 'no style attribute');

  // Every asset the page references is served relative to the console path.
  const assets = [...html.matchAll(/(?:src|href)="\.\/([^"]+)"/g)].map((m) => m[1]);
  assert.ok(assets.includes('app.js') && assets.includes('style.css'));
  const types = { js: /javascript/, css: /^text\/css/, svg: /^image\/svg\+xml/ };
  for (const asset of [...assets, 'api.js', 'i18n.js', 'chart.js', 'dashboard.js', 'logs.js', 'keys.js', 'dialog.js', 'util.js']) {
    const r = await fetch(new URL(asset, stack.consoleUrl));
    assert.equal(r.status, 200, asset);
    assert.match(r.headers.get('content-type'), types[asset.split('.').pop()], asset);
    await r.arrayBuffer();
  }

  // The console path without its slash leads to the page.
  const bare = await fetch(stack.consoleUrl.replace(/\/$/, ''), { redirect: 'manual' });
  assert.ok([301, 302, 303, 307, 308].includes(bare.status), `redirect, got ${bare.status}`);
  assert.equal(new URL(bare.headers.get('location'), stack.origin).pathname, new URL(stack.consoleUrl).pathname);
});
