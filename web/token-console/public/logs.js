// The logs tab: the newest calls first, live rows from the log stream (with
// a pause switch), a search box that filters as you type, filters by model,
// key, status class, client and kind (calls or count_tokens), and "load more"
// paging by `before_id`.

import { api } from './api.js';
import { t } from './i18n.js';
import { h, clear, fmtInt, fmtCost, fmtDateTime, errorText, renderState, debounce } from './util.js';

const PAGE = 100;
/** Most rows kept on the page; older ones drop off ("load more" brings them back). */
const MAX_ROWS = 2000;
const STATUS_CLASS = /^[1-5]xx$/i;
/** The endpoint of Anthropic's token counting, recorded apart from calls. */
const COUNT_TOKENS = '/v1/messages/count_tokens';

export function statusClass(status) {
  const s = Number(status);
  if (s >= 200 && s < 300) return '2xx';
  if (s >= 300 && s < 400) return '3xx';
  if (s >= 400 && s < 500) return '4xx';
  if (s >= 500) return '5xx';
  return '1xx';
}

export class Logs {
  constructor() {
    this.rows = [];
    this.loaded = false;
    this.loading = false;
    this.error = null;
    this.hasMore = false;
    this.paused = false;
    this.pending = [];
    this.streamState = 'connecting';
    this.filters = { q: '', model: '', key_id: '', status: '', client: '', kind: '', source: '' };
    this.knownModels = new Set();
    this.keys = [];
    this.seq = 0;
    this.abort = null;
    this.newIds = new Set();
    this.incoming = [];
    this.flushTimer = null;
    this.searchSoon = debounce(() => this.load(), 300);
    this.bind();
  }

  bind() {
    const search = document.getElementById('log-search');
    search.addEventListener('input', () => {
      this.filters.q = search.value.trim();
      this.render();
      this.searchSoon();
    });
    search.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && search.value) {
        search.value = '';
        this.filters.q = '';
        this.render();
        this.searchSoon();
      }
    });
    for (const [id, field] of [['filter-model', 'model'], ['filter-key', 'key_id'], ['filter-status', 'status'], ['filter-client', 'client'], ['filter-kind', 'kind'], ['filter-source', 'source']]) {
      document.getElementById(id).addEventListener('change', (e) => {
        this.filters[field] = e.target.value;
        this.render();
        this.load();
      });
    }
    document.getElementById('live-toggle').addEventListener('change', (e) => {
      this.setPaused(!e.target.checked);
    });
    document.getElementById('logs-refresh').addEventListener('click', () => this.load({ refresh: true }));
    document.getElementById('logs-more').addEventListener('click', () => this.loadMore());
    document.getElementById('pending-btn').addEventListener('click', () => {
      const toggle = document.getElementById('live-toggle');
      toggle.checked = true;
      this.setPaused(false);
    });
  }

  /** Query parameters for the server, from the search box and the filters. */
  serverParams() {
    const p = { limit: PAGE };
    const q = this.filters.q;
    if (this.filters.model) p.model = this.filters.model;
    if (this.filters.key_id) p.key_id = this.filters.key_id;
    if (this.filters.status) p.status = this.filters.status;
    if (this.filters.client) p.client = this.filters.client;
    if (this.filters.kind) p.kind = this.filters.kind;
    if (this.filters.source) p.source = this.filters.source;
    if (q) {
      // The server's `q` matches endpoint, method, status and model as substrings, like
      // `matches()` below; a status class ("4xx") is not a substring, so it goes as `status`.
      if (STATUS_CLASS.test(q)) p.status = q.toLowerCase();
      else p.q = q;
    }
    return p;
  }

  /** The same filters, applied to rows already on the page and to live rows. */
  matches(row) {
    const f = this.filters;
    if (f.model && row.model !== f.model) return false;
    if (f.key_id && String(row.key_id) !== String(f.key_id)) return false;
    if (f.status && statusClass(row.status) !== f.status) return false;
    if (f.client && row.client !== f.client) return false;
    if (f.source && row.source !== f.source) return false;
    if (f.kind && (row.endpoint === COUNT_TOKENS) !== (f.kind === 'count_tokens')) return false;
    const q = f.q.toLowerCase();
    if (!q) return true;
    if (STATUS_CLASS.test(q)) return statusClass(row.status) === q;
    return [row.endpoint, row.method, String(row.status), row.model]
      .some((v) => v !== null && v !== undefined && String(v).toLowerCase().includes(q));
  }

  /** Fetches the newest page and merges it in (used when the live stream (re)opens). */
  async catchUp() {
    if (!this.loaded || this.loading) return;
    const seq = this.seq;
    try {
      const rows = await api.logs(this.serverParams());
      if (seq !== this.seq) return;
      if (this.paused) {
        const seen = new Set([...this.rows, ...this.pending].map((r) => r.id));
        for (const r of rows || []) if (!seen.has(r.id)) this.pending.push(r);
        this.renderMeta();
      } else {
        this.insert(rows || []);
      }
    } catch { /* the stream state already tells the user */ }
  }

  async load({ refresh = false } = {}) {
    const seq = ++this.seq;
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    this.loading = true;
    const btn = document.getElementById('logs-refresh');
    if (refresh) btn.setAttribute('aria-busy', 'true');
    if (!this.loaded) this.render();
    const params = this.serverParams();
    const table = document.getElementById('logs-table');
    table.setAttribute('aria-busy', 'true');
    try {
      const rows = await api.logs(params, this.abort.signal);
      if (seq !== this.seq) return;
      // What the list now shows, for tests and for debugging.
      table.dataset.query = new URLSearchParams(params).toString();
      this.rows = Array.isArray(rows) ? rows : [];
      this.sortRows();
      this.hasMore = this.rows.length >= PAGE;
      this.error = null;
      this.loaded = true;
      if (!this.paused) this.pending = [];
      for (const r of this.rows) this.noteModel(r.model);
    } catch (err) {
      if (err && err.name === 'AbortError') return;
      if (seq !== this.seq) return;
      this.error = err;
    } finally {
      if (seq === this.seq) {
        this.loading = false;
        table.removeAttribute('aria-busy');
        btn.removeAttribute('aria-busy');
      }
    }
    this.render();
  }

  async loadMore() {
    if (!this.rows.length) return;
    const minId = Math.min(...this.rows.map((r) => Number(r.id)));
    const btn = document.getElementById('logs-more');
    btn.disabled = true;
    const seq = this.seq;
    try {
      const rows = await api.logs({ ...this.serverParams(), before_id: minId });
      if (seq !== this.seq) return;
      const seen = new Set(this.rows.map((r) => r.id));
      for (const r of rows || []) if (!seen.has(r.id)) this.rows.push(r);
      this.sortRows();
      this.hasMore = (rows || []).length >= PAGE;
      for (const r of rows || []) this.noteModel(r.model);
      this.error = null;
    } catch (err) {
      this.error = err;
    } finally {
      btn.disabled = false;
    }
    this.render();
  }

  sortRows() {
    this.rows.sort((a, b) => Number(b.id) - Number(a.id));
  }

  /** A row from the live stream. */
  onLiveRow(row) {
    if (!row || typeof row !== 'object' || row.id === undefined) return;
    this.noteModel(row.model);
    if (this.paused) {
      if (!this.pending.some((r) => r.id === row.id)) this.pending.push(row);
      if (this.pending.length > 1000) this.pending.shift();
      this.renderMeta();
      return;
    }
    // Rows arriving in a burst are drawn together.
    this.incoming.push(row);
    if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = null;
        const rows = this.incoming;
        this.incoming = [];
        this.insert(rows);
      }, 80);
    }
  }

  insert(rows) {
    const seen = new Set(this.rows.map((r) => r.id));
    let added = false;
    for (const row of rows) {
      if (seen.has(row.id)) continue;
      // Rows are only added live when they would be part of the current query.
      if (!this.matchesServerFilters(row)) continue;
      this.rows.push(row);
      this.newIds.add(row.id);
      added = true;
    }
    if (!added) return;
    this.sortRows();
    if (this.rows.length > MAX_ROWS) {
      this.rows.length = MAX_ROWS;
      this.hasMore = true;
    }
    this.render();
  }

  /** The live stream is unfiltered; keep rows the server-side query would have returned. */
  matchesServerFilters(row) {
    const f = this.filters;
    if (f.model && row.model !== f.model) return false;
    if (f.key_id && String(row.key_id) !== String(f.key_id)) return false;
    if (f.status && statusClass(row.status) !== f.status) return false;
    return this.matches(row);
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused && this.pending.length) {
      const rows = this.pending;
      this.pending = [];
      this.insert(rows);
    }
    this.renderMeta();
  }

  setStreamState(state) {
    const wasOpen = this.streamState === 'open';
    this.streamState = state;
    this.renderMeta();
    // Fill the gap between the last page and the (re)opened stream.
    if (state === 'open' && !wasOpen && this.loaded) this.catchUp();
  }

  noteModel(name) {
    if (!name || this.knownModels.has(name)) return;
    this.knownModels.add(name);
    this.renderModelOptions();
  }

  /** The source names offered by the source filter (the gateway and every known source). */
  setSources(names) {
    const select = document.getElementById('filter-source');
    const current = this.filters.source;
    for (const option of [...select.options].slice(1)) option.remove();
    for (const name of names) {
      select.append(h('option', { value: name, text: name === 'gateway' ? t('sources.gateway') : name }));
    }
    select.value = current;
  }

  setModels(names) {
    for (const n of names || []) if (n) this.knownModels.add(n);
    this.renderModelOptions();
  }

  setKeys(keys) {
    this.keys = Array.isArray(keys) ? keys : [];
    const sel = document.getElementById('filter-key');
    const current = sel.value;
    while (sel.options.length > 1) sel.remove(1);
    for (const k of this.keys) {
      const opt = document.createElement('option');
      opt.value = String(k.id);
      opt.textContent = k.name;
      opt.dataset.raw = '';
      sel.append(opt);
    }
    if ([...sel.options].some((o) => o.value === current)) sel.value = current;
  }

  renderModelOptions() {
    const sel = document.getElementById('filter-model');
    const current = sel.value;
    while (sel.options.length > 1) sel.remove(1);
    for (const name of [...this.knownModels].sort()) {
      const opt = document.createElement('option');
      opt.value = name;
      opt.textContent = name;
      opt.dataset.raw = '';
      sel.append(opt);
    }
    sel.value = current;
  }

  renderMeta() {
    const status = document.getElementById('stream-status');
    const text = document.getElementById('stream-status-text');
    let state = this.streamState;
    if (this.paused) state = 'paused';
    status.dataset.state = state;
    text.textContent = state === 'open' ? t('logs.liveOn')
      : state === 'paused' ? t('logs.paused')
        : state === 'reconnecting' ? t('logs.reconnecting')
          : t('logs.connecting');
    const pendingBtn = document.getElementById('pending-btn');
    pendingBtn.hidden = !(this.paused && this.pending.length);
    pendingBtn.textContent = t('logs.showPending', { n: this.pending.length });
    const visible = this.rows.filter((r) => this.matches(r)).length;
    document.getElementById('logs-count').textContent = this.loaded ? t('logs.count', { n: fmtInt(visible) }) : '';
  }

  render() {
    const body = document.getElementById('logs-body');
    const state = document.getElementById('logs-state');
    const table = document.getElementById('logs-table');
    clear(body);
    clear(state);
    this.renderMeta();
    const more = document.getElementById('logs-more');
    const end = document.getElementById('logs-end');
    if (!this.loaded) {
      table.classList.add('is-empty');
      more.hidden = true;
      end.hidden = true;
      if (this.error) renderState(state, 'error', { text: errorText(this.error), retry: () => this.load() });
      else renderState(state, 'loading');
      return;
    }
    if (this.error) renderState(state, 'error', { text: errorText(this.error), retry: () => this.load() });
    const visible = this.rows.filter((r) => this.matches(r));
    table.classList.toggle('is-empty', visible.length === 0);
    if (!visible.length && !this.error) {
      const filtered = this.filters.q || this.filters.model || this.filters.key_id || this.filters.status;
      renderState(state, 'empty', { text: filtered && this.rows.length ? t('logs.noMatch') : (filtered ? t('logs.noMatch') : t('state.empty')) });
    }
    const labels = {
      time: t('col.time'), method: t('col.method'), endpoint: t('col.endpoint'), status: t('col.status'),
      tokens: t('col.logTokens'), duration: t('col.duration'), model: t('col.model'), key: t('col.key'),
      client: t('col.client'), cost: t('col.cost'),
    };
    const frag = document.createDocumentFragment();
    // Each cell holds one wrapper so the narrow-screen list can lay it out as "label | value".
    const cell = (col, label, cls, ...children) => h('td', { class: cls || null, 'data-label': label, 'data-col': col },
      h('div', { class: 'cell' }, ...children));
    for (const r of visible) {
      const cls = statusClass(r.status);
      const tokens = [h('span', { 'data-raw': '' }, fmtInt(r.tokens))];
      if (r.estimated) tokens.push(h('span', { class: 'badge badge-muted' }, t('logs.estimated')));
      const endpoint = [h('span', { class: 'mono', 'data-raw': '' }, r.endpoint)];
      if (r.stream) endpoint.push(h('span', { class: 'badge badge-muted' }, t('logs.stream')));
      if (r.error) endpoint.push(h('div', { class: 'row-error', 'data-raw': '' }, r.error));
      const tr = h('tr', { class: this.newIds.has(r.id) ? 'is-new' : null, dataset: { id: r.id, status: r.status } },
        cell('time', labels.time, 'time', h('time', { datetime: r.timestamp, 'data-raw': '' }, fmtDateTime(r.timestamp))),
        cell('method', labels.method, null, h('span', { class: `method method-${String(r.method).toLowerCase()}`, 'data-raw': '' }, r.method)),
        cell('endpoint', labels.endpoint, 'endpoint', ...endpoint),
        cell('status', labels.status, null, h('span', { class: `status status-${cls}`, 'data-raw': '' }, String(r.status))),
        cell('tokens', labels.tokens, 'num', ...tokens),
        cell('duration', labels.duration, 'num', h('span', { 'data-raw': '' }, fmtInt(r.duration)), h('span', { class: 'unit' }, ' ms'),
          r.stream && r.ttft !== null && r.ttft !== undefined ? h('div', { class: 'sub' }, t('logs.ttft', { n: fmtInt(r.ttft) })) : null),
        cell('cost', labels.cost, r.cost_status === 'unpriced' ? 'num muted' : 'num',
          h('span', { 'data-raw': '', title: r.cost_status === 'estimated' ? t('cost.estimated') : null, dataset: { status: r.cost_status || '' } },
            r.cost_status === 'estimated' ? `≈ ${fmtCost(r.cost)}` : fmtCost(r.cost))),
        cell('model', labels.model, 'model', r.model ? h('span', { 'data-raw': '' }, r.model) : h('span', { class: 'muted' }, '—'),
          r.alias && r.alias !== r.model ? h('div', { class: 'sub', title: r.alias, 'data-raw': '', dataset: { field: 'alias' } }, t('logs.alias', { name: r.alias })) : null,
          r.reasoning_effort ? h('div', { class: 'sub', 'data-raw': '', dataset: { field: 'reasoning_effort' } }, t('logs.effort', { v: r.reasoning_effort })) : null,
          r.service_tier ? h('div', { class: 'sub', 'data-raw': '', dataset: { field: 'service_tier' } }, t('logs.tier', { v: r.service_tier })) : null),
        cell('key', labels.key, null, r.key_name ? h('span', { 'data-raw': '' }, r.key_name) : h('span', { class: 'muted' }, t('logs.noKey'))),
        cell('client', labels.client, 'client', r.client ? h('span', { 'data-raw': '' }, r.client) : h('span', { class: 'muted' }, '—'),
          r.session_id ? h('div', { class: 'sub mono', title: r.session_id, 'data-raw': '' }, t('logs.session', { id: r.session_id })) : null),
      );
      frag.append(tr);
    }
    body.append(frag);
    this.newIds.clear();
    more.hidden = !this.hasMore || !visible.length;
    end.hidden = this.hasMore || !visible.length;
  }
}
