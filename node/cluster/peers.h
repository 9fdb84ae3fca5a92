/* gRPC channels to the other nodes, one per address, opened on first use and kept. */
#ifndef EDDY_PEERS_H
#define EDDY_PEERS_H

#include "common/rpc_client.h"
#include "common/tls.h"

typedef struct peers peers;

/* Caller owns the result; free with peers_free after every call on its channels ended. */
peers *peers_new(int64_t max_message_bytes);

/* Dial peers with TLS 'tls' (borrowed for the peers' life; NULL = plaintext): the cluster
 * CA checks their certificates and ours is presented (mTLS). Only before the first
 * peers_get. */
void peers_set_tls(peers *p, const struct tls_config *tls);
void peers_free(peers *p);

/* Calls to 'addr' (this node's own advertised address; copied) go to 'fn' in-process
 * (rpc_channel_open_local) instead of over the network: a node reaches the partitions it
 * owns itself without a loopback connection, and a --dev node runs the cluster's code
 * with no network hop at all. Only before the first peers_get. */
eddy_err peers_set_local(peers *p, const char *addr, rpc_local_fn *fn, void *ud);

/* The channel to 'addr' (borrowed: valid until peers_free). NULL on OOM. Thread-safe. */
rpc_channel *peers_get(peers *p, const char *addr);

/* One call of peers_fan: its result, and the answer (caller frees it with
 * protobuf_c_message_free_unpacked; NULL unless res.code is OK). */
struct peer_call {
    struct rpc_result res;
    ProtobufCMessage *resp;
    void *fan; /* internal */
};

/* Call 'method' on every addrs[i] with reqs[i] at once and wait for every answer (each
 * with 'timeout_ms'); calls[i] gets the i-th. A peer without a channel answers
 * UNAVAILABLE. The requests are lent (rpc_invoke_async_lent): this node's own handler
 * reads them in place (and must not change them). */
void peers_fan(peers *p, const char *method, const ProtobufCMessageDescriptor *resp_desc,
               const char *const *addrs, ProtobufCMessage *const *reqs, struct peer_call *calls,
               size_t n, int64_t timeout_ms);

#endif
