// The eleven command types (contract.md's table): their forms, the confirmation the dangerous
// ones need, and the panel of buttons a device page or a group page shows. Only the types the
// person's role may send get a button.

import * as api from './api.js';
import { h, replace, errorBox, badge, confirmDialog, fmtBytes } from './dom.js';
import { canSend, canRunTemplate } from './roles.js';

/** Parameters of the agent's shell templates (agent/src/shell.rs), with their defaults. */
const TEMPLATE_PARAMS = {
  disk_usage: [{ name: 'path', value: '/' }],
  network_interfaces: [],
  service_status: [{ name: 'unit', value: 'edge-agent' }],
  ping: [{ name: 'host', value: '', required: true }, { name: 'count', value: '3', number: true }],
  journal_tail: [{ name: 'unit', value: 'edge-agent' }, { name: 'lines', value: '100', number: true }],
};

/**
 * Per type: the button's label, whether it has a form, and for the dangerous ones (which need
 * `confirm`) the dialog's question and what follows from a yes.
 */
const COMMAND_TYPES = [
  { type: 'force_sync', label: 'Force sync' },
  { type: 'pull_logs', label: 'Pull logs', form: true },
  { type: 'exec_shell', label: 'Run template', form: true },
  { type: 'enable_device', label: 'Enable' },
  { type: 'push_config', label: 'Push config', form: true },
  { type: 'clear_queue', label: 'Clear queue', form: true, danger: 'Clear the offline queue of', then: 'Records still waiting to be sent are deleted.' },
  { type: 'restart_service', label: 'Restart service' },
  { type: 'update_firmware', label: 'Update firmware', form: true, danger: 'Install new firmware on', then: 'The device downloads, checks and stages the release.' },
  { type: 'disable_device', label: 'Disable', form: true, danger: 'Disable', then: 'It stops production until it is enabled again.' },
  { type: 'reboot_os', label: 'Reboot OS', danger: 'Reboot the operating system of', then: 'Its station stops until the machine is back.' },
  { type: 'shutdown_os', label: 'Shut down OS', danger: 'Shut down', then: 'It stays off until someone powers it on at the line.' },
  { type: 'rotate_firmware_keys', label: 'Rotate release keys', form: true },
];

/** A fresh id, so a double click sends one command, not two (the server refuses a repeat). */
function commandId() {
  return `ui-${crypto.randomUUID()}`;
}

/**
 * The fields form of `type`; answers {element, read()} where read() builds the command's
 * fields or throws an Error with what is wrong.
 */
function formFor(type, user, templates) {
  switch (type) {
    case 'pull_logs': {
      const lines = h('input', { name: 'lines', type: 'number', min: 1, max: 10000, value: 100 });
      return { element: h('label', {}, 'Lines', lines), read: () => ({ lines: Number(lines.value) }) };
    }
    case 'clear_queue': {
      const completed = h('input', { name: 'includeCompleted', type: 'checkbox' });
      return {
        element: h('label', { class: 'inline' }, completed, 'Also remove records already sent'),
        read: () => ({ includeCompleted: completed.checked }),
      };
    }
    case 'disable_device': {
      const reason = h('input', { name: 'reason', required: true, placeholder: 'why the device is taken out of service', size: 40 });
      return {
        element: h('label', {}, 'Reason', reason),
        read: () => {
          if (!reason.value.trim()) throw new Error('A reason is required.');
          return { reason: reason.value.trim() };
        },
      };
    }
    case 'push_config': {
      const patch = h('textarea', { name: 'patch', rows: 6 });
      patch.value = '{\n  "statusIntervalMs": 5000\n}';
      return {
        element: h('label', {}, 'Merge patch (RFC 7386): keys to set, null to remove', patch),
        read: () => {
          let value;
          try {
            value = JSON.parse(patch.value);
          } catch (e) {
            throw new Error(`The patch is not JSON: ${e.message}`);
          }
          if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('The patch must be a JSON object.');
          return { patch: value };
        },
      };
    }
    case 'exec_shell':
      return templateForm(user, templates);
    case 'update_firmware':
      return firmwareForm();
    case 'rotate_firmware_keys':
      return rotationForm();
    default:
      return null;
  }
}

function templateForm(user, templates) {
  const names = templates.filter((t) => canRunTemplate(user, t));
  const select = h('select', { name: 'template' }, names.map((n) => h('option', { value: n, text: n })));
  const params = h('div', { class: 'row' });
  const inputs = new Map();
  const showParams = () => {
    inputs.clear();
    const list = TEMPLATE_PARAMS[select.value] || [];
    replace(
      params,
      list.length
        ? list.map((p) => {
          const input = h('input', { name: p.name, value: p.value, type: p.number ? 'number' : 'text', required: p.required });
          inputs.set(p.name, { input, number: p.number, required: p.required });
          return h('label', {}, p.name, input);
        })
        : h('span', { class: 'muted', text: 'No parameters.' }),
    );
  };
  select.addEventListener('change', showParams);
  showParams();
  return {
    element: h('div', { class: 'row' }, h('label', {}, 'Template', select), params),
    read: () => {
      if (!select.value) throw new Error('Your role may run none of this device’s templates.');
      const args = {};
      for (const [name, { input, number, required }] of inputs) {
        const value = input.value.trim();
        if (!value) {
          if (required) throw new Error(`${name} is required.`);
          continue;
        }
        args[name] = number ? Number(value) : value;
      }
      return { template: select.value, args };
    },
  };
}

function firmwareForm() {
  const select = h('select', { name: 'release' }, h('option', { value: '', text: 'Loading releases…' }));
  const url = h('input', { name: 'url', size: 60 });
  const downgrade = h('input', { name: 'allowDowngrade', type: 'checkbox' });
  let releases = [];
  api
    .get('/api/v1/firmware/releases', { limit: 100 })
    .then((page) => {
      releases = page.items;
      replace(
        select,
        releases.length
          ? releases.map((r) => h('option', { value: r.id, text: `${r.project} ${r.version} (${r.filename}, ${fmtBytes(r.size)})` }))
          : h('option', { value: '', text: 'No releases uploaded' }),
      );
      select.dispatchEvent(new Event('change'));
    })
    .catch((e) => replace(select, h('option', { value: '', text: e.message })));
  // A path is fetched by the device from the server it is connected to, whatever name the
  // browser reaches the server by; a full URL may be typed instead.
  select.addEventListener('change', () => {
    const r = releases.find((x) => x.id === select.value);
    url.value = r ? r.artifactUrl : '';
  });
  return {
    element: h(
      'div',
      { class: 'row' },
      h('label', {}, 'Release', select),
      h('label', {}, 'Artifact URL (a path is fetched from the device’s server)', url),
      h('label', { class: 'inline' }, downgrade, 'Allow an older version'),
    ),
    read: () => {
      const r = releases.find((x) => x.id === select.value);
      if (!r) throw new Error('Choose a release.');
      const fields = { version: r.version, url: url.value.trim(), sha256: r.sha256, size: r.size };
      if (r.signatureBase64) fields.signatureBase64 = r.signatureBase64;
      if (r.signatureExpiresAt) fields.signatureExpiresAt = r.signatureExpiresAt;
      if (r.project) fields.project = r.project;
      if (r.allowDowngrade) fields.manifestAllowDowngrade = true;
      if (r.securityFloor !== undefined && r.securityFloor !== null) fields.securityFloor = r.securityFloor;
      if (downgrade.checked) fields.allowDowngrade = true;
      return fields;
    },
  };
}

/**
 * The signed key rotation as the admin CLI prints it: JSON with `add`, `retire`, `sequence`,
 * `expiresAt` and `signatureBase64`. The device checks the signature; the form only parses.
 */
function rotationForm() {
  const text = h('textarea', { name: 'rotation', rows: 6, placeholder: '{"add": [...], "retire": [...], "sequence": 2, "expiresAt": "…", "signatureBase64": "…"}' });
  return {
    element: h('label', {}, 'Signed rotation (JSON from `factory-server firmware sign`)', text),
    read: () => {
      let value;
      try {
        value = JSON.parse(text.value);
      } catch (e) {
        throw new Error(`The rotation is not JSON: ${e.message}`);
      }
      if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('The rotation must be a JSON object.');
      const { add = [], retire = [], sequence, expiresAt, signatureBase64 } = value;
      return { add, retire, sequence, expiresAt, signatureBase64 };
    },
  };
}

/**
 * The command buttons for `target` ({label, templates}) as `user` (whose `rights` the server gave). `send(body)` dispatches
 * and answers the API's data; `show(type, data)` renders it; both run after the form and,
 * for the dangerous types, after the person confirmed in a dialog that names the target.
 */
export function commandPanel({ user, target, send, show }) {
  const types = COMMAND_TYPES.filter((c) => canSend(user, c.type));
  if (!types.length) return null;
  const formArea = h('div');
  const result = h('div', { id: 'command-result', class: 'stack' });

  const dispatch = async (info, fields, button) => {
    if (info.danger) {
      const ok = await confirmDialog({
        title: `${info.label}?`,
        text: `${info.danger} ${target.label}? ${info.then}`,
        action: `${info.label}: ${target.label}`,
      });
      if (!ok) return;
    }
    const body = {
      command: { type: info.type, id: commandId(), ...fields },
      confirm: Boolean(info.danger),
      timeoutMs: info.type === 'update_firmware' ? 600000 : 60000,
    };
    button.disabled = true;
    replace(result, h('div', { class: 'muted', dataset: { state: 'waiting' }, text: `${info.label}: sent, waiting for the answer…` }));
    try {
      const data = await send(body);
      replace(result, show(info, data));
    } catch (e) {
      replace(result, errorBox(e));
    } finally {
      button.disabled = false;
    }
  };

  const buttons = types.map((info) => {
    const button = h('button', {
      type: 'button',
      class: info.danger ? 'danger small' : 'secondary small',
      dataset: { command: info.type },
      text: info.label,
    });
    button.addEventListener('click', () => {
      if (!info.form) {
        replace(formArea);
        dispatch(info, {}, button);
        return;
      }
      const form = formFor(info.type, user, target.templates || []);
      const error = h('div');
      const sendButton = h('button', { type: 'submit', class: info.danger ? 'danger' : '', dataset: { send: info.type }, text: `Send ${info.label.toLowerCase()}` });
      const el = h(
        'form',
        { class: 'command-form stack' },
        h('strong', { text: info.label }),
        form.element,
        error,
        h('div', { class: 'row' }, sendButton, h('button', { type: 'button', class: 'secondary', onclick: () => replace(formArea), text: 'Close' })),
      );
      el.addEventListener('submit', (e) => {
        e.preventDefault();
        let fields;
        try {
          fields = form.read();
        } catch (err) {
          replace(error, errorBox(err));
          return;
        }
        replace(error);
        dispatch(info, fields, sendButton);
      });
      replace(formArea, el);
    });
    return button;
  });

  return h('div', { class: 'stack' }, h('div', { class: 'commands' }, buttons), formArea, result);
}

/** One device's answer: status, success and output. */
export function resultView(info, data) {
  return h(
    'div',
    { class: data.success ? 'success' : 'error', dataset: { status: data.status } },
    h('div', {}, h('strong', { text: `${info.label}: ` }), badge(data.status), ` ${data.commandId}`),
    data.output ? h('pre', { class: 'result mono', text: data.output }) : null,
  );
}
