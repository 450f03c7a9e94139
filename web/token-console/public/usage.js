// The Usage tab: usage over the last 7, 30 or 90 days broken down by one
// dimension (key, model, end user, client, provider, source, endpoint) — a
// stacked daily chart of the largest groups' tokens and a sortable table of
// every group — read from /api/console/usage (and /usage-trend for each day's
// total), and exported as CSV from the figures on screen.

import { api } from './api.js';
import { t } from './i18n.js';
import { StackedChart, SERIES_COLORS, REST_COLOR } from './stacked.js';
import { h, clear, fmtInt, fmtMs, fmtCost, errorText, renderState, throttle } from './util.js';
import { defuse } from './csv.js';

export const DIMS = ['model', 'key', 'user', 'client', 'provider', 'source', 'endpoint'];
const TOP = SERIES_COLORS.length;
const LIMIT = 1000;
const COLUMNS = [
  ['name', 'uv.col.group'],
  ['calls', 'uv.col.calls'],
  ['errors', 'uv.col.errors'],
  ['prompt_tokens', 'uv.col.prompt'],
  ['completion_tokens', 'uv.col.completion'],
  ['total_tokens', 'uv.col.total'],
  ['cost', 'uv.col.cost'],
  ['avg_latency_ms', 'uv.col.avg'],
  ['p95_latency_ms', 'uv.col.p95'],
];

/** The value a row has for `dim`, as the API wrote it. */
function value(row, dim) {
  return dim === 'key' ? row.key_id : row[dim];
}

/** The filter that selects a row's group in another /usage call; null when it cannot (blank). */
function filterOf(row, dim) {
  const v = value(row, dim);
  if (dim === 'key') return { key_id: v };
  return v ? { [dim]: v } : null;
}

export class UsageView {
  constructor() {
    this.dim = DIMS[0];
    this.days = 7;
    this.data = null;
    this.error = null;
    this.seq = 0;
    this.sort = { key: 'total_tokens', dir: 'desc' };
    this.chart = new StackedChart(document.getElementById('usage-chart'));
    this.loadedOnce = false;
    this.refreshSoon = throttle(() => this.load({ quiet: true }), 1500);
    this.bind();
  }

  bind() {
    const select = document.getElementById('usage-group');
    select.addEventListener('change', () => {
      this.dim = select.value;
      this.sort = { key: 'total_tokens', dir: 'desc' };
      this.load();
    });
    for (const btn of document.querySelectorAll('#usage-range .seg')) {
      btn.addEventListener('click', () => {
        this.days = Number(btn.dataset.days);
        this.load();
      });
    }
    for (const th of document.querySelectorAll('#usage-table th[data-sort]')) {
      th.querySelector('button').addEventListener('click', () => {
        const key = th.dataset.sort;
        if (this.sort.key === key) this.sort.dir = this.sort.dir === 'asc' ? 'desc' : 'asc';
        else this.sort = { key, dir: key === 'name' ? 'asc' : 'desc' };
        this.renderTable();
      });
    }
    document.getElementById('usage-csv').addEventListener('click', () => this.downloadCsv());
  }

  /** Loads the table, each day's total and the largest groups' days. */
  async load({ quiet = false } = {}) {
    const seq = ++this.seq;
    const { dim, days } = this;
    if (!quiet || !this.data) {
      this.data = null;
      this.render();
    }
    try {
      const [table, trend] = await Promise.all([
        api.usage({ group_by: dim, days, limit: LIMIT }),
        api.trend(days),
      ]);
      const top = table.rows.filter((row) => filterOf(row, dim)).slice(0, TOP);
      const perDay = await Promise.all(top.map((row) => api.usage({ group_by: 'day', days, limit: 100, ...filterOf(row, dim) })));
      if (seq !== this.seq) return;
      this.data = { dim, days, table, trend, top, perDay };
      this.error = null;
    } catch (err) {
      if (seq !== this.seq) return;
      this.error = err;
    }
    this.loadedOnce = true;
    this.render();
  }

  /** A group's name as shown: the key's name, or what stands for an empty value. */
  label(row, dim) {
    if (dim === 'key') {
      if (row.key_id === 0) return t('uv.noKey');
      return row.key_name || `#${row.key_id}`;
    }
    const v = row[dim];
    if (v === '') return t(dim === 'user' ? 'uv.noUser' : 'uv.none');
    return v;
  }

  render() {
    const select = document.getElementById('usage-group');
    select.value = this.dim;
    for (const btn of document.querySelectorAll('#usage-range .seg')) {
      const d = Number(btn.dataset.days);
      btn.textContent = t('trend.days', { n: d });
      btn.setAttribute('aria-pressed', String(d === this.days));
    }
    this.renderChart();
    this.renderTable();
  }

  /** Series of the stacked chart: the largest groups, then the rest of each day's tokens. */
  series() {
    const { dim, trend, top, perDay } = this.data;
    const dates = trend.dates || [];
    const series = top.map((row, k) => {
      const byDay = new Map(perDay[k].rows.map((r) => [r.day, r.total_tokens]));
      return { name: this.label(row, dim), color: SERIES_COLORS[k], values: dates.map((d) => byDay.get(d) || 0) };
    });
    const rest = dates.map((_, i) => {
      const shown = series.reduce((sum, s) => sum + s.values[i], 0);
      return Math.max(0, (Number(trend.tokenData[i]) || 0) - shown);
    });
    series.push({ name: t('uv.rest'), color: REST_COLOR, values: rest, rest: true });
    return { labels: dates, series };
  }

  renderChart() {
    const box = document.getElementById('usage-chart');
    const legend = document.getElementById('usage-legend');
    clear(legend);
    if (this.error) {
      renderState(box, 'error', { text: errorText(this.error), retry: () => this.load() });
      return;
    }
    if (!this.data) {
      renderState(box, 'loading');
      return;
    }
    const data = this.series();
    this.chart.render(data);
    for (const s of data.series) {
      const swatch = h('span', { class: 'swatch swatch-block' });
      swatch.style.background = s.color;
      const name = h('span', s.rest ? null : { 'data-raw': '' }, s.name);
      legend.append(h('span', { class: 'legend-item', dataset: { rest: s.rest ? '1' : '0' } }, swatch, name));
    }
  }

  sortedRows() {
    const { dim, table } = this.data;
    const rows = table.rows.map((row) => ({ ...row, name: this.label(row, dim) }));
    const { key, dir } = this.sort;
    const sign = dir === 'asc' ? 1 : -1;
    rows.sort((a, b) => {
      if (key === 'name') return sign * String(a.name).localeCompare(String(b.name));
      return sign * ((Number(a[key]) || 0) - (Number(b[key]) || 0)) || String(a.name).localeCompare(String(b.name));
    });
    return rows;
  }

  renderTable() {
    const body = document.getElementById('usage-body');
    const state = document.getElementById('usage-state');
    clear(body);
    clear(state);
    for (const th of document.querySelectorAll('#usage-table th[data-sort]')) {
      th.setAttribute('aria-sort', th.dataset.sort === this.sort.key ? (this.sort.dir === 'asc' ? 'ascending' : 'descending') : 'none');
    }
    document.getElementById('usage-col-group').textContent = t(`uv.dim.${this.dim}`);
    if (this.error) {
      renderState(state, 'error', { text: errorText(this.error), retry: () => this.load() });
      return;
    }
    if (!this.data) {
      renderState(state, 'loading');
      return;
    }
    const rows = this.sortedRows();
    if (!rows.length) {
      renderState(state, 'empty');
      return;
    }
    for (const row of rows) {
      const empty = value(row, this.data.dim) === '' || (this.data.dim === 'key' && row.key_id === 0);
      body.append(h('tr', { dataset: { group: String(value(row, this.data.dim)) } },
        h('th', { scope: 'row', class: empty ? 'muted' : '', 'data-col': 'name', 'data-raw': '' }, row.name),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'calls' }, fmtInt(row.calls)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'errors' }, fmtInt(row.errors)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'prompt_tokens' }, fmtInt(row.prompt_tokens)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'completion_tokens' }, fmtInt(row.completion_tokens)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'total_tokens' }, fmtInt(row.total_tokens)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'cost', title: row.unpriced_calls ? t('card.unpricedCalls', { n: fmtInt(row.unpriced_calls) }) : '' },
          row.cost === 0 && row.unpriced_calls > 0 ? fmtCost(null) : fmtCost(row.cost)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'avg_latency_ms' }, fmtMs(row.avg_latency_ms)),
        h('td', { class: 'num', 'data-raw': '', 'data-col': 'p95_latency_ms' }, row.p95_latency_ms === null ? '—' : fmtMs(row.p95_latency_ms)),
      ));
    }
  }

  /** The table as CSV (the figures on screen, unformatted), downloaded as a file. */
  downloadCsv() {
    if (!this.data) return;
    const { dim, days } = this.data;
    const head = [dim, ...(dim === 'key' ? ['key_name'] : []), 'calls', 'errors', 'count_tokens_calls',
      'prompt_tokens', 'completion_tokens', 'cache_read_tokens', 'cache_creation_tokens', 'reasoning_tokens',
      'total_tokens', 'cost', 'cost_nanos', 'unpriced_calls', 'avg_latency_ms', 'p95_latency_ms'];
    const lines = [head.join(',')];
    for (const row of this.sortedRows()) {
      const cells = [value(row, dim), ...(dim === 'key' ? [row.key_name ?? ''] : []), row.calls, row.errors,
        row.count_tokens_calls, row.prompt_tokens, row.completion_tokens, row.cache_read_tokens,
        row.cache_creation_tokens, row.reasoning_tokens, row.total_tokens, row.cost, row.cost_nanos,
        row.unpriced_calls, row.avg_latency_ms, row.p95_latency_ms ?? ''];
      lines.push(cells.map((c) => defuse(c)).join(','));
    }
    const blob = new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv;charset=utf-8' });
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: `token-usage-${dim}-${days}d.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
}
