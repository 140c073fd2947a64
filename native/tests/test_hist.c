/* test_hist.c -- latency histograms with fixed bounds (hist.c). */
#include "internal.h"
#include "testlib.h"

static int test_bucket_of(void)
{
    CHECK_EQ_I(sk_hist_bucket_of(0), 0);
    CHECK_EQ_I(sk_hist_bucket_of(1), 0);
    CHECK_EQ_I(sk_hist_bucket_of(999), 0);
    CHECK_EQ_I(sk_hist_bucket_of(1000), 0);
    CHECK_EQ_I(sk_hist_bucket_of(1001), 1);     /* <= 1.5 us */
    CHECK_EQ_I(sk_hist_bucket_of(1500), 1);
    CHECK_EQ_I(sk_hist_bucket_of(1501), 2);     /* <= 2 us */
    CHECK_EQ_I(sk_hist_bucket_of(7501), 8);     /* <= 10 us */
    /* the goals' figures are bounds: 250 us, 1 ms, 10 ms, 50 ms */
    CHECK_EQ_U(sk_hist_bound_ns(sk_hist_bucket_of(250000)), 250000);
    CHECK_EQ_U(sk_hist_bound_ns(sk_hist_bucket_of(250001)), 300000);
    CHECK_EQ_U(sk_hist_bound_ns(sk_hist_bucket_of(249999)), 250000);
    CHECK_EQ_U(sk_hist_bound_ns(sk_hist_bucket_of(1000000)), 1000000);
    CHECK_EQ_U(sk_hist_bound_ns(sk_hist_bucket_of(10000000)), 10000000);
    CHECK_EQ_U(sk_hist_bound_ns(sk_hist_bucket_of(50000000)), 50000000);
    /* the last finite bound (10 s) and just past it */
    CHECK_EQ_U(sk_hist_bound_ns(SK_HIST_BUCKETS - 2), 10000000000ull);
    CHECK_EQ_I(sk_hist_bucket_of(10000000000ull), SK_HIST_BUCKETS - 2);
    CHECK_EQ_I(sk_hist_bucket_of(10000000001ull), SK_HIST_BUCKETS - 1);
    CHECK_EQ_I(sk_hist_bucket_of(UINT64_MAX), SK_HIST_BUCKETS - 1);
    CHECK_EQ_I(sk_hist_bucket_of((uint64_t)1 << 62), SK_HIST_BUCKETS - 1);

    /* every value sits in the first bucket whose bound holds it */
    for (int i = 0; i < SK_HIST_BUCKETS - 1; i++) {
        uint64_t b = sk_hist_bound_ns(i);
        CHECK_EQ_I(sk_hist_bucket_of(b), i);
        CHECK_EQ_I(sk_hist_bucket_of(b + 1), i + 1);
        if (i > 0)
            CHECK_EQ_I(sk_hist_bucket_of(sk_hist_bound_ns(i - 1) + 1), i);
    }
    return 0;
}

static int test_bound(void)
{
    CHECK_EQ_U(sk_hist_bound_ns(0), 1000);
    CHECK_EQ_U(sk_hist_bound_ns(1), 1500);
    CHECK_EQ_U(sk_hist_bound_ns(7), 7500);
    CHECK_EQ_U(sk_hist_bound_ns(8), 10000);
    CHECK_EQ_U(sk_hist_bound_ns(SK_HIST_BUCKETS - 3), 7500000000ull);
    CHECK_EQ_U(sk_hist_bound_ns(SK_HIST_BUCKETS - 1), UINT64_MAX);
    CHECK_EQ_U(sk_hist_bound_ns(SK_HIST_BUCKETS), UINT64_MAX);
    CHECK_EQ_U(sk_hist_bound_ns(-1), UINT64_MAX);
    /* increasing, each at most 1.5 times the one before */
    for (int i = 1; i < SK_HIST_BUCKETS - 1; i++) {
        CHECK_OP_U(sk_hist_bound_ns(i), >, sk_hist_bound_ns(i - 1));
        CHECK_OP_U(2 * sk_hist_bound_ns(i), <=, 3 * sk_hist_bound_ns(i - 1));
    }
    return 0;
}

static int test_record_accumulate(void)
{
    static sk_hist_atomic h; /* zeroed */
    const uint64_t vals[] = {0, 1000, 1001, 2000, 5000, 1000000, 3000000000ull, UINT64_MAX / 4, 7};
    const int nv = (int)(sizeof vals / sizeof vals[0]);
    uint64_t sum = 0, max = 0;
    uint64_t per_bucket[SK_HIST_BUCKETS] = {0};
    for (int i = 0; i < nv; i++) {
        sk_hist_record(&h, vals[i]);
        sum += vals[i];
        if (vals[i] > max)
            max = vals[i];
        per_bucket[sk_hist_bucket_of(vals[i])]++;
    }
    CHECK_EQ_U(atomic_load(&h.count), nv);
    CHECK_EQ_U(atomic_load(&h.bucket[0]), 3); /* 0, 1000, 7 */
    CHECK_EQ_U(atomic_load(&h.bucket[1]), 1); /* 1001 */
    CHECK_EQ_U(atomic_load(&h.bucket[2]), 1); /* 2000 */
    CHECK_EQ_U(atomic_load(&h.bucket[SK_HIST_BUCKETS - 1]), 1); /* UINT64_MAX/4 */

    sk_hist out;
    memset(&out, 0, sizeof out);
    sk_hist_accumulate(&h, &out);
    CHECK_EQ_U(out.count, nv);
    CHECK_EQ_U(out.sum_ns, sum);
    CHECK_EQ_U(out.max_ns, UINT64_MAX / 4);
    CHECK_EQ_U(out.max_ns, max);
    uint64_t run = 0;
    for (int i = 0; i < SK_HIST_BUCKETS; i++) {
        run += per_bucket[i];
        CHECK_EQ_U(out.cumulative[i], run);
        if (i > 0)
            CHECK_OP_U(out.cumulative[i], >=, out.cumulative[i - 1]);
    }
    CHECK_EQ_U(out.cumulative[SK_HIST_BUCKETS - 1], out.count);
    /* cumulative[i] counts the values <= bound(i) */
    for (int i = 0; i < SK_HIST_BUCKETS; i++) {
        uint64_t le = 0;
        for (int k = 0; k < nv; k++)
            le += vals[k] <= sk_hist_bound_ns(i);
        CHECK_EQ_U(out.cumulative[i], le);
    }

    /* accumulate adds: a second histogram merged into the same output */
    static sk_hist_atomic h2;
    sk_hist_record(&h2, 1500);
    sk_hist_record(&h2, 10);
    sk_hist_accumulate(&h2, &out);
    CHECK_EQ_U(out.count, nv + 2);
    CHECK_EQ_U(out.sum_ns, sum + 1510);
    CHECK_EQ_U(out.max_ns, UINT64_MAX / 4); /* max of maxes, not the sum */
    CHECK_EQ_U(out.cumulative[0], per_bucket[0] + 1);
    CHECK_EQ_U(out.cumulative[1], per_bucket[0] + per_bucket[1] + 2);
    CHECK_EQ_U(out.cumulative[SK_HIST_BUCKETS - 1], out.count);

    /* a smaller max in a later histogram does not lower the merged max */
    sk_hist o2;
    memset(&o2, 0, sizeof o2);
    sk_hist_accumulate(&h2, &o2);
    CHECK_EQ_U(o2.max_ns, 1500);
    CHECK_EQ_U(o2.count, 2);
    CHECK_EQ_U(o2.cumulative[0], 1);
    CHECK_EQ_U(o2.cumulative[1], 2);
    return 0;
}

static int test_many_random(void)
{
    static sk_hist_atomic h;
    uint64_t seed = 4242, sum = 0, max = 0;
    enum { N = 50000 };
    for (int i = 0; i < N; i++) {
        /* spread over all scales: a random value below a random power of two */
        uint64_t r = tl_rand(&seed);
        uint64_t v = r >> (r % 64);
        v >>= 20; /* < 2^44: the sum cannot overflow, the top bucket is still hit */
        sk_hist_record(&h, v);
        sum += v;
        if (v > max)
            max = v;
    }
    sk_hist out;
    memset(&out, 0, sizeof out);
    sk_hist_accumulate(&h, &out);
    CHECK_EQ_U(out.count, N);
    CHECK_EQ_U(out.sum_ns, sum);
    CHECK_EQ_U(out.max_ns, max);
    for (int i = 1; i < SK_HIST_BUCKETS; i++)
        CHECK_OP_U(out.cumulative[i], >=, out.cumulative[i - 1]);
    CHECK_EQ_U(out.cumulative[SK_HIST_BUCKETS - 1], N);
    /* the spread really reached both ends */
    CHECK_OP_U(out.cumulative[0], >, 0);
    CHECK_OP_U(out.cumulative[SK_HIST_BUCKETS - 2], <, N);
    return 0;
}

int main(void)
{
    RUN(test_bucket_of);
    RUN(test_bound);
    RUN(test_record_accumulate);
    RUN(test_many_random);
    return tl_summary("test_hist");
}
