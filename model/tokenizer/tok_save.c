/* tok_save — a minimal byte-level BPE tokenizer.json, for randomly
 * initialised models (fedlora init-model): every byte is a token, so any
 * text encodes, and Hugging Face tokenizers / transformers load it as is.
 *
 * The special tokens are written both in model.vocab and in added_tokens:
 * tokenizers gives an added token the id it has in the model vocabulary, so
 * this is what pins them to the requested ids (see tok_load.c). */
#include "model/tokenizer/tok_internal.h"

#include "util/err.h"
#include "util/fio.h"

#include <stdlib.h>
#include <string.h>

static json_t *special_entry(const tokenizer_special_token *s) {
    return json_pack("{s:I, s:s, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)s->id, "content",
                     s->content, "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
                     "special", 1);
}

static int check_specials(const tokenizer_special_token *sp, size_t n, const char *bos) {
    int bos_found = bos == NULL;
    for (size_t i = 0; i < n; i++) {
        const char *c = sp[i].content;
        size_t len = c ? strlen(c) : 0;
        if (!len || tokenizer_utf8_valid_prefix(c, len) != len)
            return err_set("special token %zu: content must be non-empty UTF-8", i);
        if (sp[i].id < 256 || sp[i].id >= TOK_MAX_ID)
            return err_set("special token '%s': id %u must be in [256, %u) (0..255 are the bytes)",
                           c, sp[i].id, TOK_MAX_ID);
        size_t cl;
        if (len == tok_utf8_len((unsigned char)c[0]) &&
            tok_cp_to_byte(tok_utf8_decode(c, &cl)) >= 0)
            return err_set("special token '%s' is one of the 256 byte tokens", c);
        for (size_t k = 0; k < i; k++)
            if (sp[k].id == sp[i].id || !strcmp(sp[k].content, c))
                return err_set("special tokens '%s' and '%s' share an id or a content",
                               sp[k].content, c);
        if (bos && !strcmp(bos, c)) bos_found = 1;
    }
    if (!bos_found) return err_set("bos token '%s' is not one of the special tokens", bos);
    return 0;
}

int tokenizer_save_bytelevel(const char *path, const tokenizer_special_token *specials,
                             size_t n_specials, const char *bos) {
    if (check_specials(specials, n_specials, bos)) return err_context("writing %s", path);
    json_t *vocab = json_object(), *added = json_array(), *post;
    int rc = -1;
    char key[4];
    for (unsigned b = 0; b < 256; b++) {
        size_t n = tok_utf8_encode(tok_byte_to_cp(b), key);
        json_object_setn_new(vocab, key, n, json_integer(b));
    }
    for (size_t i = 0; i < n_specials; i++) {
        json_object_set_new(vocab, specials[i].content, json_integer(specials[i].id));
        json_array_append_new(added, special_entry(&specials[i]));
    }
    if (bos) {
        uint32_t bos_id = 0;
        for (size_t i = 0; i < n_specials; i++)
            if (!strcmp(specials[i].content, bos)) bos_id = specials[i].id;
        post =
            json_pack("{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], "
                      "s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}], "
                      "s:{s:{s:s, s:[I], s:[s]}}}",
                      "type", "TemplateProcessing", "single", "SpecialToken", "id", bos, "type_id",
                      0, "Sequence", "id", "A", "type_id", 0, "pair", "SpecialToken", "id", bos,
                      "type_id", 0, "Sequence", "id", "A", "type_id", 0, "SpecialToken", "id", bos,
                      "type_id", 1, "Sequence", "id", "B", "type_id", 1, "special_tokens", bos,
                      "id", bos, "ids", (json_int_t)bos_id, "tokens", bos);
    } else {
        post = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                         "trim_offsets", 0, "use_regex", 1);
    }
    json_t *root =
        json_pack("{s:s, s:n, s:n, s:o, s:n, s:{s:s, s:b, s:b, s:b}, s:o, s:{s:s, s:b, s:b, s:b}, "
                  "s:{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:[]}}",
                  "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
                  "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                  "use_regex", 1, "post_processor", post, "decoder", "type", "ByteLevel",
                  "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1, "model", "type", "BPE",
                  "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                  "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges");
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    if (!text)
        err_set("writing %s: cannot build the JSON (out of memory?)", path);
    else
        rc = fio_write_atomic(path, text, strlen(text), 0644);
    free(text);
    json_decref(root); /* owns vocab, added and post (s:o steals them) */
    return rc;
}
