/* event.c -- events from the workers to the control thread.
 *
 * Each worker owns two single-producer rings (high and normal priority) and
 * never waits on the consumer: a full ring drops the event and says so once.
 * The control thread sleeps on one eventfd for all of them; a flag keeps a
 * burst of events to one eventfd write. */
#include "internal.h"

#include <unistd.h>

int sk_engine_event_fd(const sk_engine *e)
{
    return e->eventfd;
}

static void signal_control(sk_engine *e)
{
    if (atomic_exchange_explicit(&e->event_signalled, 1, memory_order_acq_rel) == 0) {
        uint64_t one = 1;
        ssize_t n = write(e->eventfd, &one, sizeof one);
        SK_UNUSED(n); /* an eventfd write only fails on counter overflow */
    }
}

void sk_worker_emit(sk_worker *w, int prio, uint32_t type, uint64_t id, int64_t a, int64_t b)
{
    sk_event ev = {.type = type, .worker = (uint32_t)w->index, .id = id, .a = a, .b = b};
    sk_ring_push(&w->ring[prio == SK_PRIO_HIGH ? 0 : 1], &ev);
    signal_control(w->engine);
}

void sk_engine_ack_event_fd(sk_engine *e)
{
    uint64_t v;
    /* read first, then clear the flag: an emit that raced the read either
     * saw the flag still set (its event is in a ring the caller drains next)
     * or writes the eventfd again after the clear. Clearing first would let
     * the read eat that write and leave the flag set for good. */
    ssize_t n = read(e->eventfd, &v, sizeof v);
    SK_UNUSED(n); /* EAGAIN when already clear */
    atomic_store_explicit(&e->event_signalled, 0, memory_order_seq_cst);
}

int sk_engine_drain(sk_engine *e, sk_event *out, int max, int *overflow)
{
    int n = 0;
    int of = 0;
    pthread_mutex_lock(&e->drain_lock);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < e->nworkers && n < max; i++)
            n += sk_ring_pop(&e->workers[i].ring[p], out + n, max - n);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < e->nworkers; i++)
            of |= sk_ring_take_overflow(&e->workers[i].ring[p]);
    pthread_mutex_unlock(&e->drain_lock);
    if (overflow)
        *overflow = of;
    return n;
}
