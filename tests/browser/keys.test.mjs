// The keys tab: a key created in the page is shown in full once, copies to
// the clipboard and works against /v1/chat/completions; after a reload only
// its display form is left; disabling and deleting (after confirming in the
// page's own dialog) make the gateway refuse it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, launchBrowser, openPage, assertNoProblems, waitUntil } from './lib/harness.mjs';

let stack;
let browser;

before(async () => {
  stack = await startStack();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

const readClipboard = (page) => page.evaluate(() => navigator.clipboard.readText());
const rowOf = (page, name) => page.locator('#keys-body tr', { has: page.locator('[data-col="name"] .strong', { hasText: new RegExp(`^${name}$`) }) });

test('a key created in the page is shown once, copies, works, and is gone after deletion', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'zh', hash: 'keys', clipboard: true });
  try {
    // No keys yet: the empty state.
    await page.locator('#keys-state [data-state="empty"]').waitFor();
    assert.equal(await page.textContent('#keys-state .state-text'), '暂无数据');

    // An empty name is refused before anything is sent.
    await page.click('#key-create');
    assert.equal(await page.textContent('#key-form-error'), '请输入密钥名称');
    assert.equal(await page.getAttribute('#key-name', 'aria-invalid'), 'true');

    await page.fill('#key-name', 'browser key');
    await page.fill('#key-desc', 'made by the browser test');
    await page.click('#key-create');
    const panel = page.locator('#created-panel');
    await panel.waitFor({ state: 'visible' });
    const full = await page.textContent('#created-value');
    assert.match(full, /^sk-tc-[A-Za-z0-9]{40}$/, 'the full key is shown');
    assert.ok((await panel.textContent()).includes('只显示这一次'), 'with a warning that it is shown only once');

    // Copy from the panel, then from the list while the page still holds it.
    await page.evaluate(() => navigator.clipboard.writeText('sentinel'));
    await page.click('#created-copy');
    await waitUntil(async () => (await readClipboard(page)) === full, 'clipboard holds the key');
    await page.evaluate(() => navigator.clipboard.writeText('sentinel'));
    const row = rowOf(page, 'browser key');
    await row.waitFor();
    await row.locator('[data-action="copy"]').click();
    await waitUntil(async () => (await readClipboard(page)) === full, 'list copy while in memory');

    // The list shows the display form, never the full key.
    const listed = (await stack.data('/keys')).find((k) => k.name === 'browser key');
    assert.equal(await row.locator('.key-value').textContent(), listed.value);
    assert.notEqual(listed.value, full);
    assert.equal(await row.locator('[data-col="last_used"]').textContent(), '从未使用');
    assert.ok((await row.locator('[data-col="name"]').textContent()).includes('made by the browser test'));

    // The key works against the gateway.
    assert.equal(await stack.chat(full, 'key-test-model'), 200);
    await stack.waitForCalls(1);

    // After a reload only the display form is left, and copying explains why it cannot.
    await page.reload();
    await rowOf(page, 'browser key').waitFor();
    assert.equal(await page.isVisible('#created-panel'), false);
    const html = await page.content();
    assert.ok(!html.includes(full), 'the full key is nowhere in the page after a reload');
    await page.waitForFunction(() => !document.querySelector('#keys-body [data-col="last_used"]').textContent.includes('从未使用'));
    await page.evaluate(() => navigator.clipboard.writeText('sentinel'));
    await rowOf(page, 'browser key').locator('[data-action="copy"]').click();
    const toast = page.locator('#toasts .toast').last();
    await toast.waitFor();
    assert.ok((await toast.textContent()).includes('完整密钥只在创建时显示一次'), await toast.textContent());
    assert.equal(await readClipboard(page), 'sentinel', 'nothing was copied');

    // Disable: the gateway refuses it (403); enable again: it works.
    const sw = rowOf(page, 'browser key').locator('input[role="switch"]');
    assert.equal(await sw.isChecked(), true);
    await sw.uncheck();
    await waitUntil(async () => (await stack.data('/keys')).find((k) => k.name === 'browser key').enabled === false, 'PATCH enabled=false');
    assert.equal(await stack.chat(full), 403);
    await rowOf(page, 'browser key').locator('input[role="switch"]').check();
    await waitUntil(async () => (await stack.data('/keys')).find((k) => k.name === 'browser key').enabled === true, 'PATCH enabled=true');
    assert.equal(await stack.chat(full), 200);

    // Delete asks first in the page's own dialog; cancelling keeps the key.
    const del = rowOf(page, 'browser key').locator('[data-action="delete"]');
    await del.click();
    const dialog = page.getByRole('dialog', { name: '删除这个密钥？' });
    await dialog.waitFor();
    assert.ok((await dialog.textContent()).includes('browser key'));
    assert.equal(await page.evaluate(() => document.activeElement.id), 'confirm-cancel', 'focus starts on Cancel');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await rowOf(page, 'browser key').count(), 1);
    assert.equal(await stack.chat(full), 200);

    await rowOf(page, 'browser key').locator('[data-action="delete"]').click();
    await dialog.waitFor();
    await dialog.getByRole('button', { name: '删除' }).click();
    await rowOf(page, 'browser key').waitFor({ state: 'detached' });
    assert.equal((await stack.data('/keys')).some((k) => k.name === 'browser key'), false);
    assert.equal(await stack.chat(full), 401, 'a deleted key is refused');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('the server\'s message is shown when creating a key fails; limits are shown', async (t) => {
  const taken = await stack.createKey('taken name');
  const patched = await stack.api('PATCH', `/keys/${taken.id}`, { token_limit: 20000, rpm_limit: 60 });
  assert.equal(patched.status, 200, JSON.stringify(patched.body));
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en', hash: 'keys' });
  try {
    await rowOf(page, 'taken name').waitFor();
    assert.equal(await rowOf(page, 'taken name').locator('[data-col="usage"] .sub:not(.key-cost)').textContent(), 'Budget 20,000 · 60 per minute');
    const { status, body } = await stack.api('POST', '/keys', { name: 'taken name' });
    assert.equal(status, 409);
    await page.fill('#key-name', 'taken name');
    await page.press('#key-name', 'Enter');
    await page.waitForFunction(() => document.querySelector('#key-form-error').textContent !== '');
    const text = await page.textContent('#key-form-error');
    assert.ok(text.includes('409') && text.includes(body.msg), text);
    assert.equal(await page.isVisible('#created-panel'), false);
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});

test('a key whose limit resets shows what its current period used, what is left and when it resets', async (t) => {
  const key = await stack.createKey('monthly key');
  const patched = await stack.api('PATCH', `/keys/${key.id}`, { token_limit: 50000, limit_period: 'month', cost_limit: 2.5 });
  assert.equal(patched.status, 200, JSON.stringify(patched.body));
  const view = patched.body.data;
  assert.equal(view.period_left, 50000 - view.period_used);
  assert.equal(view.cost_limit_nanos, 2500000000);
  for (const [lang, expected] of [
    ['en', `Resets monthly: ${view.period_used} used this period · 50,000 left · resets `],
    ['zh', `每月重置：本期已用 ${view.period_used} · 剩余 50,000 · `],
  ]) {
    const { page, context, problems } = await openPage(browser, stack, { lang, hash: 'keys' });
    try {
      const line = rowOf(page, 'monthly key').locator('[data-col="usage"] [data-period="month"]');
      await line.waitFor();
      const text = await line.textContent();
      assert.ok(text.startsWith(expected), `${lang}: ${text}`);
      const money = await rowOf(page, 'monthly key').locator('[data-col="usage"] [data-cost-limit="2500000000"]').textContent();
      assert.ok(money.startsWith(lang === 'en' ? 'Money limit ' : '金额额度 ') && money.includes('2.5'), `${lang}: ${money}`);
      const resets = await page.evaluate((at) => new Date(at).getTime(), view.period_resets_at);
      assert.ok(resets > Date.now(), `${lang}: the period ends in the future (${view.period_resets_at})`);
      assertNoProblems(t, problems, assert);
    } finally {
      await context.close();
    }
  }
});
