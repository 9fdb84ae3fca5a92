/* A gRPC client on the core C API, for node-to-node calls and for libeddy: one channel per
 * target, synchronous unary calls, asynchronous unary calls completed on the channel's own
 * CQ thread, and synchronous reading of server streams.
 *
 * Threads: an rpc_channel may be used from any number of threads at once. Async callbacks
 * run on the channel's CQ thread; they must not block. */
#ifndef EDDY_RPC_CLIENT_H
#define EDDY_RPC_CLIENT_H

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/tls.h"

typedef struct rpc_channel rpc_channel;

struct rpc_channel_opts {
    int64_t max_recv_bytes;  /* largest response (default 64 MiB) */
    int64_t max_send_bytes;  /* largest request (default 64 MiB) */
    bool wait_for_ready;     /* queue calls until connected (up to the deadline) instead of
                                failing fast with UNAVAILABLE */
    const struct tls_config *tls; /* NULL or without a CA: plaintext. With a CA: TLS, and
                                     the client certificate if cert/key are set (files read
                                     by rpc_channel_open; borrowed for that call only) */
    const char *token;       /* NULL or "": none; else every call sends the metadata
                                "authorization: Bearer <token>" (copied) */
};

/* The result of a call. 'details' is the server's message (empty on OK). */
struct rpc_result {
    grpc_status_code code;
    char details[512];
    int64_t retry_after_ms; /* the server's "retry-after-ms" trailing metadata (a quota's
                               delay before a retry); 0 when absent */
};

/* Open a channel to 'target' ("127.0.0.1:7070"). 'opts' may be NULL for defaults. Caller
 * owns the result; free with rpc_channel_close. Returns NULL on allocation failure or if
 * the TLS files cannot be read (logged). */
rpc_channel *rpc_channel_open(const char *target, const struct rpc_channel_opts *opts);

/* Close the channel: pending async calls complete with CANCELLED first (their callbacks
 * have returned when this returns). Not from a callback of the same channel. Accepts
 * NULL. */
void rpc_channel_close(rpc_channel *ch);

/* Synchronous unary call of 'method' ("/eddy.v1.Eddy/Ingest") with 'timeout_ms' (for every
 * call of this file, timeout_ms <= 0 means no deadline). On OK
 * *resp is the decoded response (caller frees with protobuf_c_message_free_unpacked); on
 * any other status *resp is NULL. A response that does not decode gives INTERNAL. */
void rpc_invoke(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                ProtobufCMessage **resp, struct rpc_result *res);

/* Completion of an async call, on the channel's CQ thread. 'resp' is owned by the callee
 * (free with protobuf_c_message_free_unpacked); NULL unless res->code is OK. */
typedef void rpc_done_fn(void *ud, const struct rpc_result *res, ProtobufCMessage *resp);

/* An in-process server (rpc_server_invoke_local): start the unary call of 'method' with
 * 'req' and run 'done' exactly once with the response decoded by 'resp_desc', on whichever
 * thread answers (possibly before returning). 'req' is borrowed: copied before return, or
 * if 'lent', read in place by the handler, which must not change it, and the caller's
 * until 'done' has run. If it returns an error, 'done' never runs. */
typedef eddy_err rpc_local_fn(void *ud, const char *method, const ProtobufCMessage *req,
                              bool lent, const ProtobufCMessageDescriptor *resp_desc,
                              int64_t timeout_ms, rpc_done_fn *done, void *done_ud);

/* A channel to this process's own server: unary calls go to 'fn' (with 'ud') instead of
 * the network, with the same results as over a channel (a node calling a partition it
 * owns itself, and every call of a --dev node); streams and raw calls answer
 * UNIMPLEMENTED. An async call's 'done' runs on the thread that answers. Caller owns the
 * result (rpc_channel_close); NULL on allocation failure. */
rpc_channel *rpc_channel_open_local(rpc_local_fn *fn, void *ud);

/* Start an async unary call; 'req' is borrowed (packed before return). If this returns an
 * error, 'done' never runs; otherwise it runs exactly once. */
eddy_err rpc_invoke_async(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                          rpc_done_fn *done, void *ud);

/* rpc_invoke_async for a caller that keeps 'req' unchanged until 'done' has run: a local
 * channel's handler then reads it in place instead of a copy (an in-process Ingest's
 * State/Apply copied every event of the batch); over the network, the same as
 * rpc_invoke_async. */
eddy_err rpc_invoke_async_lent(rpc_channel *ch, const char *method,
                               const ProtobufCMessage *req,
                               const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                               rpc_done_fn *done, void *ud);

/* Called for each message of a server stream, on the calling thread; 'msg' is borrowed
 * for the duration of the callback. Return 0 to continue, non-zero to cancel the stream. */
typedef int rpc_stream_fn(void *ud, const ProtobufCMessage *msg);

/* Synchronous server-streaming call: sends 'req', calls 'on_msg' for every message until
 * the stream ends, then fills 'res' with the final status (CANCELLED if on_msg stopped
 * it). */
void rpc_invoke_stream(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                       rpc_stream_fn *on_msg, void *ud, struct rpc_result *res);

/* Send raw bytes as the request (for tests of malformed input) and return the status.
 * On OK the raw response bytes are discarded. */
void rpc_invoke_raw(rpc_channel *ch, const char *method, const void *bytes, size_t len,
                    int64_t timeout_ms, struct rpc_result *res);

#endif
