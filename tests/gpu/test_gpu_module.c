/* test_gpu_module — the CUDA backend is a module loaded at run time
 * (gpu/gpu_api.h, gpu/gpu_load.h), never linked into fedlora.
 * Runs in every build and is never skipped:
 *   - the fedlora binary (FEDLORA_BIN) has no DT_NEEDED entry for cudart,
 *     cuBLAS(Lt) or NCCL: read from its ELF dynamic section, which must
 *     list libc (so the reader works); where the build made the module, its
 *     own dynamic section does list cudart and cuBLAS (so the check would see
 *     them);
 *   - gpu_load_api in this process: FEDLORA_CUDA_MODULE naming a missing
 *     file, a file that is no shared object, and a library without the entry
 *     point each fail with a message naming it and "use --device cpu"; where
 *     the build made the module, naming it loads it, its table is complete
 *     and gpu_load_path tells where it came from;
 *   - `fedlora train --device cuda` with FEDLORA_CUDA_MODULE=/nonexistent
 *     fails (exit 1) with "module ... not found" before writing anything; in
 *     a build without the module, so it does without the variable, naming
 *     the binary's directory.
 * GPU_MODULE_BUILT (tests/gpu/CMakeLists.txt) is 1 where the build made
 * libfedlora_cuda.so; it is then next to the fedlora binary. */
#include "gpu/gpu_load.h"
#include "tests/support/ts_model.h"

#include <dlfcn.h>
#include <elf.h>
#include <math.h>

#define MAX_NEEDED 64

typedef struct {
    char name[MAX_NEEDED][256];
    int n;
} needed_list;

/* The file offset of virtual address a in ELF image e (its PT_LOAD maps). */
static int vaddr_offset(const unsigned char *e, size_t len, const Elf64_Ehdr *h, uint64_t a,
                        uint64_t *off) {
    for (int i = 0; i < h->e_phnum; i++) {
        const Elf64_Phdr *p = (const Elf64_Phdr *)(e + h->e_phoff + (size_t)i * h->e_phentsize);
        if (p->p_type == PT_LOAD && a >= p->p_vaddr && a - p->p_vaddr < p->p_filesz) {
            *off = a - p->p_vaddr + p->p_offset;
            return *off < len ? 0 : -1;
        }
    }
    return -1;
}

/* The DT_NEEDED names of the ELF64 file at path, as the dynamic loader reads
 * them: PT_DYNAMIC's entries, names in the DT_STRTAB they point into. */
static int elf_needed(const char *path, needed_list *out) {
    out->n = 0;
    char *buf = NULL;
    size_t len = 0;
    if (fio_read_all(path, (size_t)1 << 30, &buf, &len) != 0) return -1;
    const unsigned char *e = (const unsigned char *)buf;
    const Elf64_Ehdr *h = (const Elf64_Ehdr *)e;
    int rc = -1;
    if (len < sizeof *h || memcmp(e, ELFMAG, SELFMAG) != 0 || e[EI_CLASS] != ELFCLASS64 ||
        h->e_phentsize != sizeof(Elf64_Phdr) || h->e_phoff > len ||
        (len - h->e_phoff) / sizeof(Elf64_Phdr) < h->e_phnum) {
        err_set("%s: not an ELF64 file with program headers", path);
        goto done;
    }
    const Elf64_Dyn *dyn = NULL;
    size_t n_dyn = 0;
    for (int i = 0; i < h->e_phnum; i++) {
        const Elf64_Phdr *p = (const Elf64_Phdr *)(e + h->e_phoff + (size_t)i * h->e_phentsize);
        if (p->p_type == PT_DYNAMIC && p->p_offset <= len && p->p_filesz <= len - p->p_offset) {
            dyn = (const Elf64_Dyn *)(e + p->p_offset);
            n_dyn = p->p_filesz / sizeof *dyn;
        }
    }
    uint64_t strtab = 0, strsz = 0, str_off = 0;
    for (size_t i = 0; i < n_dyn && dyn[i].d_tag != DT_NULL; i++) {
        if (dyn[i].d_tag == DT_STRTAB) strtab = dyn[i].d_un.d_ptr;
        if (dyn[i].d_tag == DT_STRSZ) strsz = dyn[i].d_un.d_val;
    }
    if (!dyn || !strtab || vaddr_offset(e, len, h, strtab, &str_off) != 0 ||
        strsz > len - str_off) {
        err_set("%s: no readable dynamic section", path);
        goto done;
    }
    for (size_t i = 0; i < n_dyn && dyn[i].d_tag != DT_NULL; i++) {
        if (dyn[i].d_tag != DT_NEEDED) continue;
        uint64_t at = dyn[i].d_un.d_val;
        const char *name = (const char *)e + str_off + at;
        if (at >= strsz || !memchr(name, '\0', strsz - at) || out->n == MAX_NEEDED) {
            err_set("%s: DT_NEEDED entry %d is out of bounds", path, out->n);
            goto done;
        }
        snprintf(out->name[out->n++], sizeof out->name[0], "%s", name);
    }
    rc = 0;
done:
    free(buf);
    return rc;
}

/* The first needed library whose name contains part, or NULL. */
static const char *needs(const needed_list *l, const char *part) {
    for (int i = 0; i < l->n; i++)
        if (strstr(l->name[i], part)) return l->name[i];
    return NULL;
}

/* gpu_load_api with FEDLORA_CUDA_MODULE=path fails, saying the needles. */
static void check_load_fails(const char *path, const char *needle1, const char *needle2) {
    setenv(GPU_LOAD_ENV, path, 1);
    err_clear();
    const gpu_api *api = gpu_load_api();
    const char *msg = err_msg();
    printf("%s=%s: %s\n", GPU_LOAD_ENV, path, api ? "loaded" : msg);
    CHECK_MSG(api == NULL, "%s loaded as the CUDA module", path);
    CHECK_MSG(strstr(msg, path) && strstr(msg, needle1) && strstr(msg, needle2) &&
                  strstr(msg, "use --device cpu"),
              "loading %s: message '%s' lacks '%s', '%s' or the advice", path, msg, needle1,
              needle2);
    unsetenv(GPU_LOAD_ENV);
}

/* `fedlora train --device cuda` refused with the needles, nothing written. */
static void check_train_refused(const char *tag, const char *needle1, const char *needle2) {
    char out[TS_PATH], model_dir[TS_PATH], data[TS_PATH];
    ts_path(out, "%s", tag);
    int rc = ts_run(tag, "train", "--model", ts_path(model_dir, "no_model"), "--data",
                    ts_path(data, "no_data.txt"), "--out", out, "--device", "cuda", NULL);
    char *err = ts_output(tag, "err");
    printf("%s: exit %d: %s", tag, rc, err ? err : "(no stderr)\n");
    CHECK_MSG(rc == 1 && err && strstr(err, needle1) && strstr(err, needle2) &&
                  strstr(err, "use --device cpu"),
              "%s: exit %d, stderr '%s' lacks '%s' / '%s' / the advice", tag, rc,
              err ? err : "(none)", needle1, needle2);
    CHECK_MSG(!fio_exists(out), "%s: %s was created", tag, out);
    free(err);
}

int main(void) {
    const char *bin = ts_bin();
    char dir[TS_PATH], module[TS_PATH];
    snprintf(dir, sizeof dir, "%s", bin);
    char *slash = strrchr(dir, '/');
    CHECK_MSG(slash != NULL, "FEDLORA_BIN '%s' is not a path", bin);
    if (slash) *slash = '\0';
    ts_in(module, dir, GPU_MODULE_FILE);

    /* The binary links no CUDA library. */
    needed_list l;
    CHECK_OK(elf_needed(bin, &l));
    printf("%s needs %d libraries:", bin, l.n);
    for (int i = 0; i < l.n; i++) printf(" %s", l.name[i]);
    printf("\n");
    CHECK_MSG(needs(&l, "libc.so"), "%s: no libc among its DT_NEEDED entries", bin);
    static const char *const cuda_libs[] = {"cudart", "cublas", "nccl", "libcuda"};
    for (size_t i = 0; i < sizeof cuda_libs / sizeof cuda_libs[0]; i++)
        CHECK_MSG(!needs(&l, cuda_libs[i]), "%s links %s", bin, needs(&l, cuda_libs[i]));

    /* The loader's refusals, in this process. */
    char junk[TS_PATH];
    CHECK_OK(ts_write(ts_path(junk, "%s", GPU_MODULE_FILE), "not a shared object\n"));
    check_load_fails("/nonexistent/" GPU_MODULE_FILE, "not found", GPU_LOAD_ENV);
    check_load_fails(junk, "cannot be loaded", "library path");
    Dl_info libm;
    CHECK(dladdr((void *)cos, &libm) && libm.dli_fname);
    if (libm.dli_fname) {
        printf("a library without the entry point: %s\n", libm.dli_fname);
        CHECK_MSG(strstr(libm.dli_fname, "libm"), "cos is in %s, not libm", libm.dli_fname);
        check_load_fails(libm.dli_fname, "not a fedlora CUDA backend module", GPU_API_ENTRY);
    }

    /* The binary's refusal, as a process, before it loads or writes anything. */
    setenv(GPU_LOAD_ENV, "/nonexistent", 1);
    check_train_refused("override", "CUDA backend module /nonexistent", "not found");
    unsetenv(GPU_LOAD_ENV);

#if GPU_MODULE_BUILT
    printf("this build made %s\n", module);
    CHECK_OK(elf_needed(module, &l));
    CHECK_MSG(needs(&l, "libcudart") && needs(&l, "libcublas"),
              "%s: cudart or cuBLAS missing from its DT_NEEDED entries", module);
    setenv(GPU_LOAD_ENV, module, 1);
    const gpu_api *api = gpu_load_api();
    CHECK_MSG(api != NULL, "%s does not load: %s", module, err_msg());
    if (api) {
        CHECK(api->version == GPU_API_VERSION && api->layout == gpu_api_layout());
        const void *const *fn = (const void *const *)&api->why_unavailable;
        size_t n_fn = (sizeof *api - offsetof(gpu_api, why_unavailable)) / sizeof(void *);
        for (size_t i = 0; i < n_fn; i++) CHECK_MSG(fn[i] != NULL, "table entry %zu is NULL", i);
        const char *at = gpu_load_path();
        CHECK_MSG(at && strcmp(at, module) == 0, "loaded from '%s', not %s", at ? at : "(null)",
                  module);
        int n = api->available();
        printf("the module sees %d CUDA device(s)\n", n);
        CHECK(n >= 0);
        CHECK(gpu_load_api() == api); /* loaded once */
    }
    unsetenv(GPU_LOAD_ENV);
#else
    printf("this build has no CUDA backend module\n");
    CHECK_MSG(!fio_exists(module), "%s exists in a build without the CUDA backend", module);
    check_train_refused("no_module", "not found next to", "this build has no CUDA backend");
#endif
    return check_finish();
}
