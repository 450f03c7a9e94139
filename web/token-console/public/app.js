// Starts the console page: language, tabs, admin sign-in, the shared live
// log stream, and the four views (dashboard, usage, logs, keys).

import { api, adminKey, setAdminKey, onUnauthorized, openLogStream, downloadExport } from './api.js';
import { t, lang, setLang, onLangChange, applyStatic } from './i18n.js';
import { Dashboard } from './dashboard.js';
import { Logs } from './logs.js';
import { Keys } from './keys.js';
import { Sources } from './sources.js';
import { UsageView } from './usage.js';
import { toast, errorText, throttle, onCurrencyChange } from './util.js';

const TABS = ['dashboard', 'usage', 'logs', 'keys'];

const dashboard = new Dashboard();
const logs = new Logs();
const usage = new UsageView();
const keys = new Keys({ onChange: (list) => logs.setKeys(list) });
const sources = new Sources({
  onFilter(source) {
    dashboard.source = source;
    dashboard.refresh({ quiet: true });
  },
  onNames: (names) => logs.setSources(names),
});

let stream = null;
let signingIn = false;
let currentTab = 'dashboard';
let started = false;

const refreshKeysSoon = throttle(() => {
  if (currentTab === 'keys') keys.load();
}, 800);

// ---- language -------------------------------------------------------------

function renderLangButton() {
  // The buttons name the other language in that language.
  for (const text of document.querySelectorAll('.lang-name')) text.setAttribute('lang', lang() === 'zh' ? 'en' : 'zh-CN');
}

for (const id of ['lang-btn', 'signin-lang']) {
  document.getElementById(id).addEventListener('click', () => setLang(lang() === 'zh' ? 'en' : 'zh'));
}

onCurrencyChange(() => {
  logs.render();
  keys.render();
});

onLangChange(() => {
  renderLangButton();
  dashboard.render();
  usage.render();
  logs.render();
  keys.render();
  sources.render();
  document.getElementById('signin-error').textContent = '';
});

// ---- tabs -----------------------------------------------------------------

function selectTab(name, { focus = false, fromHash = false } = {}) {
  if (!TABS.includes(name)) name = 'dashboard';
  currentTab = name;
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.dataset.tab === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on && focus) tab.focus();
  }
  for (const n of TABS) document.getElementById(`panel-${n}`).hidden = n !== name;
  if (!fromHash && location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  if (signingIn || !started) return;
  if (name === 'dashboard' && dashboard.loadedOnce) {
    dashboard.refresh({ quiet: true });
    sources.load();
  }
  if (name === 'keys') keys.load();
  if (name === 'usage') usage.load({ quiet: usage.loadedOnce });
  if (name === 'logs' && !logs.loaded && !logs.loading) logs.load();
}

const tablist = document.querySelector('[role="tablist"]');
tablist.addEventListener('click', (e) => {
  const tab = e.target.closest('[role="tab"]');
  if (tab) selectTab(tab.dataset.tab);
});
tablist.addEventListener('keydown', (e) => {
  const tabs = [...tablist.querySelectorAll('[role="tab"]')];
  const i = tabs.indexOf(document.activeElement);
  if (i === -1) return;
  let next = -1;
  if (e.key === 'ArrowRight') next = (i + 1) % tabs.length;
  else if (e.key === 'ArrowLeft') next = (i - 1 + tabs.length) % tabs.length;
  else if (e.key === 'Home') next = 0;
  else if (e.key === 'End') next = tabs.length - 1;
  if (next === -1) return;
  e.preventDefault();
  selectTab(tabs[next].dataset.tab, { focus: true });
});
window.addEventListener('hashchange', () => selectTab(location.hash.slice(1), { fromHash: true }));

// ---- live stream ----------------------------------------------------------

function startStream() {
  if (stream) return;
  stream = openLogStream({
    onEvent(name, data) {
      if (name !== 'log') return;
      logs.onLiveRow(data);
      dashboard.refreshSoon();
      if (currentTab === 'usage') usage.refreshSoon();
      refreshKeysSoon();
    },
    onState(state) {
      document.documentElement.dataset.stream = state;
      logs.setStreamState(state);
      if (state === 'open' && dashboard.loadedOnce) dashboard.refreshSoon();
    },
  });
}

function stopStream() {
  if (stream) stream.close();
  stream = null;
}

// ---- admin sign-in (SPEC §6) ----------------------------------------------

function showSignIn(err) {
  stopStream();
  const overlay = document.getElementById('signin');
  const main = document.getElementById('main');
  document.getElementById('signout-btn').hidden = true;
  if (!signingIn) {
    signingIn = true;
    overlay.hidden = false;
    main.inert = true;
    document.querySelector('.topbar nav').inert = true;
    document.getElementById('export-btn').disabled = true;
    const input = document.getElementById('signin-key');
    input.value = '';
    input.focus();
  }
  // A stored key that the server refused is wrong: say so with the server's words.
  if (err && adminKey()) {
    document.getElementById('signin-error').textContent = errorText(err);
    setAdminKey('');
  }
}

function hideSignIn() {
  signingIn = false;
  document.getElementById('signin').hidden = true;
  document.getElementById('main').inert = false;
  document.querySelector('.topbar nav').inert = false;
  document.getElementById('export-btn').disabled = false;
  document.getElementById('signin-error').textContent = '';
  document.getElementById('signout-btn').hidden = !adminKey();
}

onUnauthorized((err) => showSignIn(err));

document.getElementById('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = document.getElementById('signin-key');
  const errEl = document.getElementById('signin-error');
  const btn = document.getElementById('signin-submit');
  const key = input.value.trim();
  errEl.textContent = '';
  if (!key) {
    errEl.textContent = t('auth.required');
    input.setAttribute('aria-invalid', 'true');
    return;
  }
  btn.disabled = true;
  btn.textContent = t('auth.checking');
  setAdminKey(key);
  try {
    await api.stats();
    input.removeAttribute('aria-invalid');
    hideSignIn();
    start();
  } catch (err) {
    setAdminKey('');
    errEl.textContent = errorText(err);
    input.setAttribute('aria-invalid', 'true');
    input.select();
  } finally {
    btn.disabled = false;
    btn.textContent = t('auth.submit');
  }
});

document.getElementById('signin-key').addEventListener('input', (e) => {
  e.target.removeAttribute('aria-invalid');
});

document.getElementById('signout-btn').addEventListener('click', () => {
  setAdminKey('');
  keys.fullKeys.clear();
  showSignIn(null);
});

// ---- export ---------------------------------------------------------------

document.getElementById('export-btn').addEventListener('click', async (e) => {
  const btn = e.currentTarget;
  btn.disabled = true;
  try {
    await downloadExport(dashboard.source || undefined);
    toast(t('toast.exported'), 'success');
  } catch (err) {
    if (err && err.status !== 401) toast(errorText(err), 'error');
  } finally {
    btn.disabled = false;
  }
});

// ---- start ----------------------------------------------------------------

function start() {
  started = true;
  document.getElementById('signout-btn').hidden = !adminKey();
  dashboard.refresh().then(() => {
    if (dashboard.stats) logs.setModels((dashboard.stats.models || []).map((m) => m.name));
  });
  logs.load();
  keys.load();
  if (currentTab === 'usage') usage.load();
  sources.load();
  startStream();
}

applyStatic(document);
renderLangButton();
dashboard.render();
usage.render();
logs.render();
keys.render();
selectTab(location.hash.slice(1) || 'dashboard', { fromHash: true });
start();
