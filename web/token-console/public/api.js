// The console's only door to the server: JSON calls to /api/console/* and
// the live log stream, both carrying the admin key when one is stored.
//
// Failures become `ApiError` with the HTTP status and the server's `msg`
// (status 0 means the server could not be reached). A 401 anywhere also
// tells the app to ask for the admin key.

const BASE = '/api/console';
const KEY_STORAGE = 'tc.adminKey';

export class ApiError extends Error {
  constructor(status, msg) {
    super(msg || `HTTP ${status}`);
    this.status = status;
    this.serverMsg = msg || '';
  }
}

const unauthorizedListeners = new Set();

/** Called with the ApiError whenever the server answers 401. */
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
}

function notifyUnauthorized(err) {
  for (const fn of unauthorizedListeners) fn(err);
}

export function adminKey() {
  try { return sessionStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; }
}

export function setAdminKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch { /* session storage disabled: the key lives only in memory below */ }
  memoryKey = key || '';
}

let memoryKey = '';

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = adminKey() || memoryKey;
  if (key) headers.set('Authorization', `Bearer ${key}`);
  return headers;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '') continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

async function readEnvelope(res) {
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok || !body || (typeof body.code === 'number' && body.code !== 0)) {
    const msg = body && typeof body.msg === 'string' ? body.msg : '';
    const err = new ApiError(res.ok ? (body && body.code) || 500 : res.status, msg);
    if (err.status === 401) notifyUnauthorized(err);
    throw err;
  }
  return body;
}

/** Sends one request and returns the envelope's `data` (or the whole body when asked). */
export async function request(method, path, { params, body, whole = false, signal } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  const init = { method, headers, signal, cache: 'no-store' };
  if (body !== undefined) {
    headers.set('Content-Type', 'application/json');
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(`${BASE}${path}${query(params)}`, init);
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, '');
  }
  const env = await readEnvelope(res);
  return whole ? env : env.data;
}

export const api = {
  stats: (params) => request('GET', '/stats', { params }),
  trend: (days, source) => request('GET', '/usage-trend', { params: source ? { days, source } : { days } }),
  anomalies: (hours) => request('GET', '/anomalies', { params: { hours } }),
  alerts: (limit) => request('GET', '/alerts', { params: { limit } }),
  usage: (params) => request('GET', '/usage', { params }),
  logs: (params, signal) => request('GET', '/logs', { params, signal }),
  keys: () => request('GET', '/keys'),
  sources: () => request('GET', '/sources'),
  createKey: (name, description) => request('POST', '/keys', { body: { name, description } }),
  updateKey: (id, patch) => request('PATCH', `/keys/${encodeURIComponent(id)}`, { body: patch }),
  deleteKey: (id) => request('DELETE', `/keys/${encodeURIComponent(id)}`, { whole: true }),
};

/**
 * Downloads the export file. It needs the auth header, so it is fetched and
 * handed to the browser as a blob rather than linked directly.
 */
export async function downloadExport(source) {
  let res;
  try {
    res = await fetch(`${BASE}/export${query({ source })}`, { headers: authHeaders(), cache: 'no-store' });
  } catch {
    throw new ApiError(0, '');
  }
  if (!res.ok) await readEnvelope(res);
  const blob = await res.blob();
  const disposition = res.headers.get('Content-Disposition') || '';
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const today = new Date();
  const stamp = `${today.getFullYear()}${String(today.getMonth() + 1).padStart(2, '0')}${String(today.getDate()).padStart(2, '0')}`;
  const name = m ? decodeURIComponent(m[1]) : `token-stats-${stamp}.json`;
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * Follows the live log stream (Server-Sent Events) with fetch, because
 * EventSource cannot send the Authorization header. Reconnects with backoff
 * until `close()` is called.
 *
 * `onEvent(name, data)` gets each parsed event; `onState(state)` gets
 * 'connecting' | 'open' | 'reconnecting' | 'unauthorized' | 'closed'.
 */
export function openLogStream({ onEvent, onState }) {
  let controller = null;
  let closed = false;
  let retryDelay = 1000;
  let retryTimer = null;

  const setState = (s) => { if (onState) onState(s); };

  async function connect() {
    if (closed) return;
    controller = new AbortController();
    setState('connecting');
    let res;
    try {
      res = await fetch(`${BASE}/logs/stream`, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: controller.signal,
        cache: 'no-store',
      });
    } catch (e) {
      return scheduleRetry();
    }
    if (res.status === 401) {
      let msg = '';
      try { msg = (await res.json()).msg || ''; } catch { /* no body */ }
      setState('unauthorized');
      notifyUnauthorized(new ApiError(401, msg));
      return;
    }
    if (!res.ok || !res.body) return scheduleRetry();
    retryDelay = 1000;
    setState('open');
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let eventName = '';
    let dataLines = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.search(/\r\n|\r|\n/)) !== -1) {
          const line = buffer.slice(0, nl);
          const sepLen = buffer.startsWith('\r\n', nl) ? 2 : 1;
          buffer = buffer.slice(nl + sepLen);
          if (line === '') {
            if (dataLines.length) {
              const raw = dataLines.join('\n');
              let data = raw;
              try { data = JSON.parse(raw); } catch { /* keep the text */ }
              try { onEvent(eventName || 'message', data); } catch (err) { console.error(err); }
            }
            eventName = '';
            dataLines = [];
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon === -1 ? line : line.slice(0, colon);
          let val = colon === -1 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'event') eventName = val;
          else if (field === 'data') dataLines.push(val);
        }
      }
    } catch (e) {
      if (closed) return;
    }
    scheduleRetry();
  }

  function scheduleRetry() {
    if (closed) return;
    setState('reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 15000);
  }

  connect();

  return {
    close() {
      closed = true;
      clearTimeout(retryTimer);
      if (controller) controller.abort();
      setState('closed');
    },
  };
}
