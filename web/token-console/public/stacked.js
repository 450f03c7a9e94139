// The Usage view's chart: one stacked bar of tokens per day, a segment per
// series (the largest groups, then everything else), drawn as a small SVG.
// Each day is a focusable group whose label reads out its segments; hovering
// or focusing a day shows the same figures in a tooltip.

import { t } from './i18n.js';
import { svg, h, clear, fmtInt, fmtCompact } from './util.js';
import { niceMax } from './chart.js';

/** Colours of the series, in order; the last series (the rest) is grey. */
export const SERIES_COLORS = ['#3b82f6', '#8b5cf6', '#10b981', '#f59e0b', '#ef4444'];
export const REST_COLOR = '#94a3b8';

export class StackedChart {
  constructor(container) {
    this.container = container;
    this.data = null;
    this.width = 0;
    this.observer = new ResizeObserver(() => {
      const w = Math.floor(this.container.clientWidth);
      if (w > 0 && w !== this.width && this.data) this.render(this.data);
    });
    this.observer.observe(container);
  }

  /** Draws `{labels, series: [{name, color, values}]}`: one value per label and series. */
  render(data) {
    this.data = data;
    const box = this.container;
    clear(box);
    this.width = Math.floor(box.clientWidth);
    const labels = data.labels || [];
    const series = data.series || [];
    const n = labels.length;
    const width = Math.max(280, this.width || 640);
    const narrow = width < 480;
    const height = narrow ? 230 : 300;
    const m = { top: 24, right: 16, bottom: 34, left: narrow ? 44 : 60 };
    const pw = width - m.left - m.right;
    const ph = height - m.top - m.bottom;
    const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (Number(s.values[i]) || 0), 0));
    const max = niceMax(Math.max(0, ...totals));
    const y = (v) => m.top + ph - (v / max) * ph;
    const root = svg('svg', {
      class: 'chart-svg stacked-svg', viewBox: `0 0 ${width} ${height}`, width, height,
      role: 'group', 'aria-label': t('uv.chartLabel', { n }),
    });
    const grid = svg('g', { class: 'grid', 'aria-hidden': 'true' });
    const ticks = 4;
    for (let i = 0; i <= ticks; i++) {
      const yy = m.top + ph - (i * ph) / ticks;
      grid.append(svg('line', { x1: m.left, x2: m.left + pw, y1: yy, y2: yy, class: i === 0 ? 'axis-line' : 'grid-line' }));
      grid.append(svg('text', { x: m.left - 8, y: yy + 4, class: 'tick', 'text-anchor': 'end' }, fmtCompact((max * i) / ticks)));
    }
    const slot = n ? pw / n : pw;
    const barW = Math.max(2, Math.min(36, slot * 0.7));
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / (narrow ? 46 : 58)))));
    for (let i = 0; i < n; i++) {
      if (i % every === 0 || i === n - 1) {
        grid.append(svg('text', { x: m.left + slot * (i + 0.5), y: height - 10, class: 'tick tick-x', 'text-anchor': 'middle' }, labels[i].slice(5)));
      }
    }
    root.append(grid);
    const days = svg('g', { class: 'days' });
    this.dayEls = [];
    for (let i = 0; i < n; i++) {
      const parts = series.map((s) => ({ name: s.name, color: s.color, value: Number(s.values[i]) || 0 }));
      const label = t('uv.dayLabel', { day: labels[i], total: fmtInt(totals[i]) })
        + parts.filter((p) => p.value > 0).map((p) => `; ${p.name}: ${fmtInt(p.value)}`).join('');
      const g = svg('g', { class: 'day', tabindex: i === n - 1 ? 0 : -1, role: 'img', 'aria-label': label, 'data-day': labels[i], 'data-total': totals[i] });
      const x = m.left + slot * i + (slot - barW) / 2;
      g.append(svg('rect', { class: 'hit', x: m.left + slot * i, y: m.top, width: slot, height: ph, fill: 'transparent' }));
      let base = 0;
      parts.forEach((p, k) => {
        if (p.value <= 0) return;
        const top = y(base + p.value);
        g.append(svg('rect', { class: 'seg-bar', x, y: top, width: barW, height: Math.max(0.5, y(base) - top), fill: p.color, 'data-series': k, 'data-value': p.value }));
        base += p.value;
      });
      g.addEventListener('pointerenter', () => this.show(i, parts, totals[i], x + barW / 2));
      g.addEventListener('focus', () => this.show(i, parts, totals[i], x + barW / 2));
      g.addEventListener('pointerleave', () => this.hide());
      g.addEventListener('blur', () => this.hide());
      g.addEventListener('keydown', (e) => this.onKey(e, i));
      days.append(g);
      this.dayEls.push(g);
    }
    root.append(days);
    const tip = h('div', { class: 'chart-tip', role: 'presentation', 'aria-hidden': 'true' });
    tip.hidden = true;
    box.append(root, tip);
    this.geom = { root, tip, width, labels };
  }

  onKey(e, i) {
    const n = this.dayEls.length;
    let next = i;
    if (e.key === 'ArrowRight') next = Math.min(n - 1, i + 1);
    else if (e.key === 'ArrowLeft') next = Math.max(0, i - 1);
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = n - 1;
    else return;
    e.preventDefault();
    this.dayEls[i].setAttribute('tabindex', '-1');
    this.dayEls[next].setAttribute('tabindex', '0');
    this.dayEls[next].focus();
  }

  show(i, parts, total, cx) {
    const { tip, root, width, labels } = this.geom;
    clear(tip);
    tip.append(h('div', { class: 'tip-title' }, `${labels[i]} · ${fmtInt(total)}`));
    for (const p of [...parts].reverse()) {
      if (p.value <= 0) continue;
      const swatch = h('span', { class: 'swatch' });
      swatch.style.background = p.color;
      tip.append(h('div', { class: 'tip-row' }, swatch, h('span', { class: 'tip-name' }, p.name), h('strong', { class: 'tip-value' }, fmtInt(p.value))));
    }
    tip.hidden = false;
    const rect = root.getBoundingClientRect();
    const scale = rect.width / width || 1;
    let left = cx * scale + 12;
    if (left + tip.offsetWidth > rect.width - 4) left = cx * scale - tip.offsetWidth - 12;
    tip.style.left = `${Math.max(4, left)}px`;
    tip.style.top = '8px';
  }

  hide() {
    if (this.geom) this.geom.tip.hidden = true;
  }
}
