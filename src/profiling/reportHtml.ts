/**
 * Renders a ReportData as one self-contained HTML page: inline CSS and SVG, no scripts, fonts or
 * other external assets, so it opens offline and can be attached to an issue as is.
 */
import { OFFLINE_POLICIES, type PolicyName } from "../cache/policies/index.js";
import type { ReportCapacityRow, ReportData } from "./report.js";

const COLORS: Record<string, string> = { lru: "#1f77b4", lfu: "#ff7f0e", "layer-lru": "#2ca02c", score: "#9467bd", shallow: "#8c564b", belady: "#111111" };
const PALETTE = ["#d62728", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"];

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
const f3 = (v: number | null | undefined) => (v === null || v === undefined ? "n/a" : v.toFixed(3));
const pct = (v: number) => `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`;

interface Series {
  name: string;
  color: string;
  dash?: boolean;
  width?: number;
  points: [number, number | null][];
}

/** A line chart with y in [0, 1]; x from xMin to xMax, ticks formatted by xTick. */
function lineChart(o: { series: Series[]; width: number; height: number; xMin: number; xMax: number; xTicks: number[]; xTick: (x: number) => string; xLabel: string; yLabel: string; marks?: number[] }): string {
  const m = { l: 52, r: 118, t: 14, b: 44 };
  const w = o.width - m.l - m.r;
  const h = o.height - m.t - m.b;
  const X = (x: number) => m.l + ((x - o.xMin) / (o.xMax - o.xMin || 1)) * w;
  const Y = (y: number) => m.t + (1 - y) * h;
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${o.width}" height="${o.height}" viewBox="0 0 ${o.width} ${o.height}" role="img">`];
  for (let i = 0; i <= 10; i++) {
    const y = Y(i / 10);
    parts.push(`<line x1="${m.l}" x2="${m.l + w}" y1="${y}" y2="${y}" stroke="${i % 5 ? "#eee" : "#ccc"}"/>`);
    if (i % 2 === 0) parts.push(`<text x="${m.l - 6}" y="${y + 4}" text-anchor="end" class="tick">${(i / 10).toFixed(1)}</text>`);
  }
  for (const x of o.xTicks) parts.push(`<line x1="${X(x)}" x2="${X(x)}" y1="${m.t}" y2="${m.t + h}" stroke="#f2f2f2"/><text x="${X(x)}" y="${m.t + h + 16}" text-anchor="middle" class="tick">${esc(o.xTick(x))}</text>`);
  for (const x of o.marks ?? []) parts.push(`<line x1="${X(x)}" x2="${X(x)}" y1="${m.t}" y2="${m.t + h}" stroke="#999" stroke-dasharray="2 3"/>`);
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${w}" height="${h}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${m.l + w / 2}" y="${o.height - 6}" text-anchor="middle" class="axis">${esc(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(14 ${m.t + h / 2}) rotate(-90)" text-anchor="middle" class="axis">${esc(o.yLabel)}</text>`);
  o.series.forEach((s, i) => {
    const pts = s.points.filter((p): p is [number, number] => p[1] !== null);
    const d = pts.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.width ?? 2}"${s.dash ? ' stroke-dasharray="7 4"' : ""}><title>${esc(s.name)}</title></path>`);
    for (const p of pts) parts.push(`<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="2.6" fill="${s.color}"><title>${esc(s.name)}: ${f3(p[1])} at ${esc(o.xTick(p[0]))}</title></circle>`);
    const ly = m.t + 10 + i * 18;
    parts.push(`<line x1="${m.l + w + 12}" x2="${m.l + w + 36}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="${s.width ?? 2}"${s.dash ? ' stroke-dasharray="7 4"' : ""}/><text x="${m.l + w + 42}" y="${ly + 4}" class="legend">${esc(s.name)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("");
}

/** Grouped bars with y in [0, 1]: one group per x value (layer), one bar per series. */
function barChart(series: Series[], xLabel: string, yLabel: string): string {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const m = { l: 52, r: 150, t: 14, b: 44 };
  const w = Math.max(300, Math.min(640, 40 * xs.length));
  const group = w / Math.max(1, xs.length);
  const h = 240;
  const width = m.l + w + m.r;
  const height = m.t + h + m.b;
  const bar = Math.max(2, Math.min(24, (group - 4) / Math.max(1, series.length)));
  const Y = (y: number) => m.t + (1 - y) * h;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">`];
  for (let i = 0; i <= 10; i += 2) parts.push(`<line x1="${m.l}" x2="${m.l + w}" y1="${Y(i / 10)}" y2="${Y(i / 10)}" stroke="#e5e5e5"/><text x="${m.l - 6}" y="${Y(i / 10) + 4}" text-anchor="end" class="tick">${(i / 10).toFixed(1)}</text>`);
  const every = Math.ceil(xs.length / 16);
  xs.forEach((x, gi) => {
    const gx = m.l + gi * group + (group - bar * series.length) / 2; // bars centred in their group
    series.forEach((s, si) => {
      const v = s.points.find((p) => p[0] === x)?.[1];
      if (v === null || v === undefined) return;
      parts.push(`<rect x="${(gx + si * bar).toFixed(1)}" y="${Y(v).toFixed(1)}" width="${(bar - 0.5).toFixed(1)}" height="${(Y(0) - Y(v)).toFixed(1)}" fill="${s.color}"><title>${esc(s.name)}, layer ${x}: ${f3(v)}</title></rect>`);
    });
    if (gi % every === 0) parts.push(`<text x="${m.l + (gi + 0.5) * group}" y="${m.t + h + 16}" text-anchor="middle" class="tick">${x}</text>`);
  });
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${w}" height="${h}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${m.l + w / 2}" y="${height - 6}" text-anchor="middle" class="axis">${esc(xLabel)}</text>`);
  parts.push(`<text transform="translate(14 ${m.t + h / 2}) rotate(-90)" text-anchor="middle" class="axis">${esc(yLabel)}</text>`);
  series.forEach((s, i) => parts.push(`<rect x="${m.l + w + 12}" y="${m.t + 4 + i * 18}" width="14" height="10" fill="${s.color}"/><text x="${m.l + w + 32}" y="${m.t + 13 + i * 18}" class="legend">${esc(s.name)}</text>`));
  parts.push("</svg>");
  return parts.join("");
}

/** White -> deep blue by value in [0, max]. */
function heat(v: number, max: number): string {
  const t = max > 0 ? Math.min(1, v / max) : 0;
  const mix = (a: number, b: number) => Math.round(a + (b - a) * t);
  return `rgb(${mix(247, 8)},${mix(251, 48)},${mix(255, 107)})`;
}

/** Rows = layers, columns = experts; colour = the expert's share of the layer's selections. */
function heatmap(r: ReportData): string {
  const { numLayers: L, numExperts: E } = r.trace;
  const cw = Math.max(6, Math.min(36, Math.floor(520 / E)));
  const ch = Math.max(6, Math.min(24, Math.floor(480 / L)));
  const m = { l: 44, t: 28 };
  const width = m.l + E * cw + 110;
  const lh = Math.max(120, Math.min(200, L * ch)); // colour legend height
  const height = m.t + Math.max(L * ch, lh) + 40;
  const shares = r.usage.counts.map((row) => {
    const s = row.reduce((a, b) => a + b, 0);
    return row.map((c) => (s > 0 ? c / s : 0));
  });
  const max = Math.max(...shares.flat(), 1e-9);
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">`];
  const every = Math.ceil(E / 16);
  for (let e = 0; e < E; e += every) parts.push(`<text x="${m.l + e * cw + cw / 2}" y="${m.t - 6}" text-anchor="middle" class="tick">${e}</text>`);
  const lEvery = Math.ceil(L / 32);
  shares.forEach((row, l) => {
    if (l % lEvery === 0) parts.push(`<text x="${m.l - 6}" y="${m.t + l * ch + ch / 2 + 4}" text-anchor="end" class="tick">${l}</text>`);
    row.forEach((s, e) => parts.push(`<rect x="${m.l + e * cw}" y="${m.t + l * ch}" width="${cw}" height="${ch}" fill="${heat(s, max)}" stroke="#fff" stroke-width="0.5"><title>layer ${l} expert ${e}: ${pct(s)} of selections (${r.usage.counts[l]![e]})</title></rect>`));
  });
  // Colour legend: 0 .. max share, with the uniform share 1/E marked.
  const lx = m.l + E * cw + 24;
  for (let i = 0; i < 20; i++) parts.push(`<rect x="${lx}" y="${m.t + lh - ((i + 1) * lh) / 20}" width="14" height="${lh / 20 + 0.5}" fill="${heat(((i + 0.5) / 20) * max, max)}"/>`);
  parts.push(`<text x="${lx + 18}" y="${m.t + 8}" class="tick">${pct(max)}</text><text x="${lx + 18}" y="${m.t + lh}" class="tick">0</text>`);
  // Shares are of the layer's selections, so an evenly used layer has 1/E everywhere.
  const uy = m.t + lh - Math.min(1, 1 / E / max) * lh;
  parts.push(`<line x1="${lx - 3}" x2="${lx + 17}" y1="${uy}" y2="${uy}" stroke="#d62728"/><text x="${lx + 18}" y="${uy + 4}" class="tick" fill="#d62728">1/E = ${pct(1 / E)}</text>`);
  parts.push(`<text x="${m.l + (E * cw) / 2}" y="${m.t + L * ch + 24}" text-anchor="middle" class="axis">expert (rows: layers)</text></svg>`);
  return parts.join("");
}

function capacityTable(r: ReportData, rows: ReportCapacityRow[], online: PolicyName[]): string {
  const head = `<tr><th>capacity</th>${online.map((p) => `<th>${esc(p)}</th>`).join("")}<th>best online</th><th>Belady</th><th>best / Belady</th></tr>`;
  const body = rows
    .map((k) => {
      const cells = online.map((p) => {
        const best = k.bestOnline?.policy === p;
        return `<td data-policy="${esc(p)}"${best ? ' class="best"' : ""}>${f3(k.hitRate[p])}</td>`;
      });
      const best = k.bestOnline ? `<td data-policy="best-online">${f3(k.bestOnline.hitRate)} <span class="muted">${esc(k.bestOnline.policy)}</span></td>` : "<td>n/a</td>";
      const ratio = k.bestOnline && k.belady ? f3(k.bestOnline.hitRate / k.belady) : "n/a";
      return `<tr data-capacity="${k.capacity}"><td>${k.capacity} <span class="muted">(${(100 * k.share).toFixed(1)}%)</span></td>${cells.join("")}${best}<td data-policy="belady" class="opt">${f3(k.belady)}</td><td>${ratio}</td></tr>`;
    })
    .join("");
  return `<table class="num" id="key-capacities">${head}${body}</table><p class="muted">One cache over all ${r.totalExperts} (layer, expert) pairs, cold start, trace order. Bold: best online policy. Belady's MIN needs the future: no demand-only policy beats it at the same capacity.</p>`;
}

function predictorSection(r: ReportData): string {
  const preds = r.predictors ?? [];
  const note = r.predictorNote ? `<p class="note">${esc(r.predictorNote)}</p>` : "";
  if (preds.length === 0) return `<section><h2>Predictor recall per layer</h2>${note}</section>`;
  const series: Series[] = [];
  let c = 0;
  for (const p of preds) p.ks.forEach((k, i) => series.push({ name: `${p.name} @${k}`, color: PALETTE[c++ % PALETTE.length]!, points: p.layers.map((l, j) => [l, p.recall[i]![j] ?? null]) }));
  const chart = barChart(series, "target layer (predicted one layer ahead)", "recall@k");
  const rows = preds
    .map((p) => `<tr><td style="text-align:left">${esc(p.name)}<div class="muted">${esc(p.label ?? "")}</div></td>${p.ks.map((k, i) => `<td>recall@${k}: ${f3(p.mean?.[i])}</td>`).join("")}</tr>`)
    .join("");
  return `<section><h2>Predictor recall per layer</h2>${note}<div class="row"><div>${chart}</div><div><table class="num">${rows}</table></div></div></section>`;
}

export function renderReportHtml(r: ReportData): string {
  const t = r.trace;
  const online = r.policies.filter((p) => !OFFLINE_POLICIES.includes(p));
  const series: Series[] = r.policies.map((p) => ({
    name: p === "belady" ? "Belady MIN" : p,
    color: COLORS[p] ?? "#777",
    dash: p === "belady",
    width: p === "belady" ? 3 : 2,
    points: r.curve.map((c): [number, number | null] => [c.share, c.hitRate[p] ?? null]),
  }));
  const curve = lineChart({ series, width: 600, height: 360, xMin: 0, xMax: 1, xTicks: [0, 0.25, 0.5, 0.75, 1], xTick: (x) => pct(x), xLabel: `cache capacity (share of ${r.totalExperts} experts)`, yLabel: "hit rate", marks: [0.25, 0.5, 0.75] });
  const layerRows = r.usage.entropyBits
    .map((b, l) => `<tr><td>${l}</td><td>${b.toFixed(2)}</td><td>${pct(r.usage.normalizedEntropy[l]!)}</td><td>${r.top1.toNextLayer[l] == null ? "–" : pct(r.top1.toNextLayer[l]!)}</td><td>${r.top1.adjacentTokens[l] == null ? "–" : pct(r.top1.adjacentTokens[l]!)}</td></tr>`)
    .join("");
  const segs = Object.keys(r.consistency.srp);
  const lrc = `<table class="num" id="consistency"><tr><th>segment m</th>${segs.map((m) => `<th>${m}</th>`).join("")}</tr><tr><td>SRP</td>${segs.map((m) => `<td>${f3(r.consistency.srp[m])}</td>`).join("")}</tr><tr><td>SCH (${r.consistency.schCapacity}/layer)</td>${segs.map((m) => `<td>${f3(r.consistency.sch[m])}</td>`).join("")}</tr></table>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moe-run cache report: ${esc(t.model ?? t.source)}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:18px 24px;color:#222;max-width:1180px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.muted{color:#777;font-size:12px}.note{background:#fff7e0;border-left:3px solid #e0a800;padding:4px 8px;font-size:13px}
.row{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
table.num{border-collapse:collapse;font-size:13px}table.num td,table.num th{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.num th{background:#f5f5f5}td.best{font-weight:700}td.opt{background:#f0f0f0}
.tag{background:#eee;border-radius:3px;padding:0 4px;font-size:11px}
svg .tick{font-size:11px;fill:#555}svg .axis{font-size:12px;fill:#333}svg .legend{font-size:12px;fill:#222}
.scroll{max-height:420px;overflow:auto}
</style></head><body>
<h1>Expert cache report: ${esc(t.model ?? "routing trace")}</h1>
<div class="muted">${esc(t.source)} · ${t.records} records · ${t.tokens} tokens in ${t.prompts} prompt(s) · ${t.accesses} expert accesses · ${t.numLayers} layers × ${t.numExperts} experts, top-${t.topK}${t.expertBytes ? ` · ${(t.expertBytes / 2 ** 20).toFixed(2)} MiB per expert` : ""} · ${esc(r.generatedAt)}</div>
<section><h2>Hit rate vs capacity</h2><div class="row"><div>${curve}</div><div>${capacityTable(r, r.keyCapacities, online)}</div></div></section>
<section><h2>Expert usage per layer</h2><div class="row"><div>${heatmap(r)}</div><div class="scroll"><table class="num" id="layers"><tr><th>layer</th><th>entropy bits</th><th>of max</th><th>top-1 ≠ next layer</th><th>top-1 ≠ prev token</th></tr>${layerRows}</table></div></div></section>
${predictorSection(r)}
<section><h2>Local routing consistency</h2>${lrc}<p class="muted">SRP: best F1 of serving each m-token segment with a fixed expert group; SCH: best hit rate of a per-layer cache of ${r.consistency.schCapacity} experts that knows the next m tokens (Liang et al. 2025).</p></section>
</body></html>
`;
}
