/* jinja_ops — Python's operators on values: + - * / // % ** (Objects/
 * longobject.c, floatobject.c: floor division and modulo take the sign of
 * the divisor), comparisons, "in", slicing (PySlice_AdjustIndices) and
 * unary minus. Integers are 64-bit: a result Python would make larger is an
 * error rather than a wrong number. An undefined operand is an error, as
 * Jinja2's Undefined raises on every operator. */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <math.h>
#include <string.h>

static int is_num(jv v) {
    return v.kind == JV_BOOL || v.kind == JV_INT || v.kind == JV_FLOAT;
}

static int64_t as_int(jv v) {
    return v.kind == JV_BOOL ? v.u.b : v.u.i;
}

static double as_float(jv v) {
    return v.kind == JV_FLOAT ? v.u.f : (double)as_int(v);
}

static const char *op_text(int op) {
    return jinja_tok_desc(op);
}

static int undefined_operand(jctx *c, int line, jv a, jv b) {
    jv u = a.kind == JV_UNDEF ? a : b;
    return jerr(c, line, "'%s' is undefined", u.u.undef ? u.u.undef : "value");
}

static int overflow(jctx *c, int line) {
    return jerr(c, line, "integers beyond 64 bits are not supported (Python's would grow)");
}

static int type_error(jctx *c, int line, int op, jv a, jv b) {
    return jerr(c, line, "unsupported operand type(s) for %s: '%s' and '%s'", op_text(op),
                jv_type_name(a), jv_type_name(b));
}

/* Python's float divmod (floatobject.c float_divmod): the quotient floored,
 * the remainder with the sign of the divisor. */
static void float_divmod(double vx, double wx, double *floordiv, double *mod) {
    double m = fmod(vx, wx);
    double div = (vx - m) / wx;
    if (m) {
        if ((wx < 0) != (m < 0)) {
            m += wx;
            div -= 1.0;
        }
    } else {
        m = copysign(0.0, wx);
    }
    double fd;
    if (div) {
        fd = floor(div);
        if (div - fd > 0.5) fd += 1.0;
    } else {
        fd = copysign(0.0, vx / wx);
    }
    *floordiv = fd;
    *mod = m;
}

static int repeat(jctx *c, int line, jv seq, int64_t times, jv *out) {
    if (times < 0) times = 0;
    if (seq.kind == JV_STR) {
        size_t n = seq.u.s->len;
        if (n && (uint64_t)times > c->out->limit / n)
            return jerr(c, line, "a string repeated %lld times exceeds the output limit",
                        (long long)times);
        jbuf b = {0};
        int rc = 0;
        for (int64_t i = 0; i < times && rc == 0; i++) rc = jbuf_put(&b, seq.u.s->s, n);
        rc = jv_from_buf(c, rc, &b, out);
        return rc;
    }
    size_t n = seq.u.l->n;
    if (n && (uint64_t)times > (c->t->lim.max_iter) / n)
        return jerr(c, line, "a list repeated %lld times exceeds the iteration limit",
                    (long long)times);
    if (jv_list_new(c, n * (size_t)times, seq.sub, out) != 0) return -1;
    for (size_t i = 0; i < n * (size_t)times; i++) out->u.l->v[i] = seq.u.l->v[i % n];
    return 0;
}

static int int_pow(jctx *c, int line, int64_t base, int64_t e, jv *out) {
    int64_t r = 1;
    while (e > 0) {
        if ((e & 1) && __builtin_mul_overflow(r, base, &r)) return overflow(c, line);
        e >>= 1;
        if (e > 0 && __builtin_mul_overflow(base, base, &base)) return overflow(c, line);
    }
    *out = jv_int(r);
    return 0;
}

int jv_arith(jctx *c, int line, int op, jv a, jv b, jv *out) {
    if (a.kind == JV_UNDEF || b.kind == JV_UNDEF) return undefined_operand(c, line, a, b);
    if (is_num(a) && is_num(b)) {
        int ints = a.kind != JV_FLOAT && b.kind != JV_FLOAT;
        int64_t x = as_int(a), y = as_int(b), r;
        double f = as_float(a), g = as_float(b);
        switch (op) {
            case JT_ADD:
                if (!ints) break;
                if (__builtin_add_overflow(x, y, &r)) return overflow(c, line);
                *out = jv_int(r);
                return 0;
            case JT_SUB:
                if (!ints) break;
                if (__builtin_sub_overflow(x, y, &r)) return overflow(c, line);
                *out = jv_int(r);
                return 0;
            case JT_MUL:
                if (!ints) break;
                if (__builtin_mul_overflow(x, y, &r)) return overflow(c, line);
                *out = jv_int(r);
                return 0;
            case JT_DIV:
                if (g == 0) return jerr(c, line, "division by zero");
                *out = jv_float(f / g);
                return 0;
            case JT_FLOORDIV:
            case JT_MOD:
                if (ints) {
                    if (y == 0) return jerr(c, line, "integer division or modulo by zero");
                    if (x == INT64_MIN && y == -1) {
                        if (op == JT_FLOORDIV) return overflow(c, line);
                        *out = jv_int(0);
                        return 0;
                    }
                    int64_t q = x / y, m = x % y;
                    if (m != 0 && ((m < 0) != (y < 0))) q -= 1, m += y;
                    *out = jv_int(op == JT_FLOORDIV ? q : m);
                    return 0;
                }
                if (g == 0) return jerr(c, line, "float division by zero");
                {
                    double q, m;
                    float_divmod(f, g, &q, &m);
                    *out = jv_float(op == JT_FLOORDIV ? q : m);
                }
                return 0;
            case JT_POW:
                if (ints && y >= 0) return int_pow(c, line, x, y, out);
                if (f == 0 && g < 0)
                    return jerr(c, line, "0.0 cannot be raised to a negative power");
                if (f < 0 && g != floor(g))
                    return jerr(c, line,
                                "a negative number to a fractional power is a complex "
                                "number (not supported)");
                *out = jv_float(pow(f, g));
                return 0;
            default:
                return type_error(c, line, op, a, b);
        }
        /* float + - * */
        *out = jv_float(op == JT_ADD ? f + g : op == JT_SUB ? f - g : f * g);
        return 0;
    }
    if (op == JT_ADD && a.kind == JV_STR && b.kind == JV_STR) {
        size_t n = a.u.s->len + b.u.s->len;
        if (n > c->out->limit) return jerr(c, line, "a string exceeds the output limit");
        jstr *s = jarena_alloc(&c->arena, sizeof *s + n + 1);
        if (!s) return -1;
        memcpy(s->s, a.u.s->s, a.u.s->len);
        memcpy(s->s + a.u.s->len, b.u.s->s, b.u.s->len);
        s->len = n;
        s->ncp = SIZE_MAX;
        *out = jv_str_const(s);
        return 0;
    }
    if (op == JT_ADD && a.kind == JV_LIST && b.kind == JV_LIST && a.sub == b.sub &&
        (a.sub == JL_LIST || a.sub == JL_TUPLE)) {
        size_t n = a.u.l->n, m = b.u.l->n;
        if (jiter_tick(c, line) != 0 || jv_list_new(c, n + m, a.sub, out) != 0) return -1;
        memcpy(out->u.l->v, a.u.l->v, n * sizeof(jv));
        memcpy(out->u.l->v + n, b.u.l->v, m * sizeof(jv));
        return 0;
    }
    if (op == JT_MUL) {
        int seq_a =
            a.kind == JV_STR || (a.kind == JV_LIST && (a.sub == JL_LIST || a.sub == JL_TUPLE));
        int seq_b =
            b.kind == JV_STR || (b.kind == JV_LIST && (b.sub == JL_LIST || b.sub == JL_TUPLE));
        if (seq_a && (b.kind == JV_INT || b.kind == JV_BOOL))
            return repeat(c, line, a, as_int(b), out);
        if (seq_b && (a.kind == JV_INT || a.kind == JV_BOOL))
            return repeat(c, line, b, as_int(a), out);
    }
    if (op == JT_MOD && a.kind == JV_STR)
        return jerr(c, line, "printf-style string formatting ('...' %% value) is not supported");
    return type_error(c, line, op, a, b);
}

int jv_negate(jctx *c, int line, jv a, int neg, jv *out) {
    if (a.kind == JV_UNDEF) return undefined_operand(c, line, a, a);
    if (a.kind == JV_FLOAT) {
        *out = jv_float(neg ? -a.u.f : a.u.f);
        return 0;
    }
    if (a.kind == JV_INT || a.kind == JV_BOOL) {
        int64_t x = as_int(a);
        if (neg && x == INT64_MIN) return overflow(c, line);
        *out = jv_int(neg ? -x : x);
        return 0;
    }
    return jerr(c, line, "bad operand type for unary %s: '%s'", neg ? "-" : "+", jv_type_name(a));
}

/* Python's exact order of two numbers: -1, 0, 1, or 2 when a NaN is involved. */
static int num_order(jctx *c, jv a, jv b) {
    int lt, gt;
    if ((a.kind == JV_FLOAT && isnan(a.u.f)) || (b.kind == JV_FLOAT && isnan(b.u.f))) return 2;
    if (jv_less(c, 0, a, b, &lt) != 0 || jv_less(c, 0, b, a, &gt) != 0) return 2;
    return lt ? -1 : gt;
}

int jv_compare(jctx *c, int line, int op, jv a, jv b, int *res) {
    if (op == JT_EQ || op == JT_NE) {
        int eq = jv_equal(c, a, b);
        if (eq < 0) return -1;
        *res = op == JT_EQ ? eq : !eq;
        return 0;
    }
    if (is_num(a) && is_num(b)) {
        int o = num_order(c, a, b);
        *res = o == 2          ? 0
               : op == JT_LT   ? o < 0
               : op == JT_LTEQ ? o <= 0
               : op == JT_GT   ? o > 0
                               : o >= 0;
        return 0;
    }
    int lt;
    if (op == JT_LT || op == JT_GTEQ) {
        if (jv_less(c, line, a, b, &lt) != 0) return -1;
        *res = op == JT_LT ? lt : !lt;
    } else {
        if (jv_less(c, line, b, a, &lt) != 0) return -1;
        *res = op == JT_GT ? lt : !lt;
    }
    return 0;
}

int jv_contains(jctx *c, int line, jv container, jv item, int *res) {
    *res = 0;
    switch (container.kind) {
        case JV_UNDEF:
            return 0;
        case JV_STR: {
            if (item.kind != JV_STR)
                return jerr(c, line, "'in <string>' requires string as left operand, not %s",
                            jv_type_name(item));
            size_t n = item.u.s->len, h = container.u.s->len;
            if (n == 0) {
                *res = 1;
                return 0;
            }
            for (size_t i = 0; i + n <= h; i++)
                if (!memcmp(container.u.s->s + i, item.u.s->s, n)) {
                    *res = 1;
                    break;
                }
            return jstep(c, line);
        }
        case JV_DICT: {
            jv v;
            int found = jdict_get(c, container.u.d, item, &v);
            if (found < 0) return -1;
            *res = found;
            return 0;
        }
        case JV_LIST:
        case JV_ITER: {
            jcursor cur;
            if (jcur_init(c, line, container, &cur) != 0) return -1;
            for (;;) {
                jv x;
                int has;
                if (jcur_next(c, line, &cur, &x, &has) != 0) return -1;
                if (!has) return 0;
                int eq = jv_equal(c, x, item);
                if (eq < 0) return -1;
                if (eq) {
                    *res = 1;
                    return 0;
                }
            }
        }
        default:
            return jerr(c, line, "argument of type '%s' is not iterable", jv_type_name(container));
    }
}

/* A slice index: 1 and *v set for an integer, 0 for None (absent), -1 when
 * the index is of another type (a TypeError). */
static int slice_index(jv x, int64_t *v) {
    if (x.kind == JV_NONE) return 0;
    if (x.kind == JV_INT || x.kind == JV_BOOL) {
        *v = as_int(x);
        return 1;
    }
    return -1;
}

static int64_t clamp(int64_t i, int64_t len, int64_t step, int present, int is_start) {
    if (!present) return step < 0 ? (is_start ? len - 1 : -1) : (is_start ? 0 : len);
    if (i < 0) {
        i += len;
        if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= len) {
        i = step < 0 ? len - 1 : len;
    }
    return i;
}

int jv_slice(jctx *c, int line, jv obj, jv start, jv stop, jv step, jv *out) {
    if (obj.kind == JV_UNDEF)
        return jerr(c, line, "'%s' is undefined", obj.u.undef ? obj.u.undef : "value");
    int64_t a = 0, b = 0, s = 1;
    int pa = slice_index(start, &a), pb = slice_index(stop, &b), ps = slice_index(step, &s);
    /* Jinja2 compiles x[a:b] to Python's own subscript, not environment.getitem:
     * a value that cannot be sliced is an error, not an undefined value */
    if (!(obj.kind == JV_STR || (obj.kind == JV_LIST && obj.sub != JL_VIEW)))
        return jerr(c, line, "'%s' object is not subscriptable with a slice", jv_type_name(obj));
    if (pa < 0 || pb < 0 || ps < 0) return jerr(c, line, "slice indices must be integers or None");
    if (ps && s == 0) return jerr(c, line, "slice step cannot be zero");
    if (!ps) s = 1;
    int64_t len = obj.kind == JV_STR ? (int64_t)jv_str_ncp(obj) : (int64_t)obj.u.l->n;
    a = clamp(a, len, s, pa, 1);
    b = clamp(b, len, s, pb, 0);
    int64_t count = 0;
    if (s < 0) {
        if (b < a) count = (a - b - 1) / (-s) + 1;
    } else if (a < b) {
        count = (b - a - 1) / s + 1;
    }
    if (obj.kind == JV_LIST) {
        if (jv_list_new(c, (size_t)count, obj.sub, out) != 0) return -1;
        for (int64_t i = 0; i < count; i++) out->u.l->v[i] = obj.u.l->v[a + i * s];
        return 0;
    }
    /* a string: by code points */
    const char *p = obj.u.s->s;
    size_t n = obj.u.s->len;
    if (s == 1) {
        size_t from = jstr_cp_offset(p, n, (size_t)a);
        size_t to = jstr_cp_offset(p + from, n - from, (size_t)count) + from;
        return jv_str(c, p + from, to - from, out);
    }
    size_t ncp = (size_t)len;
    size_t *offs = jarena_alloc(&c->arena, (ncp + 1) * sizeof *offs);
    if (!offs) return -1;
    for (size_t i = 0, o = 0; i <= ncp; i++) {
        offs[i] = o;
        if (o < n) {
            size_t k;
            tokenizer_utf8_decode(p + o, &k);
            o += k;
        }
    }
    jbuf bf = {0};
    int rc = 0;
    for (int64_t i = 0; i < count && rc == 0; i++) {
        size_t k = (size_t)(a + i * s);
        rc = jbuf_put(&bf, p + offs[k], offs[k + 1] - offs[k]);
    }
    rc = jv_from_buf(c, rc, &bf, out);
    return rc;
}
