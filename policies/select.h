/* select — Hoare's selection (nth_element), shared by the coordinate-wise
 * robust rules and TIES's top-k. */
#ifndef FL_POLICIES_SELECT_H
#define FL_POLICIES_SELECT_H

#include "model/real.h"

#include <stdint.h>

/* Afterwards a[k] is the value a sorted a would have there, with
 * a[0..k) <= a[k] <= a(k..n). O(n) on average; the middle pivot keeps
 * already sorted input linear too. Values must not be NaN. */
static inline void select_kth(real *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        real pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                real t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return;
    }
}

#endif
