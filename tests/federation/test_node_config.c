/* node_config_load: every key read, relative paths taken from the config
 * file's directory, and each kind of mistake refused with a message naming
 * the key. */
#include "node/node.h"
#include "tests/federation/fed_test.h"
#include "wire/payload.h"

static const char *dir;

static const char *full =
    "keys = { dir = \"keys\"; name = \"uni-a\"; };\n"
    "consortium = \"c1\";\n"
    "aggregator = { endpoint = \"tcp://127.0.0.1:7000\"; identity = \"/etc/agg.id\"; };\n"
    "base_model = \"base\";\n"
    "data = \"d/data.jsonl\";\n"
    "state = \"st\";\n"
    "eval_fraction = 0.25;\n"
    "seed = 7;\n"
    "batch = 2;\n"
    "threads = 3;\n"
    "device = \"cpu\";\n"
    "save_every = 5;\n"
    "poll_ms = 20;\n"
    "request_timeout_ms = 300;\n"
    "give_up_s = 9;\n"
    "max_model_bytes = 1000000;\n";

static const char *minimal = "keys = { dir = \"/k\"; name = \"uni-b\"; };\n"
                             "consortium = \"c1\";\n"
                             "aggregator = { endpoint = \"tcp://h:1\"; identity = \"a.id\"; };\n"
                             "base_model = \"/b\";\n"
                             "data = \"/d\";\n"
                             "state = \"/s\";\n";

/* Writes text (with one line replaced or added) and loads it. */
static int load_with(const char *base, const char *find, const char *replace, node_config *c) {
    char text[4096], path[TS_PATH];
    const char *at = find ? strstr(base, find) : NULL;
    if (find && !at) return err_set("test bug: '%s' not in the config", find);
    if (at)
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - base), base, replace, at + strlen(find));
    else
        snprintf(text, sizeof text, "%s%s", base, replace ? replace : "");
    if (ts_write(ts_in(path, dir, "node.cfg"), text) != 0) return -1;
    return node_config_load(c, path);
}

int main(void) {
    dir = ts_dir();
    node_config c;
    char want[TS_PATH];

    CHECK_OK(load_with(full, NULL, NULL, &c));
    CHECK(strcmp(c.name, "uni-a") == 0);
    CHECK(strcmp(c.keys_dir, ts_in(want, dir, "keys")) == 0);
    CHECK(strcmp(c.base_model, ts_in(want, dir, "base")) == 0);
    CHECK(strcmp(c.data, ts_in(want, dir, "d/data.jsonl")) == 0);
    CHECK(strcmp(c.state_dir, ts_in(want, dir, "st")) == 0);
    CHECK(strcmp(c.aggregator_id, "/etc/agg.id") == 0); /* absolute stays */
    CHECK(strcmp(c.endpoint, "tcp://127.0.0.1:7000") == 0);
    CHECK(c.eval_fraction == 0.25 && c.seed == 7 && c.batch == 2 && c.threads == 3);
    CHECK(c.save_every == 5 && c.poll_ms == 20 && c.request_timeout_ms == 300);
    CHECK(c.give_up_s == 9 && c.max_model_bytes == 1000000);
    uint8_t id[32];
    CHECK_OK(payload_consortium_id("c1", id));
    CHECK(memcmp(id, c.consortium, 32) == 0); /* the aggregator derives the same id */

    CHECK_OK(load_with(minimal, NULL, NULL, &c));
    CHECK(c.eval_fraction == 0.1 && c.batch == 0 && c.threads == 0 && c.save_every == 10);
    CHECK(c.poll_ms == 1000 && c.give_up_s == 600 && strcmp(c.device, "cpu") == 0);

    CHECK_FAILS_WITH(load_with(minimal, NULL, "epochs = 3;\n", &c), "unknown key 'epochs'");
    CHECK_FAILS_WITH(load_with(minimal, "identity", "identiti", &c),
                     "unknown key 'aggregator.identiti'");
    CHECK_FAILS_WITH(load_with(minimal, "data = \"/d\";\n", "", &c), "missing required key 'data'");
    CHECK_FAILS_WITH(load_with(minimal, "keys = { dir = \"/k\"; name = \"uni-b\"; };\n", "", &c),
                     "missing group 'keys'");
    CHECK_FAILS_WITH(load_with(minimal, "uni-b", "-bad", &c), "keys.name");
    CHECK_FAILS_WITH(load_with(minimal, "tcp://h:1", "http://h:1", &c), "aggregator.endpoint");
    /* Whether the CUDA backend loads is for training and doctor to say. */
    CHECK_OK(load_with(minimal, NULL, "device = \"cuda\";\n", &c));
    CHECK(strcmp(c.device, "cuda") == 0);
    CHECK_FAILS_WITH(load_with(minimal, NULL, "device = \"tpu\";\n", &c), "must be");
    CHECK_FAILS_WITH(load_with(minimal, NULL, "eval_fraction = 0.0;\n", &c), "eval_fraction");
    CHECK_FAILS_WITH(load_with(minimal, NULL, "batch = \"four\";\n", &c),
                     "'batch' must be an integer");
    CHECK_FAILS_WITH(load_with(minimal, NULL, "poll_ms = 1;\n", &c), "'poll_ms' must be from");
    CHECK_FAILS_WITH(load_with(minimal, NULL, "state = ;\n", &c), "node.cfg:7");
    CHECK_FAILS_WITH(load_with(minimal, "\"c1\"", "\"\"", &c), "consortium");
    /* CURVE unless the consortium says otherwise (docs/onboarding.md). */
    CHECK_OK(load_with(minimal, NULL, NULL, &c));
    CHECK(c.curve == 1);
    CHECK_OK(load_with(minimal, "identity = ", "curve = false; identity = ", &c));
    CHECK(c.curve == 0);
    CHECK_FAILS_WITH(load_with(minimal, "identity = ", "curve = 1; identity = ", &c),
                     "'aggregator.curve' must be true or false");
    char missing[TS_PATH];
    CHECK_FAILS_WITH(node_config_load(&c, ts_in(missing, dir, "none.cfg")),
                     "cannot read node config");

    return check_finish();
}
