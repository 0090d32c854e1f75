// A device's metrics over the last hour, day or week: one chart per numeric metric (average,
// with the minimum and maximum of each step dashed), from `GET …/metrics`, extended live by
// the `status` events of the dashboard socket.

import * as api from '../api.js';
import { h, replace, errorBox } from '../dom.js';
import { Chart, unitOf, rangePicker, lastRange } from '../charts.js';

const RANGES = [
  ['1 h', 3600],
  ['24 h', 24 * 3600],
  ['7 d', 7 * 24 * 3600],
];

/** The section; `onStatus(frame)` takes this device's live `status` frames. */
export function metricCharts(deviceId) {
  const base = `/api/v1/devices/${encodeURIComponent(deviceId)}/metrics`;
  let range = RANGES[0][1];
  let charts = new Map();
  let generation = 0;
  let loaded = false;
  const area = h('div', { class: 'chart-grid', id: 'metric-charts' });
  const info = h('span', { class: 'muted', id: 'metric-resolution' });

  function clear() {
    for (const chart of charts.values()) chart.destroy();
    charts = new Map();
  }

  function chartFor(metric, query) {
    let chart = charts.get(metric);
    if (!chart) {
      chart = new Chart({
        id: `chart-${metric}`,
        title: metric,
        unit: unitOf(metric),
        series: [{ label: 'avg' }, { label: 'min', dash: true }, { label: 'max', dash: true }],
        csv: { path: base, query: { ...query, metric }, filename: `${deviceId}-${metric}.csv` },
        keepSecs: range,
      });
      charts.set(metric, chart);
      area.append(chart.el);
    }
    return chart;
  }

  async function load() {
    const mine = ++generation;
    const query = lastRange(range);
    let answer;
    try {
      answer = await api.get(base, query);
    } catch (e) {
      if (mine === generation) replace(area, errorBox(e));
      return;
    }
    if (mine !== generation) return;
    loaded = true;
    clear();
    replace(area);
    info.textContent = `${answer.resolution} samples, a point per ${answer.step >= 60 ? `${answer.step / 60} min` : `${answer.step} s`}`;
    if (!answer.series.length) {
      area.append(h('p', { class: 'muted', text: 'No metrics in this range yet.' }));
      return;
    }
    for (const series of answer.series) {
      const xs = series.points.map((p) => Date.parse(p.ts) / 1000);
      chartFor(series.metric, { ...query, step: answer.step }).setData(xs, [
        series.points.map((p) => p.avg),
        series.points.map((p) => p.min),
        series.points.map((p) => p.max),
      ]);
    }
  }

  function onStatus(frame) {
    if (!frame.metrics || !loaded) return;
    if (!charts.size) replace(area);
    const x = Date.parse(frame.ts) / 1000;
    for (const [metric, value] of Object.entries(frame.metrics)) {
      if (typeof value !== 'number' || !Number.isFinite(value)) continue;
      chartFor(metric, lastRange(range)).append(x, [value, value, value]);
    }
  }

  const el = h(
    'div',
    { class: 'card', id: 'device-charts' },
    h(
      'div',
      { class: 'row spread' },
      h('h2', { text: 'Metrics over time' }),
      info,
      rangePicker(RANGES, range, (secs) => {
        range = secs;
        load();
      }),
    ),
    area,
  );
  load();
  return { el, onStatus, reload: load, destroy: clear };
}
