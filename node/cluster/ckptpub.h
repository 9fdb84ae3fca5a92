/* A state node's checkpoints as the cluster sees them (DESIGN: docs/design.md,
 * "Checkpoints"): each checkpoint written is recorded in etcd at
 * /eddy/<cluster>/checkpoints/<p>, and a node that leaves gracefully writes a last
 * checkpoint of every partition it still holds, so the next owner restores everything it
 * acknowledged from a shared --checkpoint-dir. */
#ifndef EDDY_CKPTPUB_H
#define EDDY_CKPTPUB_H

#include <stdbool.h>
#include <stdint.h>

#include "common/cluster.h"
#include "node/cluster/membership.h"
#include "node/cluster/state_service.h"
#include "node/state/checkpoint.h"
#include "node/state/engine.h"

/* The etcd record of checkpoint 'ci' written by node 'self': id = the file's name, path
 * = its absolute path (as given when it cannot be resolved). Pure but for realpath. */
void ckptpub_record(const struct checkpoint_info *ci, const char *self,
                    struct cluster_checkpoint *out);

/* Record 'ci' in etcd (a plain put with no lease: the record outlives the node, so another
 * node can restore from a shared directory). Failures are logged: the next checkpoint
 * records again. Runs on the checkpoint scheduler's thread. */
void ckptpub_put(membership *mem, const char *cluster, const struct checkpoint_info *ci);

/* Whether a leaving node writes a final checkpoint of a partition: it has events and the
 * node owns it, or it is moving away (its new owner may not have the final tail yet, and
 * restores this checkpoint when it cannot get it from the leaving node). */
bool ckptpub_final_wanted(bool owned, bool moving_out, uint64_t next_seq);

/* Write the final checkpoints into 'dir' (after the RPC server and the scheduler stopped,
 * before the lease is revoked). */
void ckptpub_final(const char *dir, engine *eng, membership *mem, struct state_service *ss);

#endif
