/* fedlora keygen --name NAME --out DIR: a new member identity (wire/keys.h).
 * Private keys never leave DIR; the .id file and the printed fingerprint are
 * what the member sends to, and reads aloud to, the consortium admin. */
#include "cli/commands.h"
#include "util/err.h"
#include "wire/keys.h"

#include <stdio.h>
#include <string.h>

static void keygen_usage(FILE *f) {
    fprintf(f, "usage: fedlora keygen --name NAME --out DIR\n\n"
               "Makes an Ed25519 signing key and an X25519 key-agreement key for identity NAME:\n"
               "  DIR/NAME.sign.pem, DIR/NAME.kx.pem   private keys (mode 0600): keep them here\n"
               "  DIR/NAME.id                          public identity: send it to the admin\n"
               "and prints the identity's SHA-256 fingerprint, to compare out of band.\n"
               "Existing files are never overwritten.\n\n"
               "  --name NAME   1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)\n"
               "  --out DIR     directory for the three files (created if missing)\n");
}

/* Accepts "--opt VALUE" and "--opt=VALUE"; returns 1 when argv[*i] is opt. */
static int take_opt(int argc, char **argv, int *i, const char *opt, const char **val) {
    size_t n = strlen(opt);
    if (strncmp(argv[*i], opt, n) != 0) return 0;
    if (argv[*i][n] == '=') {
        *val = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0') return 0;
    if (*i + 1 >= argc) {
        *val = NULL;
        return 1;
    }
    *val = argv[++*i];
    return 1;
}

int cmd_keygen(int argc, char **argv) {
    const char *name = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            keygen_usage(stdout);
            return 0;
        } else if (take_opt(argc, argv, &i, "--name", &v)) {
            if (!v) return fprintf(stderr, "fedlora keygen: --name needs a value\n"), 2;
            name = v;
        } else if (take_opt(argc, argv, &i, "--out", &v)) {
            if (!v) return fprintf(stderr, "fedlora keygen: --out needs a value\n"), 2;
            out = v;
        } else {
            fprintf(stderr, "fedlora keygen: unknown option '%s'\n", argv[i]);
            keygen_usage(stderr);
            return 2;
        }
    }
    if (!name || !out) {
        fprintf(stderr, "fedlora keygen: --name and --out are required\n");
        keygen_usage(stderr);
        return 2;
    }
    if (keys_name_check(name) != 0) {
        fprintf(stderr, "fedlora keygen: %s\n", err_msg());
        return 2;
    }
    keys_paths paths; /* for the messages: the files keys_write makes */
    keys_secret k;
    uint8_t fp[KEYS_FP_LEN];
    char fp_text[KEYS_FP_TEXT_LEN];
    if (keys_paths_of(&paths, out, name) != 0) {
        fprintf(stderr, "fedlora keygen: %s\n", err_msg());
        return 1;
    }
    int rc = keys_generate(name, &k);
    if (rc == 0) rc = keys_write(&k, out);
    if (rc == 0) rc = keys_fingerprint(&k.pub, fp);
    keys_secret_wipe(&k);
    if (rc != 0) {
        fprintf(stderr, "fedlora keygen: %s\n", err_msg());
        return 1;
    }
    keys_fingerprint_text(fp, fp_text);
    printf("wrote %s and %s (private: keep them on this machine)\n", paths.sign, paths.kx);
    printf("wrote %s (public identity: send it to the consortium admin)\n", paths.id);
    printf("fingerprint: %s\n", fp_text);
    printf("Read the fingerprint to the admin over a channel you trust (phone, video call);\n"
           "they must see the same one when they add %s.id to the roster.\n",
           name);
    return 0;
}
