/** Plain text tables for the profiling commands' terminal output. */

/** A plain text table; the first `leftColumns` columns left-aligned, the rest right-aligned. */
export function table(head: string[], rows: string[][], leftColumns = 1): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ").trimEnd();
  return [line(head), ...rows.map(line)].join("\n");
}
