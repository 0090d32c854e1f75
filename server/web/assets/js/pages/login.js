// The login page: username and password to POST /api/v1/auth/login; the answer's token and
// role become the session.

import * as api from '../api.js';
import { h, replace, errorBox } from '../dom.js';

export function render({ root, onLogin }) {
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('div');
  const submit = h('button', { type: 'submit', text: 'Log in' });
  const form = h(
    'form',
    { id: 'login-form' },
    h('label', {}, 'Username', username),
    h('label', {}, 'Password', password),
    error,
    submit,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    replace(error);
    try {
      const data = await api.post('/api/v1/auth/login', { username: username.value, password: password.value });
      onLogin({ token: data.token, role: data.role, expiresAt: data.expiresAt, username: username.value });
    } catch (err) {
      replace(error, errorBox(err));
      submit.disabled = false;
    }
  });
  root.append(h('div', { class: 'card login' }, h('h1', { text: 'Factory dashboard' }), form));
  username.focus();
  return null;
}
