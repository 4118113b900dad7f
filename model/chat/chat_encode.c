/* chat_encode — a conversation's tokens for training, and which of them
 * carry loss (docs/chat.md).
 *
 * The tokens are apply_chat_template(tokenize=True)'s: the rendered text
 * encoded at once, with no special tokens added. The assistant's tokens
 * are those that overlap an assistant span of the text, with transformers'
 * rule for return_assistant_tokens_mask (a token that straddles a span's
 * edge belongs to it). The spans are:
 *   - with {% generation %} in the template: the text those blocks wrote
 *     (transformers' AssistantTracker);
 *   - otherwise, for each assistant message i, the text from the end of
 *     P = render(messages[:i], add_generation_prompt) — the prompt the model
 *     sees when it generates that message — to where Q = render(messages[:i +
 *     1]) and the whole conversation's text part. P must begin the
 *     conversation's text, and what Q has beyond the common part must be
 *     the text the template ends every conversation with (Phi-3 writes EOS
 *     there); a template that renders a turn differently depending on what
 *     follows (Qwen3 drops earlier turns' reasoning, Mistral moves the
 *     system prompt to the last user turn) is refused rather than masked
 *     wrongly. */
#include "model/chat/chat_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

/* render(messages[:n], add_generation_prompt) */
static int render_prefix(const chat_template *ct, const chat_request *rq, size_t n, int agp,
                         jinja_output *out) {
    json_t *head = json_array();
    for (size_t i = 0; i < n; i++) json_array_append(head, json_array_get(rq->messages, i));
    chat_request r = *rq;
    r.messages = head;
    r.add_generation_prompt = agp;
    r.continue_final_message = 0;
    int rc = chat_render_output(ct, &r, out);
    json_decref(head);
    return rc;
}

static int is_assistant(json_t *m) {
    json_t *role = json_object_get(m, "role");
    return json_is_string(role) && !strcmp(json_string_value(role), "assistant");
}

static int refuse(size_t i, const char *why) {
    return err_set("message %zu (assistant): %s, so the assistant's tokens cannot be found by "
                   "rendering the conversation's prefixes; train on every token (--loss-on all) "
                   "or use a template with {%% generation %%} blocks (--chat-template FILE)",
                   i + 1, why);
}

static int prefix_spans(const chat_template *ct, const chat_request *rq, const jinja_output *full,
                        jinja_span *spans, size_t *n_spans) {
    *n_spans = 0;
    size_t n = json_array_size(rq->messages);
    for (size_t i = 0; i < n; i++) {
        if (!is_assistant(json_array_get(rq->messages, i))) continue;
        jinja_output p, q;
        if (render_prefix(ct, rq, i, 1, &p) != 0)
            return err_context("message %zu (assistant): rendering the conversation before it",
                               i + 1);
        if (render_prefix(ct, rq, i + 1, 0, &q) != 0) {
            jinja_output_free(&p);
            return err_context("message %zu (assistant): rendering the conversation up to it",
                               i + 1);
        }
        size_t a = p.len, k = 0;
        int rc = 0;
        if (a > full->len || memcmp(p.text, full->text, a) != 0)
            rc = refuse(i, "the prompt before it (with the generation prompt) is not how the "
                           "conversation's text begins");
        while (rc == 0 && a + k < q.len && a + k < full->len && q.text[a + k] == full->text[a + k])
            k++;
        size_t tail = rc == 0 ? q.len - a - k : 0;
        if (rc == 0 && (k == 0 || (tail && (tail > full->len ||
                                            memcmp(q.text + a + k, full->text + full->len - tail,
                                                   tail) != 0))))
            rc = refuse(i, "the template renders it differently when more messages follow");
        jinja_output_free(&p);
        jinja_output_free(&q);
        if (rc != 0) return -1;
        spans[*n_spans].start = a;
        spans[*n_spans].end = a + k;
        (*n_spans)++;
    }
    return 0;
}

/* apply_chat_template's return_assistant_tokens_mask loop: a token is the
 * assistant's when it overlaps the current span. */
static void mark(const tokenizer_offsets *o, const jinja_span *spans, size_t n_spans,
                 uint8_t *mask) {
    size_t j = 0;
    for (size_t t = 0; t < o->n; t++) {
        while (j < n_spans && o->r[t][0] >= spans[j].end) j++;
        if (j == n_spans) break;
        if (o->r[t][1] > spans[j].start) mask[t] = 1;
    }
}

int chat_encode(const chat_template *ct, tokenizer *tok, const chat_request *rq, chat_loss loss,
                tokenizer_ids *ids, uint8_t **mask) {
    *mask = NULL;
    ids->n = 0;
    chat_request r = *rq;
    r.add_generation_prompt = 0;
    r.continue_final_message = 0;
    const chat_named *t = chat_select(ct, &r);
    jinja_output full;
    if (!t || chat_render_output(ct, &r, &full) != 0) return -1;
    tokenizer_offsets offs = {0};
    jinja_span *spans = NULL;
    size_t n_spans = full.n_spans;
    int rc = tokenizer_encode_offsets(tok, full.text, full.len, 0, ids, &offs);
    if (rc == 0 && !(*mask = calloc(ids->n ? ids->n : 1, 1)))
        rc = err_set("out of memory for a loss mask of %zu tokens", ids->n);
    if (rc == 0 && loss == CHAT_LOSS_ALL) {
        memset(*mask, 1, ids->n);
    } else if (rc == 0 && jinja_has_generation(t->t)) {
        mark(&offs, full.spans, full.n_spans, *mask);
    } else if (rc == 0) {
        size_t n = json_array_size(r.messages);
        spans = malloc((n ? n : 1) * sizeof *spans);
        rc = spans ? prefix_spans(ct, &r, &full, spans, &n_spans)
                   : err_set("out of memory for %zu spans", n);
        if (rc == 0) mark(&offs, spans, n_spans, *mask);
    }
    free(spans);
    tokenizer_offsets_free(&offs);
    jinja_output_free(&full);
    if (rc != 0) {
        free(*mask);
        *mask = NULL;
        ids->n = 0;
    }
    return rc;
}
