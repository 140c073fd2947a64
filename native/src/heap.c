/* heap.c -- binary min-heap of timers keyed by (deadline, schedule order). */
#include "internal.h"

#include <stdlib.h>

void sk_timer_init(sk_timer *t, sk_timer_cb cb)
{
    t->deadline = 0;
    t->seq = 0;
    t->index = SK_TIMER_IDLE;
    t->cb = cb;
}

void sk_heap_init(sk_heap *h)
{
    h->v = NULL;
    h->n = h->cap = 0;
    h->seq = 0;
}

void sk_heap_free(sk_heap *h)
{
    for (uint32_t i = 0; i < h->n; i++)
        h->v[i]->index = SK_TIMER_IDLE;
    free(h->v);
    sk_heap_init(h);
}

static bool before(const sk_timer *a, const sk_timer *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void place(sk_heap *h, uint32_t i, sk_timer *t)
{
    h->v[i] = t;
    t->index = i;
}

static void sift_up(sk_heap *h, uint32_t i)
{
    sk_timer *t = h->v[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!before(t, h->v[parent]))
            break;
        place(h, i, h->v[parent]);
        i = parent;
    }
    place(h, i, t);
}

static void sift_down(sk_heap *h, uint32_t i)
{
    sk_timer *t = h->v[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= h->n)
            break;
        if (child + 1 < h->n && before(h->v[child + 1], h->v[child]))
            child++;
        if (!before(h->v[child], t))
            break;
        place(h, i, h->v[child]);
        i = child;
    }
    place(h, i, t);
}

int sk_heap_push(sk_heap *h, sk_timer *t, uint64_t deadline)
{
    if (sk_timer_pending(t))
        sk_heap_remove(h, t);
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 16;
        sk_timer **v = realloc(h->v, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        h->v = v;
        h->cap = cap;
    }
    t->deadline = deadline;
    t->seq = ++h->seq;
    place(h, h->n++, t);
    sift_up(h, t->index);
    return 0;
}

void sk_heap_remove(sk_heap *h, sk_timer *t)
{
    if (!sk_timer_pending(t))
        return;
    uint32_t i = t->index;
    t->index = SK_TIMER_IDLE;
    h->n--;
    if (i == h->n)
        return;
    sk_timer *last = h->v[h->n];
    place(h, i, last);
    if (i > 0 && before(last, h->v[(i - 1) / 2]))
        sift_up(h, i);
    else
        sift_down(h, i);
}

sk_timer *sk_heap_pop_due(sk_heap *h, uint64_t now)
{
    sk_timer *t = sk_heap_top(h);
    if (!t || t->deadline > now)
        return NULL;
    sk_heap_remove(h, t);
    return t;
}
