/* test_gpu_nccl — data parallelism through NCCL with one rank: the bootstrap
 * (id file written by rank 0, then removed; an existing file refused; the
 * environment variables), and training: a model distributed over one rank
 * must take exactly the steps of one that is not (the all-reduces of the
 * target count, the loss and the gradients are then identities).
 * Skipped (77) without a GPU, or in a build without NCCL. */
#include "gpu_test.h"

#include "tests/cpu/tiny.h"
#include "util/err.h"
#include "util/fio.h"

#include <string.h>
#include <unistd.h>

static gpu_model *upload(model *m, lora_set *s, int B, int T) {
    gpu_options o;
    gpu_options_init(&o);
    o.precision = GPU_PRECISION_BF16;
    o.batch = B;
    o.seq = T;
    gpu_model *g = NULL;
    CHECK_OK(gpu_model_upload(&g, m, s, &o));
    if (!g) exit(check_finish());
    return g;
}

int main(void) {
    GPU_TEST_REQUIRE_DEVICE();
    if (!gpu_dist_supported()) {
        printf("skipped: this build has no NCCL\n");
        return GPU_TEST_SKIP;
    }
    tiny_case tc[TINY_MAX_CASES];
    tiny_cases(tc);
    const tiny_case *c = &tc[0];
    int B = c->B, T = c->T, N = B * T, K = 2;
    model *m = NULL;
    CHECK_OK(model_create(&m, &c->cfg));
    if (!m) return check_finish();
    tiny_weights(m, 5);
    lora_config lc;
    lora_config_init(&lc);
    lc.rank = 4;
    lc.alpha = 8;
    lc.dropout = 0.1;
    CHECK_OK(lora_config_set_targets(&lc, "q_proj,v_proj,down_proj"));
    lora_set *s = NULL, *s1 = NULL, *s2 = NULL;
    CHECK_OK(lora_create(&s, m, &lc));
    CHECK_OK(lora_create(&s1, m, &lc));
    CHECK_OK(lora_create(&s2, m, &lc));
    if (!s || !s1 || !s2) return check_finish();

    gpu_model *plain = upload(m, s, B, T), *dist = upload(m, s, B, T);
    CHECK(gpu_dist_world(plain) == 1 && gpu_dist_rank(plain) == 0);

    /* bootstrap */
    char dir[] = "/tmp/fedlora-nccl-XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/id", dir);
    CHECK_OK(fio_write_atomic(path, "stale", 5, 0600));
    CHECK_FAILS_WITH(gpu_dist_init(dist, 0, 1, path, 5), "already exists");
    unlink(path);
    CHECK_FAILS_WITH(gpu_dist_init(dist, 1, 1, path, 5), "rank 1 of 1");
    unsetenv(GPU_DIST_ENV_WORLD);
    int enabled = -1;
    CHECK_OK(gpu_dist_init_env(dist, 5, &enabled));
    CHECK(enabled == 0);
    setenv(GPU_DIST_ENV_WORLD, "1", 1);
    setenv(GPU_DIST_ENV_RANK, "0", 1);
    setenv(GPU_DIST_ENV_ID_FILE, path, 1);
    CHECK_OK(gpu_dist_init_env(dist, 30, &enabled));
    CHECK(enabled == 1);
    CHECK(gpu_dist_world(dist) == 1 && gpu_dist_rank(dist) == 0);
    CHECK(!fio_exists(path)); /* rank 0 removes it once every rank has joined */
    CHECK_FAILS_WITH(gpu_dist_init(dist, 0, 1, path, 5), "already distributed");
    rmdir(dir);

    /* training: identical steps */
    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 1e-2;
    oc.total_steps = 4;
    CHECK_OK(gpu_adamw_init(plain, &oc));
    CHECK_OK(gpu_adamw_init(dist, &oc));
    gpu_lora_set_training(plain, 1);
    gpu_lora_set_training(dist, 1);
    int32_t *tok = malloc((size_t)K * N * 4), *tg = malloc((size_t)K * N * 4);
    for (int step = 0; step < 4; step++) {
        for (int k = 0; k < K; k++)
            tiny_batch(tok + k * N, tg + k * N, N, c->cfg.vocab_size, 100 * step + k);
        gpu_step_result a, b;
        CHECK_OK(gpu_train_step(plain, tok, tg, K, &a));
        CHECK_OK(gpu_train_step(dist, tok, tg, K, &b));
        printf("  step %d: loss %.6f / %.6f, grad norm %.6f / %.6f\n", step + 1, a.loss, b.loss,
               a.grad_norm, b.grad_norm);
        CHECK(a.loss == b.loss && a.grad_norm == b.grad_norm && a.n_targets == b.n_targets);
    }
    CHECK_OK(gpu_lora_download(plain, s1));
    CHECK_OK(gpu_lora_download(dist, s2));
    int64_t same = 0, total = 0;
    for (int i = 0; i < lora_num_tensors(s1); i++) {
        model_param *x = lora_tensor(s1, i), *y = lora_tensor(s2, i);
        for (int64_t j = 0; j < x->numel; j++) same += x->data[j] == y->data[j];
        total += x->numel;
    }
    printf("  adapter after 4 steps: %lld of %lld values identical\n", (long long)same,
           (long long)total);
    CHECK(same == total);

    gpu_model_free(plain);
    gpu_model_free(dist);
    free(tok), free(tg);
    lora_free(s), lora_free(s1), lora_free(s2);
    lora_config_free(&lc);
    model_free(m);
    return check_finish();
}
