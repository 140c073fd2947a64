/* buf.c -- the relay buffers: one per direction of a flow, only while bytes
 * wait in it.
 *
 * Every buffer is relay_buffer_bytes long, so memory per connection is
 * bounded whatever the peers do. Each worker keeps a few drained buffers to
 * spare malloc on busy paths; idle connections hold none. Worker-owned; only
 * the live counters are read by other threads. */
#include "internal.h"

#include <stdlib.h>

#define SK_BUF_KEEP 8

sk_buf *sk_buf_get(sk_worker *w)
{
    sk_buf *b = w->buf_free;
    if (b) {
        w->buf_free = b->next;
        w->buf_free_n--;
    } else {
        uint32_t cap = (uint32_t)w->engine->opts.relay_buffer_bytes;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        SK_ADD(&w->engine->bufs_live, 1);
        SK_ADD(&w->engine->buf_bytes_live, cap);
    }
    b->start = b->end = 0;
    b->next = NULL;
    return b;
}

void sk_buf_put(sk_worker *w, sk_buf *b)
{
    if (!b)
        return;
    if (w->buf_free_n < SK_BUF_KEEP) {
        b->next = w->buf_free;
        w->buf_free = b;
        w->buf_free_n++;
        return;
    }
    SK_SUB(&w->engine->bufs_live, 1);
    SK_SUB(&w->engine->buf_bytes_live, b->cap);
    free(b);
}

void sk_buf_free_all(sk_worker *w)
{
    while (w->buf_free) {
        sk_buf *b = w->buf_free;
        w->buf_free = b->next;
        SK_SUB(&w->engine->bufs_live, 1);
        SK_SUB(&w->engine->buf_bytes_live, b->cap);
        free(b);
    }
    w->buf_free_n = 0;
}
