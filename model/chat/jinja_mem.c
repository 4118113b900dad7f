/* jinja_mem — the arena that holds a template's syntax tree or a render's
 * values, and the growable byte buffer. */
#include "model/chat/jinja_internal.h"

#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct jblock {
    jblock *next;
    size_t used, cap;
    max_align_t data[];
};

#define JBLOCK_MIN ((size_t)64 << 10)

void *jarena_alloc(jarena *a, size_t n) {
    size_t align = sizeof(max_align_t);
    n = (n + align - 1) / align * align;
    if (n == 0) n = align;
    jblock *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > JBLOCK_MIN ? n : JBLOCK_MIN;
        if (a->limit && a->total + cap > a->limit) {
            err_set("the template needs more than %zu MiB of memory (the limit)", a->limit >> 20);
            return NULL;
        }
        b = malloc(sizeof *b + cap);
        if (!b) {
            err_set("out of memory (%zu bytes) while running the template", cap);
            return NULL;
        }
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

void jarena_free(jarena *a) {
    for (jblock *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
    a->total = 0;
}

int jbuf_put(jbuf *b, const void *s, size_t n) {
    if (b->limit && b->len + n > b->limit)
        return err_set("the template's output exceeds %zu bytes (the limit)", b->limit);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return err_set("out of memory for %zu bytes of template output", cap);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int jbuf_puts(jbuf *b, const char *s) {
    return jbuf_put(b, s, strlen(s));
}

int jbuf_putc(jbuf *b, char c) {
    return jbuf_put(b, &c, 1);
}

int jbuf_printf(jbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) return err_set("internal: formatted text too long");
    return jbuf_put(b, tmp, (size_t)n);
}

void jbuf_free(jbuf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
