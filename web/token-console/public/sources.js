// The usage sources on the dashboard: a source filter for the figures above,
// each source's health (CLIProxyAPI readers), and ingested usage per upstream
// credential and per client key. Everything comes from /api/console/sources;
// text is always rendered as text.

import { api } from './api.js';
import { t } from './i18n.js';
import { h, clear, fmtInt, fmtMs, fmtDateTime, errorText, renderState } from './util.js';

export class Sources {
  /** `onFilter(source)` is called when the dashboard's source filter changes ('' = all). */
  constructor({ onFilter, onNames }) {
    this.onNames = onNames;
    this.data = null;
    this.error = null;
    this.source = '';
    this.onFilter = onFilter;
    this.select = document.getElementById('source-filter');
    this.select.addEventListener('change', () => {
      this.source = this.select.value;
      this.onFilter(this.source);
    });
  }

  async load() {
    try {
      this.data = await api.sources();
      this.error = null;
    } catch (err) {
      this.error = err;
    }
    this.render();
  }

  /** Source names known to the page: the gateway, configured sources, and those with usage. */
  names() {
    const names = new Set(['gateway']);
    const d = this.data;
    if (d) {
      for (const s of d.sources) names.add(s.name);
      for (const r of [...d.credentials, ...d.client_keys]) names.add(r.source);
    }
    if (this.source) names.add(this.source);
    return [...names];
  }

  render() {
    this.renderFilter();
    this.onNames(this.names());
    const box = document.getElementById('sources-box');
    const d = this.data;
    const any = d && (d.sources.length || d.credentials.length || d.client_keys.length);
    box.hidden = !any && !this.error;
    const state = document.getElementById('sources-state');
    clear(state);
    if (this.error) renderState(state, 'error', { text: errorText(this.error), retry: () => this.load() });
    if (!d) return;
    this.renderHealth(d.sources);
    this.renderUsage('credentials-body', d.credentials);
    this.renderUsage('client-keys-body', d.client_keys);
  }

  renderFilter() {
    const current = this.source;
    clear(this.select);
    this.select.append(h('option', { value: '', text: t('sources.all') }));
    for (const name of this.names()) {
      const label = name === 'gateway' ? t('sources.gateway') : name;
      this.select.append(h('option', { value: name, text: label }));
    }
    this.select.value = current;
  }

  renderHealth(list) {
    const body = document.getElementById('sources-health-body');
    clear(body);
    for (const s of list) {
      const ok = s.connected && !s.last_error;
      body.append(h('tr', null,
        h('td', { text: s.name }),
        h('td', null, h('span', { class: `badge ${ok ? 'badge-ok' : 'badge-warn'}`, text: t(`sources.state.${s.state}`) })),
        h('td', { text: s.last_record_at ? fmtDateTime(s.last_record_at) : '—' }),
        h('td', { class: 'num', text: fmtInt(s.records_ingested) }),
        h('td', { class: 'num', text: s.lag_ms === null ? '—' : fmtMs(s.lag_ms) }),
        h('td', { class: 'num', text: fmtInt(s.bad_records), title: s.last_bad_record || undefined }),
        h('td', { class: 'wrap', text: s.last_error || '—' }),
      ));
    }
    if (!list.length) body.append(h('tr', null, h('td', { colspan: 7, class: 'muted', text: t('sources.noneConfigured') })));
  }

  renderUsage(id, rows) {
    const body = document.getElementById(id);
    clear(body);
    for (const r of rows) {
      body.append(h('tr', null,
        h('td', { text: r.source }),
        h('td', { text: r.label || r.id || '—', title: r.id || undefined }),
        h('td', { class: 'num', text: fmtInt(r.call_count) }),
        h('td', { class: 'num', text: fmtInt(r.error_count) }),
        h('td', { class: 'num', text: fmtInt(r.prompt_tokens) }),
        h('td', { class: 'num', text: fmtInt(r.cache_read_tokens) }),
        h('td', { class: 'num', text: fmtInt(r.completion_tokens) }),
        h('td', { class: 'num', text: fmtInt(r.token_count) }),
      ));
    }
    if (!rows.length) body.append(h('tr', null, h('td', { colspan: 8, class: 'muted', text: t('sources.noUsage') })));
  }
}
