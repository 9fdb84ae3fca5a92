/* Listen-address parsing and the free-port check of the servers (see netaddr.h). */
#include "common/netaddr.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

bool netaddr_split(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return false;
        snprintf(host, hostlen, "%.*s", (int)(end - addr - 1), addr + 1);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
            return false;
        snprintf(host, hostlen, "%.*s", (int)(colon - addr), addr);
    }
    if (!host[0])
        snprintf(host, hostlen, "0.0.0.0");
    const char *p = colon + 1;
    if (!*p || strlen(p) >= portlen || strspn(p, "0123456789") != strlen(p))
        return false;
    snprintf(port, portlen, "%s", p);
    return strtol(p, NULL, 10) <= 65535;
}

eddy_err netaddr_check_bind(const char *addr, const char *flag, char *why, size_t whylen)
{
    char host[256], port[8];
    if (!netaddr_split(addr, host, sizeof(host), port, sizeof(port)) || strtol(port, NULL, 10) == 0)
        return EDDY_OK;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(why, whylen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return EDDY_ERR_NET;
    }
    eddy_err err = EDDY_OK;
    for (struct addrinfo *a = ai; a && err == EDDY_OK; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue; /* e.g. no IPv6 on this host: the server skips it too */
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
            if (errno == EADDRINUSE)
                snprintf(why, whylen, "address already in use: another process listens there "
                         "(choose another %s; port 0 picks a free one)", flag);
            else if (errno == EADDRNOTAVAIL)
                snprintf(why, whylen, "%s is not an address of this host", host);
            else if (errno == EACCES)
                snprintf(why, whylen, "permission denied: ports below 1024 need privileges");
            else
                snprintf(why, whylen, "%s", strerror(errno));
            err = EDDY_ERR_NET;
        }
        close(fd);
    }
    freeaddrinfo(ai);
    return err;
}
