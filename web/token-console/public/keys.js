// The keys tab: the list of gateway keys (enable switch, copy, delete with
// confirmation), the create form, and the panel that shows a new key's full
// value once. Full values live only in this page's memory (`fullKeys`),
// never in storage, and only for keys created in this page session.

import { api } from './api.js';
import { t } from './i18n.js';
import { confirmDialog } from './dialog.js';
import { h, clear, fmtInt, fmtCost, fmtDateTime, isNever, errorText, renderState, toast, copyText } from './util.js';

function hasLimit(k) {
  return (k.token_limit !== null && k.token_limit !== undefined) || (k.rpm_limit !== null && k.rpm_limit !== undefined);
}

export class Keys {
  constructor({ onChange } = {}) {
    this.keys = null;
    this.error = null;
    this.fullKeys = new Map();
    this.created = null;
    this.onChange = onChange || (() => {});
    this.bind();
  }

  bind() {
    const form = document.getElementById('key-form');
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.create();
    });
    document.getElementById('key-name').addEventListener('input', () => {
      document.getElementById('key-form-error').textContent = '';
      document.getElementById('key-name').removeAttribute('aria-invalid');
    });
    document.getElementById('created-copy').addEventListener('click', () => {
      if (this.created) this.copy(this.created.value);
    });
    document.getElementById('created-done').addEventListener('click', () => {
      this.created = null;
      this.renderCreated();
      document.getElementById('key-name').focus();
    });
  }

  async load() {
    if (!this.keys) renderState(document.getElementById('keys-state'), 'loading');
    try {
      this.keys = await api.keys();
      this.error = null;
    } catch (err) {
      this.error = err;
    }
    this.render();
    if (this.keys) this.onChange(this.keys);
  }

  async create() {
    const nameEl = document.getElementById('key-name');
    const descEl = document.getElementById('key-desc');
    const errEl = document.getElementById('key-form-error');
    const btn = document.getElementById('key-create');
    const name = nameEl.value.trim();
    errEl.textContent = '';
    if (!name) {
      errEl.textContent = t('keys.nameRequired');
      nameEl.setAttribute('aria-invalid', 'true');
      nameEl.focus();
      return;
    }
    btn.disabled = true;
    btn.textContent = t('keys.creating');
    try {
      const key = await api.createKey(name, descEl.value.trim());
      this.fullKeys.set(key.id, key.value);
      this.created = key;
      nameEl.value = '';
      descEl.value = '';
      this.renderCreated();
      document.getElementById('created-panel').focus();
      toast(t('toast.created'), 'success');
      await this.load();
    } catch (err) {
      errEl.textContent = errorText(err);
      nameEl.setAttribute('aria-invalid', 'true');
    } finally {
      btn.disabled = false;
      btn.textContent = t('keys.create');
    }
  }

  async copy(value) {
    const ok = await copyText(value);
    toast(ok ? t('toast.copied') : t('toast.copyFailed'), ok ? 'success' : 'error');
  }

  async toggle(key, input) {
    const enabled = input.checked;
    input.disabled = true;
    try {
      const updated = await api.updateKey(key.id, { enabled });
      Object.assign(key, updated || { enabled });
      toast(t(key.enabled ? 'toast.enabled' : 'toast.disabled', { name: key.name }), 'success');
    } catch (err) {
      input.checked = !enabled;
      toast(errorText(err), 'error');
    } finally {
      input.disabled = false;
    }
    this.render();
    const again = document.querySelector(`#keys-body tr[data-id="${CSS.escape(String(key.id))}"] input[role="switch"]`);
    if (again) again.focus();
  }

  async remove(key, trigger) {
    const ok = await confirmDialog({
      title: t('confirm.deleteTitle'),
      body: t('confirm.deleteBody', { name: key.name }),
      confirmLabel: t('action.delete'),
      returnFocus: trigger,
    });
    if (!ok) return;
    try {
      await api.deleteKey(key.id);
      this.fullKeys.delete(key.id);
      if (this.created && this.created.id === key.id) {
        this.created = null;
        this.renderCreated();
      }
      toast(t('toast.deleted'), 'success');
    } catch (err) {
      toast(errorText(err), 'error');
    }
    await this.load();
    document.getElementById('key-name').focus();
  }

  render() {
    this.renderCreated();
    // A refresh (live usage updates) must not steal the focus from a row's control.
    const active = document.activeElement;
    const activeRow = active && active.closest ? active.closest('#keys-body tr') : null;
    const refocus = activeRow ? { id: activeRow.dataset.id, action: active.dataset.action || (active.getAttribute('role') === 'switch' ? 'switch' : '') } : null;
    this.renderList();
    if (refocus) {
      const row = document.querySelector(`#keys-body tr[data-id="${CSS.escape(refocus.id)}"]`);
      const target = row && (refocus.action === 'switch' ? row.querySelector('input[role="switch"]') : row.querySelector(`[data-action="${refocus.action}"]`));
      if (target) target.focus();
    }
  }

  renderList() {
    const body = document.getElementById('keys-body');
    const state = document.getElementById('keys-state');
    const table = document.getElementById('keys-table');
    clear(body);
    clear(state);
    document.getElementById('keys-count').textContent = '';
    if (this.error) renderState(state, 'error', { text: errorText(this.error), retry: () => this.load() });
    if (!this.keys) {
      table.classList.add('is-empty');
      if (!this.error) renderState(state, 'loading');
      return;
    }
    table.classList.toggle('is-empty', this.keys.length === 0);
    if (!this.keys.length && !this.error) renderState(state, 'empty');
    const labels = {
      name: t('col.name'), value: t('col.value'), created: t('col.created'), lastUsed: t('col.lastUsed'),
      usage: t('col.usage'), enabled: t('col.enabled'), actions: t('col.actions'),
    };
    // Each cell holds one wrapper so the narrow-screen list can lay it out as "label | value".
    const cell = (col, label, cls, ...children) => h('td', { class: cls || null, 'data-label': label, 'data-col': col },
      h('div', { class: 'cell' }, ...children));
    for (const k of this.keys) {
      const name = [h('div', { class: 'strong', 'data-raw': '' }, k.name)];
      if (k.description) name.push(h('div', { class: 'muted small', 'data-raw': '' }, k.description));

      const sw = h('input', { type: 'checkbox', role: 'switch', 'aria-label': t('keys.toggleLabel', { name: k.name }) });
      sw.checked = Boolean(k.enabled);
      sw.addEventListener('change', () => this.toggle(k, sw));
      const switchLabel = h('label', { class: 'switch' }, sw,
        h('span', { class: 'switch-track', 'aria-hidden': 'true' }, h('span', { class: 'switch-thumb' })),
        h('span', { class: 'switch-text', 'aria-hidden': 'true' }, t(k.enabled ? 'keys.enabled' : 'keys.disabled')));

      const copyBtn = h('button', { type: 'button', class: 'btn btn-small', 'aria-label': t('keys.copyLabel', { name: k.name }), dataset: { action: 'copy' } }, t('action.copy'));
      copyBtn.addEventListener('click', () => {
        const full = this.fullKeys.get(k.id);
        if (full) this.copy(full);
        else toast(t('toast.copyUnavailable'), 'info');
      });
      const delBtn = h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost', 'aria-label': t('keys.deleteLabel', { name: k.name }), dataset: { action: 'delete' } }, t('action.delete'));
      delBtn.addEventListener('click', () => this.remove(k, delBtn));

      body.append(h('tr', { class: k.enabled ? null : 'is-disabled', dataset: { id: k.id } },
        cell('name', labels.name, 'key-name', ...name),
        cell('value', labels.value, null, h('code', { class: 'key-value', 'data-raw': '' }, k.value)),
        cell('created', labels.created, null, h('time', { datetime: k.created_at, 'data-raw': '' }, fmtDateTime(k.created_at))),
        cell('last_used', labels.lastUsed, null, isNever(k.last_used)
          ? h('span', { class: 'muted' }, t('keys.never'))
          : h('time', { datetime: k.last_used, 'data-raw': '' }, fmtDateTime(k.last_used))),
        cell('usage', labels.usage, null, h('div', null, t('keys.usage', { tokens: fmtInt(k.used_tokens), calls: fmtInt(k.call_count) })),
          h('div', { class: 'key-cost', dataset: { nanos: String(k.cost_nanos ?? 0) } }, t('card.cost', { cost: fmtCost(k.cost) }),
            k.unpriced_calls ? ` · ${t('card.unpricedCalls', { n: fmtInt(k.unpriced_calls) })}` : ''),
          hasLimit(k) ? h('div', { class: 'sub' }, t('keys.limits', {
            tokens: k.token_limit === null || k.token_limit === undefined ? t('card.unlimited') : fmtInt(k.token_limit),
            rpm: k.rpm_limit === null || k.rpm_limit === undefined ? t('card.unlimited') : fmtInt(k.rpm_limit),
          })) : null,
          k.limit_period ? h('div', { class: 'sub', dataset: { period: k.limit_period } }, t('keys.period', {
            period: t(`period.${k.limit_period}`),
            used: fmtInt(k.period_used),
            left: k.period_left === null || k.period_left === undefined ? t('card.unlimited') : fmtInt(k.period_left),
            resets: fmtDateTime(k.period_resets_at),
          })) : null,
          k.cost_limit === null || k.cost_limit === undefined ? null : h('div', { class: 'sub', dataset: { costLimit: String(k.cost_limit_nanos) } }, t('keys.costLimit', {
            limit: fmtCost(k.cost_limit),
            spent: fmtCost(k.period_cost),
            left: fmtCost(k.period_cost_left),
          })),
          k.forecast && k.forecast.runs_out_at && k.token_limit !== null && k.period_left > 0
            ? h('div', { class: 'sub key-forecast', dataset: { runsOutAt: k.forecast.runs_out_at } }, t('keys.runsOut', { date: fmtDateTime(k.forecast.runs_out_at) }))
            : null),
        cell('enabled', labels.enabled, null, switchLabel),
        cell('actions', labels.actions, 'actions-col', h('div', { class: 'row-actions' }, copyBtn, delBtn)),
      ));
    }
  }

  renderCreated() {
    const panel = document.getElementById('created-panel');
    const code = document.getElementById('created-value');
    if (!this.created) {
      panel.hidden = true;
      code.textContent = '';
      return;
    }
    panel.hidden = false;
    code.textContent = this.created.value;
  }
}
