// Users (ADMIN): create one, change a role, disable or enable. A role change or disabling
// revokes the user's tokens on the server, so the person is logged out at once.

import * as api from '../api.js';
import { h, replace, errorBox, table, pager, timeEl, badge } from '../dom.js';
import { can } from '../roles.js';

const PAGE_SIZE = 50;
const ROLES = ['VIEWER', 'OPERATOR', 'MANAGER', 'ADMIN'];

function roleSelect(name, selected) {
  return h('select', { name }, ROLES.map((r) => h('option', { value: r, selected: r === selected, text: r })));
}

export function render({ root, user }) {
  if (!can(user, 'manageUsers')) {
    root.append(errorBox({ message: 'Only an ADMIN manages users.' }));
    return null;
  }
  const list = h('div', { id: 'user-list' });
  const error = h('div');
  let offset = 0;

  async function update(id, change) {
    replace(error);
    try {
      await api.patch(`/api/v1/users/${encodeURIComponent(id)}`, change);
    } catch (e) {
      replace(error, errorBox(e));
    }
    load();
  }

  async function load() {
    let page;
    try {
      page = await api.get('/api/v1/users', { limit: PAGE_SIZE, offset });
    } catch (e) {
      replace(list, errorBox(e));
      return;
    }
    replace(
      list,
      table(
        [
          { title: 'User', cell: (u) => h('strong', { text: u.username }) },
          {
            title: 'Role',
            cell: (u) => {
              const select = roleSelect('role', u.role);
              select.addEventListener('change', () => update(u.id, { role: select.value }));
              return select;
            },
          },
          { title: 'State', cell: (u) => (u.disabled ? badge('DISABLED') : badge('ACTIVE')) },
          { title: 'Created', cell: (u) => timeEl(u.createdAt) },
          {
            title: '',
            cell: (u) => h('button', {
              type: 'button',
              class: u.disabled ? 'secondary small' : 'danger small',
              onclick: () => update(u.id, { disabled: !u.disabled }),
              text: u.disabled ? 'Enable' : 'Disable',
            }),
          },
        ],
        page.items,
        { rowAttrs: (u) => ({ dataset: { username: u.username } }) },
      ),
      pager({ total: page.total, limit: PAGE_SIZE, offset }, (o) => {
        offset = o;
        load();
      }),
    );
  }

  const username = h('input', { name: 'username', required: true, autocomplete: 'off' });
  const password = h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' });
  const role = roleSelect('role', 'VIEWER');
  const form = h(
    'form',
    { class: 'card row', id: 'user-create' },
    h('label', {}, 'Username', username),
    h('label', {}, 'Password', password),
    h('label', {}, 'Role', role),
    h('button', { type: 'submit', text: 'Create user' }),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    replace(error);
    try {
      await api.post('/api/v1/users', { username: username.value.trim(), password: password.value, role: role.value });
      form.reset();
      load();
    } catch (err) {
      replace(error, errorBox(err));
    }
  });
  root.append(h('h1', { text: 'Users' }), form, error, list);
  load();
  return null;
}
