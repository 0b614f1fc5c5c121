#!/usr/bin/env node
/**
 * Two threads against one, in one process, next to the memory's own two-against-one: the model
 * loaded twice (at 1 and at 2 threads), then pairs of greedy decodes, each pair between two
 * readings of the memory read bandwidth at 1 and 2 threads (bench/llama/membw.c, quick form).
 *
 *   node bench/llama/threadPairs.mjs '<json job>'
 *
 * job: { model, promptText, decodeTokens, work (membw's build folder), quietScaling, quietPairs,
 *        maxPairs, maxSeconds }
 * The memory is read at 1 and 2 threads before each pair, and at each decode's thread count right
 * after it; a pair is "quiet" when the slower of its 2-thread readings is at least quietScaling
 * times the faster of its 1-thread ones: on a shared machine the second core's share of the memory
 * comes and goes (1.0x to 2.0x within minutes, sometimes seconds, here), and a decode that is
 * bound by the memory cannot scale past it. Pairs continue until quietPairs quiet ones, maxPairs in all or
 * maxSeconds. The order within a pair alternates (1 then 2 threads, then 2 then 1).
 * stdout: "@@RESULT {json}": { ok, pairs: [{ oneThread, twoThreads, ratio (decode tok/s),
 * memoryOneThread, memoryTwoThreads (bytes/s readings), memoryScaling, quiet }], seconds }.
 */
import { measureMemoryBandwidth } from "./system.mjs";

const job = JSON.parse(process.argv[2]);
const emit = (obj) => process.stdout.write(`@@RESULT ${JSON.stringify(obj)}\n`);

async function main() {
  const { loadModelOnThisThread } = await import("../../dist/index.js");
  const models = { 1: await loadModelOnThisThread(job.model, { threads: 1 }), 2: await loadModelOnThisThread(job.model, { threads: 2 }) };
  const decode = async (threads) => {
    let stats;
    for await (const _ of models[threads].generate(job.promptText, { maxTokens: job.decodeTokens, stopAtEos: false, onStats: (s) => (stats = s) }));
    return stats.decodeTokensPerSecond;
  };
  await decode(1);
  await decode(2);
  const memory = (threads) => measureMemoryBandwidth(job.work, threads, undefined, { quick: true }).bytesPerSecond;
  const pairs = [];
  const started = performance.now();
  while (pairs.length < job.maxPairs && pairs.filter((x) => x.quiet).length < job.quietPairs && (performance.now() - started) / 1000 < job.maxSeconds) {
    // The memory at each thread count before the pair and right after that count's decode.
    const mem = { 1: [memory(1)], 2: [memory(2)] };
    const order = pairs.length % 2 === 0 ? [1, 2] : [2, 1];
    const tokPerS = {};
    for (const t of order) {
      tokPerS[t] = await decode(t);
      mem[t].push(memory(t));
    }
    // The memory's 2-vs-1 at its least: the slower 2-thread reading over the faster 1-thread one.
    const memoryScaling = Math.min(...mem[2]) / Math.max(...mem[1]);
    pairs.push({ oneThread: tokPerS[1], twoThreads: tokPerS[2], ratio: tokPerS[2] / tokPerS[1], memoryOneThread: mem[1], memoryTwoThreads: mem[2], memoryScaling, quiet: memoryScaling >= job.quietScaling });
  }
  await models[1].dispose();
  await models[2].dispose();
  return { pairs, seconds: (performance.now() - started) / 1000 };
}

try {
  emit({ ok: true, ...(await main()) });
  process.exit(0);
} catch (err) {
  emit({ ok: false, error: String(err?.stack ?? err) });
  process.exit(1);
}
