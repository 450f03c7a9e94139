// Screenshots of each tab in Chinese and English, on a desktop and a narrow
// (390×844) viewport, written to tests/browser/artifacts/ for a person to
// look at. The data comes from real calls through the gateway.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startStack, launchBrowser, openPage, assertNoProblems, switchTab, screenshot, waitForStream, ARTIFACTS } from './lib/harness.mjs';

let stack;
let browser;

before(async () => {
  stack = await startStack({ totalTokens: 5000 });
  browser = await launchBrowser();
  const prod = await stack.createKey('production', 'main web app');
  const staging = await stack.createKey('staging', 'QA environment');
  await stack.createKey('ci-runner', '');
  const limited = await stack.api('PATCH', `/keys/${staging.id}`, { token_limit: 20000, rpm_limit: 60 });
  assert.equal(limited.status, 200, JSON.stringify(limited.body));
  const plan = [
    [prod.value, 'gpt-4o-mini', 5],
    [prod.value, 'claude-sonnet-4-6', 3],
    [staging.value, 'mock-latency-150', 2],
    [staging.value, 'mock-error-429', 1],
    [prod.value, 'mock-error-500', 1],
  ];
  let n = 0;
  for (const [key, model, count] of plan) {
    for (let i = 0; i < count; i++) {
      await stack.chat(key, model, `request ${i} for ${model}`);
      n++;
    }
  }
  await stack.chat(prod.value, 'gpt-4o-mini', 'a streamed answer', { stream: true });
  n++;
  await stack.models(staging.value);
  n++;
  // A wrong key is answered 401 and counted in /metrics, never recorded.
  await stack.chat('sk-tc-wrong', 'gpt-4o-mini');
  await stack.waitForCalls(n);
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

const VIEWPORTS = {
  desktop: { width: 1280, height: 900 },
  narrow: { width: 390, height: 844 },
};

for (const lang of ['zh', 'en']) {
  for (const [size, viewport] of Object.entries(VIEWPORTS)) {
    test(`screenshots: ${lang}, ${size}`, async (t) => {
      const { page, context, problems } = await openPage(browser, stack, { lang, viewport });
      try {
        await page.waitForFunction(() => document.querySelectorAll('#models-body tr').length > 0 && document.querySelector('#trend-chart .chart-svg'));
        await waitForStream(page);
        await screenshot(page, `dashboard-${lang}-${size}`);

        await switchTab(page, 'logs');
        await page.locator('#logs-body tr').first().waitFor();
        await screenshot(page, `logs-${lang}-${size}`);

        await switchTab(page, 'keys');
        await page.locator('#keys-body tr').first().waitFor();
        await screenshot(page, `keys-${lang}-${size}`);

        if (size === 'desktop') {
          // The one-time panel of a new key, and the delete confirmation.
          await page.fill('#key-name', `shot-${lang}`);
          await page.fill('#key-desc', lang === 'zh' ? '截图用' : 'for the screenshot');
          await page.click('#key-create');
          await page.locator('#created-panel').waitFor({ state: 'visible' });
          await screenshot(page, `keys-created-${lang}`);
          await page.locator('#keys-body [data-action="delete"]').last().click();
          await page.locator('#confirm-dialog[open]').waitFor();
          await page.screenshot({ path: path.join(ARTIFACTS, `keys-confirm-${lang}.png`) });
          await page.click('#confirm-ok');
          await page.locator('#confirm-dialog').waitFor({ state: 'hidden' });

          // The chart's tooltip on a focused day.
          await switchTab(page, 'dashboard');
          await page.focus('#trend-chart .day[tabindex="0"]');
          await page.locator('#trend-chart .chart-tip').waitFor({ state: 'visible' });
          await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-tooltip-${lang}.png`) });
        }
        assertNoProblems(t, problems, assert);
      } finally {
        await context.close();
      }
    });
  }
}

test('screenshots: dark colour scheme', async (t) => {
  const { page, context, problems } = await openPage(browser, stack, { lang: 'en', colorScheme: 'dark' });
  try {
    await page.waitForFunction(() => document.querySelectorAll('#models-body tr').length > 0 && document.querySelector('#trend-chart .chart-svg'));
    await screenshot(page, 'dashboard-en-dark');
    await switchTab(page, 'logs');
    await page.locator('#logs-body tr').first().waitFor();
    await screenshot(page, 'logs-en-dark');
    await switchTab(page, 'keys');
    await page.locator('#keys-body tr').first().waitFor();
    await screenshot(page, 'keys-en-dark');
    assertNoProblems(t, problems, assert);
  } finally {
    await context.close();
  }
});
