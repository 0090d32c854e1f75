// The fleet at a glance on the devices page: devices online and commands by outcome over the
// last day (or hour, or week), from `GET /api/v1/fleet/summary`, with deployments by state now.

import * as api from '../api.js';
import { h, replace, errorBox, fmtNumber } from '../dom.js';
import { Chart, rangePicker, lastRange } from '../charts.js';

const PATH = '/api/v1/fleet/summary';
const RANGES = [
  ['1 h', 3600],
  ['24 h', 24 * 3600],
  ['7 d', 7 * 24 * 3600],
];
const REFRESH_MS = 60000;

export function fleetCharts() {
  let range = RANGES[1][1];
  let charts = [];
  let generation = 0;
  const area = h('div', { class: 'chart-grid wide', id: 'fleet-charts' });
  const deployments = h('p', { class: 'muted', id: 'fleet-deployments' });

  function clear() {
    charts.forEach((c) => c.destroy());
    charts = [];
  }

  async function load() {
    const mine = ++generation;
    const q = lastRange(range);
    let answer;
    try {
      answer = await api.get(PATH, q);
    } catch (e) {
      if (mine === generation) replace(area, errorBox(e));
      return;
    }
    if (mine !== generation) return;
    clear();
    replace(area);
    const xs = answer.points.map((p) => Date.parse(p.ts) / 1000);
    const csv = { path: PATH, query: { ...q, step: answer.step }, filename: 'fleet.csv' };
    const online = new Chart({ id: 'chart-online', title: 'Devices online', series: [{ label: 'online' }], csv, whole: true });
    const outcomes = [...new Set(answer.points.flatMap((p) => Object.keys(p.commands)))].sort();
    const commands = new Chart({
      id: 'chart-commands',
      title: 'Commands by outcome',
      series: outcomes.length ? outcomes.map((o) => ({ label: o })) : [{ label: 'commands' }],
      csv,
      whole: true,
    });
    charts = [online, commands];
    area.append(online.el, commands.el);
    online.setData(xs, [answer.points.map((p) => p.online)]);
    commands.setData(xs, outcomes.length ? outcomes.map((o) => answer.points.map((p) => p.commands[o] || 0)) : [answer.points.map(() => 0)]);
    const states = Object.entries(answer.deployments);
    deployments.textContent = states.length
      ? `Deployments now: ${states.map(([s, n]) => `${fmtNumber(n)} ${s}`).join(', ')}`
      : 'No firmware deployments.';
  }

  const el = h(
    'div',
    { class: 'card', id: 'fleet' },
    h(
      'div',
      { class: 'row spread' },
      h('h2', { text: 'Fleet' }),
      deployments,
      rangePicker(RANGES, range, (secs) => {
        range = secs;
        load();
      }),
    ),
    area,
  );
  load();
  const timer = setInterval(load, REFRESH_MS);
  return {
    el,
    reload: load,
    destroy: () => {
      clearInterval(timer);
      clear();
    },
  };
}
