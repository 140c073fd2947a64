/* hist.c -- latency histograms with fixed bounds.
 *
 * The bounds run 1, 1.5, 2, 2.5, 3, 4, 5, 7.5 times each power of ten from
 * 1 us to 7.5 s, then 10 s; the last bucket is +Inf. Each bound is at most
 * 1.5 times the one before, and the figures the goals are written in
 * (250 us, 1 ms, 10 ms, 50 ms) are bounds, so a quantile read as its
 * bucket's upper bound says on which side of a goal it is. */
#include "internal.h"

static const uint16_t mantissa[8] = {10, 15, 20, 25, 30, 40, 50, 75}; /* tenths */
/* ns per tenth of the decade's first bound (1 us, 10 us, ... 1 s, 10 s) */
static const uint64_t tenth[8] = {100, 1000, 10000, 100000, 1000000, 10000000, 100000000,
                                  1000000000};

uint64_t sk_hist_bound_ns(int i)
{
    if (i < 0 || i >= SK_HIST_BUCKETS - 1)
        return UINT64_MAX;
    return mantissa[i % 8] * tenth[i / 8]; /* i = 56: 10 * 10^9 ns, 10 s */
}

int sk_hist_bucket_of(uint64_t ns)
{
    /* the first bucket whose bound holds ns: a binary search of the bounds */
    int lo = 0, hi = SK_HIST_BUCKETS - 1; /* the answer is in [lo, hi] */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (ns <= sk_hist_bound_ns(mid))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
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
