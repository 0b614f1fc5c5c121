/* Memory read bandwidth: sum a large array of doubles with N OpenMP threads; prints the best
 * bytes per second over several passes. Usage: membw <threads> [mebibytes] [passes] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
  int passes = argc > 3 ? atoi(argv[3]) : 6;
  size_t n = mib * 1024 * 1024 / sizeof(double);
  double *a = malloc(n * sizeof(double));
  if (!a) return 1;
  omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = (double)(i & 1023);
  double best = 0, check = 0;
  for (int p = 0; p < passes; p++) {
    double t0 = omp_get_wtime(), s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += a[i];
    double dt = omp_get_wtime() - t0;
    double bw = (double)(n * sizeof(double)) / dt;
    if (bw > best) best = bw;
    check += s;
  }
  printf("{\"bytesPerSecond\": %.0f, \"threads\": %d, \"bytes\": %zu, \"check\": %.0f}\n", best, threads, n * sizeof(double), check);
  free(a);
  return 0;
}
