/* The web console's files (console/ in the repository), embedded into the binaries at build
 * time by scripts/embed_assets.cmake, so a process serves its console without reading any
 * file at run time. The array is generated: gen/console_assets.c in the build tree. */
#ifndef EDDY_CONSOLE_ASSETS_H
#define EDDY_CONSOLE_ASSETS_H

#include <stddef.h>

struct console_asset {
    const char *name;         /* the file name, "index.html", served as /index.html */
    const char *content_type; /* from the extension */
    const unsigned char *data;
    size_t len;
};

extern const struct console_asset console_assets[];
extern const size_t console_nassets;

#endif
