// With console.admin_key configured the page asks for it, shows the server's
// message for a wrong one, works with the right one (including the live log
// stream, which needs the header too), remembers it for the session, and
// signs out.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startStack, launchBrowser, openPage, assertNoProblems, switchTab, waitForStream, fmtInt, screenshot, collectLabels } from './lib/harness.mjs';

const ADMIN = 'admin-key-for-browser-tests-0123456789';

let stack;
let browser;

before(async () => {
  stack = await startStack({ adminKey: ADMIN });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

test('the page asks for the admin key, rejects a wrong one and works with the right one', async (t) => {
  // The server really requires it.
  const refused = await stack.api('GET', '/stats', undefined, { key: null });
  assert.equal(refused.status, 401);
  const wrong = await stack.api('GET', '/stats', undefined, { key: 'wrong-key' });
  assert.equal(wrong.status, 401);
  assert.ok(wrong.body.msg, 'the server explains the 401');

  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh' });
  try {
    const form = page.locator('#signin');
    await form.waitFor({ state: 'visible' });
    assert.equal(await page.evaluate(() => document.activeElement.id), 'signin-key', 'the key field has focus');
    assert.equal(await page.evaluate(() => document.getElementById('main').inert), true, 'the console behind is inert');
    await screenshot(page, 'signin-zh');

    await page.fill('#signin-key', 'wrong-key');
    await page.click('#signin-submit');
    await page.waitForFunction(() => document.getElementById('signin-error').textContent !== '');
    const err = await page.textContent('#signin-error');
    assert.ok(err.includes(wrong.body.msg), `shows the server's msg: ${err}`);
    assert.equal(await form.isVisible(), true);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tc.adminKey')), null, 'a wrong key is not kept');

    await page.fill('#signin-key', ADMIN);
    await page.press('#signin-key', 'Enter');
    await form.waitFor({ state: 'hidden' });
    await page.waitForFunction(() => document.querySelector('#card-calls [data-value]').textContent === '0');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tc.adminKey')), ADMIN);
    assert.equal(await page.isVisible('#signout-btn'), true);

    // Export needs the header too: the page fetches it and hands over a file.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-btn')]);
    assert.match(download.suggestedFilename(), /^token-stats-\d{8}\.json$/);
    const exported = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
    assert.ok(exported && typeof exported === 'object', 'the export is JSON');
    assert.ok(!JSON.stringify(exported).includes(ADMIN), 'the admin key is not in the export');

    // The live stream works with the header: a call appears in the logs.
    const key = (await stack.api('POST', '/keys', { name: 'auth key' })).body.data;
    assert.equal(await stack.chat(ADMIN), 401, 'the admin key is not a gateway key');
    await switchTab(page, 'logs');
    await waitForStream(page);
    assert.equal(await stack.chat(key.value, 'auth-model'), 200);
    await page.waitForFunction(() => [...document.querySelectorAll('#logs-body [data-col="model"]')].some((e) => e.textContent === 'auth-model'), null, { timeout: 15000 });

    // Kept for the session: a reload does not ask again.
    await page.reload();
    await page.locator('#logs-body tr').first().waitFor();
    assert.equal(await form.isVisible(), false);
    await switchTab(page, 'dashboard');
    const stats = (await stack.api('GET', '/stats')).body.data;
    await page.waitForFunction((v) => document.querySelector('#card-calls [data-value]').textContent === v, fmtInt(stats.api_call_count));

    // Sign out: the form comes back and the key is forgotten.
    await page.click('#signout-btn');
    await form.waitFor({ state: 'visible' });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tc.adminKey')), null);
    await page.reload();
    await form.waitFor({ state: 'visible' });
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('the sign-in form speaks English too', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en' });
  try {
    await page.locator('#signin').waitFor({ state: 'visible' });
    assert.equal(await page.textContent('#signin-title'), 'Admin key required');
    assert.equal(await page.textContent('#signin-submit'), 'Sign in');
    await page.click('#signin-submit');
    assert.equal(await page.textContent('#signin-error'), 'Enter the admin key');
    await screenshot(page, 'signin-en');
    const cjk = /[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]/;
    assert.deepEqual((await collectLabels(page)).filter((s) => cjk.test(s)), [], 'the sign-in form is all English');
    // Its own language button switches it.
    await page.click('#signin-lang');
    await page.waitForFunction(() => document.documentElement.lang === 'zh-CN');
    assert.equal(await page.textContent('#signin-title'), '需要管理员密钥');
    assert.equal(await page.textContent('#signin-submit'), '登录');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});
