/* lora_target.h — private to lora/: checking an adapter's config and
 * matching module paths against it as PEFT does (lora_target.c), for
 * lora.c's lora_create. The config's own functions (lora_config_*) are
 * declared in lora.h. */
#ifndef FL_LORA_LORA_TARGET_H
#define FL_LORA_LORA_TARGET_H

#include "lora/lora.h"

/* The config's own values (rank, alpha, dropout, targets, patterns), before
 * any module is looked at. Returns 0, or −1 with the error set. */
int lora_target_check(const lora_config *c);

/* target_modules is "all-linear". */
int lora_target_all_linear(const lora_config *c);

/* PEFT's suffix rule for lists: path == name or path ends with "." + name. */
int lora_target_suffix(const char *path, const char *name);

/* *hit: does the module at path (in block layer) take an adapter? Returns 0,
 * or −1 with the error set (a bad regular expression). */
int lora_target_match(const lora_config *c, const char *path, int layer, int *hit);

/* Sorts the rank and alpha patterns by key: adapter_config.json is written
 * with sorted keys (by PEFT too), so training and reloading try them in the
 * same order. */
void lora_target_sort_patterns(lora_config *c);

/* *out: the value of the first pattern of p[0 … n) that matches path (as
 * get_pattern_key), or dflt. Returns 0, or −1 with the error set. */
int lora_target_pattern(const lora_pattern *p, int n, const char *path, const char *what,
                        double dflt, double *out);

#endif
