// The usage-trend chart: a small SVG line chart with two y-axes (tokens on
// the left in blue, calls on the right in purple) and a dashed green cost
// line drawn to its own scale (its values are in the tooltip), one point per
// day, a tooltip on hover and days reachable by keyboard (roving tabindex,
// arrow keys, Home/End).

import { t } from './i18n.js';
import { svg, h, clear, fmtInt, fmtCompact } from './util.js';

const TOKEN_COLOR = '#3b82f6';
const CALL_COLOR = '#8b5cf6';
const COST_COLOR = '#059669';

/** Rounds `max` up to 1, 2, 2.5 or 5 × 10^k so ticks land on round numbers. */
export function niceMax(max, ticks = 4) {
  if (!(max > 0)) return ticks;
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10];
  const step = steps.find((s) => s * mag >= raw) * mag;
  const stepInt = Math.max(1, Math.ceil(step));
  return stepInt * ticks;
}

export class TrendChart {
  /** `preferredHeight()` may return a height in px to match the chart's surroundings. */
  constructor(container, { preferredHeight } = {}) {
    this.container = container;
    this.preferredHeight = preferredHeight || (() => 0);
    this.data = null;
    this.active = -1;
    this.width = 0;
    container.classList.add('chart');
    this.observer = new ResizeObserver(() => {
      const w = Math.floor(this.container.clientWidth);
      if (w > 0 && w !== this.width && this.data) this.render(this.data);
    });
    this.observer.observe(container);
  }

  /** Draws `{labels, tokenData, callData, costData}` (oldest first); `formatCost` formats a cost. */
  render(data) {
    this.data = data;
    const labels = data.labels || [];
    const tokens = (data.tokenData || []).map((v) => Number(v) || 0);
    const calls = (data.callData || []).map((v) => Number(v) || 0);
    const costs = (data.costData || []).map((v) => Number(v) || 0);
    const formatCost = data.formatCost || ((v) => String(v));
    const n = labels.length;
    const box = this.container;

    const width = Math.max(280, Math.floor(box.clientWidth) || 640);
    const narrow = width < 480;
    const wanted = narrow ? 0 : Math.round(this.preferredHeight() || 0);
    const height = narrow ? 230 : Math.max(300, Math.min(480, wanted || 320));
    // Redrawing identical pictures would only lose the hover state.
    const drawKey = JSON.stringify([labels, tokens, calls, costs.map(formatCost), width, height, t('trend.point', { label: '', tokens: 0, calls: 0 })]);
    if (drawKey === this.drawKey && box.querySelector('.chart-svg')) return;
    this.drawKey = drawKey;
    const focusedIndex = this.focusedIndex();
    clear(box);
    this.width = Math.floor(box.clientWidth);
    const m = { top: 30, right: narrow ? 40 : 52, bottom: 34, left: narrow ? 44 : 60 };
    const pw = width - m.left - m.right;
    const ph = height - m.top - m.bottom;

    const tMax = niceMax(Math.max(0, ...tokens));
    const cMax = niceMax(Math.max(0, ...calls));
    const x = (i) => (n <= 1 ? m.left + pw / 2 : m.left + (i * pw) / (n - 1));
    const yT = (v) => m.top + ph - (v / tMax) * ph;
    const yC = (v) => m.top + ph - (v / cMax) * ph;
    const kMax = Math.max(0, ...costs) * 1.1 || 1;
    const yK = (v) => m.top + ph - (v / kMax) * ph;

    const root = svg('svg', {
      class: 'chart-svg',
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: 'group',
      'aria-label': t('trend.chartLabel', { n }),
    });

    // Grid and both axes' tick labels.
    const grid = svg('g', { class: 'grid', 'aria-hidden': 'true' });
    const ticks = 4;
    for (let i = 0; i <= ticks; i++) {
      const yy = m.top + ph - (i * ph) / ticks;
      grid.append(svg('line', { x1: m.left, x2: m.left + pw, y1: yy, y2: yy, class: i === 0 ? 'axis-line' : 'grid-line' }));
      grid.append(svg('text', { x: m.left - 8, y: yy + 4, class: 'tick tick-tokens', 'text-anchor': 'end' }, fmtCompact((tMax * i) / ticks)));
      grid.append(svg('text', { x: m.left + pw + 8, y: yy + 4, class: 'tick tick-calls', 'text-anchor': 'start' }, fmtCompact((cMax * i) / ticks)));
    }
    grid.append(svg('text', { x: m.left - 8, y: m.top - 16, class: 'axis-title tick-tokens', 'text-anchor': 'end' }, t('trend.axisTokens')));
    grid.append(svg('text', { x: m.left + pw + 8, y: m.top - 16, class: 'axis-title tick-calls', 'text-anchor': 'start' }, t('trend.axisCalls')));

    // X labels, thinned so they never overlap.
    const maxLabels = Math.max(2, Math.floor(pw / (narrow ? 46 : 58)));
    const every = Math.max(1, Math.ceil(n / maxLabels));
    for (let i = 0; i < n; i++) {
      const isLast = i === n - 1;
      if (i % every !== 0 && !isLast) continue;
      if (!isLast && n - 1 - i < every && n - 1 - i > 0 && every > 1) continue;
      grid.append(svg('text', { x: x(i), y: height - 10, class: 'tick tick-x', 'text-anchor': 'middle' }, labels[i]));
    }
    root.append(grid);

    const crosshair = svg('line', { class: 'crosshair', x1: 0, x2: 0, y1: m.top, y2: m.top + ph, visibility: 'hidden', 'aria-hidden': 'true' });
    root.append(crosshair);

    const linePath = (vals, y) => vals.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    if (n > 0) {
      const area = `${linePath(tokens, yT)} L${x(n - 1).toFixed(1)},${(m.top + ph).toFixed(1)} L${x(0).toFixed(1)},${(m.top + ph).toFixed(1)} Z`;
      root.append(svg('path', { d: area, class: 'area-tokens', fill: TOKEN_COLOR, 'fill-opacity': 0.08, stroke: 'none', 'aria-hidden': 'true' }));
      root.append(svg('path', { d: linePath(tokens, yT), class: 'series series-tokens', 'data-series': 'tokens', stroke: TOKEN_COLOR, fill: 'none', 'aria-hidden': 'true' }));
      root.append(svg('path', { d: linePath(calls, yC), class: 'series series-calls', 'data-series': 'calls', stroke: CALL_COLOR, fill: 'none', 'aria-hidden': 'true' }));
      if (costs.length === n) {
        root.append(svg('path', { d: linePath(costs, yK), class: 'series series-cost', 'data-series': 'cost', stroke: COST_COLOR, fill: 'none', 'stroke-dasharray': '5 4', 'aria-hidden': 'true' }));
      }
    }

    // One focusable group per day holding both points.
    const r = n > 45 ? 2 : n > 14 ? 3 : 4;
    const slot = n <= 1 ? pw : pw / (n - 1);
    const days = svg('g', { class: 'days' });
    this.dayEls = [];
    for (let i = 0; i < n; i++) {
      const label = `${t('trend.point', { label: labels[i], tokens: fmtInt(tokens[i]), calls: fmtInt(calls[i]) })}, ${t('trend.cost')} ${formatCost(costs[i] || 0)}`;
      const g = svg('g', { class: 'day', tabindex: -1, role: 'img', 'aria-label': label, 'data-index': i, 'data-label': labels[i] });
      g.append(svg('rect', { class: 'hit', x: x(i) - slot / 2, y: m.top, width: Math.max(slot, 4), height: ph, fill: 'transparent' }));
      g.append(svg('rect', { class: 'focus-ring', x: x(i) - Math.max(6, Math.min(slot / 2, 12)), y: m.top - 4, width: Math.max(12, Math.min(slot, 24)), height: ph + 8, rx: 6 }));
      g.append(svg('circle', { class: 'pt pt-tokens', 'data-series': 'tokens', 'data-value': tokens[i], cx: x(i), cy: yT(tokens[i]), r, fill: TOKEN_COLOR }));
      g.append(svg('circle', { class: 'pt pt-calls', 'data-series': 'calls', 'data-value': calls[i], cx: x(i), cy: yC(calls[i]), r, fill: CALL_COLOR }));
      if (costs.length === n) g.append(svg('circle', { class: 'pt pt-cost', 'data-series': 'cost', 'data-value': costs[i], cx: x(i), cy: yK(costs[i]), r: Math.max(2, r - 1), fill: COST_COLOR }));
      g.addEventListener('focus', () => this.show(i));
      g.addEventListener('blur', () => this.hide());
      g.addEventListener('keydown', (e) => this.onKey(e, i));
      days.append(g);
      this.dayEls.push(g);
    }
    root.append(days);

    root.addEventListener('pointermove', (e) => {
      if (!n) return;
      const rect = root.getBoundingClientRect();
      const px = ((e.clientX - rect.left) / rect.width) * width;
      const i = n <= 1 ? 0 : Math.round(((px - m.left) / pw) * (n - 1));
      this.show(Math.max(0, Math.min(n - 1, i)));
    });
    root.addEventListener('pointerleave', () => {
      if (!root.contains(document.activeElement)) this.hide();
    });

    const tip = h('div', { class: 'chart-tip', role: 'presentation', 'aria-hidden': 'true' });
    tip.hidden = true;
    box.append(root, tip);

    this.geom = { x, yT, yC, m, ph, width, height, tokens, calls, costs, formatCost, labels, crosshair, tip, root };
    // Today (the last day) is the day keyboard users land on first.
    const start = focusedIndex >= 0 && focusedIndex < n ? focusedIndex : n - 1;
    if (start >= 0) this.dayEls[start].setAttribute('tabindex', '0');
    if (focusedIndex >= 0 && focusedIndex < n) this.dayEls[focusedIndex].focus();
  }

  focusedIndex() {
    if (!this.dayEls) return -1;
    return this.dayEls.indexOf(document.activeElement);
  }

  onKey(e, i) {
    const n = this.dayEls.length;
    let next = i;
    if (e.key === 'ArrowRight' || e.key === 'ArrowUp') next = Math.min(n - 1, i + 1);
    else if (e.key === 'ArrowLeft' || e.key === 'ArrowDown') next = Math.max(0, i - 1);
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = n - 1;
    else return;
    e.preventDefault();
    this.dayEls[i].setAttribute('tabindex', '-1');
    this.dayEls[next].setAttribute('tabindex', '0');
    this.dayEls[next].focus();
  }

  show(i) {
    const g = this.geom;
    if (!g) return;
    this.active = i;
    for (const el of this.dayEls) el.classList.toggle('is-active', Number(el.dataset.index) === i);
    const cx = g.x(i);
    g.crosshair.setAttribute('x1', cx);
    g.crosshair.setAttribute('x2', cx);
    g.crosshair.setAttribute('visibility', 'visible');

    const tip = g.tip;
    clear(tip);
    tip.append(
      h('div', { class: 'tip-title' }, g.labels[i]),
      h('div', { class: 'tip-row' }, h('span', { class: 'swatch swatch-tokens' }), h('span', { class: 'tip-name' }, t('trend.tokens')), h('strong', { class: 'tip-value', 'data-series': 'tokens' }, fmtInt(g.tokens[i]))),
      h('div', { class: 'tip-row' }, h('span', { class: 'swatch swatch-calls' }), h('span', { class: 'tip-name' }, t('trend.calls')), h('strong', { class: 'tip-value', 'data-series': 'calls' }, fmtInt(g.calls[i]))),
      g.costs.length === g.labels.length
        ? h('div', { class: 'tip-row' }, h('span', { class: 'swatch swatch-cost' }), h('span', { class: 'tip-name' }, t('trend.cost')), h('strong', { class: 'tip-value', 'data-series': 'cost' }, g.formatCost(g.costs[i])))
        : null,
    );
    tip.hidden = false;
    const rect = g.root.getBoundingClientRect();
    const scale = rect.width / g.width || 1;
    const tipW = tip.offsetWidth;
    const tipH = tip.offsetHeight;
    let left = cx * scale + 14;
    if (left + tipW > rect.width - 4) left = cx * scale - tipW - 14;
    const top = Math.max(4, Math.min(g.yT(g.tokens[i]), g.yC(g.calls[i])) * scale - tipH / 2);
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = `${Math.min(top, rect.height - tipH - 4)}px`;
  }

  hide() {
    const g = this.geom;
    if (!g) return;
    this.active = -1;
    for (const el of this.dayEls) el.classList.remove('is-active');
    g.crosshair.setAttribute('visibility', 'hidden');
    g.tip.hidden = true;
  }
}
