/* node sync choice: the low-rank update or the whole version, whichever
 * moves fewer bytes (docs/federation.md, "What a round moves").
 *
 * A round's update has rank R (Σ r_i for the exact merge), so its file is
 * about 4·(out + in)·R bytes per adapted weight against the version's
 * 4·out·in (fp32) for the same weight plus every other tensor. With many
 * members the update can pass the version: (out + in)·R > out·in when
 * R > out·in / (out + in), half the width for a square weight. The ROUND
 * says both sizes (update_size, base_size); when the update is not smaller,
 * the node downloads the version. */
#include "node/internal.h"

int node_sync_prefer_update(const node_ctx *n, const struct msg_round *r) {
    if (!r->has_update || !r->has_base_size || r->update_size < r->base_size) return 1;
    node_log(n,
             "round %llu: the low-rank update (%.1f MB) is not smaller than the version (%.1f "
             "MB); downloading the version",
             (unsigned long long)r->round, (double)r->update_size / 1e6,
             (double)r->base_size / 1e6);
    return 0;
}
