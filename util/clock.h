/* clock — the one clock of the project: CLOCK_MONOTONIC, which never jumps
 * with the wall clock (NTP, an operator's `date -s`), so deadlines, retries,
 * timeouts and measured durations stay right across such changes. Wall-clock
 * times (timestamps in logs and journals) are time(NULL)'s, not these. */
#ifndef FL_UTIL_CLOCK_H
#define FL_UTIL_CLOCK_H

#include <stdint.h>

/* Seconds since an arbitrary fixed point (for differences only). */
double clock_now_s(void);
/* The same in whole milliseconds. */
int64_t clock_now_ms(void);
/* Sleeps ms milliseconds, resuming after signals (EINTR) until the time is
 * spent; ms <= 0 returns at once. */
void clock_sleep_ms(int ms);

#endif
