/* snapshot.c -- immutable, reference-counted snapshots published into
 * slots, and the reaper that destroys expensive ones off the I/O workers.
 *
 * A connection pins the TLS config it started with, so the last reference
 * to a retired config is often dropped by a worker closing an old
 * connection. Destroying it there (three SSL_CTX_free and a trust store's
 * release, thousands of certificates after a new CA bundle) would take a
 * worker's CPU for milliseconds between two events: such snapshots go to a
 * list that one reaper thread per process empties. The worker only takes
 * the list's lock to push (never held while destroying). The engine starts
 * the reaper, at the priority of the thread creating it. */
#include "internal.h"

#include <sys/prctl.h>

static _Thread_local bool on_worker;
static pthread_mutex_t reap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reap_cond = PTHREAD_COND_INITIALIZER;
static sk_snap *reap_list;
static bool reaper_up;
static _Atomic uint64_t reaped;

static void *reaper_main(void *arg)
{
    SK_UNUSED(arg);
    prctl(PR_SET_NAME, "skiff-reaper", 0UL, 0UL, 0UL);
    pthread_mutex_lock(&reap_lock);
    for (;;) {
        while (!reap_list)
            pthread_cond_wait(&reap_cond, &reap_lock);
        sk_snap *list = reap_list;
        reap_list = NULL;
        pthread_mutex_unlock(&reap_lock);
        while (list) {
            sk_snap *next = list->reap_next;
            list->destroy(list);
            SK_ADD(&reaped, 1);
            list = next;
        }
        pthread_mutex_lock(&reap_lock);
    }
    return NULL;
}

void sk_snap_reaper_start(void)
{
    pthread_mutex_lock(&reap_lock);
    if (!reaper_up) {
        /* the ordinary priority: a destroy frees memory, and preempted at a
         * low priority while holding a malloc arena it would keep a worker
         * waiting on that arena */
        pthread_attr_t attr;
        pthread_t th;
        if (pthread_attr_init(&attr) == 0) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            reaper_up = pthread_create(&th, &attr, reaper_main, NULL) == 0;
            pthread_attr_destroy(&attr);
        }
    }
    pthread_mutex_unlock(&reap_lock);
}

/* Hands s to the reaper; false when there is none (destroy inline). */
static bool retire(sk_snap *s)
{
    pthread_mutex_lock(&reap_lock);
    bool up = reaper_up;
    if (up) {
        s->reap_next = reap_list;
        reap_list = s;
        pthread_cond_signal(&reap_cond);
    }
    pthread_mutex_unlock(&reap_lock);
    return up;
}

void sk_snap_thread_is_worker(void)
{
    on_worker = true;
}

uint64_t sk_snap_reaped(void)
{
    return SK_LOAD(&reaped);
}

void sk_snap_init(sk_snap *s, void (*destroy)(sk_snap *))
{
    atomic_init(&s->refs, 1);
    s->version = 0;
    s->destroy = destroy;
    s->off_worker = false;
    s->reap_next = NULL;
}

void sk_snap_init_off_worker(sk_snap *s, void (*destroy)(sk_snap *))
{
    sk_snap_init(s, destroy);
    s->off_worker = true;
}

void sk_snap_ref(sk_snap *s)
{
    SK_ADD(&s->refs, 1);
}

void sk_snap_release(sk_snap *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (on_worker && s->off_worker && retire(s))
        return;
    s->destroy(s);
}

void sk_slot_init(sk_slot *slot)
{
    pthread_mutex_init(&slot->lock, NULL);
    slot->cur = NULL;
    atomic_init(&slot->version, 0);
}

void sk_slot_destroy(sk_slot *slot)
{
    sk_snap_release(slot->cur);
    slot->cur = NULL;
    pthread_mutex_destroy(&slot->lock);
}

uint64_t sk_slot_publish(sk_slot *slot, sk_snap *s)
{
    pthread_mutex_lock(&slot->lock);
    sk_snap *old = slot->cur;
    uint64_t v = SK_LOAD(&slot->version) + 1;
    s->version = v;
    slot->cur = s;
    atomic_store_explicit(&slot->version, v, memory_order_release);
    pthread_mutex_unlock(&slot->lock);
    /* readers that copied old hold their own reference */
    sk_snap_release(old);
    return v;
}

sk_snap *sk_slot_acquire(sk_slot *slot)
{
    pthread_mutex_lock(&slot->lock);
    sk_snap *s = slot->cur;
    if (s)
        sk_snap_ref(s);
    pthread_mutex_unlock(&slot->lock);
    return s;
}

sk_snap *sk_slot_cached(sk_slot *slot, sk_slot_cache *cache)
{
    uint64_t v = atomic_load_explicit(&slot->version, memory_order_acquire);
    if (v != cache->version || (v && !cache->snap)) {
        sk_snap *s = sk_slot_acquire(slot);
        sk_snap_release(cache->snap);
        cache->snap = s;
        cache->version = s ? s->version : 0;
    }
    return cache->snap;
}

void sk_slot_cache_clear(sk_slot_cache *cache)
{
    sk_snap_release(cache->snap);
    cache->snap = NULL;
    cache->version = 0;
}
