/* A partition's checkpoint copied between state nodes as a stream of CheckpointChunk
 * messages: the sending side (a move's source, a partition's leader resyncing a
 * follower) streams a fresh checkpoint from one snapshot; the receiving side checks it as
 * it arrives and replaces its copy of the partition with it. Used by the mover
 * (FetchCheckpoint) and by the replicated log (ReplicaSnapshot). */
#ifndef EDDY_CKPTCOPY_H
#define EDDY_CKPTCOPY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "node/state/checkpoint.h"
#include "node/state/engine.h"

/* Sending: stream a fresh checkpoint of partition 'p' of the engine's store on the
 * server-streaming call 'c' (one CheckpointChunk per piece, waiting for gRPC's window when
 * the receiver is slower), encrypted when the engine has a checkpoint key. 'cancel' (NULL:
 * none) set by another thread stops it with EDDY_ERR_UNAVAILABLE at the next piece. The
 * caller finishes the call. */
eddy_err ckptcopy_send(engine *eng, uint32_t p, rpc_call *c, const atomic_bool *cancel,
                       struct checkpoint_info *out);

/* Sending, after ckptcopy_send: wait until gRPC has sent every queued chunk (the receiver
 * has taken all but its flow-control window), the client is gone, 'cancel' is set, or the
 * queue has not shrunk for 'stall_ms' (a receiver that stopped reading). A source that
 * holds something for the receiver's copy (a move's freeze) holds it until then: the
 * receiver may be a whole send queue behind the last chunk queued. */
void ckptcopy_drain(rpc_call *c, const atomic_bool *cancel, int64_t stall_ms);

/* Where a receive's time went. */
struct ckptcopy_stats {
    struct checkpoint_info info;  /* of the checkpoint received */
    int64_t total_ns;             /* the whole copy */
    int64_t write_ns;             /* the LevelDB writes of the batches (on the copy's own
                                     thread, while the next batch is received) */
    int64_t wait_ns;              /* the receiver waiting for those writes */
    uint64_t batches;             /* LevelDB writes of the load */
    int64_t sync_ns;              /* the final sync of LevelDB's log */
    int64_t take_ns;              /* the engine taking the loaded partition: one exclusive
                                     job, its wait for the writer included */
    grpc_status_code code;        /* the stream's status (OK unless the peer failed it) */
    char details[512];
};

/* Receiving: drop this node's copy of partition 'p' and replace it with the checkpoint
 * streamed by 'method' on 'ch' for 'req' (read with the engine's checkpoint key), written
 * from the calling thread around the engine's writer and made durable (one sync at the
 * end) before this returns. *next_seq is the partition's next seq after the load. The caller holds the
 * partition (engine_claim_partition). On any error the partition is left partial: the
 * caller drops it (engine_drop_partition) or copies again.
 * 'what' names the source in log lines. */
eddy_err ckptcopy_receive(engine *eng, uint32_t p, rpc_channel *ch, const char *method,
                          const ProtobufCMessage *req, int64_t timeout_ms, const char *what,
                          struct ckptcopy_stats *st, uint64_t *next_seq);

#endif
