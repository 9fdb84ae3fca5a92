/* Growable byte buffers with a maximum size (see buf.h). */
#include "common/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_FIRST 256 /* the first allocation, unless the maximum is smaller */

void buf_init(struct buf *b, size_t max)
{
    *b = (struct buf)BUF_INIT(max);
}

void buf_release(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

/* Room for 'n' more bytes and the NUL. */
static eddy_err grow(struct buf *b, size_t n)
{
    if (n > b->max - b->len)
        return EDDY_ERR_TOO_LARGE;
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return EDDY_OK;
    size_t cap = b->cap ? b->cap : BUF_FIRST;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (b->max < SIZE_MAX && cap > b->max + 1) /* never more than the maximum can use */
        cap = b->max + 1;
    char *p = realloc(b->p, cap);
    if (!p)
        return EDDY_ERR_NOMEM;
    if (!b->p)
        p[0] = '\0';
    b->p = p;
    b->cap = cap;
    return EDDY_OK;
}

eddy_err buf_add(struct buf *b, const void *d, size_t n)
{
    eddy_err err = grow(b, n);
    if (err != EDDY_OK)
        return err;
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return EDDY_OK;
}

eddy_err buf_addf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eddy_err err = buf_vaddf(b, fmt, ap);
    va_end(ap);
    return err;
}

eddy_err buf_vaddf(struct buf *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    int w = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    eddy_err err = EDDY_OK;
    if (w < 0) {
        err = EDDY_ERR_INVALID;
    } else if (b->p && (size_t)w < b->cap - b->len) { /* it fit */
        b->len += (size_t)w;
    } else if ((err = grow(b, (size_t)w)) == EDDY_OK) {
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, again);
        b->len += (size_t)w;
    }
    if (err != EDDY_OK && b->p)
        b->p[b->len] = '\0'; /* a try that did not fit wrote past the end */
    va_end(again);
    return err;
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n + 1); /* the NUL too */
    b->len -= n;
}

const char *buf_str(const struct buf *b)
{
    return b->p ? b->p : "";
}

char *buf_detach(struct buf *b, size_t *len)
{
    char *p = b->p;
    if (len)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

size_t buf_sink_write(char *d, size_t size, size_t nmemb, void *sink)
{
    struct buf_sink *s = sink;
    s->err = buf_add(&s->b, d, size * nmemb);
    return s->err == EDDY_OK ? size * nmemb : 0; /* less than given: curl stops */
}
