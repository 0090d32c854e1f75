// Firmware: uploading a release (with upload progress), the releases, deploying one to devices
// or a group, the deployments, and one deployment's per-device progress, live from the
// dashboard socket's `deployment` events, with pause, resume and abort.

import * as api from '../api.js';
import { h, replace, errorBox, badge, table, pager, timeEl, fmtBytes, fmtNumber, confirmDialog, debounce } from '../dom.js';
import { can } from '../roles.js';
import { parseIds } from './groups.js';

const PAGE_SIZE = 20;
const DEVICE_STATES = ['PENDING', 'IN_PROGRESS', 'STAGED', 'ACTIVE', 'FAILED', 'CANCELLED'];

export function render(ctx) {
  return ctx.params.id ? renderDeployment(ctx) : renderOverview(ctx);
}

function uploadForm(onUploaded) {
  const file = h('input', { name: 'file', type: 'file', required: true });
  const version = h('input', { name: 'version', required: true, placeholder: '1.4.0', size: 10 });
  // `edge` is the project edge agents stage (their signed manifests name it); a release of
  // any other project is for boards on the OTA routes, and agents refuse it.
  const project = h('input', { name: 'project', required: true, value: 'edge', size: 14 });
  const channel = h('input', { name: 'channel', value: 'stable', size: 10 });
  const filename = h('input', { name: 'filename', required: true, size: 24 });
  const bar = h('progress', { max: 100, value: 0, hidden: true, id: 'upload-progress' });
  const status = h('div', { id: 'upload-status' });
  const submit = h('button', { type: 'submit', text: 'Upload' });
  file.addEventListener('change', () => {
    if (file.files[0] && !filename.value) filename.value = file.files[0].name.replace(/[^A-Za-z0-9._-]/g, '_');
  });
  const form = h(
    'form',
    { class: 'card stack', id: 'firmware-upload' },
    h('h2', { text: 'Upload a release' }),
    h(
      'div',
      { class: 'row' },
      h('label', {}, 'Artifact', file),
      h('label', {}, 'Version (semantic)', version),
      h('label', {}, 'Project', project),
      h('label', {}, 'Channel', channel),
      h('label', {}, 'File name', filename),
      submit,
    ),
    bar,
    status,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const artifact = file.files[0];
    if (!artifact) return;
    submit.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    replace(status, h('span', { class: 'muted', text: `Uploading ${fmtBytes(artifact.size)}…` }));
    const path = api.withQuery('/api/v1/firmware/releases', {
      version: version.value.trim(),
      project: project.value.trim(),
      channel: channel.value.trim(),
      filename: filename.value.trim(),
    });
    try {
      const release = await api.upload(path, artifact, (sent, total) => {
        bar.value = Math.round((sent / total) * 100);
        replace(status, h('span', { class: 'muted', text: `Uploading: ${fmtBytes(sent)} of ${fmtBytes(total)}` }));
      });
      bar.value = 100;
      replace(status, h('div', { class: 'success', dataset: { releaseId: release.id }, text: `Uploaded ${release.project} ${release.version} (sha256 ${release.sha256.slice(0, 12)}…).` }));
      form.reset();
      project.value = release.project;
      onUploaded();
    } catch (err) {
      replace(status, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** The deploy form for `release`; answers the created deployment through `onDeployed`. */
function deployForm(release, onDeployed) {
  const devices = h('input', { name: 'deviceIds', size: 40, placeholder: 'edge-1, edge-2 …' });
  const group = h('select', { name: 'groupId' }, h('option', { value: '', text: '— or a group —' }));
  const waveSize = h('input', { name: 'waveSize', type: 'number', min: 1, size: 6, placeholder: 'all' });
  const wavePercent = h('input', { name: 'wavePercent', type: 'number', min: 1, max: 100, size: 6 });
  const concurrent = h('input', { name: 'maxConcurrentDownloads', type: 'number', min: 1, size: 6 });
  const threshold = h('input', { name: 'failureThresholdPercent', type: 'number', min: 0, max: 100, size: 6 });
  const soak = h('input', { name: 'soakSecs', type: 'number', min: 0, size: 6 });
  const downgrade = h('input', { name: 'allowDowngrade', type: 'checkbox' });
  const error = h('div');
  api
    .get('/api/v1/device-groups', { limit: 500 })
    .then((page) => page.items.forEach((g) => group.append(h('option', { value: g.id, text: `${g.name} (${g.memberCount})` }))))
    .catch((e) => replace(error, errorBox(e)));
  const submit = h('button', { type: 'submit', class: 'danger', text: `Deploy ${release.version}` });
  const form = h(
    'form',
    { class: 'command-form stack', id: 'deploy-form' },
    h('strong', { text: `Deploy ${release.project} ${release.version}` }),
    h('div', { class: 'row' }, h('label', {}, 'Devices', devices), h('label', {}, 'Group', group)),
    h(
      'div',
      { class: 'row' },
      h('label', {}, 'Wave size', waveSize),
      h('label', {}, 'or wave (% of devices)', wavePercent),
      h('label', {}, 'Concurrent downloads', concurrent),
      h('label', {}, 'Stop at failures (%)', threshold),
      h('label', {}, 'Soak (s)', soak),
      h('label', { class: 'inline' }, downgrade, 'Allow downgrade'),
    ),
    error,
    h('div', { class: 'row' }, submit),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    replace(error);
    const ids = parseIds(devices.value);
    if (!ids.length === !group.value) {
      replace(error, errorBox({ message: 'Name devices or choose a group (one of the two).' }));
      return;
    }
    const body = { releaseId: release.id };
    if (ids.length) body.deviceIds = ids;
    else body.groupId = group.value;
    for (const [key, input] of [['waveSize', waveSize], ['wavePercent', wavePercent], ['maxConcurrentDownloads', concurrent], ['failureThresholdPercent', threshold], ['soakSecs', soak]]) {
      if (input.value !== '') body[key] = Number(input.value);
    }
    if (downgrade.checked) body.allowDowngrade = true;
    const target = ids.length ? `${ids.length} device${ids.length > 1 ? 's' : ''} (${ids.slice(0, 3).join(', ')}${ids.length > 3 ? ', …' : ''})` : `group ${group.selectedOptions[0].textContent}`;
    const ok = await confirmDialog({
      title: `Deploy ${release.version}?`,
      text: `Install ${release.project} ${release.version} on ${target}?`,
      action: `Deploy to ${target}`,
    });
    if (!ok) return;
    submit.disabled = true;
    try {
      onDeployed(await api.post('/api/v1/firmware/deployments', body));
    } catch (err) {
      replace(error, errorBox(err));
      submit.disabled = false;
    }
  });
  return form;
}

function countsText(counts = {}) {
  return DEVICE_STATES.filter((s) => counts[s]).map((s) => `${s} ${counts[s]}`).join(' · ') || '–';
}

function renderOverview({ root, user, socket }) {
  const releases = h('div', { id: 'release-list' });
  const deployments = h('div', { id: 'deployment-list' });
  const deployArea = h('div');
  let releaseOffset = 0;
  let deploymentOffset = 0;

  async function loadReleases() {
    let page;
    try {
      page = await api.get('/api/v1/firmware/releases', { limit: PAGE_SIZE, offset: releaseOffset });
    } catch (e) {
      replace(releases, errorBox(e));
      return;
    }
    const deploy = can(user, 'deployFirmware');
    replace(
      releases,
      table(
        [
          { title: 'Project', cell: (r) => r.project },
          { title: 'Version', cell: (r) => h('strong', { text: r.version }) },
          { title: 'Channel', cell: (r) => r.channel },
          { title: 'File', cell: (r) => h('span', { class: 'mono', text: r.filename }) },
          { title: 'Size', class: 'num', cell: (r) => fmtBytes(r.size) },
          { title: 'SHA-256', cell: (r) => h('span', { class: 'mono', title: r.sha256, text: `${r.sha256.slice(0, 12)}…` }) },
          { title: 'Signed', cell: (r) => (r.signatureBase64 ? 'yes' : 'no') },
          { title: 'Uploaded', cell: (r) => [timeEl(r.createdAt), ` by ${r.uploadedBy || '–'}`] },
          deploy && {
            title: '',
            cell: (r) => h('button', {
              type: 'button',
              class: 'secondary small',
              dataset: { deploy: r.version },
              onclick: () => replace(deployArea, deployForm(r, (d) => { location.hash = `#/firmware/deployments/${encodeURIComponent(d.id)}`; })),
              text: 'Deploy…',
            }),
          },
        ].filter(Boolean),
        page.items,
        { empty: 'No releases uploaded.', rowAttrs: (r) => ({ dataset: { releaseId: r.id, version: r.version } }) },
      ),
      pager({ total: page.total, limit: PAGE_SIZE, offset: releaseOffset }, (o) => {
        releaseOffset = o;
        loadReleases();
      }),
    );
  }

  async function loadDeployments() {
    let page;
    try {
      page = await api.get('/api/v1/firmware/deployments', { limit: PAGE_SIZE, offset: deploymentOffset });
    } catch (e) {
      replace(deployments, errorBox(e));
      return;
    }
    replace(
      deployments,
      table(
        [
          { title: 'Version', cell: (d) => h('a', { href: `#/firmware/deployments/${encodeURIComponent(d.id)}`, text: d.version }) },
          { title: 'Status', cell: (d) => badge(d.status) },
          { title: 'Wave', cell: (d) => `${d.currentWave} of ${d.waves}` },
          { title: 'Devices', cell: (d) => countsText(d.counts) },
          { title: 'By', cell: (d) => d.createdBy || '–' },
          { title: 'Started', cell: (d) => timeEl(d.createdAt) },
        ],
        page.items,
        { empty: 'No deployments yet.', rowAttrs: (d) => ({ dataset: { deploymentId: d.id } }) },
      ),
      pager({ total: page.total, limit: PAGE_SIZE, offset: deploymentOffset }, (o) => {
        deploymentOffset = o;
        loadDeployments();
      }),
    );
  }

  const refresh = debounce(loadDeployments, 1000);
  const stopListening = socket.listen((frame) => {
    if (frame.type === 'deployment') refresh();
  });

  root.append(
    h('h1', { text: 'Firmware' }),
    can(user, 'uploadFirmware') ? uploadForm(loadReleases) : null,
    h('div', { class: 'card stack' }, h('h2', { text: 'Releases' }), deployArea, releases),
    h('div', { class: 'card stack' }, h('h2', { text: 'Deployments' }), deployments),
  );
  loadReleases();
  loadDeployments();
  return stopListening;
}

function renderDeployment({ root, params, user, socket }) {
  const id = params.id;
  const base = `/api/v1/firmware/deployments/${encodeURIComponent(id)}`;
  const title = h('h1', { text: 'Deployment' });
  const summary = h('div', { id: 'deployment-summary' });
  const actions = h('div', { class: 'row' });
  const devices = h('div', { id: 'deployment-devices' });
  const error = h('div');
  let rows = new Map();

  async function act(verb, label) {
    replace(error);
    if (verb === 'cancel') {
      const ok = await confirmDialog({ title: 'Abort the deployment?', text: 'Devices not yet updated keep their firmware; devices mid-download are cancelled.', action: label });
      if (!ok) return;
    }
    try {
      show(await api.post(`${base}/${verb}`));
      load();
    } catch (e) {
      replace(error, errorBox(e));
    }
  }

  function show(d) {
    replace(title, `Deployment of ${d.version} `, badge(d.status));
    replace(
      summary,
      h(
        'dl',
        { class: 'kv' },
        [
          ['Status', d.status + (d.pausedReason ? `: ${d.pausedReason}` : '')],
          ['Wave', `${d.currentWave} of ${d.waves} (wave size ${d.waveSize})`],
          ['Devices', countsText(d.counts)],
          ['Stops at failures', `${d.failureThresholdPercent}%`],
          ['Soak', `${d.soakSecs} s`],
          ['Concurrent downloads', d.maxConcurrentDownloads ?? 'no limit'],
          ['Started', timeEl(d.createdAt)],
          ['By', d.createdBy || '–'],
        ].map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]),
      ),
    );
    const manage = can(user, 'deployFirmware');
    replace(
      actions,
      manage && d.status === 'RUNNING' ? h('button', { type: 'button', class: 'secondary', dataset: { action: 'pause' }, onclick: () => act('pause'), text: 'Pause' }) : null,
      manage && d.status === 'PAUSED' ? h('button', { type: 'button', dataset: { action: 'resume' }, onclick: () => act('resume'), text: 'Resume' }) : null,
      manage && (d.status === 'RUNNING' || d.status === 'PAUSED') ? h('button', { type: 'button', class: 'danger', dataset: { action: 'cancel' }, onclick: () => act('cancel', 'Abort deployment'), text: 'Abort' }) : null,
    );
  }

  async function load() {
    let d;
    try {
      d = await api.get(base);
    } catch (e) {
      replace(error, errorBox(e));
      return;
    }
    show(d);
    const view = table(
      [
        { title: 'Device', cell: (x) => h('a', { href: `#/devices/${encodeURIComponent(x.deviceId)}`, class: 'mono', text: x.deviceId }) },
        { title: 'Wave', class: 'num', cell: (x) => String(x.wave) },
        { title: 'Status', cell: (x) => badge(x.status) },
        { title: 'Detail', cell: (x) => x.reason || (x.progress != null ? progressText(x.progress, x.progressMessage) : '') },
        { title: 'Updated', cell: (x) => timeEl(x.updatedAt) },
      ],
      d.devices || [],
      { empty: 'No devices.', rowAttrs: (x) => ({ dataset: { deviceId: x.deviceId, status: x.status, commandId: x.commandId || '' } }) },
    );
    rows = new Map([...view.querySelectorAll('tr[data-device-id]')].map((tr) => [tr.dataset.deviceId, tr]));
    replace(devices, h('p', { class: 'muted', text: `${fmtNumber((d.devices || []).length)} devices` }), view);
  }

  const reload = debounce(load, 1500);
  const stopListening = socket.listen((frame) => {
    if (frame.type === 'hello' || frame.type === 'dropped') {
      load();
      return;
    }
    if (frame.type === 'command_progress') {
      // A download's progress: shown in its device's row while the update runs.
      const tr = rows.get(frame.deviceId);
      if (tr && tr.dataset.commandId === frame.commandId && tr.dataset.status === 'IN_PROGRESS') {
        replace(tr.children[3], progressText(frame.percent, frame.message));
      }
      return;
    }
    if (frame.type !== 'deployment' || frame.deploymentId !== id) return;
    // The row changes at once; the summary's counts follow with the next load.
    const tr = rows.get(frame.deviceId);
    if (tr) {
      tr.dataset.status = frame.status;
      replace(tr.children[2], badge(frame.status));
      const detail = frame.detail && (frame.detail.reason || frame.detail.message);
      if (detail) replace(tr.children[3], String(detail));
      replace(tr.children[4], timeEl(new Date().toISOString()));
    }
    reload();
  });

  root.append(
    h('p', {}, h('a', { href: '#/firmware', text: '‹ Firmware' })),
    title,
    error,
    h('div', { class: 'card stack' }, summary, actions),
    h('div', { class: 'card' }, h('h2', { text: 'Devices' }), devices),
  );
  load();
  return stopListening;
}

/** A download's progress as the device reported it, e.g. `42 % — downloaded 1 MB of 8 MB`. */
function progressText(percent, message) {
  return `${percent} %${message ? ` — ${message}` : ''}`;
}
