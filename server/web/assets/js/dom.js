// Small DOM helpers. Everything from the server or a device reaches the page as text nodes or
// attribute values set through the DOM API, never as HTML, so a device named `<img onerror>`
// is shown, not run.

/**
 * Creates an element. `attrs`: `class`, `text`, `on<event>` handlers, `dataset` (object),
 * boolean properties (`disabled`, `checked`, `hidden`, `selected`), anything else as an
 * attribute. Children: nodes, strings (as text), or null/false (skipped), nested in arrays.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (['disabled', 'checked', 'hidden', 'selected', 'required', 'multiple'].includes(key)) el[key] = Boolean(value);
    // An input's `value` attribute is also its default, which form.reset() goes back to.
    else if (key === 'value' && tag === 'input') el.setAttribute('value', String(value));
    else if (key === 'value') el.value = String(value);
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A time in the browser's zone and locale; '–' for none. */
export function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A `<time>` whose text is local and whose title is the exact UTC instant. */
export function timeEl(iso) {
  return h('time', { datetime: iso || '', title: iso || '', text: fmtTime(iso) });
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function fmtNumber(n) {
  return Number(n || 0).toLocaleString();
}

const GOOD = ['ONLINE', 'SUCCESS', 'CONFIRMED', 'ACTIVE', 'COMPLETED', 'STAGED'];
const BUSY = ['PENDING', 'QUEUED', 'SENT', 'CONFIRMING', 'IN_PROGRESS', 'RUNNING', 'PAUSED', 'DISABLED'];
const BAD = ['OFFLINE', 'FAILED', 'TIMEOUT', 'EXPIRED', 'CANCELLED', 'ERROR'];

/** A coloured status label. */
export function badge(status) {
  const s = String(status || '–');
  const kind = GOOD.includes(s) ? 'ok' : BUSY.includes(s) ? 'warn' : BAD.includes(s) ? 'bad' : '';
  return h('span', { class: `badge ${kind}`, dataset: { status: s }, text: s });
}

/** An error box with the API's message (and its code, for the curious). */
export function errorBox(error) {
  const code = error && error.code ? ` (${error.code})` : '';
  return h('div', { class: 'error', role: 'alert', text: `${error && error.message ? error.message : error}${code}` });
}

/** A bar from 0 to 100. */
export function progressBar(percent) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const bar = h('span');
  bar.style.width = `${p}%`;
  return h('div', { class: 'progress', title: `${p}%`, role: 'progressbar', 'aria-valuenow': p }, bar);
}

/**
 * A table. `columns`: [{title, cell: row => node|string, class?}]; `rowAttrs(row)` adds
 * attributes to each `<tr>`.
 */
export function table(columns, rows, { empty = 'Nothing here.', rowAttrs } = {}) {
  const head = h('tr', {}, columns.map((c) => h('th', { class: c.class, text: c.title })));
  const body = rows.length
    ? rows.map((row) => h('tr', rowAttrs ? rowAttrs(row) : {}, columns.map((c) => h('td', { class: c.class }, c.cell(row)))))
    : [h('tr', {}, h('td', { class: 'empty', colspan: columns.length, text: empty }))];
  return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, head), h('tbody', {}, body)));
}

/** "1–50 of 10,000" with previous/next buttons; `onChange(offset)`. */
export function pager({ total, limit, offset }, onChange) {
  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + limit, total);
  return h(
    'div',
    { class: 'pager' },
    h('button', { class: 'secondary small', disabled: offset === 0, onclick: () => onChange(Math.max(0, offset - limit)), text: '‹ Previous' }),
    h('span', { class: 'page-info', text: `${fmtNumber(first)}–${fmtNumber(last)} of ${fmtNumber(total)}` }),
    h('button', { class: 'secondary small', disabled: last >= total, onclick: () => onChange(offset + limit), text: 'Next ›' }),
  );
}

/** A labelled input; `attrs` go to the input. */
export function field(label, attrs = {}) {
  return h('label', {}, label, h('input', attrs));
}

/** A labelled select of `[value, label]` pairs. */
export function selectField(label, name, options, selected, attrs = {}) {
  return h(
    'label',
    {},
    label,
    h('select', { name, ...attrs }, options.map(([value, text]) => h('option', { value, selected: value === selected, text }))),
  );
}

/**
 * The modal confirmation (`<dialog id="confirm">`). Resolves true only when the person
 * presses the named action; Escape and Cancel resolve false.
 */
export function confirmDialog({ title, text, action }) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  dialog.returnValue = 'cancel';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

/** Calls `fn` at most once per `ms`, at the end of a burst. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Calls `fn` at most once per `ms` while calls keep coming, and once after the last. */
export function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  return () => {
    if (timer) {
      pending = true;
      return;
    }
    fn();
    timer = setTimeout(function tick() {
      if (pending) {
        pending = false;
        fn();
        timer = setTimeout(tick, ms);
      } else {
        timer = null;
      }
    }, ms);
  };
}
