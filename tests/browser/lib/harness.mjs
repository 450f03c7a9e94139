// Shared plumbing of the browser tests: starts the real mock upstream and the
// real token-console binary (both on port 0), talks to their HTTP APIs, and
// launches Debian's Chromium through playwright-core.
//
// Nothing here sleeps to synchronise: every wait is for a condition (a line on
// stdout, an API answer, a page state).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..', '..');
export const ARTIFACTS = path.resolve(here, '..', 'artifacts');
const BIN = path.join(ROOT, 'target', 'debug');

export const XSS = '<img src=x onerror=alert(1)>';

/** Resolves with the first match of `re` on a line of `stream`, or rejects when the process ends or time runs out. */
function waitForLine(child, stream, re, what, timeoutMs = 60_000) {
  return new Promise((resolve, reject) => {
    const lines = [];
    const rl = readline.createInterface({ input: stream });
    const timer = setTimeout(() => {
      rl.close();
      reject(new Error(`${what}: no line matching ${re} within ${timeoutMs} ms; got:\n${lines.join('\n')}`));
    }, timeoutMs);
    const onExit = (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before it was ready; stdout:\n${lines.join('\n')}`));
    };
    child.once('exit', onExit);
    rl.on('line', (line) => {
      lines.push(line);
      const m = re.exec(line);
      if (m) {
        clearTimeout(timer);
        child.off('exit', onExit);
        // Keep draining stdout so the child never blocks on a full pipe.
        rl.removeAllListeners('line');
        rl.on('line', () => {});
        resolve(m);
      }
    });
  });
}

function requireBinary(name) {
  const p = path.join(BIN, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} is missing: run \`cargo build --bins\` in ${ROOT} first`);
  }
  return p;
}

/**
 * Starts mock-upstream and token-console in a fresh temporary directory.
 * `adminKey` sets console.admin_key; `totalTokens` sets quota.total_tokens.
 */
export async function startStack({ adminKey, totalTokens, extraYaml = '' } = {}) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tc-browser-'));
  const children = [];
  const stderrLogs = [];
  const spawnLogged = (bin, args, name) => {
    const child = spawn(bin, args, { cwd: tmp, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
    children.push(child);
    const log = fs.createWriteStream(path.join(tmp, `${name}.stderr.log`));
    child.stderr.pipe(log);
    stderrLogs.push(path.join(tmp, `${name}.stderr.log`));
    return child;
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await Promise.all(children.map((c) => new Promise((resolve) => {
      if (c.exitCode !== null || c.signalCode !== null) return resolve();
      c.once('exit', resolve);
      c.kill('SIGTERM');
      setTimeout(() => { if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); }, 5000).unref();
    })));
    if (!process.env.KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
  };

  try {
    const mock = spawnLogged(requireBinary('mock-upstream'), [], 'mock-upstream');
    const [, mockUrl] = await waitForLine(mock, mock.stdout, /mock-upstream listening on (http:\/\/\S+)/, 'mock-upstream');

    const lines = [
      'port: 0',
      `database_url: sqlite://${path.join(tmp, 'tc.db')}`,
      'console:',
      '  max_logs: 1000',
    ];
    if (adminKey) lines.push(`  admin_key: ${JSON.stringify(adminKey)}`);
    if (totalTokens !== undefined) lines.push('quota:', `  total_tokens: ${totalTokens}`);
    lines.push(
      'providers:',
      `  - { name: mock, kind: openai, base_url: "${mockUrl}/v1", api_key: "mock-key", models: ["*"] }`,
      `  - { name: mock-anthropic, kind: anthropic, base_url: "${mockUrl}", api_key: "mock-key", models: ["claude-*"] }`,
      extraYaml || '',
      '',
    );
    const configPath = path.join(tmp, 'config.yaml');
    fs.writeFileSync(configPath, lines.join('\n'));

    const tc = spawnLogged(requireBinary('token-console'), ['--config', configPath], 'token-console');
    const [, gateway, consoleUrl] = await waitForLine(tc, tc.stdout,
      /token-console ready gateway=(http:\/\/\S+) console=(http:\/\/\S+)/, 'token-console');
    const origin = new URL(consoleUrl).origin;

    const stack = {
      tmp,
      gateway,
      consoleUrl: consoleUrl.endsWith('/') ? consoleUrl : `${consoleUrl}/`,
      origin,
      adminKey,
      stop,
      /** Calls the console API and returns the parsed JSON body with the status. */
      async api(method, p, body, { key = adminKey } = {}) {
        const headers = { Accept: 'application/json' };
        if (key) headers.Authorization = `Bearer ${key}`;
        if (body !== undefined) headers['Content-Type'] = 'application/json';
        const res = await fetch(`${origin}/api/console${p}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
        const json = await res.json().catch(() => null);
        return { status: res.status, body: json };
      },
      /** The `data` of a successful console call; throws otherwise. */
      async data(p) {
        const { status, body } = await stack.api('GET', p);
        if (status !== 200 || !body || body.code !== 0) throw new Error(`GET ${p} → ${status} ${JSON.stringify(body)}`);
        return body.data;
      },
      async createKey(name, description = '') {
        const { status, body } = await stack.api('POST', '/keys', { name, description });
        if (status !== 200 || body.code !== 0) throw new Error(`create key → ${status} ${JSON.stringify(body)}`);
        return body.data;
      },
      /** One OpenAI chat call through the gateway (read to the end); returns the HTTP status. */
      async chat(key, model = 'gpt-test', content = 'hello', { stream = false, headers: extra = {}, maxTokens } = {}) {
        const headers = { 'Content-Type': 'application/json', ...extra };
        if (key) headers.Authorization = `Bearer ${key}`;
        const body = { model, messages: [{ role: 'user', content }] };
        if (stream) body.stream = true;
        if (maxTokens !== undefined) body.max_tokens = maxTokens;
        const res = await fetch(`${gateway}/v1/chat/completions`, {
          method: 'POST',
          headers,
          body: JSON.stringify(body),
        });
        await res.arrayBuffer();
        return res.status;
      },
      /** One Anthropic count_tokens call through the gateway; returns the HTTP status. */
      async countTokens(key, model = 'claude-test', content = 'hello') {
        const res = await fetch(`${gateway}/v1/messages/count_tokens`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01' },
          body: JSON.stringify({ model, messages: [{ role: 'user', content }] }),
        });
        await res.arrayBuffer();
        return res.status;
      },
      async models(key) {
        const res = await fetch(`${gateway}/v1/models`, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
        await res.arrayBuffer();
        return res.status;
      },
      /** Waits until `/stats` reports `n` calls (records are written in batches). */
      async waitForCalls(n, timeoutMs = 15_000) {
        return waitUntil(async () => {
          const s = await stack.data('/stats');
          return s.api_call_count >= n ? s : null;
        }, `stats.api_call_count >= ${n}`, timeoutMs);
      },
      stderr() {
        return stderrLogs.map((f) => { try { return fs.readFileSync(f, 'utf8'); } catch { return ''; } }).join('\n');
      },
    };
    return stack;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Polls `fn` until it returns a truthy value (which is returned). */
export async function waitUntil(fn, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
}

/**
 * Opens a page in a new context and records what must never happen: page
 * errors, CSP violations, JavaScript dialogs (alert/confirm/prompt).
 */
export async function openPage(browser, stack, { lang = 'zh', viewport = { width: 1280, height: 900 }, clipboard = false, hash = '', colorScheme = 'light' } = {}) {
  const context = await browser.newContext({
    viewport,
    locale: lang === 'zh' ? 'zh-CN' : 'en-US',
    deviceScaleFactor: 1,
    colorScheme,
    timezoneId: 'Asia/Shanghai',
  });
  if (clipboard) await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: stack.origin });
  const page = await context.newPage();
  const problems = { errors: [], dialogs: [], csp: [] };
  page.on('pageerror', (e) => problems.errors.push(e.message));
  page.on('dialog', async (d) => {
    problems.dialogs.push(`${d.type()}: ${d.message()}`);
    await d.dismiss().catch(() => {});
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) problems.csp.push(m.text());
  });
  await page.goto(`${stack.consoleUrl}${hash ? `#${hash}` : ''}`);
  return { context, page, problems };
}

export function assertNoProblems(t, problems, assert) {
  assert.deepEqual(problems.errors, [], 'no uncaught page errors');
  assert.deepEqual(problems.dialogs, [], 'no JavaScript dialogs');
  assert.deepEqual(problems.csp, [], 'no Content-Security-Policy violations');
}

export async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  // Let the bar and chart transitions finish so the picture is what a person sees.
  await page.evaluate(() => Promise.all(document.getAnimations().filter((a) => a.playState === 'running' && a.effect && a.effect.getComputedTiming().iterations !== Infinity).map((a) => a.finished.catch(() => {}))));
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Formats an integer the way the page does for `lang`. */
export function fmtInt(n, lang = 'zh') {
  return new Intl.NumberFormat(lang === 'zh' ? 'zh-CN' : 'en-US', { maximumFractionDigits: 0 }).format(n);
}

/** Waits for the page's live log stream to be open. */
export async function waitForStream(page) {
  await page.waitForFunction(() => document.documentElement.dataset.stream === 'open');
}

export async function switchTab(page, name) {
  await page.click(`#tab-${name}`);
  await page.locator(`#panel-${name}`).waitFor({ state: 'visible' });
}

/**
 * Every label a person can see or hear on the current tab: visible text nodes,
 * placeholders, aria-labels and titles, skipping data from the server
 * ([data-raw]) and the language buttons that name the other language ([lang]).
 */
export function collectLabels(page) {
  return page.evaluate(() => {
    const out = [];
    const skip = (el) => el.closest('[data-raw]') || el.closest('[lang]:not(html)');
    const shown = (el) => {
      if (!el.getClientRects().length) return false;
      const cs = getComputedStyle(el);
      return cs.visibility !== 'hidden' && cs.display !== 'none';
    };
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const text = n.textContent.trim();
      const el = n.parentElement;
      if (!text || !el || skip(el) || !shown(el) || el.closest('script,style,option')) continue;
      out.push(text);
    }
    for (const el of document.body.querySelectorAll('*')) {
      if (skip(el)) continue;
      const visibleSelf = shown(el) || (el.tagName === 'OPTION' && shown(el.closest('select')));
      if (!visibleSelf) continue;
      if (el.tagName === 'OPTION') out.push(el.textContent.trim());
      for (const attr of ['placeholder', 'aria-label', 'title']) {
        const v = el.getAttribute(attr);
        if (v) out.push(v);
      }
    }
    out.push(document.title);
    return out.filter(Boolean);
  });
}

