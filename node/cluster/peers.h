/* gRPC channels to the other nodes, one per address, opened on first use and kept. */
#ifndef EDDY_PEERS_H
#define EDDY_PEERS_H

#include "common/rpc_client.h"

typedef struct peers peers;

/* Caller owns the result; free with peers_free after every call on its channels ended. */
peers *peers_new(int64_t max_message_bytes);
void peers_free(peers *p);

/* The channel to 'addr' (borrowed: valid until peers_free). NULL on OOM. Thread-safe. */
rpc_channel *peers_get(peers *p, const char *addr);

#endif
