/* accountant.c — RDP of the sampled Gaussian mechanism and its (ε, δ)
 * conversion (accountant.h). Log-space throughout: A_α overflows a double
 * long before the orders used here do. */
#include "policies/accountant.h"

#include "util/err.h"

#include <math.h>

#define LOG_A_FRAC_MAX_STEPS 1000

/* log(e^x + e^y) */
static double log_add(double x, double y) {
    double a = fmin(x, y), b = fmax(x, y);
    if (a == -INFINITY) return b;
    return log1p(exp(a - b)) + b;
}

/* log |C(n, k)| for real n, from log|Γ| (scipy's gammaln). */
static double log_comb(double n, double k) {
    return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1);
}

/* log(erfc(x)), accurate where erfc underflows: the asymptotic series
 * erfc(x) ~ exp(−x² − .5/x² + .625/x⁴ − …) / (x √π) beyond that. */
static double log_erfc(double x) {
    double r = erfc(x);
    if (r > 1e-300) return log(r);
    return -0.5 * log(M_PI) - log(x) - x * x - 0.5 * pow(x, -2) + 0.625 * pow(x, -4) -
           37.0 / 24.0 * pow(x, -6) + 353.0 / 64.0 * pow(x, -8);
}

static double log_a_int(double q, double z, int alpha) {
    double log_a = -INFINITY, log1mq = log1p(-q), logq = log(q);
    for (int i = 0; i <= alpha; i++) {
        double s = log_comb(alpha, i) + i * logq + (alpha - i) * log1mq +
                   ((double)i * i - i) / (2 * z * z);
        log_a = log_add(log_a, s);
    }
    return log_a;
}

static double log_a_frac(double q, double z, double alpha) {
    double log_a0 = -INFINITY, log_a1 = -INFINITY, last0 = -INFINITY, last1 = -INFINITY;
    double z0 = z * z * log(1 / q - 1) + 0.5, log1mq = log1p(-q), logq = log(q);
    for (int i = 0; i < LOG_A_FRAC_MAX_STEPS; i++) {
        double coef = log_comb(alpha, i), j = alpha - i;
        double t0 = coef + i * logq + j * log1mq, t1 = coef + j * logq + i * log1mq;
        double e0 = log(0.5) + log_erfc((i - z0) / (M_SQRT2 * z));
        double e1 = log(0.5) + log_erfc((z0 - j) / (M_SQRT2 * z));
        double s0 = t0 + ((double)i * i - i) / (2 * z * z) + e0;
        double s1 = t1 + (j * j - j) / (2 * z * z) + e1;
        log_a0 = log_add(log_a0, s0);
        log_a1 = log_add(log_a1, s1);
        double total = log_add(log_a0, log_a1);
        if (s0 < last0 && s1 < last1 && fmax(s0, s1) < total - 30) return total;
        last0 = s0;
        last1 = s1;
    }
    return INFINITY; /* did not converge: the order is dropped, as dp-accounting does */
}

double dp_rdp_sgm(double q, double z, double alpha) {
    if (q == 0) return 0;
    if (isinf(alpha) || z == 0) return INFINITY;
    if (q == 1) return alpha / (2 * z * z);
    double log_a = alpha == floor(alpha) ? log_a_int(q, z, (int)alpha) : log_a_frac(q, z, alpha);
    return log_a / (alpha - 1);
}

int dp_accountant_init_orders(dp_accountant *a, const double *orders, int n) {
    if (n < 1 || n > DP_ORDERS_MAX)
        return err_set("dp accountant: %d orders, accepted 1..%d", n, DP_ORDERS_MAX);
    for (int i = 0; i < n; i++)
        if (!(orders[i] > 1 && orders[i] <= 1e6))
            return err_set("dp accountant: order %g must be in (1, 1e6]", orders[i]);
    a->n_orders = n;
    for (int i = 0; i < n; i++) {
        a->orders[i] = orders[i];
        a->rdp[i] = 0;
    }
    a->rounds = 0;
    return 0;
}

void dp_accountant_init(dp_accountant *a) {
    double o[DP_ORDERS_MAX];
    int n = 0;
    for (int x = 1; x < 100; x++) o[n++] = 1 + x / 10.0;
    for (int x = 11; x < 64; x++) o[n++] = x;
    o[n++] = 128;
    o[n++] = 256;
    o[n++] = 512;
    o[n++] = 1024;
    dp_accountant_init_orders(a, o, n);
}

int dp_accountant_add(dp_accountant *a, double q, double z, int64_t steps) {
    if (!(q >= 0 && q <= 1)) return err_set("dp accountant: sampling rate %g not in [0, 1]", q);
    if (!(z >= 0 && isfinite(z)))
        return err_set("dp accountant: noise multiplier %g must be finite and >= 0", z);
    if (steps < 0) return err_set("dp accountant: %lld steps", (long long)steps);
    for (int i = 0; steps > 0 && i < a->n_orders; i++)
        a->rdp[i] += (double)steps * dp_rdp_sgm(q, z, a->orders[i]);
    a->rounds += steps;
    return 0;
}

/* Balle et al. 2020's conversion at each order, the smallest ε taken (with
 * dp-accounting's special cases: 0 when δ² + expm1(−ε_α) > 0, orders at
 * or below 1.01 unusable). */
static double epsilon_of(const double *orders, const double *rdp, int n, double delta,
                         double *order) {
    double best = INFINITY, best_order = 0;
    for (int i = 0; i < n; i++) {
        double a = orders[i], r = rdp[i], eps;
        if (r < 0)
            eps = 0;
        else if (delta * delta + expm1(-r) > 0)
            eps = 0;
        else if (a > 1.01)
            eps = r + log1p(-1 / a) - log(delta * a) / (a - 1);
        else
            eps = INFINITY;
        if (isnan(eps)) eps = INFINITY;
        if (eps < best || i == 0) {
            best = eps;
            best_order = a;
        }
    }
    if (order) *order = best_order;
    return fmax(0, best);
}

double dp_epsilon(const dp_accountant *a, double delta, double *order) {
    return epsilon_of(a->orders, a->rdp, a->n_orders, delta, order);
}

double dp_epsilon_for(double q, double z, int64_t steps, double delta) {
    dp_accountant a;
    dp_accountant_init(&a);
    if (dp_accountant_add(&a, q, z, steps) != 0) return NAN;
    return dp_epsilon(&a, delta, NULL);
}

int dp_would_exceed(const dp_accountant *a, double q, double z, double delta, double budget,
                    double *eps_next) {
    double next[DP_ORDERS_MAX];
    for (int i = 0; i < a->n_orders; i++) next[i] = a->rdp[i] + dp_rdp_sgm(q, z, a->orders[i]);
    double eps = epsilon_of(a->orders, next, a->n_orders, delta, NULL);
    if (eps_next) *eps_next = eps;
    return !(eps <= budget);
}
