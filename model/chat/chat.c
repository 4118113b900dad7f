/* chat — finding a model's chat template and rendering conversations with
 * it as transformers does (tokenization_utils_base.py from_pretrained,
 * get_chat_template, apply_chat_template; chat_template_utils.py
 * render_jinja_template). The tokens and loss mask are in chat_encode.c. */
#include "model/chat/chat.h"

#include "model/chat/chat_internal.h"
#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* tokenizer_config.json and friends: Qwen's is 7 MB with its added tokens */
#define CHAT_CONFIG_MAX ((size_t)256 << 20)

static const char *const named_specials[] = {"bos_token", "eos_token", "unk_token",  "sep_token",
                                             "pad_token", "cls_token", "mask_token", NULL};

int chat_read_json(const char *path, json_t **out) {
    char *data;
    size_t len;
    *out = NULL;
    if (fio_read_all(path, CHAT_CONFIG_MAX, &data, &len) != 0) return -1;
    json_error_t e;
    *out = json_loadb(data, len, JSON_REJECT_DUPLICATES, &e);
    free(data);
    if (!*out)
        return err_set("%s: not valid JSON (%s, line %d, column %d)", path, e.text, e.line,
                       e.column);
    return 0;
}

/* A token as tokenizer_config.json writes it: a string, or an AddedToken
 * object with a "content" string. */
static const char *token_text(json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static int is_named(const char *key) {
    for (size_t i = 0; named_specials[i]; i++)
        if (!strcmp(named_specials[i], key)) return 1;
    return 0;
}

/* The special tokens transformers passes to the template (special_tokens_map
 * plus the model-specific *_token keys and extra_special_tokens), from a
 * tokenizer_config.json; a legacy special_tokens_map.json overrides the named
 * ones when the config has no added_tokens_decoder, as from_pretrained does. */
static int load_specials(const char *dir, json_t *cfg, json_t *out) {
    const char *key;
    json_t *v;
    json_object_foreach(cfg, key, v) {
        size_t n = strlen(key);
        const char *text = token_text(v);
        if (text && n > 6 && !strcmp(key + n - 6, "_token") &&
            json_object_set_new(out, key, json_string(text)) != 0)
            return err_set("out of memory for special tokens");
    }
    json_t *extra = json_object_get(cfg, "extra_special_tokens");
    if (json_is_object(extra)) json_object_foreach(extra, key, v) {
            const char *text = token_text(v);
            if (text && json_object_set_new(out, key, json_string(text)) != 0)
                return err_set("out of memory for special tokens");
        }
    char path[4096];
    if (json_object_get(cfg, "added_tokens_decoder") ||
        fio_join(path, sizeof path, dir, "special_tokens_map.json") != 0 || !fio_exists(path))
        return 0;
    json_t *map;
    if (chat_read_json(path, &map) != 0) return -1;
    json_object_foreach(map, key, v) {
        const char *text = token_text(v);
        if (text && is_named(key)) json_object_set_new(out, key, json_string(text));
    }
    json_decref(map);
    return 0;
}

static int add_template(chat_template *ct, const char *name, const char *src, size_t len,
                        const char *where) {
    chat_named *grown = realloc(ct->tpl, (ct->n + 1) * sizeof *grown);
    if (!grown) return err_set("out of memory for chat templates");
    ct->tpl = grown;
    chat_named *t = &ct->tpl[ct->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->src = malloc(len + 1);
    if (!t->name || !t->src) {
        free(t->name);
        free(t->src);
        return err_set("out of memory for chat templates");
    }
    memcpy(t->src, src, len);
    t->src[len] = '\0';
    t->len = len;
    ct->n++;
    if (jinja_compile(src, len, where, NULL, &t->t) != 0)
        return err_context("the chat template \"%s\" cannot be used", name);
    return 0;
}

static int add_template_file(chat_template *ct, const char *name, const char *path) {
    char *src;
    size_t len;
    if (fio_read_all(path, CHAT_CONFIG_MAX, &src, &len) != 0) return -1;
    int rc = add_template(ct, name, src, len, path);
    free(src);
    return rc;
}

/* DIR/additional_chat_templates/NAME.jinja, each a named template. */
static int add_extra_files(chat_template *ct, const char *dir) {
    char sub[4096];
    if (fio_join(sub, sizeof sub, dir, "additional_chat_templates") != 0) return -1;
    DIR *d = opendir(sub);
    if (!d) return 0;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n <= 6 || strcmp(e->d_name + n - 6, ".jinja") != 0) continue;
        char name[256], path[4200];
        snprintf(name, sizeof name, "%.*s", (int)(n - 6), e->d_name);
        if (fio_join(path, sizeof path, sub, e->d_name) != 0)
            rc = -1;
        else
            rc = add_template_file(ct, name, path);
    }
    closedir(d);
    return rc;
}

/* "chat_template" of tokenizer_config.json: a string, a list of {name,
 * template}, or an object of name → template. */
static int add_config_templates(chat_template *ct, json_t *v, const char *path) {
    char where[4300];
    snprintf(where, sizeof where, "%s (chat_template)", path);
    if (json_is_string(v))
        return add_template(ct, "default", json_string_value(v), json_string_length(v), where);
    size_t i;
    json_t *item;
    if (json_is_array(v)) {
        json_array_foreach(v, i, item) {
            json_t *name = json_object_get(item, "name"), *tpl = json_object_get(item, "template");
            if (!json_is_string(name) || !json_is_string(tpl))
                return err_set("%s: chat_template entry %zu needs a \"name\" and a \"template\" "
                               "string",
                               path, i);
            snprintf(where, sizeof where, "%s (chat_template \"%s\")", path,
                     json_string_value(name));
            if (add_template(ct, json_string_value(name), json_string_value(tpl),
                             json_string_length(tpl), where) != 0)
                return -1;
        }
        return 0;
    }
    if (json_is_object(v)) {
        const char *name;
        json_object_foreach(v, name, item) {
            if (!json_is_string(item))
                return err_set("%s: chat_template \"%s\" is not a string", path, name);
            snprintf(where, sizeof where, "%s (chat_template \"%s\")", path, name);
            if (add_template(ct, name, json_string_value(item), json_string_length(item), where))
                return -1;
        }
        return 0;
    }
    return err_set("%s: \"chat_template\" must be a string or a list of {\"name\", \"template\"}",
                   path);
}

static int load(const char *dir, const char *jinja_path, chat_template **out) {
    *out = NULL;
    chat_template *ct = calloc(1, sizeof *ct);
    if (!ct || !(ct->specials = json_object())) {
        free(ct);
        return err_set("out of memory for a chat template");
    }
    char cfg_path[4096] = "", path[4096];
    json_t *cfg = NULL;
    int rc = 0;
    if (dir && fio_join(cfg_path, sizeof cfg_path, dir, "tokenizer_config.json") == 0 &&
        fio_exists(cfg_path)) {
        rc = chat_read_json(cfg_path, &cfg);
        if (rc == 0 && !json_is_object(cfg)) rc = err_set("%s: not a JSON object", cfg_path);
        if (rc == 0) rc = load_specials(dir, cfg, ct->specials);
    }
    if (rc == 0 && jinja_path) {
        rc = add_template_file(ct, "default", jinja_path);
        snprintf(ct->origin, sizeof ct->origin, "%s", jinja_path);
    } else if (rc == 0 && dir) {
        /* transformers: the .jinja files take priority over tokenizer_config.json */
        if (fio_join(path, sizeof path, dir, "chat_template.jinja") == 0 && fio_exists(path)) {
            rc = add_template_file(ct, "default", path);
            snprintf(ct->origin, sizeof ct->origin, "%s", path);
        }
        if (rc == 0) rc = add_extra_files(ct, dir);
        if (rc == 0 && ct->n && !ct->origin[0])
            snprintf(ct->origin, sizeof ct->origin, "%s/additional_chat_templates", dir);
        json_t *v = cfg ? json_object_get(cfg, "chat_template") : NULL;
        if (rc == 0 && ct->n == 0 && v && !json_is_null(v)) {
            rc = add_config_templates(ct, v, cfg_path);
            snprintf(ct->origin, sizeof ct->origin, "%s", cfg_path);
        }
    }
    json_decref(cfg);
    if (rc != 0 || ct->n == 0) {
        chat_template_free(ct);
        return rc;
    }
    *out = ct;
    return 0;
}

int chat_template_find(const char *dir, chat_template **out) {
    return load(dir, NULL, out);
}

int chat_template_load(const char *jinja_path, const char *config_dir, chat_template **out) {
    if (load(config_dir, jinja_path, out) != 0) return -1;
    return *out ? 0 : err_set("%s: no chat template", jinja_path);
}

void chat_template_free(chat_template *ct) {
    if (!ct) return;
    for (size_t i = 0; i < ct->n; i++) {
        free(ct->tpl[i].name);
        free(ct->tpl[i].src);
        jinja_template_free(ct->tpl[i].t);
    }
    free(ct->tpl);
    json_decref(ct->specials);
    free(ct);
}

const char *chat_template_origin(const chat_template *ct) {
    return ct->origin;
}

static const chat_named *named(const chat_template *ct, const char *name) {
    for (size_t i = 0; i < ct->n; i++)
        if (!strcmp(ct->tpl[i].name, name)) return &ct->tpl[i];
    return NULL;
}

int chat_template_has_generation(const chat_template *ct) {
    const chat_named *t = ct->n == 1 ? &ct->tpl[0] : named(ct, "default");
    return t && jinja_has_generation(t->t);
}

/* get_chat_template: one template, or of several "tool_use" for a
 * conversation with tools, else "default". */
const chat_named *chat_select(const chat_template *ct, const chat_request *rq) {
    if (ct->n == 1 && !strcmp(ct->tpl[0].name, "default")) return &ct->tpl[0];
    const chat_named *t = rq->tools ? named(ct, "tool_use") : NULL;
    if (!t) t = named(ct, "default");
    if (!t) {
        char names[512] = "";
        for (size_t i = 0; i < ct->n; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     ct->tpl[i].name);
        err_set("%s has several chat templates (%s) and none named \"default\"", ct->origin, names);
    }
    return t;
}

/* The messages as apply_chat_template passes them: null-valued keys
 * dropped (_normalize_chat_messages), reasoning aliased
 * (_alias_reasoning_fields). */
static json_t *normalize(json_t *messages) {
    static const char *const reasoning_keys[] = {"reasoning_content", "thinking", "reasoning"};
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m)) {
            json_decref(out);
            err_set("message %zu is not a JSON object", i + 1);
            return NULL;
        }
        json_t *clean = json_object(), *reasoning = NULL;
        const char *key;
        json_t *v;
        json_object_foreach(m, key, v) if (!json_is_null(v)) json_object_set(clean, key, v);
        for (size_t k = 0; k < 3 && !reasoning; k++)
            reasoning = json_object_get(clean, reasoning_keys[k]);
        if (reasoning) { /* {"thinking": r, **message, "reasoning_content": r} */
            json_t *aliased = json_object();
            json_object_set(aliased, "thinking", reasoning);
            json_object_foreach(clean, key, v) json_object_set(aliased, key, v); /* in place */
            json_object_set(aliased, "reasoning_content", reasoning);
            json_decref(clean);
            clean = aliased;
        }
        json_array_append_new(out, clean);
    }
    return out;
}

int chat_render_output(const chat_template *ct, const chat_request *rq, jinja_output *out) {
    memset(out, 0, sizeof *out);
    if (!json_is_array(rq->messages))
        return err_set("the conversation must be a JSON array of messages");
    if (rq->continue_final_message && rq->add_generation_prompt)
        return err_set("continue_final_message and add_generation_prompt are not compatible");
    const chat_named *t = chat_select(ct, rq);
    if (!t) return -1;
    json_t *msgs = normalize(rq->messages);
    if (!msgs) return -1;
    json_t *vars = json_object();
    json_object_update(vars, ct->specials);
    if (rq->vars && json_object_update(vars, rq->vars) != 0) {
        json_decref(vars);
        json_decref(msgs);
        return err_set("the template variables must be a JSON object");
    }
    json_object_set_new(vars, "messages", msgs);
    json_object_set(vars, "tools", rq->tools ? rq->tools : json_null());
    json_object_set(vars, "documents", rq->documents ? rq->documents : json_null());
    json_object_set_new(vars, "add_generation_prompt", json_boolean(rq->add_generation_prompt));
    int rc =
        rq->continue_final_message ? chat_continue(t, vars, out) : jinja_render(t->t, vars, out);
    json_decref(vars);
    return rc;
}

int chat_render(const chat_template *ct, const chat_request *rq, char **text, size_t *len) {
    jinja_output o;
    if (chat_render_output(ct, rq, &o) != 0) return -1;
    *text = o.text;
    *len = o.len;
    free(o.spans);
    return 0;
}

/* ---- end-of-turn ids ---------------------------------------------------------------- */

static int add_ids(json_t *v, const char *path, int32_t *ids, size_t cap, size_t *n) {
    json_t *list = json_is_array(v) ? v : NULL, *x;
    size_t i, count = list ? json_array_size(list) : 1;
    for (i = 0; i < count; i++) {
        x = list ? json_array_get(list, i) : v;
        if (json_is_null(x)) continue;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX)
            return err_set("%s: eos_token_id must be a token id or a list of them", path);
        int32_t id = (int32_t)json_integer_value(x);
        size_t k = 0;
        while (k < *n && ids[k] != id) k++;
        if (k < *n) continue;
        if (*n == cap) return err_set("%s: more than %zu end-of-turn ids", path, cap);
        ids[(*n)++] = id;
    }
    return 0;
}

int chat_eos_ids(const char *dir, int32_t *ids, size_t cap, size_t *n) {
    static const char *const files[] = {"generation_config.json", "config.json"};
    *n = 0;
    for (size_t f = 0; f < 2; f++) {
        char path[4096];
        json_t *j;
        if (fio_join(path, sizeof path, dir, files[f]) != 0) return -1;
        if (!fio_exists(path)) continue;
        if (chat_read_json(path, &j) != 0) return -1;
        json_t *v = json_is_object(j) ? json_object_get(j, "eos_token_id") : NULL;
        int rc = v ? add_ids(v, path, ids, cap, n) : 0;
        json_decref(j);
        if (rc != 0) return -1;
    }
    return 0;
}
