// Production throughput: scans (valid and invalid), prints, batches and pallets per step, one
// chart per production line and company, from `GET /api/v1/production/throughput`, narrowed
// by line and company, and drawn again every minute.

import * as api from '../api.js';
import { h, replace, errorBox, debounce } from '../dom.js';
import { Chart, rangePicker, lastRange } from '../charts.js';

const PATH = '/api/v1/production/throughput';
const RANGES = [
  ['1 h', 3600],
  ['24 h', 24 * 3600],
  ['7 d', 7 * 24 * 3600],
];
const SERIES = [
  ['scansValid', 'valid scans'],
  ['scansInvalid', 'invalid scans'],
  ['prints', 'prints'],
  ['batches', 'batches'],
  ['pallets', 'pallets'],
];
const REFRESH_MS = 60000;

export function render(ctx) {
  const { root, query, setQuery } = ctx;
  const state = {
    productionLineId: query.get('productionLineId') || '',
    companyId: query.get('companyId') || '',
    range: Number(query.get('range')) || RANGES[0][1],
  };
  const area = h('div', { class: 'chart-grid wide', id: 'throughput-charts' });
  const info = h('p', { class: 'muted' });
  let charts = [];
  let generation = 0;

  function clear() {
    charts.forEach((c) => c.destroy());
    charts = [];
  }

  async function load() {
    const mine = ++generation;
    setQuery({ productionLineId: state.productionLineId, companyId: state.companyId, range: state.range });
    const q = { ...lastRange(state.range), productionLineId: state.productionLineId, companyId: state.companyId };
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
    info.textContent = `Counts per ${answer.step >= 3600 ? `${answer.step / 3600} h` : `${answer.step / 60} min`}, by the minute each scan, print, batch or pallet was made.`;
    if (!answer.series.length) {
      area.append(h('p', { class: 'muted', text: 'Nothing produced in this range.' }));
      return;
    }
    for (const series of answer.series) {
      const line = series.productionLineId || 'no line';
      const company = series.companyId || 'no company';
      const key = `${line}-${company}`.replace(/[^A-Za-z0-9_-]/g, '_');
      const chart = new Chart({
        id: `throughput-${key}`,
        title: `${line} · ${company}`,
        series: SERIES.map(([, label]) => ({ label })),
        whole: true,
        csv: {
          path: PATH,
          query: { ...q, step: answer.step, productionLineId: series.productionLineId || '', companyId: series.companyId || '' },
          filename: `throughput-${key}.csv`,
        },
      });
      chart.el.dataset.line = line;
      charts.push(chart);
      area.append(chart.el);
      chart.setData(
        series.points.map((p) => Date.parse(p.ts) / 1000),
        SERIES.map(([field]) => series.points.map((p) => p[field])),
      );
    }
  }

  const reload = debounce(load, 300);
  const filter = (name, placeholder) => {
    const input = h('input', { name, placeholder, value: state[name], size: 14 });
    input.addEventListener('input', () => {
      state[name] = input.value.trim();
      reload();
    });
    return input;
  };

  root.append(
    h(
      'div',
      { class: 'row spread' },
      h('h1', { text: 'Production' }),
      h(
        'div',
        { class: 'row' },
        filter('productionLineId', 'line'),
        filter('companyId', 'company'),
        rangePicker(RANGES, state.range, (secs) => {
          state.range = secs;
          load();
        }),
      ),
    ),
    info,
    area,
  );
  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    clearInterval(timer);
    clear();
  };
}
