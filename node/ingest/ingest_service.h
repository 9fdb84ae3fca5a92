/* The public eddy.v1.Eddy service of a node: decodes and validates requests on the RPC
 * handler threads, hands writes to the state engine (answered from the writer thread once
 * durable) and answers reads from the query layer. */
#ifndef EDDY_INGEST_SERVICE_H
#define EDDY_INGEST_SERVICE_H

#include "common/rpc_server.h"
#include "node/ingest/validate.h"
#include "node/state/engine.h"
#include "node/state/query.h"

struct ingest_service {
    engine *eng;             /* borrowed */
    struct query_ctx q;
    struct limits lim;
    int64_t max_batch;       /* events per Ingest request */
};

/* Register the six methods of eddy.v1.Eddy on 's'. 'svc' must outlive the server. */
eddy_err ingest_service_register(struct ingest_service *svc, rpc_server *s);

#endif
