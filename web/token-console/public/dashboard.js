// The dashboard tab: the four cards, the budget bar with its forecast, latency
// and token breakdown, the trend chart, the sortable per-model table (models
// with an anomaly marked) and the anomalies and alerts. Every figure is read
// from /api/console/stats, /usage-trend, /anomalies and /alerts.

import { api } from './api.js';
import { t } from './i18n.js';
import { TrendChart } from './chart.js';
import { h, clear, fmtInt, fmtNum, fmtMs, fmtPercent, fmtDateTime, fmtCost, setDisplayCurrency, errorText, renderState, throttle } from './util.js';

const DAYS_KEY = 'tc.trendDays';

export class Dashboard {
  constructor() {
    this.stats = null;
    this.trend = null;
    this.statsError = null;
    this.trendError = null;
    this.anomalies = null;
    this.alerts = null;
    this.watchError = null;
    this.sort = { key: 'call_count', dir: 'desc' };
    this.days = 7;
    try {
      const saved = Number(localStorage.getItem(DAYS_KEY));
      if ([7, 30, 90].includes(saved)) this.days = saved;
    } catch { /* default */ }
    this.chart = new TrendChart(document.getElementById('trend-chart'), { preferredHeight: () => this.chartHeight() });
    this.refreshSoon = throttle(() => this.refresh({ quiet: true }), 700);
    this.loadedOnce = false;
    this.source = '';
    this.bind();
    this.renderRange();
  }

  bind() {
    for (const btn of document.querySelectorAll('#trend-range .seg')) {
      btn.addEventListener('click', () => {
        this.days = Number(btn.dataset.days);
        try { localStorage.setItem(DAYS_KEY, String(this.days)); } catch { /* not remembered */ }
        this.renderRange();
        this.loadTrend();
      });
    }
    for (const th of document.querySelectorAll('#models-table th[data-sort]')) {
      th.querySelector('button').addEventListener('click', () => {
        const key = th.dataset.sort;
        if (this.sort.key === key) this.sort.dir = this.sort.dir === 'asc' ? 'desc' : 'asc';
        else this.sort = { key, dir: key === 'name' ? 'asc' : 'desc' };
        this.renderModels();
      });
    }
  }

  renderRange() {
    for (const btn of document.querySelectorAll('#trend-range .seg')) {
      const d = Number(btn.dataset.days);
      btn.textContent = t('trend.days', { n: d });
      btn.setAttribute('aria-pressed', String(d === this.days));
    }
  }

  /** Loads stats and trend; `quiet` keeps the current figures on screen while loading. */
  async refresh({ quiet = false } = {}) {
    await Promise.all([this.loadStats(quiet), this.loadTrend(quiet), this.loadWatch()]);
    this.loadedOnce = true;
  }

  async loadStats(quiet) {
    if (!quiet && !this.stats) renderState(document.getElementById('models-state'), 'loading');
    try {
      this.stats = await api.stats(this.source ? { source: this.source } : undefined);
      setDisplayCurrency(this.stats.display_currency);
      this.statsError = null;
    } catch (err) {
      this.statsError = err;
    }
    this.renderStats();
    this.renderModels();
  }

  async loadWatch() {
    try {
      const [anomalies, alerts] = await Promise.all([api.anomalies(24), api.alerts(20)]);
      this.anomalies = anomalies;
      this.alerts = alerts;
      this.watchError = null;
    } catch (err) {
      this.watchError = err;
    }
    this.renderWatch();
    this.renderModels();
  }

  async loadTrend(quiet) {
    const chartBox = document.getElementById('trend-chart');
    const days = this.days;
    const source = this.source;
    if (!quiet || !this.trend) {
      this.trend = null;
      this.chart.data = null;
      renderState(chartBox, 'loading');
    }
    try {
      const trend = await api.trend(days, source || undefined);
      if (days !== this.days || source !== this.source) return;
      this.trend = trend;
      this.trendError = null;
    } catch (err) {
      if (days !== this.days || source !== this.source) return;
      this.trendError = err;
    }
    this.renderTrend();
  }

  /** On wide screens the chart grows to the height of the column beside it. */
  chartHeight() {
    const side = document.querySelector('.side-stack');
    const box = document.querySelector('.trend-box');
    const chart = document.getElementById('trend-chart');
    if (!side || !box || side.offsetTop !== box.offsetTop) return 0;
    const overhead = box.offsetHeight - chart.offsetHeight;
    return side.offsetHeight - overhead;
  }

  render() {
    this.renderRange();
    this.renderStats();
    this.renderTrend();
    this.renderModels();
    this.renderWatch();
  }

  renderStats() {
    const state = document.getElementById('dash-state');
    clear(state);
    if (this.statsError) {
      renderState(state, 'error', { text: errorText(this.statsError), retry: () => this.refresh() });
    }
    const s = this.stats;
    const card = (id, value, sub) => {
      const el = document.getElementById(id);
      el.querySelector('[data-value]').textContent = value;
      el.querySelector('[data-sub]').textContent = sub;
      el.classList.toggle('is-loading', !s);
    };
    const cost = document.querySelector('#card-used [data-cost]');
    if (!s) {
      cost.textContent = '';
      for (const id of ['card-total', 'card-used', 'card-remaining', 'card-calls']) card(id, '—', this.statsError ? '' : t('state.loading'));
      this.renderUsage(null);
      this.renderPerf(null);
      return;
    }
    const unlimited = s.total_tokens === null || s.total_tokens === undefined;
    card('card-total', unlimited ? t('card.unlimited') : fmtInt(s.total_tokens),
      unlimited ? t('card.totalSubUnlimited') : t('card.totalSubLimited'));
    card('card-used', fmtInt(s.used_tokens),
      t('card.usedSub', { prompt: fmtInt(s.prompt_tokens), completion: fmtInt(s.completion_tokens) }));
    const remUnlimited = s.remaining_tokens === null || s.remaining_tokens === undefined;
    cost.textContent = t('card.cost', { cost: fmtCost(s.total_cost) })
      + (s.unpriced_calls ? ` · ${t('card.unpricedCalls', { n: fmtInt(s.unpriced_calls) })}` : '');
    cost.dataset.nanos = String(s.total_cost_nanos);
    card('card-remaining', remUnlimited ? t('card.unlimited') : fmtInt(s.remaining_tokens),
      s.usage_percent === null || s.usage_percent === undefined
        ? t('card.remainingSubUnlimited')
        : s.limit_period
          ? t('card.remainingSubPeriod', { percent: fmtPercent(s.usage_percent), resets: fmtDateTime(s.period_resets_at) })
          : t('card.remainingSub', { percent: fmtPercent(s.usage_percent) }));
    card('card-calls', fmtInt(s.api_call_count),
      t('card.callsSub', { ok: fmtInt(s.success_count), err: fmtInt(s.error_count) }));
    for (const [id, raw] of [['card-total', s.total_tokens], ['card-used', s.used_tokens], ['card-remaining', s.remaining_tokens], ['card-calls', s.api_call_count]]) {
      document.getElementById(id).querySelector('[data-value]').dataset.number = raw === null || raw === undefined ? 'null' : String(raw);
    }
    this.renderUsage(s);
    this.renderPerf(s);
    if (this.trend && !this.trendError) this.renderTrend();
  }

  renderUsage(s) {
    const bar = document.getElementById('usage-bar');
    const fill = document.getElementById('usage-fill');
    const text = document.getElementById('usage-text');
    this.renderForecast(s);
    if (!s) {
      fill.style.width = '0%';
      bar.removeAttribute('aria-valuenow');
      text.textContent = '';
      return;
    }
    const pct = s.usage_percent;
    if (pct === null || pct === undefined) {
      bar.classList.add('is-unlimited');
      fill.style.width = '0%';
      bar.removeAttribute('aria-valuenow');
      bar.setAttribute('aria-valuetext', t('usage.unlimited'));
      text.textContent = t('usage.unlimited');
      return;
    }
    bar.classList.remove('is-unlimited');
    const clamped = Math.max(0, Math.min(100, Number(pct)));
    fill.style.width = `${clamped}%`;
    bar.classList.toggle('is-warn', clamped >= 75 && clamped < 90);
    bar.classList.toggle('is-danger', clamped >= 90);
    bar.setAttribute('aria-valuenow', String(clamped));
    const label = s.limit_period
      ? t('usage.limitedPeriod', { used: fmtInt(s.period_used), total: fmtInt(s.total_tokens), percent: fmtPercent(pct), resets: fmtDateTime(s.period_resets_at) })
      : t('usage.limited', { used: fmtInt(s.used_tokens), total: fmtInt(s.total_tokens), percent: fmtPercent(pct) });
    bar.setAttribute('aria-valuetext', label);
    text.textContent = label;
  }

  /** "At this rate, runs out on …", from the forecast of /api/console/stats. */
  renderForecast(s) {
    const line = document.getElementById('usage-forecast');
    const f = s && s.forecast;
    line.classList.remove('is-soon');
    if (!f) {
      line.textContent = '';
      return;
    }
    const days = fmtNum(f.window_days, 2);
    const rate = fmtInt(Math.round(Number(f.rate_per_day) || 0));
    line.dataset.runsOutAt = f.runs_out_at || '';
    if (f.runs_out_at && s.remaining_tokens === 0) {
      line.textContent = t('forecast.spent');
      line.classList.add('is-soon');
    } else if (f.runs_out_at) {
      line.textContent = t('forecast.runsOut', { rate, days, date: fmtDateTime(f.runs_out_at) });
      line.classList.toggle('is-soon', new Date(f.runs_out_at).getTime() - Date.now() < 3 * 86400000);
    } else if (Number(f.rate_per_day) > 0) {
      line.textContent = t('forecast.rate', { rate, days });
    } else {
      line.textContent = t('forecast.idle', { days });
    }
  }

  /** The anomalies of the last 24 hours and the newest alerts. */
  renderWatch() {
    const list = document.getElementById('anomalies-list');
    const listState = document.getElementById('anomalies-state');
    const body = document.getElementById('alerts-body');
    const state = document.getElementById('alerts-state');
    for (const el of [list, listState, body, state]) clear(el);
    if (this.watchError) {
      renderState(state, 'error', { text: errorText(this.watchError), retry: () => this.loadWatch() });
      return;
    }
    if (!this.anomalies || !this.alerts) {
      renderState(state, 'loading');
      return;
    }
    for (const a of this.anomalies) {
      const key = a.key_name ?? t('anomalies.noKey');
      const params = {
        key, model: a.model, hour: fmtDateTime(a.hour), calls: fmtInt(a.calls), failures: fmtInt(a.failures),
        rate: fmtPercent(a.error_rate), baseline: a.baseline_error_rate === null ? '—' : fmtPercent(a.baseline_error_rate),
        tokens: fmtInt(a.tokens), median: a.baseline_median_tokens === null ? '—' : fmtInt(Math.round(a.baseline_median_tokens)),
      };
      const text = t(a.kind === 'error_rate' ? 'anomalies.errorRate' : 'anomalies.tokenVolume', params);
      list.append(h('li', { dataset: { kind: a.kind, model: a.model, keyId: String(a.key_id ?? '') } }, text));
    }
    if (!this.anomalies.length) listState.append(h('p', { class: 'muted', dataset: { state: 'empty' } }, t('anomalies.none')));
    for (const a of this.alerts) {
      const subject = a.payload.key_name ?? (a.payload.event_group === 'proxy' && a.payload.max_budget !== null ? t('alerts.global') : a.subject);
      const deliveries = h('td', { 'data-col': 'delivery' });
      for (const d of a.deliveries) {
        const status = t(`delivery.${d.status}`);
        deliveries.append(h('div', { class: `delivery-${d.status}`, 'data-raw': '', dataset: { status: d.status }, title: d.error || '' },
          t('delivery.row', { target: d.target, status, n: d.attempts })));
      }
      body.append(h('tr', { dataset: { id: String(a.id), rule: a.rule } },
        h('td', { 'data-col': 'time' }, fmtDateTime(a.created_at)),
        h('td', { 'data-col': 'event' }, t(`event.${a.event}`)),
        h('td', { 'data-col': 'subject', 'data-raw': '' }, subject),
        h('td', { 'data-col': 'message', 'data-raw': '' }, a.message),
        deliveries,
      ));
    }
    if (!this.alerts.length) state.append(h('p', { class: 'muted', dataset: { state: 'empty' } }, t('alerts.none')));
  }

  renderPerf(s) {
    const list = document.getElementById('perf-list');
    const tokensList = document.getElementById('token-list');
    clear(list);
    clear(tokensList);
    if (!s) return;
    const lat = s.latency_ms || {};
    const metrics = [
      ['perf.p50', fmtMs(lat.p50), 'lat'],
      ['perf.p95', fmtMs(lat.p95), 'lat'],
      ['perf.p99', fmtMs(lat.p99), 'lat'],
      ['perf.avg', fmtMs(s.avg_time), 'lat'],
      ['perf.success', fmtInt(s.success_count), 'ok'],
      ['perf.errors', fmtInt(s.error_count), 'err'],
    ];
    for (const [key, value, kind] of metrics) {
      list.append(h('div', { class: `metric metric-${kind}`, dataset: { metric: key.slice(5) } },
        h('dt', null, t(key)), h('dd', { 'data-raw': '' }, value)));
    }
    const tokenRows = [
      ['perf.prompt', s.prompt_tokens],
      ['perf.completion', s.completion_tokens],
      ['perf.cacheRead', s.cache_read_tokens],
      ['perf.cacheCreation', s.cache_creation_tokens],
      ['perf.reasoning', s.reasoning_tokens],
    ];
    for (const [key, value] of tokenRows) {
      tokensList.append(h('div', { class: 'kv-row', dataset: { metric: key.slice(5) } },
        h('dt', null, t(key)), h('dd', { 'data-raw': '' }, fmtInt(value))));
    }
  }

  renderTrend() {
    const box = document.getElementById('trend-chart');
    if (this.trendError) {
      this.chart.data = null;
      renderState(box, 'error', { text: errorText(this.trendError), retry: () => this.loadTrend() });
      return;
    }
    if (!this.trend) return;
    this.chart.render({ ...this.trend, formatCost: fmtCost });
    box.querySelector('.chart-empty')?.remove();
    const total = (this.trend.tokenData || []).reduce((a, b) => a + (Number(b) || 0), 0)
      + (this.trend.callData || []).reduce((a, b) => a + (Number(b) || 0), 0);
    box.classList.toggle('is-empty', total === 0);
    if (total === 0) {
      box.append(h('div', { class: 'chart-empty', dataset: { state: 'empty' } }, t('state.empty')));
    }
  }

  renderModels() {
    const body = document.getElementById('models-body');
    const state = document.getElementById('models-state');
    clear(body);
    clear(state);
    for (const th of document.querySelectorAll('#models-table th[data-sort]')) {
      th.setAttribute('aria-sort', th.dataset.sort === this.sort.key ? (this.sort.dir === 'asc' ? 'ascending' : 'descending') : 'none');
    }
    if (!this.stats) {
      if (this.statsError) renderState(state, 'error', { text: errorText(this.statsError), retry: () => this.refresh() });
      else renderState(state, 'loading');
      return;
    }
    const models = [...(this.stats.models || [])];
    if (!models.length) {
      renderState(state, 'empty');
      return;
    }
    const { key, dir } = this.sort;
    const sign = dir === 'asc' ? 1 : -1;
    models.sort((a, b) => {
      const av = a[key];
      const bv = b[key];
      if (key === 'name') return sign * String(av).localeCompare(String(bv));
      return sign * ((Number(av) || 0) - (Number(bv) || 0)) || String(a.name).localeCompare(String(b.name));
    });
    const maxTokens = Math.max(1, ...models.map((m) => Number(m.token_count) || 0));
    const anomalous = new Set((this.anomalies || []).map((a) => a.model));
    for (const m of models) {
      const share = h('span', { class: 'share', 'aria-hidden': 'true' });
      share.style.width = `${Math.round(((Number(m.token_count) || 0) / maxTokens) * 100)}%`;
      const rate = Number(m.success_rate);
      const badge = anomalous.has(m.name) ? h('span', { class: 'anomaly-badge', dataset: { anomaly: '' } }, t('anomalies.badge')) : null;
      body.append(h('tr', { dataset: { model: m.name } },
        m.name
          ? h('th', { scope: 'row', class: 'model-name', 'data-col': 'name' }, h('span', { 'data-raw': '' }, m.name), badge)
          : h('th', { scope: 'row', class: 'model-name muted', 'data-col': 'name' }, t('models.none')),
        h('td', { class: 'num', 'data-col': 'call_count', 'data-raw': '' }, fmtInt(m.call_count)),
        h('td', { class: 'num token-cell', 'data-col': 'token_count', 'data-raw': '' }, h('span', { class: 'share-track', 'aria-hidden': 'true' }, share), h('span', null, fmtInt(m.token_count))),
        h('td', { class: 'num', 'data-col': 'avg_time', 'data-raw': '' }, fmtMs(m.avg_time)),
        h('td', { class: `num rate ${rate >= 99 ? 'rate-good' : rate >= 90 ? 'rate-warn' : 'rate-bad'}`, 'data-col': 'success_rate', 'data-raw': '' }, fmtPercent(m.success_rate)),
        h('td', { class: m.cost === null || m.cost === undefined ? 'num muted' : 'num', 'data-col': 'cost', 'data-raw': '', dataset: { nanos: m.cost_nanos === null || m.cost_nanos === undefined ? 'null' : String(m.cost_nanos) } }, fmtCost(m.cost),
          m.unpriced_calls && m.cost !== null && m.cost !== undefined ? h('div', { class: 'sub' }, t('card.unpricedCalls', { n: fmtInt(m.unpriced_calls) })) : null),
      ));
    }
  }
}
