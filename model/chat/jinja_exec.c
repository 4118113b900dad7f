/* jinja_exec — statements, scopes and the render entry points.
 *
 * Scopes follow Jinja2's (checked against it by the semantics fixtures):
 *   - a for loop runs each iteration in a new scope: {% set %} inside it is
 *     gone at the next iteration and after the loop; names read before they
 *     are set come from the enclosing scope;
 *   - if / elif / else do not make a scope;
 *   - a macro body, a {% set %} block body and a {% generation %} body have
 *     their own scope (transformers renders the generation body as a call).
 * The loop object is Jinja2's LoopContext (runtime.py): items are pulled on
 * demand, one ahead for loop.last / loop.nextitem, all of them for
 * loop.length / loop.revindex, with the loop's if-filter evaluated as each
 * item is pulled. */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define X_BREAK 1
#define X_CONTINUE 2

struct jloop {
    const jnode *node;
    jframe *outer;
    jcursor cur;
    jv *queue; /* items pulled ahead, not yet run */
    size_t head, n, cap;
    int64_t index0;
    jv prev;
    int has_prev;
    jv changed; /* loop.changed()'s last arguments */
    int has_changed;
};

void jinja_limits_default(jinja_limits *l) {
    l->max_template = (size_t)1 << 20;
    l->max_output = (size_t)64 << 20;
    l->max_iter = 10000000;
    l->max_depth = 64;
    l->max_memory = (size_t)512 << 20;
    l->max_steps = 100000000;
}

static jframe *frame_new(jctx *c, jframe *parent) {
    jframe *f = jarena_alloc(&c->arena, sizeof *f);
    if (f) f->parent = parent;
    return f;
}

static int frame_set(jctx *c, jframe *f, const char *name, jv v) {
    size_t n = strlen(name);
    for (size_t i = 0; i < f->vars.n; i++)
        if (f->vars.k[i].u.s->len == n && !memcmp(f->vars.k[i].u.s->s, name, n)) {
            f->vars.v[i] = v;
            return 0;
        }
    jv key;
    return jv_str(c, name, n, &key) != 0 ? -1 : jdict_set(c, &f->vars, key, v);
}

/* names = value, unpacking a tuple target as Python does. */
static int assign(jctx *c, const jnode *n, jframe *f, jv v) {
    if (!n->tuple_target) return frame_set(c, f, n->names[0], v);
    jcursor cur;
    if (jcur_init(c, n->line, v, &cur) != 0) return -1;
    for (size_t i = 0; i <= n->n_names; i++) {
        jv x;
        int has;
        if (jcur_next(c, n->line, &cur, &x, &has) != 0) return -1;
        if (i == n->n_names) {
            if (has)
                return jerr(c, n->line, "too many values to unpack (expected %zu)", n->n_names);
            break;
        }
        if (!has)
            return jerr(c, n->line, "not enough values to unpack (expected %zu, got %zu)",
                        n->n_names, i);
        if (frame_set(c, f, n->names[i], x) != 0) return -1;
    }
    return 0;
}

/* ---- the loop object ----------------------------------------------------------------- */

/* The next item of the iterable that passes the loop's if-filter. */
static int loop_pull(jctx *c, jloop *l, jv *out, int *has) {
    for (;;) {
        if (jcur_next(c, l->node->line, &l->cur, out, has) != 0) return -1;
        if (!*has || !l->node->b) return 0;
        jframe *f = frame_new(c, l->outer), *saved = c->frame;
        if (!f || assign(c, l->node, f, *out) != 0) return -1;
        jv keep;
        c->frame = f;
        int rc = jeval(c, l->node->b, &keep);
        c->frame = saved;
        if (rc != 0) return -1;
        if (jv_truthy(keep)) return 0;
    }
}

static int loop_ahead(jctx *c, jloop *l) {
    jv x;
    int has;
    if (loop_pull(c, l, &x, &has) != 0) return -1;
    if (!has) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        jv *q = jarena_alloc(&c->arena, cap * sizeof *q);
        if (!q) return -1;
        if (l->n > l->head) memcpy(q, l->queue + l->head, (l->n - l->head) * sizeof *q);
        l->n -= l->head;
        l->head = 0;
        l->queue = q;
        l->cap = cap;
    }
    l->queue[l->n++] = x;
    return 1;
}

static int loop_next(jctx *c, jloop *l, jv *out, int *has) {
    if (l->head < l->n) {
        *out = l->queue[l->head++];
        *has = 1;
        return 0;
    }
    return loop_pull(c, l, out, has);
}

/* Items after the current one (-1 on error). */
static int64_t loop_rest(jctx *c, jloop *l) {
    int r;
    while ((r = loop_ahead(c, l)) > 0) {
    }
    return r < 0 ? -1 : (int64_t)(l->n - l->head);
}

enum { M_LOOP_CYCLE = 1000, M_LOOP_CHANGED = 1001 };

int jloop_attr(jctx *c, int line, jloop *l, const char *name, jv *out) {
    int64_t rest;
    if (!strcmp(name, "index0") || !strcmp(name, "index")) {
        *out = jv_int(l->index0 + (name[5] == '\0'));
    } else if (!strcmp(name, "first")) {
        *out = jv_bool(l->index0 == 0);
    } else if (!strcmp(name, "last") || !strcmp(name, "nextitem")) {
        if (l->head == l->n) {
            int r = loop_ahead(c, l);
            if (r < 0) return -1;
        }
        int more = l->head < l->n;
        if (name[0] == 'l')
            *out = jv_bool(!more);
        else
            *out = more ? l->queue[l->head] : jv_undef("there is no next item");
    } else if (!strcmp(name, "length") || !strcmp(name, "revindex") || !strcmp(name, "revindex0")) {
        if ((rest = loop_rest(c, l)) < 0) return -1;
        int64_t length = l->index0 + 1 + rest;
        *out = jv_int(name[0] == 'l'              ? length
                      : !strcmp(name, "revindex") ? length - l->index0
                                                  : length - l->index0 - 1);
    } else if (!strcmp(name, "previtem")) {
        *out = l->has_prev ? l->prev : jv_undef("there is no previous item");
    } else if (!strcmp(name, "depth") || !strcmp(name, "depth0")) {
        *out = jv_int(name[5] == '\0');
    } else if (!strcmp(name, "cycle") || !strcmp(name, "changed")) {
        jv self = {.kind = JV_LOOP};
        self.u.loop = l;
        return jv_method(c, self, name[1] == 'y' ? M_LOOP_CYCLE : M_LOOP_CHANGED, out);
    } else {
        *out = jv_undef(name);
    }
    (void)line;
    return 0;
}

/* loop.cycle(a, b, …) and loop.changed(…), for jinja_methods.c. */
int jloop_method(jctx *c, int line, jmethod *m, const jv *args, size_t n, jv *out) {
    jloop *l = m->self.u.loop;
    if (m->which == M_LOOP_CYCLE) {
        if (n == 0) return jerr(c, line, "loop.cycle: no items for cycling given");
        *out = args[(size_t)l->index0 % n];
        return 0;
    }
    jv now;
    if (jv_list_new(c, n, JL_LIST, &now) != 0) return -1;
    memcpy(now.u.l->v, args, n * sizeof *args);
    int same = l->has_changed ? jv_equal(c, now, l->changed) : 0;
    if (same < 0) return -1;
    l->changed = now;
    l->has_changed = 1;
    *out = jv_bool(!same);
    return 0;
}

/* ---- statements -------------------------------------------------------------------- */

static int exec_body(jctx *c, jnode *const *body, size_t n);

static int exec_for(jctx *c, const jnode *n) {
    jv iterable;
    if (jeval(c, n->a, &iterable) != 0) return -1;
    jloop *l = jarena_alloc(&c->arena, sizeof *l);
    if (!l || jcur_init(c, n->line, iterable, &l->cur) != 0) return -1;
    l->node = n;
    l->outer = c->frame;
    int ran = 0;
    for (;;) {
        jv item;
        int has;
        if (loop_next(c, l, &item, &has) != 0) return -1;
        if (!has) break;
        ran = 1;
        if (jiter_tick(c, n->line) != 0) return -1;
        jframe *f = frame_new(c, l->outer);
        jv lv = {.kind = JV_LOOP};
        lv.u.loop = l;
        if (!f || assign(c, n, f, item) != 0 || frame_set(c, f, "loop", lv) != 0) return -1;
        c->frame = f;
        int rc = exec_body(c, n->args, n->n_args);
        c->frame = l->outer;
        if (rc < 0) return -1;
        if (rc == X_BREAK) break;
        l->prev = item;
        l->has_prev = 1;
        l->index0++;
    }
    return ran ? 0 : exec_body(c, n->els, n->n_els);
}

/* Renders body in a new scope into a string (a macro, a set block). */
static int render_to_string(jctx *c, jframe *f, jnode *const *body, size_t n, jv *out) {
    jbuf b = {.limit = c->out->limit}, *saved_out = c->out;
    jframe *saved = c->frame;
    c->out = &b;
    c->frame = f;
    c->buffered++;
    int rc = exec_body(c, body, n);
    c->buffered--;
    c->frame = saved;
    c->out = saved_out;
    if (rc >= 0) rc = jv_str(c, b.p ? b.p : "", b.len, out);
    jbuf_free(&b);
    return rc < 0 ? -1 : 0;
}

int jmacro_call(jctx *c, int line, jmacro *m, const jv *args, size_t n, const jkw *kw, size_t n_kw,
                jv *out) {
    const jnode *mn = m->node;
    if (n > mn->n_names)
        return jerr(c, line, "macro '%s' takes not more than %zu argument(s)", mn->name,
                    mn->n_names);
    if (c->calls >= c->t->lim.max_depth)
        return jerr(c, line, "macro calls nested more than %zu deep (the limit)",
                    c->t->lim.max_depth);
    jframe *f = frame_new(c, m->frame);
    uint8_t *bound = jarena_alloc(&c->arena, mn->n_names + 1);
    if (!f || !bound) return -1;
    for (size_t i = 0; i < n; i++) {
        if (frame_set(c, f, mn->names[i], args[i]) != 0) return -1;
        bound[i] = 1;
    }
    for (size_t k = 0; k < n_kw; k++) {
        size_t i = 0;
        while (i < mn->n_names && strcmp(mn->names[i], kw[k].name) != 0) i++;
        if (i == mn->n_names)
            return jerr(c, line, "macro '%s' takes no keyword argument '%s'", mn->name, kw[k].name);
        if (bound[i])
            return jerr(c, line, "macro '%s' got multiple values for argument '%s'", mn->name,
                        kw[k].name);
        if (frame_set(c, f, mn->names[i], kw[k].v) != 0) return -1;
        bound[i] = 1;
    }
    c->calls++;
    jframe *saved = c->frame;
    c->frame = f;
    int rc = 0;
    for (size_t i = 0; i < mn->n_names && rc == 0; i++) {
        if (bound[i]) continue;
        jv v = jv_undef(mn->names[i]);
        if (mn->defaults[i]) rc = jeval(c, mn->defaults[i], &v);
        if (rc == 0) rc = frame_set(c, f, mn->names[i], v);
    }
    c->frame = saved;
    if (rc == 0) rc = render_to_string(c, f, mn->args, mn->n_args, out);
    c->calls--;
    return rc;
}

static int exec_generation(jctx *c, const jnode *n) {
    if (c->buffered)
        return jerr(c, n->line,
                    "{%% generation %%} inside a macro or a {%% set %%} block is not supported "
                    "(transformers measures its offsets on the unbuffered output)");
    jinja_span s = {.start = c->out->len};
    jframe *f = frame_new(c, c->frame), *saved = c->frame;
    if (!f) return -1;
    c->frame = f;
    int rc = exec_body(c, n->args, n->n_args);
    c->frame = saved;
    if (rc < 0) return -1;
    s.end = c->out->len;
    return jbuf_put(&c->spans, &s, sizeof s);
}

static int exec_set(jctx *c, const jnode *n) {
    jv v;
    if (n->kind == JN_SETBLOCK) {
        jframe *f = frame_new(c, c->frame);
        if (!f || render_to_string(c, f, n->args, n->n_args, &v) != 0) return -1;
    } else if (jeval(c, n->a, &v) != 0) {
        return -1;
    }
    if (n->kind == JN_SET || (n->kind == JN_SETBLOCK && !n->op)) return assign(c, n, c->frame, v);
    const char *ns_name = n->name; /* JN_SETNS, or a JN_SETBLOCK with op 1 */
    jv ns = jv_undef(ns_name);
    for (jframe *f = c->frame; f; f = f->parent)
        if (jdict_get_str(&f->vars, ns_name, &ns)) break;
    if (ns.kind != JV_NS)
        return jerr(c, n->line, "cannot assign attribute on non-namespace object ('%s' is %s)",
                    ns_name, jv_type_name(ns));
    if (n->attr[0] == '_')
        return jerr(c, n->line,
                    "chat templates cannot store underscore-prefixed attributes on a "
                    "namespace ('%s')",
                    n->attr);
    jv key;
    return jv_str(c, n->attr, strlen(n->attr), &key) != 0 ? -1 : jdict_set(c, ns.u.d, key, v);
}

static int exec_node(jctx *c, const jnode *n) {
    c->line = n->line;
    switch (n->kind) {
        case JN_DATA:
            return jbuf_put(c->out, n->name, n->name_len);
        case JN_OUTPUT: {
            jv v;
            if (jeval(c, n->a, &v) != 0) return -1;
            return jv_to_str(c, n->line, v, c->out);
        }
        case JN_IF: {
            jv t;
            if (jeval(c, n->a, &t) != 0) return -1;
            return jv_truthy(t) ? exec_body(c, n->args, n->n_args) : exec_body(c, n->els, n->n_els);
        }
        case JN_FOR:
            return exec_for(c, n);
        case JN_SET:
        case JN_SETNS:
        case JN_SETBLOCK:
            return exec_set(c, n);
        case JN_MACRO: {
            jmacro *m = jarena_alloc(&c->arena, sizeof *m);
            if (!m) return -1;
            m->node = n;
            m->frame = c->frame;
            jv v = {.kind = JV_MACRO};
            v.u.macro = m;
            return frame_set(c, c->frame, n->name, v);
        }
        case JN_BREAK:
            return X_BREAK;
        case JN_CONTINUE:
            return X_CONTINUE;
        case JN_GENERATION:
            return exec_generation(c, n);
        default:
            return jerr(c, n->line, "internal: not a statement");
    }
}

static int exec_body(jctx *c, jnode *const *body, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (jstep(c, body[i]->line) != 0) return -1;
        int rc = exec_node(c, body[i]);
        if (rc != 0) return rc;
    }
    return 0;
}

/* ---- entry points ------------------------------------------------------------------- */

int jinja_compile(const char *src, size_t len, const char *name, const jinja_limits *lim,
                  jinja_template **out) {
    *out = NULL;
    jinja_limits l;
    if (lim)
        l = *lim;
    else
        jinja_limits_default(&l);
    if (len > l.max_template)
        return err_set("%s: the template has %zu bytes, more than the limit of %zu", name, len,
                       l.max_template);
    if (tokenizer_utf8_valid_prefix(src, len) != len)
        return err_set("%s: the template is not valid UTF-8 (byte %zu)", name,
                       tokenizer_utf8_valid_prefix(src, len));
    jinja_template *t = calloc(1, sizeof *t);
    if (!t) return err_set("out of memory for template %s", name);
    t->lim = l;
    t->arena.limit = l.max_memory;
    t->name = strdup(name);
    jtoken *toks;
    size_t n;
    if (!t->name || jinja_lex(src, len, name, &t->arena, &toks, &n) != 0 ||
        jinja_parse(t, toks, n) != 0) {
        if (!t->name) err_set("out of memory for template %s", name);
        jinja_template_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void jinja_template_free(jinja_template *t) {
    if (!t) return;
    jarena_free(&t->arena);
    free(t->name);
    free(t);
}

int jinja_has_generation(const jinja_template *t) {
    return t->has_generation;
}

const char *jinja_name(const jinja_template *t) {
    return t->name;
}

int jinja_render(const jinja_template *t, json_t *vars, jinja_output *out) {
    memset(out, 0, sizeof *out);
    if (!json_is_object(vars)) return err_set("%s: the variables must be a JSON object", t->name);
    jbuf text = {.limit = t->lim.max_output};
    jctx c = {.t = t, .out = &text, .line = 1};
    c.arena.limit = t->lim.max_memory;
    int rc = (c.globals = frame_new(&c, NULL)) ? jglobals_add(&c, &c.globals->vars) : -1;
    const char *k;
    json_t *v;
    json_object_foreach(vars, k, v) {
        jv val;
        if (rc == 0) rc = jv_from_json(&c, v, &val);
        if (rc == 0) rc = frame_set(&c, c.globals, k, val);
    }
    if (rc == 0) rc = (c.frame = frame_new(&c, c.globals)) ? 0 : -1;
    if (rc == 0) rc = exec_body(&c, t->body, t->n_body) < 0 ? -1 : 0;
    if (rc == 0 && jbuf_put(&text, "", 0) != 0) rc = -1; /* a NUL-terminated buffer */
    jinja_ctx_free_re(&c);
    jarena_free(&c.arena);
    if (rc != 0) {
        jbuf_free(&text);
        jbuf_free(&c.spans);
        return -1;
    }
    out->text = text.p;
    out->len = text.len;
    out->spans = (jinja_span *)c.spans.p;
    out->n_spans = c.spans.len / sizeof(jinja_span);
    return 0;
}

void jinja_output_free(jinja_output *o) {
    free(o->text);
    free(o->spans);
    memset(o, 0, sizeof *o);
}
