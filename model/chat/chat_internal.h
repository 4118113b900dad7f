/* chat_internal — what chat.c, chat_continue.c and chat_encode.c share. */
#ifndef FL_MODEL_CHAT_CHAT_INTERNAL_H
#define FL_MODEL_CHAT_CHAT_INTERNAL_H

#include "model/chat/chat.h"
#include "model/chat/jinja.h"

typedef struct {
    char *name; /* "default", "tool_use", … */
    char *src;  /* the template text (continue_final_message looks into it) */
    size_t len;
    jinja_template *t;
} chat_named;

struct chat_template {
    chat_named *tpl;
    size_t n;
    json_t *specials; /* special token name → text */
    char origin[4200];
};

/* Reads a JSON file (256 MiB at most). */
int chat_read_json(const char *path, json_t **out);
/* The template a request uses (NULL with an error when there is none). */
const chat_named *chat_select(const chat_template *ct, const chat_request *rq);
/* chat_render with the {% generation %} spans. */
int chat_render_output(const chat_template *ct, const chat_request *rq, jinja_output *out);
/* Renders vars (messages normalized) with the last message left open, as
 * render_jinja_template's continue_final_message does. */
int chat_continue(const chat_named *t, json_t *vars, jinja_output *out);

#endif
