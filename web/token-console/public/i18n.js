// Every visible string of the console, in Chinese and English.
//
// Static elements carry `data-i18n` (text), `data-i18n-placeholder`,
// `data-i18n-aria-label` or `data-i18n-title`; `applyStatic()` fills them.
// Dynamic text goes through `t(key, params)` from the same table, so a
// label can never exist in one language only.

const STORAGE_KEY = 'tc.lang';

const TABLE = {
  zh: {
    'app.title': 'Token 看板',
    'app.subtitle': 'LLM 网关用量控制台',
    'nav.tabs': '控制台页面',
    'tab.dashboard': '仪表板',
    'tab.logs': '日志',
    'tab.keys': '密钥管理',
    'lang.switch': 'English',
    'lang.switchLabel': '切换到英文',
    'action.export': '导出',
    'action.exportLabel': '导出统计数据、日志和密钥（JSON 文件）',
    'action.signOut': '退出登录',
    'action.retry': '重试',
    'action.refresh': '刷新',
    'action.cancel': '取消',
    'action.copy': '复制',
    'action.delete': '删除',
    'action.done': '完成',
    'state.loading': '加载中…',
    'state.empty': '暂无数据',
    'state.networkError': '无法连接服务器，请确认服务正在运行。',
    'state.httpError': '请求失败（{status}）：{msg}',
    'state.unknownError': '请求失败（{status}）',
    'unit.ms': '{n} ms',
    'unit.percent': '{n}%',

    'dash.cards': 'Token 使用统计',
    'card.total': '总 Token 数',
    'card.used': '已使用 Token',
    'card.remaining': '剩余 Token',
    'card.calls': 'API 调用次数',
    'card.unlimited': '不限',
    'card.totalSubLimited': '全局额度',
    'card.totalSubUnlimited': '未设置额度',
    'card.usedSub': '输入 {prompt} · 输出 {completion}',
    'card.remainingSub': '已用 {percent}',
    'card.remainingSubUnlimited': '用量不受限制',
    'card.callsSub': '成功 {ok} · 失败 {err}',
    'card.cost': '花费 {cost}',
    'card.unpricedCalls': '另有 {n} 次调用未定价',
    'cost.unpriced': '未定价',
    'cost.estimated': '按估算 Token 计价',
    'col.cost': '花费',
    'trend.cost': '花费',
    'trend.costScale': '花费按自身比例绘制，数值见悬停提示',
    'usage.title': '额度使用',
    'usage.label': '额度使用进度',
    'usage.limited': '已使用 {used} / {total}（{percent}）',
    'usage.unlimited': '未设置总额度，用量不受限制',
    'perf.title': '性能',
    'perf.p50': 'P50 延迟',
    'perf.p95': 'P95 延迟',
    'perf.p99': 'P99 延迟',
    'perf.avg': '平均耗时',
    'perf.success': '成功调用',
    'perf.errors': '失败调用',
    'perf.tokensTitle': 'Token 明细',
    'perf.prompt': '输入',
    'perf.completion': '输出',
    'perf.cacheRead': '缓存读取',
    'perf.cacheCreation': '缓存写入',
    'perf.reasoning': '推理',
    'trend.title': '使用趋势',
    'trend.range': '时间范围',
    'trend.days': '{n} 天',
    'trend.tokens': 'Token 消耗',
    'trend.calls': 'API 调用',
    'trend.chartLabel': '最近 {n} 天的 Token 消耗与 API 调用趋势',
    'trend.point': '{label}：Token 消耗 {tokens}，API 调用 {calls}',
    'trend.axisTokens': 'Token',
    'trend.axisCalls': '调用',
    'models.title': '模型使用统计',
    'models.sortHint': '点击表头排序',
    'models.none': '（无模型）',
    'col.model': '模型',
    'col.calls': '调用次数',
    'col.tokens': '消耗 Token',
    'col.avgTime': '平均耗时',
    'col.successRate': '成功率',

    'logs.title': '实时日志',
    'logs.search': '搜索日志',
    'logs.searchPlaceholder': '搜索端点、方法或状态码',
    'logs.filterModel': '按模型筛选',
    'logs.filterKey': '按密钥筛选',
    'logs.filterStatus': '按状态筛选',
    'logs.allModels': '全部模型',
    'logs.allKeys': '全部密钥',
    'logs.allStatus': '全部状态',
    'logs.filterClient': '按客户端筛选',
    'logs.allClients': '全部客户端',
    'logs.clientOther': '其他',
    'logs.filterKind': '按请求类型筛选',
    'logs.allKinds': '全部请求',
    'logs.kindCall': '调用',
    'logs.kindCountTokens': '计数 (count_tokens)',
    'logs.live': '实时更新',
    'logs.liveOn': '实时',
    'logs.paused': '已暂停',
    'logs.showPending': '显示 {n} 条新日志',
    'logs.connecting': '正在连接…',
    'logs.reconnecting': '连接中断，正在重连…',
    'logs.loadMore': '加载更多',
    'logs.noMore': '没有更多日志了',
    'logs.noMatch': '没有匹配的日志',
    'logs.count': '共 {n} 条',
    'logs.noKey': '无密钥',
    'logs.stream': '流式',
    'logs.estimated': '估算',
    'logs.session': '会话 {id}',
    'logs.ttft': '首字 {n} ms',
    'col.time': '时间',
    'col.method': '方法',
    'col.endpoint': '端点',
    'col.status': '状态码',
    'col.logTokens': 'Token',
    'col.duration': '耗时',
    'col.key': '密钥',
    'col.client': '客户端',

    'keys.title': 'API 密钥',
    'keys.createTitle': '创建新密钥',
    'keys.name': '密钥名称',
    'keys.namePlaceholder': '例如：生产环境',
    'keys.description': '描述（可选）',
    'keys.descriptionPlaceholder': '例如：用于测试环境',
    'keys.create': '创建',
    'keys.creating': '正在创建…',
    'keys.createdTitle': '密钥已创建',
    'keys.createdWarning': '请立即复制并妥善保存：完整密钥只显示这一次，关闭后将无法再次查看。',
    'keys.nameRequired': '请输入密钥名称',
    'keys.never': '从未使用',
    'keys.usage': '{tokens} Token · {calls} 次调用',
    'keys.enabled': '已启用',
    'keys.disabled': '已停用',
    'keys.toggleLabel': '启用密钥 {name}',
    'keys.copyLabel': '复制密钥 {name}',
    'keys.deleteLabel': '删除密钥 {name}',
    'keys.limits': '额度 {tokens} · 每分钟 {rpm} 次',
    'keys.period': '{period}重置：本期已用 {used} · 剩余 {left} · {resets} 重置',
    'keys.costLimit': '金额额度 {limit}：已花费 {spent} · 剩余 {left}',
    'period.day': '每日',
    'period.week': '每周',
    'period.month': '每月',
    'card.remainingSubPeriod': '本期已用 {percent} · {resets} 重置',
    'usage.limitedPeriod': '本期已使用 {used} / {total}（{percent}），{resets} 重置',
    'col.name': '名称',
    'col.created': '创建时间',
    'col.lastUsed': '最后使用',
    'col.value': '密钥值',
    'col.usage': '用量',
    'col.enabled': '启用',
    'col.actions': '操作',
    'confirm.deleteTitle': '删除这个密钥？',
    'confirm.deleteBody': '删除后，使用密钥“{name}”的请求会立即被拒绝。此操作无法撤销。',
    'toast.copied': '已复制到剪贴板',
    'toast.copyFailed': '复制失败，请手动选择并复制',
    'toast.copyUnavailable': '完整密钥只在创建时显示一次，页面不再保存它，因此无法复制。如需使用，请新建密钥。',
    'toast.deleted': '密钥已删除',
    'toast.created': '密钥已创建',
    'toast.enabled': '已启用密钥 {name}',
    'toast.disabled': '已停用密钥 {name}',
    'toast.exported': '导出文件已下载',

    'auth.title': '需要管理员密钥',
    'auth.description': '此控制台受管理员密钥保护。请输入配置中的 console.admin_key（环境变量 CONSOLE_ADMIN_KEY）。密钥只保存在当前浏览器会话中。',
    'auth.label': '管理员密钥',
    'auth.placeholder': '输入管理员密钥',
    'auth.submit': '登录',
    'auth.checking': '正在验证…',
    'auth.required': '请输入管理员密钥',
  },
  en: {
    'app.title': 'Token Console',
    'app.subtitle': 'Usage console of your LLM gateway',
    'nav.tabs': 'Console pages',
    'tab.dashboard': 'Dashboard',
    'tab.logs': 'Logs',
    'tab.keys': 'Keys',
    'lang.switch': '中文',
    'lang.switchLabel': 'Switch to Chinese',
    'action.export': 'Export',
    'action.exportLabel': 'Export statistics, logs and keys (JSON file)',
    'action.signOut': 'Sign out',
    'action.retry': 'Retry',
    'action.refresh': 'Refresh',
    'action.cancel': 'Cancel',
    'action.copy': 'Copy',
    'action.delete': 'Delete',
    'action.done': 'Done',
    'state.loading': 'Loading…',
    'state.empty': 'No data yet',
    'state.networkError': 'Cannot reach the server. Check that it is running.',
    'state.httpError': 'Request failed ({status}): {msg}',
    'state.unknownError': 'Request failed ({status})',
    'unit.ms': '{n} ms',
    'unit.percent': '{n}%',

    'dash.cards': 'Token usage',
    'card.total': 'Total tokens',
    'card.used': 'Used tokens',
    'card.remaining': 'Remaining tokens',
    'card.calls': 'API calls',
    'card.unlimited': 'Unlimited',
    'card.totalSubLimited': 'Global budget',
    'card.totalSubUnlimited': 'No budget set',
    'card.usedSub': 'Prompt {prompt} · Completion {completion}',
    'card.remainingSub': '{percent} used',
    'card.remainingSubUnlimited': 'Usage is not capped',
    'card.callsSub': '{ok} succeeded · {err} failed',
    'card.cost': 'Cost {cost}',
    'card.unpricedCalls': '{n} more calls unpriced',
    'cost.unpriced': 'unpriced',
    'cost.estimated': 'priced from estimated tokens',
    'col.cost': 'Cost',
    'trend.cost': 'Cost',
    'trend.costScale': 'Cost is drawn to its own scale; hover for values',
    'usage.title': 'Budget usage',
    'usage.label': 'Budget used',
    'usage.limited': '{used} of {total} used ({percent})',
    'usage.unlimited': 'No total budget is set, so usage is unlimited',
    'perf.title': 'Performance',
    'perf.p50': 'P50 latency',
    'perf.p95': 'P95 latency',
    'perf.p99': 'P99 latency',
    'perf.avg': 'Avg time',
    'perf.success': 'Succeeded',
    'perf.errors': 'Failed',
    'perf.tokensTitle': 'Token breakdown',
    'perf.prompt': 'Prompt',
    'perf.completion': 'Completion',
    'perf.cacheRead': 'Cache read',
    'perf.cacheCreation': 'Cache write',
    'perf.reasoning': 'Reasoning',
    'trend.title': 'Usage trend',
    'trend.range': 'Time range',
    'trend.days': '{n} days',
    'trend.tokens': 'Tokens',
    'trend.calls': 'API calls',
    'trend.chartLabel': 'Tokens and API calls over the last {n} days',
    'trend.point': '{label}: {tokens} tokens, {calls} API calls',
    'trend.axisTokens': 'Tokens',
    'trend.axisCalls': 'Calls',
    'models.title': 'Usage by model',
    'models.sortHint': 'Click a column header to sort',
    'models.none': '(no model)',
    'col.model': 'Model',
    'col.calls': 'Calls',
    'col.tokens': 'Tokens',
    'col.avgTime': 'Avg time',
    'col.successRate': 'Success rate',

    'logs.title': 'Live logs',
    'logs.search': 'Search logs',
    'logs.searchPlaceholder': 'Search endpoint, method or status',
    'logs.filterModel': 'Filter by model',
    'logs.filterKey': 'Filter by key',
    'logs.filterStatus': 'Filter by status',
    'logs.allModels': 'All models',
    'logs.allKeys': 'All keys',
    'logs.allStatus': 'All statuses',
    'logs.filterClient': 'Filter by client',
    'logs.allClients': 'All clients',
    'logs.clientOther': 'Other',
    'logs.filterKind': 'Filter by kind',
    'logs.allKinds': 'All requests',
    'logs.kindCall': 'Calls',
    'logs.kindCountTokens': 'Token counts (count_tokens)',
    'logs.live': 'Live updates',
    'logs.liveOn': 'Live',
    'logs.paused': 'Paused',
    'logs.showPending': 'Show {n} new',
    'logs.connecting': 'Connecting…',
    'logs.reconnecting': 'Connection lost, reconnecting…',
    'logs.loadMore': 'Load more',
    'logs.noMore': 'No more logs',
    'logs.noMatch': 'No matching logs',
    'logs.count': '{n} shown',
    'logs.noKey': 'No key',
    'logs.stream': 'stream',
    'logs.estimated': 'estimated',
    'logs.session': 'session {id}',
    'logs.ttft': 'first token {n} ms',
    'col.time': 'Time',
    'col.method': 'Method',
    'col.endpoint': 'Endpoint',
    'col.status': 'Status',
    'col.logTokens': 'Tokens',
    'col.duration': 'Duration',
    'col.key': 'Key',
    'col.client': 'Client',

    'keys.title': 'API keys',
    'keys.createTitle': 'Create a key',
    'keys.name': 'Name',
    'keys.namePlaceholder': 'e.g. production',
    'keys.description': 'Description (optional)',
    'keys.descriptionPlaceholder': 'e.g. for the test environment',
    'keys.create': 'Create',
    'keys.creating': 'Creating…',
    'keys.createdTitle': 'Key created',
    'keys.createdWarning': 'Copy it now and keep it safe: the full key is shown only this once and cannot be viewed again.',
    'keys.nameRequired': 'Enter a name for the key',
    'keys.never': 'Never',
    'keys.usage': '{tokens} tokens · {calls} calls',
    'keys.enabled': 'Enabled',
    'keys.disabled': 'Disabled',
    'keys.toggleLabel': 'Enable key {name}',
    'keys.copyLabel': 'Copy key {name}',
    'keys.deleteLabel': 'Delete key {name}',
    'keys.limits': 'Budget {tokens} · {rpm} per minute',
    'keys.period': 'Resets {period}: {used} used this period · {left} left · resets {resets}',
    'keys.costLimit': 'Money limit {limit}: {spent} spent · {left} left',
    'period.day': 'daily',
    'period.week': 'weekly',
    'period.month': 'monthly',
    'card.remainingSubPeriod': '{percent} used this period · resets {resets}',
    'usage.limitedPeriod': '{used} of {total} used this period ({percent}); resets {resets}',
    'col.name': 'Name',
    'col.created': 'Created',
    'col.lastUsed': 'Last used',
    'col.value': 'Key',
    'col.usage': 'Usage',
    'col.enabled': 'Enabled',
    'col.actions': 'Actions',
    'confirm.deleteTitle': 'Delete this key?',
    'confirm.deleteBody': 'Requests using the key “{name}” will be refused at once. This cannot be undone.',
    'toast.copied': 'Copied to the clipboard',
    'toast.copyFailed': 'Copying failed; select the key and copy it by hand',
    'toast.copyUnavailable': 'The full key is shown only once, when it is created, and this page no longer holds it, so it cannot be copied. Create a new key if you need one.',
    'toast.deleted': 'Key deleted',
    'toast.created': 'Key created',
    'toast.enabled': 'Key {name} enabled',
    'toast.disabled': 'Key {name} disabled',
    'toast.exported': 'Export downloaded',

    'auth.title': 'Admin key required',
    'auth.description': 'This console is protected by an admin key. Enter console.admin_key from the configuration (environment variable CONSOLE_ADMIN_KEY). It is kept for this browser session only.',
    'auth.label': 'Admin key',
    'auth.placeholder': 'Enter the admin key',
    'auth.submit': 'Sign in',
    'auth.checking': 'Checking…',
    'auth.required': 'Enter the admin key',
  },
};

const listeners = new Set();

function initialLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved === 'zh' || saved === 'en') return saved;
  } catch { /* storage unavailable: fall through to the browser's language */ }
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en'];
  for (const l of langs) {
    const lower = String(l).toLowerCase();
    if (lower.startsWith('zh')) return 'zh';
    if (lower.startsWith('en')) return 'en';
  }
  return 'en';
}

let current = initialLang();

export function lang() {
  return current;
}

/** The BCP 47 locale used for numbers and dates. */
export function locale() {
  return current === 'zh' ? 'zh-CN' : 'en-US';
}

/** Translates `key`, replacing `{name}` placeholders with `params`. */
export function t(key, params) {
  const table = TABLE[current];
  let s = Object.prototype.hasOwnProperty.call(table, key) ? table[key] : TABLE.en[key];
  if (s === undefined) {
    console.warn('missing translation', key);
    s = key;
  }
  if (params) {
    s = s.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }
  return s;
}

export function setLang(next) {
  if (next !== 'zh' && next !== 'en') return;
  current = next;
  try { localStorage.setItem(STORAGE_KEY, next); } catch { /* not remembered, still switched */ }
  applyStatic(document);
  for (const fn of listeners) fn(current);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** Fills every element carrying a data-i18n* attribute under `root`. */
export function applyStatic(root) {
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
  document.title = t('app.title');
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.setAttribute('placeholder', t(el.dataset.i18nPlaceholder));
  for (const el of root.querySelectorAll('[data-i18n-aria-label]')) el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.setAttribute('title', t(el.dataset.i18nTitle));
}

/** Both tables, for tests and for checking that no key is missing. */
export const TRANSLATIONS = TABLE;
