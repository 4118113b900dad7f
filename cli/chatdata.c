/* chatdata — chat options of train, eval and generate (see chatdata.h). */
#include "cli/chatdata.h"

#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int find(const char *tpl_path, const char *tok_dir, chat_template **ct) {
    return tpl_path ? chat_template_load(tpl_path, tok_dir, ct) : chat_template_find(tok_dir, ct);
}

int chatdata_setup(const chatdata_opts *o, const char *model_dir, dataset_options *dopt,
                   chat_template **ct) {
    *ct = NULL;
    if (o->format && strcmp(o->format, "template") && strcmp(o->format, "fedlora"))
        return err_set("--chat-format is template or fedlora, not '%s'", o->format);
    if (o->loss_on && strcmp(o->loss_on, "assistant") && strcmp(o->loss_on, "all"))
        return err_set("--loss-on is assistant or all, not '%s'", o->loss_on);
    dopt->loss_all = o->loss_on && !strcmp(o->loss_on, "all");
    dopt->chat_format = !o->format                      ? DATASET_CHAT_AUTO
                        : !strcmp(o->format, "fedlora") ? DATASET_CHAT_FEDLORA
                                                        : DATASET_CHAT_TEMPLATE;
    if (!o->tpl_path) return 0;
    if (dopt->chat_format == DATASET_CHAT_FEDLORA)
        return err_set("--chat-template and --chat-format fedlora contradict");
    char tok_dir[4096];
    if (dopt->tokenizer && fio_dirname(tok_dir, sizeof tok_dir, dopt->tokenizer) != 0) return -1;
    if (chat_template_load(o->tpl_path, dopt->tokenizer ? tok_dir : model_dir, ct) != 0) return -1;
    dopt->chat = *ct;
    return 0;
}

void chatdata_report(const chatdata_opts *o, const dataset *d) {
    size_t n = dataset_num_chats(d);
    if (n == 0) return;
    const chat_template *ct = dataset_chat_template(d);
    const char *loss =
        o->loss_on && !strcmp(o->loss_on, "all") ? "every token" : "the assistant's tokens";
    if (ct)
        printf("chat: %zu conversations in the model's chat template (%s), loss on %s\n", n,
               chat_template_origin(ct), loss);
    else
        printf("chat: %zu conversations in fedlora's own chat format (%s), loss on %s\n", n,
               o->format ? "--chat-format fedlora" : "the model has no chat template", loss);
    fflush(stdout);
}

static int read_messages(const char *path, json_t **messages, json_t **tools) {
    char *data;
    size_t len;
    *messages = *tools = NULL;
    if (fio_read_all(path, (size_t)64 << 20, &data, &len) != 0) return -1;
    json_error_t e;
    json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &e);
    free(data);
    if (!j) return err_set("%s: not valid JSON (%s, line %d)", path, e.text, e.line);
    json_t *m = json_is_object(j) ? json_object_get(j, "messages") : j;
    json_t *t = json_is_object(j) ? json_object_get(j, "tools") : NULL;
    if (!json_is_array(m) || json_array_size(m) == 0 || (t && !json_is_array(t))) {
        json_decref(j);
        return err_set("%s: give a JSON array of messages, or {\"messages\": [...], \"tools\": "
                       "[...]}",
                       path);
    }
    *messages = json_incref(m);
    *tools = t ? json_incref(t) : NULL;
    json_decref(j);
    return 0;
}

int chatdata_prompt(const char *tpl_path, const char *tok_dir, const char *prompt,
                    const char *messages_file, char **text, size_t *len) {
    chat_template *ct;
    if (find(tpl_path, tok_dir, &ct) != 0) return -1;
    if (!ct)
        return err_set("--chat: the model (%s) has no chat template; give one with "
                       "--chat-template FILE",
                       tok_dir);
    json_t *messages = NULL, *tools = NULL;
    int rc = 0;
    if (messages_file) {
        rc = read_messages(messages_file, &messages, &tools);
    } else {
        messages = json_pack("[{s:s, s:s}]", "role", "user", "content", prompt);
        if (!messages) rc = err_set("--prompt is not valid UTF-8");
    }
    if (rc == 0) {
        json_t *last = json_array_get(messages, json_array_size(messages) - 1);
        json_t *role = json_object_get(last, "role");
        int prefill = json_is_string(role) && !strcmp(json_string_value(role), "assistant");
        chat_request rq = {.messages = messages,
                           .tools = tools,
                           .add_generation_prompt = !prefill,
                           .continue_final_message = prefill};
        rc = chat_render(ct, &rq, text, len);
    }
    json_decref(messages);
    json_decref(tools);
    chat_template_free(ct);
    return rc;
}

int chatdata_stop_ids(const char *model_dir, int config_eos, int32_t *ids, size_t cap, size_t *n) {
    if (chat_eos_ids(model_dir, ids, cap - 1, n) != 0) return -1;
    size_t k = 0;
    while (k < *n && ids[k] != config_eos) k++;
    if (config_eos >= 0 && k == *n) ids[(*n)++] = config_eos;
    return 0;
}
