/* chat_continue — continue_final_message as render_jinja_template does it:
 * a tag is appended to the final message's text, the conversation is
 * rendered, and the text is cut where the tag begins, so that whatever the
 * template writes after a message (an end-of-turn token) is left out and
 * the model continues the message (an assistant prefill). */
#include "model/chat/chat_internal.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define TAG "CONTINUE_FINAL_MESSAGE_TAG "
#define TAG_LEN (sizeof TAG - 1)

static const char *last_match(const char *s, size_t n, const char *needle, size_t k) {
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

int chat_continue(const chat_named *t, json_t *vars, jinja_output *out) {
    json_t *msgs = json_object_get(vars, "messages");
    size_t n = json_array_size(msgs);
    if (n == 0) return err_set("continue_final_message is set but the conversation is empty");
    if (!strstr(t->src, "content"))
        return err_set("continue_final_message is set to \"content\" but this is not a field the "
                       "chat template uses");
    json_t *last = json_deep_copy(json_array_get(msgs, n - 1)); /* the caller's JSON stays */
    json_array_set_new(msgs, n - 1, last);
    json_t *content = json_object_get(last, "content"), *holder = last, *block = NULL;
    const char *key = "content";
    if (json_is_array(content)) { /* the last block with a "text" */
        for (size_t i = json_array_size(content); i-- > 0 && !block;)
            if (json_is_string(json_object_get(json_array_get(content, i), "text")))
                block = json_array_get(content, i);
        if (!block)
            return err_set("continue_final_message is set but we could not find any text to "
                           "continue in the final message");
        holder = block;
        key = "text";
    } else if (!json_is_string(content)) {
        return err_set("continue_final_message is set but the final message has no \"content\" "
                       "text to continue");
    }
    json_t *text = json_object_get(holder, key);
    size_t flen = json_string_length(text);
    char *final = malloc(flen + TAG_LEN + 1);
    if (!final) return err_set("out of memory for the final message");
    memcpy(final, json_string_value(text), flen);
    memcpy(final + flen, TAG, TAG_LEN + 1);
    json_object_set_new(holder, key, json_stringn(final, flen + TAG_LEN));
    int rc = jinja_render(t->t, vars, out);
    size_t a, b;
    jinja_py_strip(final, flen, 3, &a, &b);
    const char *s = rc == 0 ? out->text : NULL;
    const char *tag = s ? last_match(s, out->len, TAG, TAG_LEN - 1) : NULL;
    if (rc == 0 && (!tag || (b > a && !memmem(s, out->len, final + a, b - a)))) {
        jinja_output_free(out);
        rc = err_set("continue_final_message is set but the final message does not appear in the "
                     "chat after applying the chat template (the template changes it)");
    }
    free(final);
    if (rc != 0) return -1;
    size_t cut = (size_t)(tag - s);
    if (!(cut + TAG_LEN <= out->len && !memcmp(s + cut, TAG, TAG_LEN))) {
        size_t from, to; /* the template trimmed the tag's space: rstrip before it */
        jinja_py_strip(s, cut, 2, &from, &to);
        cut = to;
    }
    out->len = cut;
    out->text[cut] = '\0';
    for (size_t i = 0; i < out->n_spans; i++) {
        if (out->spans[i].start > cut) out->spans[i].start = cut;
        if (out->spans[i].end > cut) out->spans[i].end = cut;
    }
    return 0;
}
