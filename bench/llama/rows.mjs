/**
 * The rows of one model's runs in the llama.cpp comparison: per (engine, format, threads), the
 * medians over the reps, the decode bound, and the comparisons between rows (moe-run vs its
 * llama.cpp peer, each thread count vs 1 thread), rep by rep where the runs were adjacent in time.
 */

export const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((p, q) => p - q);
  if (!s.length) return undefined;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
/** Rep-by-rep ratio of a sample field between two rows' samples (undefined where either lacks it). */
const perRep = (xs, ys, field) => xs.map((x, i) => (x[field] && ys[i]?.[field] ? x[field] / ys[i][field] : undefined));

/**
 * units: [{ engine: {engine, format, ...activeBytes}, threads }]; samples: Map unit -> child results
 * (with memoryBandwidthBytesPerS measured just before each, outside oversize runs);
 * startBandwidth(threads): the start-of-run figure a row at that thread count uses.
 */
export function scenarioRows({ units, samples, p, prompt, decodeTokens, oversize, limits, ratio, scenario, date, git, roofline, startBandwidth, pairOf }) {
  const rows = units.map((u) => {
    const e = u.engine;
    const ss = samples.get(u);
    const done = ss.filter((x) => x.finished);
    const use = done.length ? done : ss;
    const activeExpertBytes = (e.expertBytesTotal * p.config.num_experts_per_tok) / p.config.num_local_experts;
    const limitBytes = limits.get(e)?.bytes;
    const decodeHitRate = median(use.map((x) => x.decodeHitRate));
    const startBw = startBandwidth(u.threads);
    let activeBytes = e.activeBytes;
    // moe-run reports the dense bytes it reads per token (native dense layers hold them at the
    // experts' width); the bound follows what it actually reads.
    const engineInfo = use.find((x) => x.engineInfo)?.engineInfo;
    if (engineInfo?.denseBytesPerToken !== undefined && !oversize) {
      const record = e.expertBytesTotal / (p.config.num_hidden_layers * p.config.num_local_experts);
      activeBytes = engineInfo.denseBytesPerToken + p.config.num_hidden_layers * p.config.num_experts_per_tok * record;
    }
    const decode = median(use.map((x) => x.decodeTokPerS));
    let boundTokPerS = startBw / activeBytes;
    let boundNote = "all active bytes from memory at the read bandwidth measured next to each rep (median of the per-rep bounds)";
    let boundHitRate;
    let memBw = startBw;
    let boundTokPerSPerRep, fractionOfBoundPerRep, fractionOfBound;
    if (oversize) {
      boundNote = "all active bytes from memory at the read bandwidth measured at the start of the run";
      if (roofline.disk && limitBytes) {
        // moe-run: the hit rate its decode measured; llama.cpp (no such counter): what the limit allows at best.
        const measured = e.engine === "moe-run" && decodeHitRate !== undefined;
        const h = measured ? decodeHitRate : Math.max(0, Math.min(1, (limitBytes - (e.totalBytes - e.expertBytesTotal)) / e.expertBytesTotal));
        const t = (activeBytes - activeExpertBytes) / startBw + activeExpertBytes * (h / startBw + (1 - h) / roofline.disk.bytesPerSecond);
        boundTokPerS = 1 / t;
        boundHitRate = h;
        boundNote = measured
          ? `measured decode expert hit rate ${(h * 100).toFixed(0)}%: hits at the memory bandwidth, misses at the disk's sequential direct-I/O bandwidth`
          : `expert hit rate at most ${(h * 100).toFixed(0)}% (limit minus non-expert bytes over all expert bytes, uniform routing); misses at the measured disk bandwidth`;
      }
      fractionOfBound = decode !== undefined ? decode / boundTokPerS : undefined;
    } else {
      // The machine's bandwidth drifts minute to minute: each rep against the bandwidth measured
      // just before it, then the median of those fractions.
      boundTokPerSPerRep = ss.map((x) => (x.memoryBandwidthBytesPerS ? x.memoryBandwidthBytesPerS / activeBytes : undefined));
      fractionOfBoundPerRep = ss.map((x, i) => (x.decodeTokPerS && boundTokPerSPerRep[i] ? x.decodeTokPerS / boundTokPerSPerRep[i] : undefined));
      const used = (xs) => xs.filter((_, i) => use.includes(ss[i]));
      boundTokPerS = median(used(boundTokPerSPerRep));
      fractionOfBound = median(used(fractionOfBoundPerRep));
      memBw = median(used(ss.map((x) => x.memoryBandwidthBytesPerS)));
    }
    const decodeMsPerToken = breakdownMs(use.map((x) => x.decodeBreakdown));
    const prefillMsPerForward = breakdownMs(use.map((x) => x.prefillBreakdown));
    // Decode time outside the kernels (dense layers, experts, LM head): routing, JS, sampling,
    // KV handling, event-loop turns; from the wall time per token, not the sum of the parts. Each
    // rep's share from its own breakdown and its own speed, then the median (as the fraction of
    // the bound): medians of the parts and of the speed taken separately can come from different
    // reps, which on this machine differ by up to 1.5x in speed.
    const outsideKernelsSharePerRep = use.map((x) => {
      const b = x.decodeBreakdown;
      if (!b || !(b.forwards > 0) || !x.decodeTokPerS) return undefined;
      const kernelMs = (1000 * (b.seconds.dense + b.seconds.experts + b.seconds.head)) / b.forwards;
      return Math.max(0, 1 - kernelMs / (1000 / x.decodeTokPerS));
    });
    const shares = outsideKernelsSharePerRep.filter((v) => v !== undefined);
    const outsideKernelsShare = shares.length ? median(shares) : undefined;
    return {
      date,
      moeRunCommit: git ? `${git.commit}${git.dirty ? "+dirty" : ""}` : undefined,
      scenario,
      model: p.id,
      engine: e.engine,
      format: e.format,
      precision: e.precision,
      threads: u.threads,
      promptTokens: prompt.ids.length,
      decodeTokens,
      reps: ss.length,
      finished: ss.length > 0 && ss.every((x) => x.finished),
      notFinishedReasons: [...new Set(ss.filter((x) => !x.finished).map((x) => x.reason))],
      prefillTokPerS: median(use.map((x) => x.prefillTokPerS)),
      decodeTokPerS: decode,
      peakRssBytes: Math.max(0, ...ss.map((x) => x.peakRssBytes ?? 0)) || undefined,
      readBytes: median(ss.map((x) => x.readBytes)),
      readBytesPerToken: undefined,
      cgroupMaxUsageBytes: oversize ? Math.max(0, ...ss.map((x) => x.cgroup?.maxUsageBytes ?? 0)) || undefined : undefined,
      oomKills: oversize ? ss.reduce((n, x) => n + (x.cgroup?.oomKills ?? 0), 0) : undefined,
      memoryLimitBytes: limitBytes,
      memoryLimitBasis: limits.get(e)?.basis,
      oversizeRatio: ratio,
      modelToLimit: limitBytes ? e.fileBytes / limitBytes : undefined,
      decodeHitRate,
      engineInfo,
      denseBytesPerToken: engineInfo?.denseBytesPerToken,
      decodeMsPerToken,
      prefillMsPerForward,
      outsideKernelsShare,
      outsideKernelsSharePerRep,
      decodeCache: use.find((x) => x.decodeCache)?.decodeCache,
      cacheStats: use.find((x) => x.cacheStats)?.cacheStats,
      fileBytes: e.fileBytes,
      activeBytesPerToken: activeBytes,
      boundTokPerS,
      boundTokPerSPerRep,
      boundNote,
      boundHitRate,
      fractionOfBound,
      fractionOfBoundPerRep,
      // What the bound was before per-rep bandwidth: one figure for the whole run.
      fractionOfBoundStartOfRun: oversize ? fractionOfBound : decode !== undefined ? decode / (startBw / activeBytes) : undefined,
      memoryBandwidthBytesPerS: memBw,
      memoryBandwidthStartOfRunBytesPerS: startBw,
      diskBandwidthBytesPerS: roofline.disk?.bytesPerSecond,
      pairedWith: e.pair ? `node-llama-cpp:${e.pair}` : undefined,
      // The cache summary is on the row (from one run); samples keep their hit rates only.
      samples: ss.map(({ ids, stderrTail, cacheStats, decodeCache, decodeBreakdown, prefillBreakdown, engineInfo, ...rest }) => ({ ...rest, ...(stderrTail ? { stderrTail } : {}) })),
      ids: ss.find((x) => x.ids)?.ids,
    };
  });
  for (const r of rows) {
    if (r.readBytes !== undefined) r.readBytesPerToken = r.readBytes / (r.promptTokens + r.decodeTokens);
    // Long context against a 64-token prompt in the same process (child.mjs shortPrompt), per rep.
    if (r.samples.some((x) => x.decodeTokPerSShort)) {
      r.decodeTokPerSShort = median(r.samples.map((x) => x.decodeTokPerSShort));
      r.longContextRatioPerRep = r.samples.map((x) => (x.decodeTokPerS && x.decodeTokPerSShort ? x.decodeTokPerS / x.decodeTokPerSShort : undefined));
      r.longContextRatio = median(r.longContextRatioPerRep);
    }
    // Each thread count against 1 thread, rep by rep: rep i of both ran one after the other.
    const single = r.threads > 1 && rows.find((x) => x.engine === r.engine && x.format === r.format && x.threads === 1);
    if (single) {
      r.threadScalingPerRep = perRep(r.samples, single.samples, "decodeTokPerS");
      r.threadScaling = median(r.threadScalingPerRep);
      // The memory's own scaling next to those reps: the ceiling of a bandwidth-bound decode.
      if (!oversize) {
        r.memoryScalingPerRep = perRep(r.samples, single.samples, "memoryBandwidthBytesPerS");
        r.memoryScaling = median(r.memoryScalingPerRep);
      }
    }
    if (r.engine !== "moe-run") continue;
    const peer = rows.find((x) => x.engine === "node-llama-cpp" && x.format === pairOf(r.format) && x.threads === r.threads);
    if (!peer) continue;
    r.decodeRatio = r.decodeTokPerS && peer.decodeTokPerS ? r.decodeTokPerS / peer.decodeTokPerS : undefined;
    // Runs of one rep are close in time (engines alternate), so their ratio sees similar load.
    r.decodeRatioPerRep = perRep(r.samples, peer.samples, "decodeTokPerS");
    r.decodeRatioMedianOfReps = median(r.decodeRatioPerRep);
    r.prefillRatio = r.prefillTokPerS && peer.prefillTokPerS ? r.prefillTokPerS / peer.prefillTokPerS : undefined;
    if (r.ids && peer.ids) {
      const n = Math.min(r.ids.length, peer.ids.length);
      let i = 0;
      while (i < n && r.ids[i] === peer.ids[i]) i++;
      r.greedyIdsVsPeer = { compared: n, agreeingPrefix: i };
    }
  }
  return rows;
}

/** Median ms per forward of each part of a StepTimes breakdown over samples (moe-run only). */
function breakdownMs(list) {
  const bs = list.filter((b) => b && b.forwards > 0);
  if (!bs.length) return undefined;
  const out = {};
  for (const k of Object.keys(bs[0].seconds)) out[k] = median(bs.map((b) => (1000 * b.seconds[k]) / b.forwards));
  return out;
}
