// Device groups: the list (and creating one), and a group's page: its members, paged through
// the device list's group filter, adding and removing members, and a dispatch to every member
// with each device's result.

import * as api from '../api.js';
import { h, replace, errorBox, badge, table, pager, timeEl, fmtNumber } from '../dom.js';
import { can } from '../roles.js';
import { commandPanel } from '../commands.js';

const PAGE_SIZE = 50;

/** Device ids typed as a list: commas, spaces or new lines between them. */
export function parseIds(text) {
  return [...new Set(text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean))];
}

export function render(ctx) {
  return ctx.params.id ? renderGroup(ctx) : renderList(ctx);
}

function renderList({ root, user }) {
  const list = h('div', { id: 'group-list' });
  const error = h('div');
  let offset = 0;

  async function load() {
    let page;
    try {
      page = await api.get('/api/v1/device-groups', { limit: PAGE_SIZE, offset });
    } catch (e) {
      replace(list, errorBox(e));
      return;
    }
    replace(
      list,
      table(
        [
          { title: 'Group', cell: (g) => h('a', { href: `#/groups/${encodeURIComponent(g.id)}`, text: g.name }) },
          { title: 'Description', cell: (g) => g.description || '' },
          { title: 'Members', class: 'num', cell: (g) => fmtNumber(g.memberCount) },
          { title: 'Updated', cell: (g) => timeEl(g.updatedAt) },
        ],
        page.items,
        { empty: 'No groups yet.' },
      ),
      pager({ total: page.total, limit: PAGE_SIZE, offset }, (o) => {
        offset = o;
        load();
      }),
    );
  }

  let create = null;
  if (can(user, 'manageGroups')) {
    const name = h('input', { name: 'name', required: true, placeholder: 'Line 3 printers' });
    const description = h('input', { name: 'description', size: 40 });
    create = h(
      'form',
      { class: 'card row', id: 'group-create' },
      h('label', {}, 'New group', name),
      h('label', {}, 'Description', description),
      h('button', { type: 'submit', text: 'Create group' }),
    );
    create.addEventListener('submit', async (e) => {
      e.preventDefault();
      replace(error);
      try {
        const g = await api.post('/api/v1/device-groups', { name: name.value.trim(), description: description.value.trim() || null });
        location.hash = `#/groups/${encodeURIComponent(g.id)}`;
      } catch (err) {
        replace(error, errorBox(err));
      }
    });
  }

  root.append(h('h1', { text: 'Groups' }), create, error, list);
  load();
  return null;
}

function renderGroup({ root, params, user, socket }) {
  const id = params.id;
  const base = `/api/v1/device-groups/${encodeURIComponent(id)}`;
  const title = h('h1', { text: 'Group' });
  const info = h('p', { class: 'muted' });
  const members = h('div', { id: 'group-members' });
  const error = h('div');
  let offset = 0;
  let rows = new Map();
  // Named in the confirmation of a dangerous command once the group is loaded. Its templates:
  // the agent's own and any the server's settings open to this user by name.
  const granted = (user && user.rights && user.rights.templates) || [];
  const templates = [...new Set(['disk_usage', 'network_interfaces', 'service_status', 'ping', 'journal_tail', ...granted])];
  const target = { label: 'every member of this group', templates };

  async function loadGroup() {
    try {
      const g = await api.get(base);
      target.label = `all ${fmtNumber(g.memberCount)} members of group ${g.name}`;
      replace(title, g.name);
      replace(info, g.description ? `${g.description} · ` : '', `${fmtNumber(g.memberCount)} members`);
    } catch (e) {
      replace(error, errorBox(e));
    }
  }

  async function loadMembers() {
    let page;
    try {
      page = await api.get('/api/v1/devices', { groupId: id, limit: PAGE_SIZE, offset });
    } catch (e) {
      replace(members, errorBox(e));
      return;
    }
    const manage = can(user, 'manageGroups');
    const view = table(
      [
        { title: 'Device', cell: (d) => h('a', { href: `#/devices/${encodeURIComponent(d.id)}`, class: 'mono', text: d.id }) },
        { title: 'Name', cell: (d) => d.name },
        { title: 'Status', cell: (d) => badge(d.status) },
        { title: 'Version', cell: (d) => d.version || '–' },
        manage && {
          title: '',
          cell: (d) => h('button', { type: 'button', class: 'secondary small', onclick: () => changeMembers('DELETE', [d.id]), text: 'Remove' }),
        },
      ].filter(Boolean),
      page.items,
      { empty: 'No members.', rowAttrs: (d) => ({ dataset: { deviceId: d.id } }) },
    );
    rows = new Map([...view.querySelectorAll('tr[data-device-id]')].map((tr) => [tr.dataset.deviceId, tr]));
    replace(
      members,
      view,
      pager({ total: page.total, limit: PAGE_SIZE, offset }, (o) => {
        offset = o;
        loadMembers();
      }),
    );
  }

  async function changeMembers(method, deviceIds) {
    replace(error);
    try {
      await api.request(method, `${base}/members`, { deviceIds });
      loadGroup();
      loadMembers();
    } catch (e) {
      replace(error, errorBox(e));
    }
  }

  let manageForm = null;
  if (can(user, 'manageGroups')) {
    const ids = h('input', { name: 'deviceIds', size: 50, placeholder: 'edge-1, edge-2 …' });
    manageForm = h(
      'form',
      { class: 'row', id: 'group-add' },
      h('label', {}, 'Add devices (ids, separated by commas or spaces)', ids),
      h('button', { type: 'submit', text: 'Add' }),
    );
    manageForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const list = parseIds(ids.value);
      if (list.length) changeMembers('POST', list).then(() => { ids.value = ''; });
    });
  }

  const panel = commandPanel({
    user,
    target,
    send: (body) => api.post(`${base}/commands`, body),
    show: (info, data) => {
      const entries = Object.entries(data).map(([deviceId, r]) => ({ deviceId, ...r }));
      const ok = entries.filter((r) => r.success).length;
      return h(
        'div',
        { class: 'stack' },
        h('p', { text: `${info.label}: ${ok} of ${entries.length} devices succeeded.` }),
        table(
          [
            { title: 'Device', cell: (r) => h('a', { href: `#/devices/${encodeURIComponent(r.deviceId)}`, class: 'mono', text: r.deviceId }) },
            { title: 'Status', cell: (r) => badge(r.status || (r.success ? 'SUCCESS' : 'FAILED')) },
            { title: 'Output', cell: (r) => h('span', { class: 'mono', text: (r.output || '').slice(0, 200) }) },
          ],
          entries,
          { rowAttrs: (r) => ({ dataset: { deviceId: r.deviceId } }) },
        ),
      );
    },
  });

  const stopListening = socket.listen((frame) => {
    if (frame.type !== 'status') return;
    const tr = rows.get(frame.deviceId);
    if (tr && tr.children[2].firstChild.dataset.status !== frame.status) replace(tr.children[2], badge(frame.status));
  });

  root.append(
    h('p', {}, h('a', { href: '#/groups', text: '‹ Groups' })),
    title,
    info,
    error,
    panel && h('div', { class: 'card' }, h('h2', { text: 'Dispatch to every member' }), panel),
    h('div', { class: 'card stack' }, h('h2', { text: 'Members' }), manageForm, members),
  );
  loadGroup();
  loadMembers();
  return stopListening;
}
