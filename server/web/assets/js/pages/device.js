// One device: its details and latest metrics (live from `status` events) in their units, its
// metrics over time (`device_charts.js`), the command buttons
// its viewer's role allows, the command history with progress (refreshed on `command_result`
// and `command_progress` events), and its log lines, live, with a level filter.

import * as api from '../api.js';
import { h, replace, errorBox, badge, table, pager, timeEl, progressBar, debounce } from '../dom.js';
import { commandPanel, resultView } from '../commands.js';
import { fmtValue, unitOf } from '../charts.js';
import { metricCharts } from './device_charts.js';

const HISTORY_PAGE = 20;
const LOG_LINES = 200;
const LEVELS = ['', 'ERROR', 'WARN', 'INFO', 'DEBUG', 'TRACE'];
const FINAL = ['SUCCESS', 'FAILED', 'TIMEOUT', 'CANCELLED', 'EXPIRED', 'CONFIRMED'];

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v === null || v === undefined || v === '' ? '–' : v)]));
}

/** A metric value as text: numbers in their unit, lists joined, objects as JSON. */
function metricText(name, value) {
  if (typeof value === 'number') return fmtValue(value, unitOf(name));
  if (Array.isArray(value)) return value.join(', ');
  if (value && typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

export function render(ctx) {
  const { root, params, user, socket } = ctx;
  const id = params.id;
  const base = `/api/v1/devices/${encodeURIComponent(id)}`;
  let device = null;
  let historyOffset = 0;
  let historyStatus = '';
  let level = '';

  const title = h('h1', {}, id);
  const statusEl = h('span', { id: 'device-status' });
  const details = h('div');
  const metrics = h('div', { id: 'device-metrics' });
  const commands = h('div', { id: 'device-commands' });
  const history = h('div', { id: 'command-history' });
  const logs = h('div', { class: 'logs', id: 'device-logs' });
  const error = h('div');
  const charts = metricCharts(id);

  function showDevice() {
    replace(
      title,
      device.name && device.name !== device.id
        ? [device.name, h('span', { class: 'mono muted subtitle', text: device.id })]
        : h('span', { class: 'mono', text: device.id }),
    );
    replace(statusEl, badge(device.status));
    replace(
      details,
      kv([
        ['Company', device.companyId],
        ['Line', device.productionLineId],
        ['Version', device.version],
        ['Connection', device.connectionMode],
        ['Last seen', timeEl(device.lastSeen)],
        ['Address', device.remoteAddr],
        ['Boot id', device.bootId && h('span', { class: 'mono', text: device.bootId })],
        ['Run id', device.runId && h('span', { class: 'mono', text: device.runId })],
        ['Enrolled', timeEl(device.createdAt)],
      ]),
    );
    showMetrics();
  }

  function showMetrics() {
    const m = device.metrics || {};
    const entries = Object.entries(m).filter(([k]) => k !== 'shellTemplates');
    replace(
      metrics,
      entries.length ? kv(entries.map(([k, v]) => [k, metricText(k, v)])) : h('p', { class: 'muted', text: 'No metrics reported yet.' }),
      device.statusAt ? h('p', { class: 'muted' }, 'Reported ', timeEl(device.statusAt)) : null,
    );
  }

  async function loadDevice() {
    try {
      device = await api.get(base);
    } catch (e) {
      replace(error, errorBox(e));
      return;
    }
    showDevice();
    if (!commands.firstChild) {
      const panel = commandPanel({
        user,
        target: {
          label: device.name && device.name !== device.id ? `${device.name} (${device.id})` : device.id,
          templates: (device.metrics && device.metrics.shellTemplates) || ['disk_usage', 'network_interfaces', 'service_status', 'ping', 'journal_tail'],
        },
        send: (body) => api.post(`${base}/commands`, body),
        show: (info, data) => {
          loadHistory();
          return resultView(info, data);
        },
      });
      if (panel) replace(commands, h('div', { class: 'card' }, h('h2', { text: 'Commands' }), panel));
    }
  }

  async function loadHistory() {
    let page;
    try {
      page = await api.get(`${base}/commands`, { limit: HISTORY_PAGE, offset: historyOffset, status: historyStatus });
    } catch (e) {
      replace(history, errorBox(e));
      return;
    }
    replace(
      history,
      table(
        [
          { title: 'Created', cell: (c) => timeEl(c.createdAt) },
          { title: 'Type', cell: (c) => h('span', { class: 'mono', text: c.type }) },
          { title: 'Status', cell: (c) => badge(c.status) },
          {
            title: 'Progress',
            cell: (c) => (c.progress !== null && c.progress !== undefined
              ? h('div', {}, progressBar(c.progress), h('small', { class: 'muted', text: `${c.progress}% ${c.progressMessage || ''}` }))
              : FINAL.includes(c.status) ? '' : h('small', { class: 'muted', text: 'waiting' })),
          },
          { title: 'By', cell: (c) => c.issuedBy || '–' },
          { title: 'Output', cell: (c) => h('span', { class: 'mono', title: c.output || '', text: (c.output || '').slice(0, 160) }) },
          { title: 'Id', cell: (c) => h('small', { class: 'mono muted', text: c.id }) },
        ],
        page.items,
        { empty: 'No commands yet.', rowAttrs: (c) => ({ dataset: { commandId: c.id, type: c.type, status: c.status } }) },
      ),
      pager({ total: page.total, limit: HISTORY_PAGE, offset: historyOffset }, (offset) => {
        historyOffset = offset;
        loadHistory();
      }),
    );
  }

  function logLine(line) {
    return h('div', { class: `lvl-${line.level}` }, timeEl(line.ts), h('span', { text: `${line.level.padEnd(5)} ${line.line}` }));
  }

  async function loadLogs() {
    let page;
    try {
      page = await api.get(`${base}/logs`, { limit: LOG_LINES, level });
    } catch (e) {
      replace(logs, errorBox(e));
      return;
    }
    // The API answers newest first; a log reads oldest first, newest at the bottom.
    replace(logs, page.items.length ? page.items.slice().reverse().map(logLine) : h('div', { class: 'muted', text: 'No log lines.' }));
    logs.scrollTop = logs.scrollHeight;
  }

  const refreshHistory = debounce(loadHistory, 300);
  const stopListening = socket.listen((frame) => {
    if (frame.type === 'hello' || frame.type === 'dropped') {
      loadDevice();
      loadHistory();
      loadLogs();
      if (frame.type === 'dropped') charts.reload();
      return;
    }
    if (frame.deviceId !== id) return;
    if (frame.type === 'status') charts.onStatus(frame);
    if (frame.type === 'status' && device) {
      device.status = frame.status;
      device.statusAt = frame.ts;
      device.lastSeen = frame.ts;
      if (frame.metrics) device.metrics = frame.metrics;
      if (frame.version) device.version = frame.version;
      if (frame.bootId) device.bootId = frame.bootId;
      if (frame.runId) device.runId = frame.runId;
      showDevice();
    } else if (frame.type === 'command_result' || frame.type === 'command_progress') {
      refreshHistory();
    } else if (frame.type === 'log_line' && (!level || frame.level === level)) {
      const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 30;
      if (logs.firstChild && logs.firstChild.classList.contains('muted')) replace(logs);
      logs.append(logLine(frame));
      while (logs.childNodes.length > 1000) logs.firstChild.remove();
      if (atBottom) logs.scrollTop = logs.scrollHeight;
    }
  });

  const levelSelect = h('select', { name: 'level' }, LEVELS.map((l) => h('option', { value: l, text: l || 'all levels' })));
  levelSelect.addEventListener('change', () => {
    level = levelSelect.value;
    loadLogs();
  });
  const statusSelect = h(
    'select',
    { name: 'historyStatus' },
    ['', 'PENDING', 'QUEUED', 'SENT', 'SUCCESS', 'FAILED', 'TIMEOUT', 'CANCELLED', 'EXPIRED', 'CONFIRMING', 'CONFIRMED'].map((s) =>
      h('option', { value: s, text: s || 'any status' }),
    ),
  );
  statusSelect.addEventListener('change', () => {
    historyStatus = statusSelect.value;
    historyOffset = 0;
    loadHistory();
  });

  root.append(
    h('p', {}, h('a', { href: '#/devices', text: '‹ Devices' })),
    h('div', { class: 'row spread' }, title, statusEl),
    error,
    h(
      'div',
      { class: 'grid' },
      h('div', { class: 'card' }, h('h2', { text: 'Details' }), details),
      h('div', { class: 'card' }, h('h2', { text: 'Metrics' }), metrics),
    ),
    charts.el,
    commands,
    h('div', { class: 'card' }, h('div', { class: 'row spread' }, h('h2', { text: 'Command history' }), statusSelect), history),
    h('div', { class: 'card' }, h('div', { class: 'row spread' }, h('h2', { text: 'Logs (live)' }), levelSelect), logs),
  );
  loadDevice();
  loadHistory();
  loadLogs();
  return () => {
    stopListening();
    charts.destroy();
  };
}
