/* The glue between protobuf-c messages and gRPC core: packing a message into a
 * grpc_byte_buffer and back, deadlines in milliseconds, slices into C strings. Shared by
 * rpc_server.c and rpc_client.c so the conversions live in one place. */
#ifndef EDDY_PBGRPC_H
#define EDDY_PBGRPC_H

#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* Pack 'm' into a new byte buffer. Caller owns the result; free with
 * grpc_byte_buffer_destroy once the batch that sends it has completed. */
grpc_byte_buffer *pbgrpc_pack(const ProtobufCMessage *m);

/* A byte buffer holding a copy of 'len' bytes of 'data' (raw requests in tests). Caller
 * owns the result; free with grpc_byte_buffer_destroy. */
grpc_byte_buffer *pbgrpc_raw(const void *data, size_t len);

/* Decode 'bb' as a message of type 'd'. Returns NULL if 'bb' is NULL or does not decode.
 * Caller owns the result; free with protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *pbgrpc_unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb);

/* The absolute deadline 'ms' milliseconds from now (monotonic clock); infinite if ms <= 0. */
gpr_timespec pbgrpc_deadline(int64_t ms);

/* Milliseconds left until 'deadline' (negative once past; INT64_MAX if infinite). */
int64_t pbgrpc_remaining_ms(gpr_timespec deadline);

/* Copy slice 's' into 'buf' (size 'n' > 0) as a NUL-terminated string, truncating. */
void pbgrpc_slice_str(grpc_slice s, char *buf, size_t n);

#endif
