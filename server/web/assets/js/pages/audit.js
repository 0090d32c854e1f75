// The audit log: who did what to which target, newest first, filtered on the server by actor,
// action (a family with a trailing dot, `command.`), target and time range.

import * as api from '../api.js';
import { h, replace, errorBox, table, pager, timeEl } from '../dom.js';

const PAGE_SIZE = 50;

/** A `datetime-local` value (the browser's zone) as an RFC 3339 instant; '' stays ''. */
function instant(local) {
  return local ? new Date(local).toISOString() : '';
}

/** Green for success, neutral for a request whose outcome comes later, red for a refusal. */
function outcomeClass(outcome) {
  if (outcome.startsWith('success')) return 'ok';
  if (outcome === 'requested') return '';
  return 'bad';
}

export function render({ root, query, setQuery }) {
  const inputs = {
    actor: h('input', { name: 'actor', value: query.get('actor') || '', size: 12 }),
    action: h('input', { name: 'action', value: query.get('action') || '', size: 18, placeholder: 'command. or auth.login' }),
    target: h('input', { name: 'target', value: query.get('target') || '', size: 16 }),
    since: h('input', { name: 'since', type: 'datetime-local' }),
    until: h('input', { name: 'until', type: 'datetime-local' }),
  };
  const list = h('div', { id: 'audit-list' });
  let offset = 0;

  const filters = () => ({
    actor: inputs.actor.value.trim(),
    action: inputs.action.value.trim(),
    target: inputs.target.value.trim(),
    since: instant(inputs.since.value),
    until: instant(inputs.until.value),
  });

  async function load() {
    const f = filters();
    setQuery({ actor: f.actor, action: f.action, target: f.target });
    let page;
    try {
      page = await api.get('/api/v1/audit', { ...f, limit: PAGE_SIZE, offset });
    } catch (e) {
      replace(list, errorBox(e));
      return;
    }
    replace(
      list,
      table(
        [
          { title: 'Time', cell: (r) => timeEl(r.ts) },
          { title: 'Actor', cell: (r) => [r.actor || '–', r.role ? h('small', { class: 'muted', text: ` ${r.role}` }) : null] },
          { title: 'Action', cell: (r) => h('span', { class: 'mono', text: r.action }) },
          { title: 'Target', cell: (r) => h('span', { class: 'mono', text: r.target || '' }) },
          { title: 'Outcome', cell: (r) => h('span', { class: `badge ${outcomeClass(r.outcome)}`, text: r.outcome }) },
          { title: 'Parameters', class: 'wrap', cell: (r) => h('span', { class: 'mono', text: r.params ? JSON.stringify(r.params) : '' }) },
          { title: 'Source', cell: (r) => h('small', { class: 'muted', text: r.source || '' }) },
        ],
        page.items,
        { empty: 'No entries match.' },
      ),
      pager({ total: page.total, limit: PAGE_SIZE, offset }, (o) => {
        offset = o;
        load();
      }),
    );
  }

  const form = h(
    'form',
    { class: 'card row', id: 'audit-filters' },
    h('label', {}, 'Actor', inputs.actor),
    h('label', {}, 'Action', inputs.action),
    h('label', {}, 'Target', inputs.target),
    h('label', {}, 'Since', inputs.since),
    h('label', {}, 'Until', inputs.until),
    h('button', { type: 'submit', text: 'Filter' }),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    offset = 0;
    load();
  });
  root.append(h('h1', { text: 'Audit log' }), form, list);
  load();
  return null;
}
