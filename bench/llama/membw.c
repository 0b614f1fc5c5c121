/* Memory read bandwidth: sum a large array of doubles with N OpenMP threads; prints the best
 * bytes per second over several passes, over 4 KiB pages and over transparent huge pages (moe-run
 * keeps its weights in huge pages where the kernel gives them: the bound must be the better of the
 * two, not the slower 4 KiB figure). Usage: membw <threads> [mebibytes] [passes] [huge]
 * "huge" measures huge pages only (half the time: the quick figure taken next to each bench rep). */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

/* Best bytes per second summing n doubles at `a` over `passes` passes; *check accumulates the sums. */
static double best_of(const double *a, size_t n, int passes, double *check) {
  double best = 0;
  for (int p = 0; p < passes; p++) {
    double t0 = omp_get_wtime(), s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += a[i];
    double dt = omp_get_wtime() - t0;
    double bw = (double)(n * sizeof(double)) / dt;
    if (bw > best) best = bw;
    *check += s;
  }
  return best;
}

/* A 2 MiB-aligned array of n doubles, with huge pages asked for or refused; filled in parallel. */
static double *make_array(size_t n, int huge) {
  size_t bytes = n * sizeof(double);
  uint8_t *raw = mmap(NULL, bytes + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return NULL;
  double *a = (double *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  madvise(a, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = (double)(i & 1023);
  return a;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
  int passes = argc > 3 ? atoi(argv[3]) : 6;
  int huge_only = argc > 4 && strcmp(argv[4], "huge") == 0;
  size_t n = mib * 1024 * 1024 / sizeof(double);
  omp_set_num_threads(threads);
  double check = 0, bw[2] = {0, 0};
  for (int huge = huge_only; huge < 2; huge++) {
    double *a = make_array(n, huge);
    if (!a) return 1;
    bw[huge] = best_of(a, n, passes, &check);
    munmap(a, n * sizeof(double)); /* the unaligned head of the mapping stays: a few MiB, freed at exit */
  }
  double best = bw[0] > bw[1] ? bw[0] : bw[1];
  /* smallPages 0: not measured (huge only). */
  printf("{\"bytesPerSecond\": %.0f, \"smallPages\": %.0f, \"hugePages\": %.0f, \"threads\": %d, \"bytes\": %zu, \"check\": %.0f}\n", best, bw[0], bw[1], threads,
         n * sizeof(double), check);
  return 0;
}
