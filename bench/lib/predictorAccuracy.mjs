/**
 * Part 1 of bench/predictors.mjs: next-layer prediction accuracy. Held-out tokens are
 * teacher-forced through the decode path with prefetch off and an unlimited budget, so only
 * prediction is measured (recall@k and precision from cacheStats().predictor). Also keeps affinity's
 * routing statistics (<model>/routing-stats.mdb): cleared for a cold start, snapshotted after a
 * training session on disjoint tokens, restored before each speed run so no run learns from another.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { loadModelOnThisThread } from "../../dist/index.js";
import { pct } from "./common.mjs";

export const ACCURACY_PREDICTORS = ["gate", "pregate", "affinity", "reuse"];

/**
 * Affinity's statistics files in the model directory `dir`, with a snapshot kept in `snapshotDir`:
 * { statsFiles, clearStats, snapshotStats, restoreStats }.
 */
export function affinityStats(dir, snapshotDir) {
  const statsFiles = () => fs.readdirSync(dir).filter((f) => f.startsWith("routing-stats.mdb"));
  const clearStats = () => statsFiles().forEach((f) => fs.rmSync(path.join(dir, f), { recursive: true, force: true }));
  function snapshotStats() {
    fs.rmSync(snapshotDir, { recursive: true, force: true });
    fs.mkdirSync(snapshotDir);
    for (const f of statsFiles()) if (!f.endsWith("-lock")) fs.cpSync(path.join(dir, f), path.join(snapshotDir, f), { recursive: true });
  }
  function restoreStats() {
    clearStats();
    for (const f of fs.readdirSync(snapshotDir)) fs.cpSync(path.join(snapshotDir, f), path.join(dir, f), { recursive: true });
  }
  return { statsFiles, clearStats, snapshotStats, restoreStats };
}

/**
 * One session: fresh load with `predictor`, prefetch off, teacher-force `ids`; the predictor's
 * report plus speed. ctx: { dir, threads, threshold, schedule, problems }.
 */
export async function accuracySession(ctx, predictor, ids) {
  const { dir, threads, threshold, schedule, problems } = ctx;
  const notes = [];
  // On this thread: the statistics are read synchronously after each text (as in earlier runs).
  const model = await loadModelOnThisThread(dir, { threads, predictor, prefetch: false, prefetchThreshold: threshold, schedule, log: (l) => notes.push(l) });
  try {
    const t = performance.now();
    await model.teacherForce(ids);
    const seconds = (performance.now() - t) / 1000;
    const s = model.cacheStats();
    if (s.prefetch !== undefined) problems.push(`accuracy ${predictor}: prefetch stats present although prefetch: false`);
    return { ...s.predictor, evalTokens: ids.length, seconds, tokPerS: ids.length / seconds, notes };
  } finally {
    await model.dispose(); // affinity saves its statistics here
  }
}

/**
 * Every accuracy predictor over `evalIds`; affinity cold, warm over the same text, and warm from
 * `trainIds` (which leaves the statistics snapshot the speed runs start from). Returns the rows.
 * ctx: { dir, threads, threshold, schedule, problems, topK, evalIds, trainIds, stats, log }, with
 * stats from affinityStats().
 */
export async function measureAccuracy(ctx) {
  const { topK, evalIds, trainIds, stats, problems, log } = ctx;
  const { statsFiles, clearStats, snapshotStats } = stats;
  const accuracy = [];
  log(`\n== accuracy: ${evalIds.length} teacher-forced tokens per session, prefetch off, unlimited budget`);
  const record = (key, predictor, state, r) => {
    accuracy.push({ key, predictor, state, ...r });
    log(`${key}: recall@${topK} ${pct(r.recall)}%, precision ${pct(r.precision)}% (${r.tokPerS.toFixed(0)} tok/s)`);
  };
  for (const p of ACCURACY_PREDICTORS) {
    if (p !== "affinity") {
      record(p, p, "stateless", await accuracySession(ctx, p, evalIds));
      continue;
    }
    if (statsFiles().length) problems.push(`a fresh import already has routing statistics: ${statsFiles().join(", ")}`);
    clearStats();
    record("affinity (cold)", p, "cold: fresh import, learns online", await accuracySession(ctx, p, evalIds));
    record("affinity (warm, same text)", p, "warm: second session over the same tokens (statistics include the test text)", await accuracySession(ctx, p, evalIds));
    clearStats();
    const train = await accuracySession(ctx, p, trainIds);
    snapshotStats(); // the statistics the speed runs start from
    record(
      "affinity (warm, disjoint)",
      p,
      `warm: statistics from a first session over ${trainIds.length} other held-out tokens, then the evaluation tokens`,
      await accuracySession(ctx, p, evalIds)
    );
    accuracy.at(-1).trainSession = { tokens: trainIds.length, recall: train.recall, precision: train.precision, seconds: train.seconds };
  }
  return accuracy;
}

/** Without the accuracy part: affinity's training session alone, then the snapshot. */
export async function trainAffinity(ctx) {
  const { trainIds, stats } = ctx;
  stats.clearStats();
  await accuracySession(ctx, "affinity", trainIds);
  stats.snapshotStats();
}
