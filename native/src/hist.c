/* hist.c -- log-scale latency histograms: bucket i holds values <= 1us << i. */
#include "internal.h"

uint64_t sk_hist_bound_ns(int i)
{
    if (i < 0 || i >= SK_HIST_BUCKETS - 1)
        return UINT64_MAX;
    return (uint64_t)1000 << i;
}

int sk_hist_bucket_of(uint64_t ns)
{
    for (int i = 0; i < SK_HIST_BUCKETS - 1; i++)
        if (ns <= ((uint64_t)1000 << i))
            return i;
    return SK_HIST_BUCKETS - 1;
}

void sk_hist_record(sk_hist_atomic *h, uint64_t ns)
{
    /* one writer per histogram: plain relaxed load/store suffices */
    SK_BUMP(&h->bucket[sk_hist_bucket_of(ns)], 1);
    SK_BUMP(&h->sum_ns, ns);
    if (ns > SK_LOAD(&h->max_ns))
        SK_STORE(&h->max_ns, ns);
    /* count last, with release, so a reader that sees it sees the bucket */
    atomic_store_explicit(&h->count, SK_LOAD(&h->count) + 1, memory_order_release);
}

void sk_hist_record_shared(sk_hist_atomic *h, uint64_t ns)
{
    /* any thread may write (atomic adds); a reader may see count and buckets
     * of slightly different instants */
    SK_ADD(&h->bucket[sk_hist_bucket_of(ns)], 1);
    SK_ADD(&h->sum_ns, ns);
    uint64_t max = SK_LOAD(&h->max_ns);
    while (ns > max && !atomic_compare_exchange_weak_explicit(&h->max_ns, &max, ns,
                                                              memory_order_relaxed,
                                                              memory_order_relaxed))
        ;
    atomic_fetch_add_explicit(&h->count, 1, memory_order_release);
}

void sk_hist_accumulate(const sk_hist_atomic *h, sk_hist *out)
{
    out->count += atomic_load_explicit(&h->count, memory_order_acquire);
    out->sum_ns += SK_LOAD(&h->sum_ns);
    uint64_t max = SK_LOAD(&h->max_ns);
    if (max > out->max_ns)
        out->max_ns = max;
    uint64_t run = 0;
    for (int i = 0; i < SK_HIST_BUCKETS; i++) {
        run += SK_LOAD(&h->bucket[i]);
        out->cumulative[i] += run;
    }
}
