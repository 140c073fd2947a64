/* snapshot.c -- immutable, reference-counted snapshots published into slots. */
#include "internal.h"

void sk_snap_init(sk_snap *s, void (*destroy)(sk_snap *))
{
    atomic_init(&s->refs, 1);
    s->version = 0;
    s->destroy = destroy;
}

void sk_snap_ref(sk_snap *s)
{
    SK_ADD(&s->refs, 1);
}

void sk_snap_release(sk_snap *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
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
