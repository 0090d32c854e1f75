// The dashboard's entry: the session, the header (navigation by role, connection state, log
// out), the dashboard socket, and the hash router that mounts one page at a time. Each page is
// a module whose `render(ctx)` fills `ctx.root` and answers a cleanup function.

import * as api from './api.js';
import { h, replace, errorBox } from './dom.js';
import { DashboardSocket } from './socket.js';
import { can } from './roles.js';
import * as login from './pages/login.js';
import * as devices from './pages/devices.js';
import * as device from './pages/device.js';
import * as groups from './pages/groups.js';
import * as production from './pages/production.js';
import * as firmware from './pages/firmware.js';
import * as sync from './pages/sync.js';
import * as audit from './pages/audit.js';
import * as users from './pages/users.js';

/** Route patterns in order; `:name` segments become `ctx.params.name`. */
const ROUTES = [
  ['devices', devices],
  ['devices/:id', device],
  ['production', production],
  ['groups', groups],
  ['groups/:id', groups],
  ['firmware', firmware],
  ['firmware/deployments/:id', firmware],
  ['sync', sync],
  ['audit', audit],
  ['users', users],
];

const NAV = [
  ['devices', 'Devices'],
  ['production', 'Production'],
  ['groups', 'Groups'],
  ['firmware', 'Firmware'],
  ['sync', 'Sync'],
  ['audit', 'Audit log'],
  ['users', 'Users', 'manageUsers'],
];

const main = document.getElementById('main');
const connEl = document.getElementById('conn');
let cleanup = null;

const socket = new DashboardSocket(
  () => (api.session() ? api.session().token : null),
  ({ state, retryInMs }) => {
    connEl.dataset.state = state;
    connEl.textContent = state === 'live' ? 'live' : retryInMs ? `reconnecting in ${Math.ceil(retryInMs / 1000)} s` : state === 'connecting' ? 'connecting…' : 'offline';
  },
  () => endSession('Your session has ended; log in again.'),
);

// A `dropped` frame means this browser missed events while it read too slowly: say so, and let
// the page reload what it shows.
socket.listen((frame) => {
  if (frame.type === 'dropped') showNotice(`Missed ${frame.count} live updates; the page was reloaded.`);
});

function showNotice(text) {
  const notice = document.getElementById('notice');
  notice.textContent = text;
  notice.hidden = false;
  setTimeout(() => {
    notice.hidden = true;
  }, 8000);
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { path: path || 'devices', query: new URLSearchParams(query) };
}

function match(path) {
  const parts = path.split('/').map(decodeURIComponent);
  for (const [pattern, page] of ROUTES) {
    const want = pattern.split('/');
    if (want.length !== parts.length) continue;
    const params = {};
    if (want.every((w, i) => (w.startsWith(':') ? ((params[w.slice(1)] = parts[i]), true) : w === parts[i]))) {
      return { page, params, name: pattern };
    }
  }
  return null;
}

/** Sets the hash without adding a history entry per keystroke of a filter. */
function setQuery(query) {
  const { path } = parseHash();
  const text = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v !== undefined && v !== null)).toString();
  history.replaceState(null, '', `#/${path}${text ? `?${text}` : ''}`);
}

function renderHeader(user) {
  const top = document.getElementById('top');
  top.hidden = false;
  document.getElementById('who').textContent = `${user.username} (${user.role})`;
  const { path } = parseHash();
  const section = path.split('/')[0];
  replace(
    document.getElementById('nav'),
    NAV.filter(([, , action]) => !action || can(user, action)).map(([href, label]) =>
      h('a', { href: `#/${href}`, class: href === section ? 'active' : '', dataset: { nav: href }, text: label }),
    ),
  );
}

function route() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const user = api.session();
  const { path, query } = parseHash();
  if (!user) {
    document.getElementById('top').hidden = true;
    socket.stop();
    cleanup = login.render({ root: replace(main), onLogin: startSession });
    return;
  }
  if (socket.stopped) socket.start();
  renderHeader(user);
  const found = match(path);
  if (!found) {
    replace(main, errorBox({ message: `There is no page #/${path}.` }));
    return;
  }
  const ctx = {
    root: replace(main),
    params: found.params,
    route: found.name,
    query,
    setQuery,
    user,
    socket,
    notice: showNotice,
  };
  try {
    cleanup = found.page.render(ctx) || null;
  } catch (e) {
    replace(main, errorBox(e));
  }
}

async function startSession(value) {
  api.saveSession(value);
  // What this person may do, in the server's words: the buttons follow it.
  try {
    const me = await api.get('/api/v1/auth/me');
    api.saveSession({ ...value, role: me.role, rights: me.rights });
  } catch (e) {
    endSession(e.message);
    return;
  }
  // A deep link (#/devices/edge-7) survives the login; a bare address goes to the devices.
  if (!location.hash || parseHash().path === 'login') {
    location.hash = '#/devices'; // hashchange routes
    return;
  }
  route();
}

function endSession(message) {
  api.clearSession();
  socket.stop();
  route();
  if (message) showNotice(message);
}

api.setUnauthorizedHandler(() => endSession('Your session has ended; log in again.'));

document.getElementById('logout').addEventListener('click', async () => {
  try {
    await api.post('/api/v1/auth/logout');
  } catch {
    // The token is forgotten here either way; a refused logout means it was already dead.
  }
  endSession();
});

// A session kept from an earlier page load may lack `rights` (saved by an older dashboard) or
// carry stale ones: the server's answer replaces them before the first page is drawn.
async function boot() {
  const saved = api.session();
  if (saved) {
    try {
      const me = await api.get('/api/v1/auth/me');
      api.saveSession({ ...saved, role: me.role, rights: me.rights });
    } catch {
      // A 401 already ended the session and drew the login; on other errors the saved
      // session stays and the pages report what fails.
      if (!api.session()) return;
    }
  }
  route();
}

window.addEventListener('hashchange', route);
boot();
