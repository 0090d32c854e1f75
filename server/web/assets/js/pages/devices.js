// The device list: server-side search, filters and paging (only one page is ever fetched, so
// 10,000 devices cost what 50 do), the online/offline counts, and live status from the
// dashboard socket for the devices on screen; above them, the fleet over time
// (`fleet_charts.js`).

import * as api from '../api.js';
import { h, replace, errorBox, badge, table, pager, timeEl, fmtNumber, debounce, throttle } from '../dom.js';
import { fleetCharts } from './fleet_charts.js';

const PAGE_SIZE = 50;

export function render(ctx) {
  const { root, query, setQuery, socket } = ctx;
  const state = {
    q: query.get('q') || '',
    status: query.get('status') || '',
    groupId: query.get('groupId') || '',
    productionLineId: query.get('productionLineId') || '',
    companyId: query.get('companyId') || '',
    offset: Number(query.get('offset')) || 0,
  };
  const counts = h('div', { class: 'counts', id: 'device-counts' });
  const listArea = h('div', { id: 'device-list' });
  const error = h('div');
  let rowsById = new Map();
  let generation = 0;

  const q = h('input', { name: 'q', type: 'search', placeholder: 'id or name contains…', value: state.q, size: 28 });
  const status = h(
    'select',
    { name: 'status' },
    [['', 'any status'], ['ONLINE', 'ONLINE'], ['OFFLINE', 'OFFLINE'], ['DISABLED', 'DISABLED']].map(([v, t]) =>
      h('option', { value: v, selected: v === state.status, text: t }),
    ),
  );
  const group = h('select', { name: 'groupId' }, h('option', { value: '', text: 'any group' }));
  const line = h('input', { name: 'productionLineId', placeholder: 'line', value: state.productionLineId, size: 12 });
  const company = h('input', { name: 'companyId', placeholder: 'company', value: state.companyId, size: 12 });

  api
    .get('/api/v1/device-groups', { limit: 500 })
    .then((page) => {
      for (const g of page.items) group.append(h('option', { value: g.id, selected: g.id === state.groupId, text: `${g.name} (${g.memberCount})` }));
    })
    .catch((e) => replace(error, errorBox(e)));

  const filters = () => ({
    q: state.q,
    status: state.status,
    groupId: state.groupId,
    productionLineId: state.productionLineId,
    companyId: state.companyId,
  });

  async function loadCounts() {
    // Two one-row queries: the server counts, the browser never sees the full list.
    try {
      const [online, offline, all] = await Promise.all([
        api.get('/api/v1/devices', { status: 'ONLINE', limit: 1 }),
        api.get('/api/v1/devices', { status: 'OFFLINE', limit: 1 }),
        api.get('/api/v1/devices', { limit: 1 }),
      ]);
      replace(
        counts,
        h('span', { dataset: { count: 'online' } }, h('strong', { text: fmtNumber(online.total) }), 'online'),
        h('span', { dataset: { count: 'offline' } }, h('strong', { text: fmtNumber(offline.total) }), 'offline'),
        h('span', { dataset: { count: 'total' } }, h('strong', { text: fmtNumber(all.total) }), 'devices'),
      );
    } catch (e) {
      replace(counts, errorBox(e));
    }
  }

  async function load() {
    const mine = ++generation;
    const started = performance.now();
    setQuery({ ...filters(), offset: state.offset || '' });
    let page;
    try {
      page = await api.get('/api/v1/devices', { ...filters(), limit: PAGE_SIZE, offset: state.offset });
    } catch (e) {
      if (mine === generation) replace(listArea, errorBox(e));
      return;
    }
    // A slower answer to an older filter must not replace a newer one.
    if (mine !== generation) return;
    rowsById = new Map();
    const view = table(
      [
        { title: 'Device', cell: (d) => h('a', { href: `#/devices/${encodeURIComponent(d.id)}`, class: 'mono', text: d.id }) },
        { title: 'Name', cell: (d) => d.name },
        { title: 'Status', cell: (d) => badge(d.status) },
        { title: 'Company', cell: (d) => d.companyId || '–' },
        { title: 'Line', cell: (d) => d.productionLineId || '–' },
        { title: 'Version', cell: (d) => d.version || '–' },
        { title: 'Last seen', cell: (d) => timeEl(d.lastSeen) },
      ],
      page.items,
      {
        empty: 'No device matches.',
        rowAttrs: (d) => ({ dataset: { deviceId: d.id } }),
      },
    );
    for (const tr of view.querySelectorAll('tr[data-device-id]')) rowsById.set(tr.dataset.deviceId, tr);
    replace(
      listArea,
      view,
      pager({ total: page.total, limit: PAGE_SIZE, offset: state.offset }, (offset) => {
        state.offset = offset;
        load();
      }),
    );
    // For the 10,000-device test: how long this page took, and when it showed counted from the
    // start of the navigation that loaded the document.
    listArea.dataset.renderMs = String(Math.round(performance.now() - started));
    listArea.dataset.shownAtMs = String(Math.round(performance.now()));
    listArea.dataset.loaded = String(mine);
  }

  const refilter = () => {
    state.q = q.value.trim();
    state.status = status.value;
    state.groupId = group.value;
    state.productionLineId = line.value.trim();
    state.companyId = company.value.trim();
    state.offset = 0;
    load();
  };
  const typed = debounce(refilter, 250);
  q.addEventListener('input', typed);
  line.addEventListener('input', typed);
  company.addEventListener('input', typed);
  status.addEventListener('change', refilter);
  group.addEventListener('change', refilter);

  const recount = throttle(loadCounts, 2000);
  const stopListening = socket.listen((frame) => {
    if (frame.type === 'hello' || frame.type === 'dropped') {
      load();
      loadCounts();
      return;
    }
    if (frame.type !== 'status') return;
    const tr = rowsById.get(frame.deviceId);
    if (tr) {
      const cell = tr.children[2];
      if (cell.firstChild && cell.firstChild.dataset.status !== frame.status) replace(cell, badge(frame.status));
      replace(tr.children[6], timeEl(frame.ts));
    }
    if (frame.status === 'ONLINE' || frame.status === 'OFFLINE') recount();
  });

  root.append(
    h('div', { class: 'row spread' }, h('h1', { text: 'Devices' }), counts),
    h(
      'form',
      { class: 'card row', id: 'device-filters', onsubmit: (e) => { e.preventDefault(); refilter(); } },
      h('label', {}, 'Search', q),
      h('label', {}, 'Status', status),
      h('label', {}, 'Group', group),
      h('label', {}, 'Line', line),
      h('label', {}, 'Company', company),
    ),
    error,
    listArea,
  );
  // After the list, so the list's first page is not held up by the charts' queries.
  const fleet = fleetCharts();
  root.insertBefore(fleet.el, root.children[1]);
  load();
  loadCounts();
  return () => {
    stopListening();
    fleet.destroy();
  };
}
