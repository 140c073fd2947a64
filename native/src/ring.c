/* ring.c -- single-producer single-consumer event ring. */
#include "internal.h"

#include <stdlib.h>

int sk_ring_init(sk_ring *r, uint32_t size_pow2)
{
    if (size_pow2 < 2 || (size_pow2 & (size_pow2 - 1)))
        return -1;
    r->slot = calloc(size_pow2, sizeof *r->slot);
    if (!r->slot)
        return -1;
    r->mask = size_pow2 - 1;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->dropped, 0);
    atomic_init(&r->overflow, 0);
    return 0;
}

void sk_ring_free(sk_ring *r)
{
    free(r->slot);
    r->slot = NULL;
}

int sk_ring_push(sk_ring *r, const sk_event *ev)
{
    uint32_t tail = SK_LOAD(&r->tail);
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail - head > r->mask) {
        SK_ADD(&r->dropped, 1);
        atomic_store_explicit(&r->overflow, 1, memory_order_release);
        return -1;
    }
    r->slot[tail & r->mask] = *ev;
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
    return 0;
}

int sk_ring_pop(sk_ring *r, sk_event *out, int max)
{
    uint32_t head = SK_LOAD(&r->head);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    int n = 0;
    while (head != tail && n < max)
        out[n++] = r->slot[head++ & r->mask];
    atomic_store_explicit(&r->head, head, memory_order_release);
    return n;
}

int sk_ring_take_overflow(sk_ring *r)
{
    return atomic_exchange_explicit(&r->overflow, 0, memory_order_acq_rel);
}
