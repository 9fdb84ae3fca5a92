/* Listen addresses ("host:port", "[v6]:port"): splitting them, and checking before a server
 * library binds one that it is free, so a busy port is reported in one plain sentence
 * instead of gRPC core's or libmicrohttpd's own log lines. */
#ifndef EDDY_NETADDR_H
#define EDDY_NETADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

/* Split "host:port" / "[v6]:port" into 'host' and 'port' (digits, <= 65535). An empty host
 * means all IPv4 interfaces ("0.0.0.0"). Returns false on a malformed address. */
bool netaddr_split(const char *addr, char *host, size_t hostlen, char *port, size_t portlen);

/* Can 'addr' be bound now? Binds a probe socket to every address it resolves to (with
 * SO_REUSEADDR, like the servers) and closes it. EDDY_OK when it can, when the port is 0
 * (the server picks a free one) or when 'addr' is not host:port (the server reports it);
 * EDDY_ERR_NET with the reason in 'why' otherwise, naming 'flag' (the option that sets
 * the address, e.g. "--listen"): "address already in use: another process listens there
 * (choose another --listen; port 0 picks a free one)". A listener that appears between the check and the server's
 * bind still fails there, with the library's message. */
eddy_err netaddr_check_bind(const char *addr, const char *flag, char *why, size_t whylen);

#endif
