/* gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflectionInfo) over
 * rpc_server, so grpcurl and the reflection clients can list a server's services and fetch
 * the descriptors of its files: an index of a FileDescriptorSet, by file name and by the
 * symbols the files define, and the bidirectional stream that answers from it. */
#ifndef EDDY_REFLECTION_H
#define EDDY_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/rpc_server.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

/* The descriptor set the build embeds (CMakeLists.txt: every file of proto/eddy/v1 and
 * proto/grpc with its imports and comments, as protoc --descriptor_set_out writes it). */
extern const unsigned char eddy_descriptor_set[];
extern const size_t eddy_descriptor_set_len;

/* An index of one descriptor set. Read-only once built: any thread may use it. */
typedef struct reflection reflection;

/* Index the FileDescriptorSet 'set' ('len' bytes; borrowed: it must outlive the index, as
 * the embedded eddy_descriptor_set does): every file by its name, and every service,
 * method, message, field, oneof, enum, enum value and extension, nested ones included, by
 * its fully-qualified name. Returns NULL with 'why' set on a malformed set, a file without
 * a name, a duplicate file, or out of memory. Caller owns the result; free with
 * reflection_free (after the servers it is registered on are shut down). */
reflection *reflection_new(const uint8_t *set, size_t len, char *why, size_t whylen);
void reflection_free(reflection *r);

/* Register /grpc.reflection.v1.ServerReflection/ServerReflectionInfo and its v1alpha twin
 * on 's' (before rpc_server_start). list_services answers with the services of the
 * methods 's' has registered when it is asked: register this beside the others. */
eddy_err reflection_register(reflection *r, rpc_server *s);

/* The answer to one request, as the stream sends it. 's' gives the services for
 * list_services (borrowed; its methods are read; NULL: none). Unknown files, symbols, types
 * and extensions are answered with an error_response NOT_FOUND, a request with nothing set
 * INVALID_ARGUMENT. Returns NULL only when out of memory. The answer borrows from 'req'
 * and from the index; caller owns it: free with reflection_answer_free. */
Grpc__Reflection__V1__ServerReflectionResponse *
reflection_answer(const reflection *r, const rpc_server *s,
                  const Grpc__Reflection__V1__ServerReflectionRequest *req);
void reflection_answer_free(Grpc__Reflection__V1__ServerReflectionResponse *resp);

#endif
