// Small helpers shared by the views: element building (text is always a
// text node, never HTML), number and date formatting, toasts and the
// loading / empty / error states.

import { t, locale } from './i18n.js';

/**
 * Builds an element. `attrs` keys: `class`, `text` (a text node), `dataset`,
 * `on` ({event: handler}), anything else goes through setAttribute.
 * Children may be nodes or strings (strings become text nodes).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.append(document.createTextNode(String(v)));
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Builds an SVG element with attributes set through setAttribute. */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

export function fmtInt(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: 0 }).format(Number(n));
}

export function fmtNum(n, digits = 2) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(Number(n));
}

/** Compact axis numbers: 1.2K, 3.4M (or 1.2万 in Chinese). */
export function fmtCompact(n) {
  return new Intl.NumberFormat(locale(), { notation: 'compact', maximumFractionDigits: 1 }).format(Number(n) || 0);
}

let displayCurrency = null;
const currencyListeners = new Set();

/** The second currency costs are shown in (`{code, rate}` from the stats), or null for USD only. */
export function setDisplayCurrency(c) {
  const next = c && c.code && Number(c.rate) > 0 ? { code: String(c.code), rate: Number(c.rate) } : null;
  if (JSON.stringify(next) === JSON.stringify(displayCurrency)) return;
  displayCurrency = next;
  for (const fn of currencyListeners) fn();
}

/** Calls `fn` whenever the display currency changes (views showing costs render again). */
export function onCurrencyChange(fn) {
  currencyListeners.add(fn);
}

/** An amount of money: two decimals from 1 up, more below so that small costs stay visible. */
function money(amount, code) {
  const abs = Math.abs(amount);
  const digits = abs === 0 || abs >= 1 ? 2 : abs >= 0.01 ? 4 : 6;
  try {
    return new Intl.NumberFormat(locale(), { style: 'currency', currency: code, minimumFractionDigits: 2, maximumFractionDigits: digits }).format(amount);
  } catch {
    return `${code} ${amount.toFixed(digits)}`;
  }
}

/** A cost in USD, and in the display currency when one is configured; null is "unpriced". */
export function fmtCost(usd) {
  if (usd === null || usd === undefined || Number.isNaN(Number(usd))) return t('cost.unpriced');
  const n = Number(usd);
  const text = money(n, 'USD');
  return displayCurrency ? `${text} · ${money(n * displayCurrency.rate, displayCurrency.code)}` : text;
}

export function fmtMs(n) {
  if (n === null || n === undefined) return '—';
  return t('unit.ms', { n: fmtNum(n, n >= 100 ? 0 : 2) });
}

export function fmtPercent(n) {
  if (n === null || n === undefined) return '—';
  return t('unit.percent', { n: fmtNum(n, 2) });
}

const NEVER = '0001-01-01T00:00:00Z';

export function isNever(ts) {
  if (!ts) return true;
  if (ts === NEVER || String(ts).startsWith('0001-01-01')) return true;
  return false;
}

/** A timestamp in the browser's time zone, in the page's language. */
export function fmtDateTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return new Intl.DateTimeFormat(locale(), {
    year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  }).format(d);
}

/** Text for an ApiError (or anything thrown). */
export function errorText(err) {
  if (!err || err.status === 0 || err.status === undefined) return t('state.networkError');
  if (err.serverMsg) return t('state.httpError', { status: err.status, msg: err.serverMsg });
  return t('state.unknownError', { status: err.status });
}

/**
 * Renders a state block (loading / empty / error) into `container`.
 * `retry` adds a retry button for errors.
 */
export function renderState(container, kind, { text, retry } = {}) {
  clear(container);
  const box = h('div', { class: `state state-${kind}`, role: kind === 'error' ? 'alert' : 'status', dataset: { state: kind } });
  if (kind === 'loading') box.append(h('span', { class: 'spinner', 'aria-hidden': 'true' }));
  box.append(h('span', { class: 'state-text', text: text || t(kind === 'loading' ? 'state.loading' : 'state.empty') }));
  if (kind === 'error' && retry) {
    box.append(h('button', { type: 'button', class: 'btn btn-small', on: { click: retry } }, t('action.retry')));
  }
  container.append(box);
  return box;
}

let toastRegion = null;

/** Shows a short message in the polite live region at the bottom of the page. */
export function toast(text, kind = 'info') {
  if (!toastRegion) toastRegion = document.getElementById('toasts');
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  toastRegion.append(el);
  const ttl = Math.max(3500, Math.min(9000, text.length * 70));
  setTimeout(() => {
    el.classList.add('toast-leaving');
    setTimeout(() => el.remove(), 300);
  }, ttl);
}

/** Copies text to the clipboard; falls back to a hidden textarea and execCommand. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { /* fall back below */ }
  }
  const ta = h('textarea', { class: 'visually-hidden', readonly: true, 'aria-hidden': 'true' });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  ta.remove();
  return ok;
}

/**
 * Runs `fn` at most once per `ms`, always after the last call (so a steady
 * stream of events still refreshes every `ms`, unlike a debounce).
 */
export function throttle(fn, ms) {
  let timer = null;
  return (...args) => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}
