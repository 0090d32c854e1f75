// Cloud sync: the queue towards the OKTO cloud (pending, sent, dead, the oldest pending
// record's age, per company), refreshed every few seconds, and the dead letters with requeue
// for the roles that may see and requeue them.

import * as api from '../api.js';
import { h, replace, errorBox, table, pager, timeEl, fmtNumber } from '../dom.js';
import { can } from '../roles.js';

const REFRESH_MS = 5000;
const PAGE_SIZE = 50;

function age(secs) {
  if (secs === null || secs === undefined) return '–';
  if (secs < 120) return `${secs} s`;
  if (secs < 7200) return `${Math.round(secs / 60)} min`;
  return `${Math.round(secs / 3600)} h`;
}

export function render({ root, user }) {
  const status = h('div', { id: 'sync-status' });
  const dead = h('div', { id: 'dead-letters' });
  const error = h('div');
  let offset = 0;

  async function loadStatus() {
    let s;
    try {
      s = await api.get('/api/v1/sync/status');
    } catch (e) {
      replace(status, errorBox(e));
      return;
    }
    const companies = Object.entries(s.companies || {}).map(([companyId, c]) => ({ companyId, ...c }));
    replace(
      status,
      h(
        'div',
        { class: 'counts' },
        h('span', { dataset: { count: 'pending' } }, h('strong', { text: fmtNumber(s.pending) }), 'pending'),
        h('span', { dataset: { count: 'sent' } }, h('strong', { text: fmtNumber(s.sent) }), 'sent'),
        h('span', { dataset: { count: 'dead' } }, h('strong', { text: fmtNumber(s.dead) }), 'dead letters'),
        h('span', {}, h('strong', { text: age(s.oldestPendingAgeSecs) }), 'oldest pending'),
        h('span', { class: s.cloudConfigured ? 'badge ok' : 'badge bad', text: s.cloudConfigured ? 'cloud configured' : 'no cloud configured' }),
      ),
      h('p'),
      table(
        [
          { title: 'Company', cell: (c) => h('span', { class: 'mono', text: c.companyId }) },
          { title: 'Pending', class: 'num', cell: (c) => fmtNumber(c.pending) },
          { title: 'Sent', class: 'num', cell: (c) => fmtNumber(c.sent) },
          { title: 'Dead', class: 'num', cell: (c) => fmtNumber(c.dead) },
          { title: 'Oldest pending', cell: (c) => age(c.oldestPendingAgeSecs) },
          { title: 'Last error', cell: (c) => c.lastError || '' },
        ],
        companies,
        { empty: 'Nothing queued for the cloud.' },
      ),
    );
  }

  async function loadDead() {
    let page;
    try {
      page = await api.get('/api/v1/sync/dead-letters', { limit: PAGE_SIZE, offset });
    } catch (e) {
      replace(dead, errorBox(e));
      return;
    }
    const checks = new Map();
    const requeue = async (ids) => {
      replace(error);
      try {
        const r = await api.post('/api/v1/sync/dead-letters/requeue', ids ? { ids } : {});
        replace(error, h('div', { class: 'success', text: `${r.requeued} records back in the queue.` }));
        loadDead();
        loadStatus();
      } catch (e) {
        replace(error, errorBox(e));
      }
    };
    replace(
      dead,
      h(
        'div',
        { class: 'row' },
        h('button', { type: 'button', class: 'secondary', disabled: !page.total, onclick: () => requeue([...checks].filter(([, c]) => c.checked).map(([id]) => id)), text: 'Requeue selected' }),
        h('button', { type: 'button', disabled: !page.total, onclick: () => requeue(null), text: `Requeue all ${fmtNumber(page.total)}` }),
      ),
      h('p'),
      table(
        [
          {
            title: '',
            cell: (d) => {
              const box = h('input', { type: 'checkbox', 'aria-label': `select ${d.id}` });
              checks.set(d.id, box);
              return box;
            },
          },
          { title: 'Record', cell: (d) => h('span', { class: 'mono', text: d.id }) },
          { title: 'Kind', cell: (d) => d.kind },
          { title: 'Company', cell: (d) => d.companyId },
          { title: 'Attempts', class: 'num', cell: (d) => String(d.attempts) },
          { title: 'Last error', cell: (d) => d.lastError || '' },
          { title: 'Created', cell: (d) => timeEl(d.createdAt) },
        ],
        page.items,
        { empty: 'No dead letters.' },
      ),
      pager({ total: page.total, limit: PAGE_SIZE, offset }, (o) => {
        offset = o;
        loadDead();
      }),
    );
  }

  root.append(
    h('h1', { text: 'Cloud sync' }),
    h('div', { class: 'card' }, h('h2', { text: 'Queue' }), status),
    can(user, 'deadLetters') ? h('div', { class: 'card' }, h('h2', { text: 'Dead letters' }), error, dead) : null,
  );
  loadStatus();
  if (can(user, 'deadLetters')) loadDead();
  const timer = setInterval(loadStatus, REFRESH_MS);
  return () => clearInterval(timer);
}
