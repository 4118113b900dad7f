/* trainer_checkpoint — the training checkpoint's files and the configuration
 * a checkpoint belongs to (the trainer's loop is trainer.c). A checkpoint is
 * OUT/checkpoint/step-N/ with the adapter (PEFT files), the optimizer
 * (AdamW moments) and the trainer state (step, data position, dropout
 * counter, tokens, time, and the configuration as JSON); `latest` names the
 * newest. Written to a temporary directory and renamed, so a crash leaves
 * the previous checkpoint whole (docs/training.md, "Checkpoints"). */
#ifndef FL_TRAIN_TRAINER_CHECKPOINT_H
#define FL_TRAIN_TRAINER_CHECKPOINT_H

#include "data/dataset.h"
#include "lora/adamw.h"
#include "lora/lora.h"
#include "model/model.h"
#include "train/trainer.h"

#include <jansson.h>
#include <stdint.h>

/* What a checkpoint carries besides the adapter and the optimizer. */
typedef struct {
    int64_t step;
    uint64_t position; /* rows of the data order consumed */
    uint64_t dropout_counter;
    int64_t tokens;
    double elapsed;
    const char *device;    /* where the run computes: "cpu" or "cuda" */
    const char *precision; /* "fp32" or "bf16" */
} train_state;

/* Everything the arithmetic of a step depends on, besides the state a
 * checkpoint carries (threads are left out: they only warn). New reference. */
json_t *trainer_config_json(const model *m, const lora_set *s, const dataset *d,
                            const trainer_options *o);
/* Writes OUT/checkpoint/step-N (st->step) and points `latest` at it; older
 * leftovers of interrupted saves are removed. */
int trainer_write_checkpoint(const char *out_dir, const lora_set *s, const adamw *opt,
                             const train_state *st, json_t *cfg);
/* Removes leftovers of interrupted saves in ckdir (temporary directories
 * and files), keeping `keep` (a step-N name, or NULL). */
int trainer_remove_leftovers(const char *ckdir, const char *keep);
/* dir (PATH of 4096 bytes): the checkpoint `given` names — a step-N
 * directory itself, or a checkpoint directory through its `latest`. */
int trainer_resolve_checkpoint(const char *given, char *dir);
/* Puts the checkpoint's adapter, optimizer and counters into the run,
 * refusing one whose configuration differs from cfg (naming the field). */
int trainer_load_checkpoint(const char *dir, const model *m, lora_set *s, adamw *opt,
                            train_state *st, json_t *cfg);

#endif
