/* A growable byte buffer with a maximum size (curl's dynbuf): replies, bodies and lines
 * read from the network, rendered text. Every buffer says how big it may get. */
#ifndef EDDY_BUF_H
#define EDDY_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "common/err.h"

/* Embedded in its owner; one thread at a time. 'p' is NUL-terminated once anything was
 * added (NULL before: use buf_str); 'len' excludes the NUL. A failed add leaves the
 * contents as they were. */
struct buf {
    char *p;
    size_t len;
    size_t cap;   /* bytes allocated, the NUL's included */
    size_t max;   /* 'len' never exceeds it */
};

#define BUF_INIT(max_bytes) {NULL, 0, 0, (max_bytes)}

void buf_init(struct buf *b, size_t max);
/* Frees the memory; the buffer is empty (same maximum) and usable again. */
void buf_release(struct buf *b);
/* Empty it, keeping the memory. */
void buf_reset(struct buf *b);

/* Append 'n' bytes: EDDY_ERR_TOO_LARGE if 'len' would pass the maximum, EDDY_ERR_NOMEM. */
eddy_err buf_add(struct buf *b, const void *d, size_t n);
/* Append printf-style text, with the errors of buf_add (EDDY_ERR_INVALID if the format
 * fails). */
eddy_err buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
eddy_err buf_vaddf(struct buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Drop the first 'n' bytes (at most 'len'), moving the rest to the front. */
void buf_consume(struct buf *b, size_t n);

/* The contents as a string ("" when empty). Borrowed until the next change. */
const char *buf_str(const struct buf *b);
/* Hand the memory over: the caller owns the result (free); NULL if nothing was added. The
 * buffer is empty afterwards. */
char *buf_detach(struct buf *b, size_t *len);

/* A buffer fed by a libcurl CURLOPT_WRITEFUNCTION (buf_sink_write, with the sink as
 * CURLOPT_WRITEDATA): 'err' says why the transfer was cut (EDDY_ERR_TOO_LARGE: the reply
 * passed the maximum). */
struct buf_sink {
    struct buf b;
    eddy_err err;
};

#define BUF_SINK_INIT(max_bytes) {BUF_INIT(max_bytes), EDDY_OK}

size_t buf_sink_write(char *d, size_t size, size_t nmemb, void *sink);

#endif
