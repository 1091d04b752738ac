// Live dashboard: polls /v1/stats every second, keeps the last POINTS readings, draws uPlot charts.
import { getJSON } from "./api.js";

const POINTS = 120;
const $ = (id) => document.getElementById(id);
const COLORS = ["#2b6cb0", "#d97706", "#a33", "#17813a"];
const CHARTS = [
  { title: "output tokens/s", series: ["tokens/s"], pick: (s) => [s.output_tokens_per_s] },
  { title: "requests", series: ["running", "waiting"], pick: (s) => [s.requests_running, s.requests_waiting] },
  { title: "TTFT (s)", series: ["p50", "p90", "p99"], pick: (s) => [s.ttft_s.p50, s.ttft_s.p90, s.ttft_s.p99] },
  { title: "ITL (s)", series: ["p50", "p90", "p99"], pick: (s) => [s.itl_s.p50, s.itl_s.p90, s.itl_s.p99] },
  { title: "cache", series: ["KV usage", "prefix hit rate"],
    pick: (s) => [s.kv_cache_usage, s.prefix_cache_hit_rate] },
  { title: "speculative acceptance", series: ["accepted/drafted"], pick: (s) => [s.spec_acceptance_rate] },
];

const data = CHARTS.map((c) => [[], ...c.series.map(() => [])]);
let plots = [];

function makePlots() {
  const box = $("charts");
  plots = CHARTS.map((c, i) => {
    const div = document.createElement("div");
    div.className = "chart";
    box.append(div);
    const opts = {
      title: c.title, width: Math.max(380, div.clientWidth - 10), height: 200,
      series: [{}, ...c.series.map((label, j) => ({ label, stroke: COLORS[j], width: 2, spanGaps: false }))],
      axes: [{}, { size: 60 }], scales: { x: { time: true } },
    };
    // eslint-disable-next-line no-undef -- uPlot is the vendored global (vendor/uPlot-*.iife.min.js)
    return new uPlot(opts, data[i], div);
  });
}

const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const ms = (v) => (v === null || v === undefined ? "–" : `${(v * 1000).toFixed(0)} ms`);
const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
const mib = (b) => (b ? `${(b / 2 ** 20).toFixed(0)} MiB` : "–");

function tiles(s) {
  $("stat-tps").textContent = fmt(s.output_tokens_per_s);
  $("stat-running").textContent = String(s.requests_running);
  $("stat-waiting").textContent = String(s.requests_waiting);
  $("stat-ttft").textContent = `${ms(s.ttft_s.p50)} / ${ms(s.ttft_s.p99)}`;
  $("stat-itl").textContent = `${ms(s.itl_s.p50)} / ${ms(s.itl_s.p99)}`;
  $("stat-kv").textContent = pct(s.kv_cache_usage);
  $("stat-prefix").textContent = pct(s.prefix_cache_hit_rate);
  $("stat-spec").textContent = pct(s.spec_acceptance_rate);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.append(td);
}

function replicaTable(s) {
  const body = $("replicas").tBodies[0];
  body.replaceChildren();
  for (const m of s.models) {
    const replicas = m.replicas.length ? m.replicas : [{}];
    for (const r of replicas) {
      const row = document.createElement("tr");
      cell(row, m.name);
      cell(row, m.state);
      cell(row, r.id ?? "");
      cell(row, r.healthy ? "up" : "down", r.healthy ? "up" : "down");
      cell(row, r.circuit ?? "");
      cell(row, String(r.outstanding ?? 0));
      cell(row, pct(r.kv_cache_usage));
      cell(row, mib(m.memory_bytes));
      body.append(row);
    }
  }
}

async function tick() {
  let s;
  try {
    s = await getJSON("/v1/stats");
  } catch (err) {
    $("conn").textContent = `stats: ${err.message}`;
    return;
  }
  $("conn").textContent = "";
  tiles(s);
  replicaTable(s);
  CHARTS.forEach((c, i) => {
    const d = data[i];
    d[0].push(s.time);
    c.pick(s).forEach((v, j) => d[j + 1].push(v ?? null));
    if (d[0].length > POINTS) d.forEach((col) => col.shift());
    if (plots[i]) plots[i].setData(d);
  });
}

export function setupDashboard() {
  makePlots();
  tick();
  setInterval(tick, 1000);
  window.addEventListener("resize", () => {
    plots.forEach((p) => p.setSize({ width: Math.max(380, p.root.parentElement.clientWidth - 10), height: 200 }));
  });
}
