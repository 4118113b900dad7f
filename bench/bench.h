/* bench.h — what every benchmark program shares: the clock. */
#ifndef FL_BENCH_BENCH_H
#define FL_BENCH_BENCH_H

#include <time.h>

/* Seconds on the monotonic clock (not affected by the wall clock being set). */
static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
