// Charts on uPlot (assets/vendor/uplot, loaded before the modules as the global `uPlot`):
// a card with a title, the plot, a button that shows the same numbers as a table, and a CSV
// download from the server. Values read as people read them: bytes in KiB/MiB/GiB, seconds as
// durations, percentages with the % sign, counts with thousands separators.

import * as api from './api.js';
import { h, replace, table, fmtBytes } from './dom.js';

const COLORS = ['#1f5f8b', '#1e7b3c', '#a8261c', '#8a5a00', '#6b3fa0', '#0f7f86', '#5d6b7a'];
const HEIGHT = 200;

/** The unit a metric is in, from its name: `…Bytes`, `…Secs`/`…Seconds`, `…Percent`/`…Pct`. */
export function unitOf(name) {
  if (/bytes$/i.test(name)) return 'bytes';
  if (/(secs|seconds)$/i.test(name)) return 'seconds';
  if (/(percent|pct)$/i.test(name)) return 'percent';
  return 'count';
}

/** Seconds as the two largest units: `3 d 4 h`, `2 h 5 min`, `4 min 10 s`, `12 s`. */
export function fmtDuration(secs) {
  const s = Math.round(Math.abs(Number(secs)));
  const parts = [
    [Math.floor(s / 86400), 'd'],
    [Math.floor((s % 86400) / 3600), 'h'],
    [Math.floor((s % 3600) / 60), 'min'],
    [s % 60, 's'],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  if (first < 0) return '0 s';
  const shown = parts.slice(first, first + 2).filter(([n]) => n > 0);
  return `${secs < 0 ? '-' : ''}${shown.map(([n, u]) => `${n} ${u}`).join(' ')}`;
}

/** A value in its unit, for axes, legends, tables and the device's latest metrics. */
export function fmtValue(value, unit) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return '–';
  const v = Number(value);
  if (unit === 'bytes') return fmtBytes(v);
  if (unit === 'seconds') return fmtDuration(v);
  if (unit === 'percent') return `${v.toLocaleString(undefined, { maximumFractionDigits: 1 })} %`;
  return v.toLocaleString(undefined, { maximumFractionDigits: 2 });
}

const BINARY = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/**
 * Axis labels in the unit, precise enough that neighbouring ticks differ: bytes share the
 * binary multiple of the largest tick and get as many decimals as the tick spacing needs.
 */
function axisValues(unit) {
  return (u, splits, axis, space, incr) => {
    if (unit !== 'bytes') return splits.map((v) => fmtValue(v, unit));
    const top = Math.max(...splits.map((v) => Math.abs(v)), 1);
    const power = Math.min(Math.floor(Math.log(top) / Math.log(1024)), BINARY.length - 1);
    const scale = 1024 ** power;
    const decimals = Math.max(0, Math.min(3, Math.ceil(-Math.log10((incr || scale) / scale))));
    return splits.map((v) => `${(v / scale).toFixed(power === 0 ? 0 : decimals)} ${BINARY[power]}`);
  };
}

/** Fetches `path` as CSV (`Accept: text/csv`) and saves it as `filename`. */
export async function downloadCsv(path, query, filename) {
  const text = await api.fetchText(api.withQuery(path, query), 'text/csv');
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const link = h('a', { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * One chart card. `series`: [{label, dash?}]; `unit` formats the values; `csv`: {path, query,
 * filename} of the server's CSV of the same numbers. `setData(xs, ys)` takes times in seconds
 * and one array per series; `append(x, values)` extends it live, dropping points older than
 * `keepSecs` before the newest.
 */
export class Chart {
  constructor({ id, title, unit = 'count', series, csv, keepSecs = null }) {
    this.unit = unit;
    this.series = series;
    this.keepSecs = keepSecs;
    this.data = [[], ...series.map(() => [])];
    this.plot = null;
    this.plotEl = h('div', { class: 'chart-plot' });
    this.tableEl = h('div', { class: 'chart-table', hidden: true });
    const tableButton = h('button', {
      class: 'secondary small',
      type: 'button',
      dataset: { chartAction: 'table' },
      text: 'Table',
      onclick: () => {
        this.tableEl.hidden = !this.tableEl.hidden;
        tableButton.textContent = this.tableEl.hidden ? 'Table' : 'Chart only';
        if (!this.tableEl.hidden) this.drawTable();
      },
    });
    const csvButton = csv
      ? h('button', {
          class: 'secondary small',
          type: 'button',
          dataset: { chartAction: 'csv' },
          text: 'CSV',
          onclick: () => downloadCsv(csv.path, csv.query, csv.filename).catch((e) => replace(this.tableEl, String(e.message))),
        })
      : null;
    this.el = h(
      'div',
      { class: 'card chart', id, dataset: { chart: id } },
      h('div', { class: 'chart-head' }, h('h3', { text: title }), h('span', { class: 'chart-latest' }), tableButton, csvButton),
      this.plotEl,
      this.tableEl,
    );
    this.latestEl = this.el.querySelector('.chart-latest');
    // Width follows the card; uPlot draws at a fixed size, so a resize redraws it.
    this.resize = new ResizeObserver(() => {
      if (this.plot && this.plotEl.clientWidth > 0) this.plot.setSize({ width: this.plotEl.clientWidth, height: HEIGHT });
    });
    this.resize.observe(this.plotEl);
  }

  options() {
    const fmt = (v) => fmtValue(v, this.unit);
    return {
      width: Math.max(this.plotEl.clientWidth, 300),
      height: HEIGHT,
      series: [
        {},
        ...this.series.map((s, i) => ({
          label: s.label,
          stroke: COLORS[i % COLORS.length],
          width: s.dash ? 1 : 2,
          dash: s.dash ? [4, 4] : undefined,
          value: (u, v) => fmt(v),
          points: { show: false },
        })),
      ],
      axes: [
        {},
        this.whole
          ? { values: axisValues(this.unit), size: 60, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6] }
          : { values: axisValues(this.unit), size: 80 },
      ],
      scales: { x: { time: true } },
      cursor: { drag: { x: false, y: false } },
    };
  }

  setData(xs, ys) {
    this.data = [xs, ...ys];
    this.draw();
  }

  append(x, values) {
    const [xs, ...ys] = this.data;
    if (xs.length && x <= xs[xs.length - 1]) return;
    xs.push(x);
    ys.forEach((col, i) => col.push(values[i] ?? null));
    if (this.keepSecs) {
      while (xs.length && xs[0] < x - this.keepSecs) {
        xs.shift();
        ys.forEach((col) => col.shift());
      }
    }
    this.draw();
  }

  draw() {
    const [xs, ...ys] = this.data;
    this.el.dataset.points = String(xs.length);
    const last = ys.map((col) => col[col.length - 1]);
    this.latestEl.textContent = xs.length ? this.series.map((s, i) => `${s.label} ${fmtValue(last[i], this.unit)}`).join(' · ') : 'no data in this range';
    if (!this.plot) {
      this.plot = new window.uPlot(this.options(), this.data, this.plotEl);
    } else {
      this.plot.setData(this.data);
    }
    if (!this.tableEl.hidden) this.drawTable();
  }

  drawTable() {
    const [xs, ...ys] = this.data;
    const rows = xs.map((x, i) => ({ x, values: ys.map((col) => col[i]) })).reverse();
    replace(
      this.tableEl,
      table(
        [
          { title: 'Time', cell: (r) => new Date(r.x * 1000).toLocaleString() },
          ...this.series.map((s, i) => ({ title: s.label, class: 'num', cell: (r) => fmtValue(r.values[i], this.unit) })),
        ],
        rows,
        { empty: 'No data in this range.' },
      ),
    );
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
  }
}

/** The range picker: `[label, seconds]` buttons; `onPick(seconds)`. */
export function rangePicker(ranges, selected, onPick) {
  const buttons = ranges.map(([label, secs]) =>
    h('button', {
      type: 'button',
      class: secs === selected ? 'small' : 'secondary small',
      dataset: { range: label },
      text: label,
      onclick: () => {
        buttons.forEach((b) => (b.className = b === buttons[ranges.findIndex(([, s]) => s === secs)] ? 'small' : 'secondary small'));
        onPick(secs);
      },
    }),
  );
  return h('div', { class: 'range-picker' }, buttons);
}

/** The API's `from`/`to` for the last `secs` seconds. */
export function lastRange(secs) {
  const to = new Date();
  return { from: new Date(to.getTime() - secs * 1000).toISOString(), to: to.toISOString() };
}
