/* test_heap.c -- sk_heap: the worker's timer min-heap (heap.c), and a
 * worker's pass over its due timers (timer.c). */
#include "internal.h"
#include "testlib.h"

static void dummy_cb(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(w);
    SK_UNUSED(t);
    SK_UNUSED(now);
}

/* Checks the heap property and that every element's index is its position. */
static int heap_valid(const sk_heap *h)
{
    for (uint32_t i = 0; i < h->n; i++) {
        const sk_timer *t = h->v[i];
        if (t->index != i)
            return 0;
        if (i > 0) {
            const sk_timer *p = h->v[(i - 1) / 2];
            if (p->deadline > t->deadline || (p->deadline == t->deadline && p->seq > t->seq))
                return 0;
        }
    }
    return 1;
}

/* Pops everything due at UINT64_MAX-1 and checks (deadline, seq) ordering. */
static int drain_ordered(sk_heap *h, uint32_t expect_n)
{
    uint64_t last_d = 0, last_seq = 0;
    uint32_t got = 0;
    sk_timer *t;
    int ok = 1;
    while ((t = sk_heap_pop_due(h, UINT64_MAX)) != NULL) {
        if (sk_timer_pending(t))
            ok = 0;
        if (got > 0 && (t->deadline < last_d || (t->deadline == last_d && t->seq <= last_seq)))
            ok = 0;
        last_d = t->deadline;
        last_seq = t->seq;
        got++;
    }
    CHECK_EQ_U(got, expect_n);
    CHECK_EQ_U(h->n, 0);
    return ok;
}

static int test_random_order(void)
{
    enum { N = 2000 };
    static sk_timer t[N];
    sk_heap h;
    sk_heap_init(&h);
    uint64_t seed = 0x1234567;
    for (int i = 0; i < N; i++) {
        sk_timer_init(&t[i], dummy_cb);
        CHECK(!sk_timer_pending(&t[i]));
        REQUIRE(sk_heap_push(&h, &t[i], 1 + tl_rand(&seed) % 100000) == 0);
        CHECK(sk_timer_pending(&t[i]));
    }
    CHECK_EQ_U(h.n, N);
    CHECK(heap_valid(&h));
    CHECK(drain_ordered(&h, N));
    for (int i = 0; i < N; i++)
        CHECK(!sk_timer_pending(&t[i]));
    sk_heap_free(&h);
    return 0;
}

static int test_ties_fifo(void)
{
    enum { N = 100 };
    sk_timer t[N];
    sk_heap h;
    sk_heap_init(&h);
    /* interleave two deadlines; within each deadline, schedule order wins */
    for (int i = 0; i < N; i++) {
        sk_timer_init(&t[i], dummy_cb);
        REQUIRE(sk_heap_push(&h, &t[i], (i % 2) ? 500 : 100) == 0);
    }
    int expect_even = 0, expect_odd = 1;
    for (int k = 0; k < N; k++) {
        sk_timer *x = sk_heap_pop_due(&h, 1000);
        REQUIRE(x != NULL);
        int idx = (int)(x - t);
        if (k < N / 2) {
            CHECK_EQ_I(idx, expect_even);
            CHECK_EQ_U(x->deadline, 100);
            expect_even += 2;
        } else {
            CHECK_EQ_I(idx, expect_odd);
            CHECK_EQ_U(x->deadline, 500);
            expect_odd += 2;
        }
    }
    CHECK(sk_heap_pop_due(&h, UINT64_MAX) == NULL);

    /* all equal: strict FIFO */
    for (int i = 0; i < N; i++)
        REQUIRE(sk_heap_push(&h, &t[i], 42) == 0);
    for (int i = 0; i < N; i++) {
        sk_timer *x = sk_heap_pop_due(&h, 42);
        REQUIRE(x != NULL);
        CHECK_EQ_I((int)(x - t), i);
    }
    sk_heap_free(&h);
    return 0;
}

static int test_remove(void)
{
    enum { N = 257 };
    static sk_timer t[N];
    sk_heap h;
    sk_heap_init(&h);
    uint64_t seed = 99;
    for (int i = 0; i < N; i++) {
        sk_timer_init(&t[i], dummy_cb);
        REQUIRE(sk_heap_push(&h, &t[i], tl_rand(&seed) % 1000) == 0);
    }
    uint32_t n = N;
    /* head */
    sk_timer *head = sk_heap_top(&h);
    sk_heap_remove(&h, head);
    n--;
    CHECK(!sk_timer_pending(head));
    CHECK_EQ_U(h.n, n);
    CHECK(heap_valid(&h));
    /* last array slot */
    sk_timer *last = h.v[h.n - 1];
    sk_heap_remove(&h, last);
    n--;
    CHECK(!sk_timer_pending(last));
    CHECK(heap_valid(&h));
    /* a middle one */
    sk_timer *mid = h.v[h.n / 2];
    sk_heap_remove(&h, mid);
    n--;
    CHECK(!sk_timer_pending(mid));
    CHECK(heap_valid(&h));
    /* removing an idle timer is a no-op */
    sk_heap_remove(&h, mid);
    CHECK_EQ_U(h.n, n);
    /* a pseudo-random third of the rest, checking the invariant each time */
    for (int i = 0; i < N; i += 3) {
        if (sk_timer_pending(&t[i])) {
            sk_heap_remove(&h, &t[i]);
            n--;
            CHECK(!sk_timer_pending(&t[i]));
            CHECK_MSG(heap_valid(&h), "after removing timer %d", i);
        }
    }
    CHECK_EQ_U(h.n, n);
    uint32_t pending = 0;
    for (int i = 0; i < N; i++)
        pending += sk_timer_pending(&t[i]);
    CHECK_EQ_U(pending, n);
    CHECK(drain_ordered(&h, n));
    /* the removed ones never come back */
    CHECK(!sk_timer_pending(head) && !sk_timer_pending(last) && !sk_timer_pending(mid));

    /* a removal that must sift the moved last element UP: a subtree of large
     * deadlines whose replacement comes from the other, small, subtree */
    sk_timer u[7];
    uint64_t d[7] = {1, 100, 2, 101, 102, 3, 4};
    for (int i = 0; i < 7; i++) {
        sk_timer_init(&u[i], dummy_cb);
        REQUIRE(sk_heap_push(&h, &u[i], d[i]) == 0);
    }
    REQUIRE(heap_valid(&h));
    /* find the element with deadline 101 (a leaf under 100) and remove it */
    sk_heap_remove(&h, &u[3]);
    CHECK(heap_valid(&h));
    sk_heap_remove(&h, &u[1]);
    CHECK(heap_valid(&h));
    uint64_t want[] = {1, 2, 3, 4, 102};
    for (int i = 0; i < 5; i++) {
        sk_timer *x = sk_heap_pop_due(&h, UINT64_MAX);
        REQUIRE(x != NULL);
        CHECK_EQ_U(x->deadline, want[i]);
    }
    CHECK(sk_heap_top(&h) == NULL);
    sk_heap_free(&h);
    return 0;
}

static int test_repush_moves(void)
{
    sk_timer a, b, c;
    sk_timer_init(&a, dummy_cb);
    sk_timer_init(&b, dummy_cb);
    sk_timer_init(&c, dummy_cb);
    sk_heap h;
    sk_heap_init(&h);
    REQUIRE(sk_heap_push(&h, &a, 10) == 0);
    REQUIRE(sk_heap_push(&h, &b, 20) == 0);
    REQUIRE(sk_heap_push(&h, &c, 30) == 0);
    CHECK(sk_heap_top(&h) == &a);
    /* later: a moves behind c; the heap keeps exactly 3 entries */
    REQUIRE(sk_heap_push(&h, &a, 40) == 0);
    CHECK_EQ_U(h.n, 3);
    CHECK(heap_valid(&h));
    CHECK(sk_heap_top(&h) == &b);
    /* earlier: c moves to the front */
    REQUIRE(sk_heap_push(&h, &c, 5) == 0);
    CHECK_EQ_U(h.n, 3);
    CHECK(sk_heap_top(&h) == &c);
    /* same deadline as b: re-push counts as newly scheduled, so b is first */
    REQUIRE(sk_heap_push(&h, &c, 20) == 0);
    CHECK_EQ_U(h.n, 3);
    sk_timer *order[3] = {&b, &c, &a};
    for (int i = 0; i < 3; i++) {
        sk_timer *x = sk_heap_pop_due(&h, 100);
        CHECK(x == order[i]);
    }
    CHECK_EQ_U(h.n, 0);
    sk_heap_free(&h);
    return 0;
}

static int test_pop_due_now(void)
{
    sk_timer t[5];
    uint64_t d[5] = {100, 200, 200, 300, 400};
    sk_heap h;
    sk_heap_init(&h);
    CHECK(sk_heap_pop_due(&h, UINT64_MAX) == NULL); /* empty */
    CHECK(sk_heap_top(&h) == NULL);
    for (int i = 0; i < 5; i++) {
        sk_timer_init(&t[i], dummy_cb);
        REQUIRE(sk_heap_push(&h, &t[i], d[i]) == 0);
    }
    CHECK(sk_heap_pop_due(&h, 0) == NULL);
    CHECK(sk_heap_pop_due(&h, 99) == NULL);
    CHECK_EQ_U(h.n, 5);
    CHECK(sk_heap_pop_due(&h, 100) == &t[0]); /* deadline == now is due */
    CHECK(sk_heap_pop_due(&h, 100) == NULL);
    CHECK(sk_heap_pop_due(&h, 250) == &t[1]);
    CHECK(sk_heap_pop_due(&h, 250) == &t[2]);
    CHECK(sk_heap_pop_due(&h, 250) == NULL);
    CHECK(sk_timer_pending(&t[3]) && sk_timer_pending(&t[4]));
    CHECK(!sk_timer_pending(&t[0]) && !sk_timer_pending(&t[1]) && !sk_timer_pending(&t[2]));
    CHECK_EQ_U(h.n, 2);
    CHECK(sk_heap_top(&h) == &t[3]);
    sk_heap_free(&h);
    return 0;
}

static int test_growth_and_free(void)
{
    enum { N = 10000 };
    sk_timer *t = calloc(N, sizeof *t);
    REQUIRE(t != NULL);
    sk_heap h;
    sk_heap_init(&h);
    CHECK_EQ_U(h.cap, 0);
    uint64_t seed = 7;
    /* descending deadlines make every push sift to the root */
    for (int i = 0; i < N; i++) {
        sk_timer_init(&t[i], dummy_cb);
        REQUIRE(sk_heap_push(&h, &t[i], (uint64_t)(N - i) * 1000 + tl_rand(&seed) % 7) == 0);
    }
    CHECK_EQ_U(h.n, N);
    CHECK_OP_U(h.cap, >=, N);
    CHECK(heap_valid(&h));
    /* pop half, then free the heap with the other half still queued */
    for (int i = 0; i < N / 2; i++) {
        sk_timer *x = sk_heap_pop_due(&h, UINT64_MAX);
        REQUIRE(x != NULL);
        /* the smallest deadlines were the last pushed */
        CHECK_MSG(x == &t[N - 1 - i], "pop %d got timer %d", i, (int)(x - t));
    }
    CHECK_EQ_U(h.n, N / 2);
    sk_heap_free(&h);
    CHECK_EQ_U(h.n, 0);
    CHECK_EQ_U(h.cap, 0);
    CHECK(h.v == NULL);
    int still = 0;
    for (int i = 0; i < N; i++)
        still += sk_timer_pending(&t[i]);
    CHECK_EQ_I(still, 0);
    /* the heap is usable again after free */
    REQUIRE(sk_heap_push(&h, &t[0], 1) == 0);
    CHECK(sk_heap_pop_due(&h, 1) == &t[0]);
    sk_heap_free(&h);
    free(t);
    return 0;
}

/* A pass over due normal timers is a run of units of work: a high timer
 * that comes due during one normal callback runs before the next one. */
static char fired[8];
static int nfired;
static sk_timer *high_t;

static void record_cb(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(w);
    SK_UNUSED(now);
    fired[nfired++] = t == high_t ? 'H' : 'N';
}

static void slow_cb(sk_worker *w, sk_timer *t, uint64_t now)
{
    record_cb(w, t, now);
    while (sk_now_ns() <= high_t->deadline) /* works until the high timer is due */
        ;
}

static int test_high_between_normal(void)
{
    static sk_worker w; /* a worker's timer state alone, no thread */
    sk_heap_init(&w.heap[0]);
    sk_heap_init(&w.heap[1]);
    sk_timer n[3], h;
    high_t = &h;
    uint64_t now = sk_now_ns();
    w.wake_ns = now;
    sk_timer_init(&n[0], slow_cb);
    sk_timer_init(&n[1], record_cb);
    sk_timer_init(&n[2], record_cb);
    sk_timer_init(&h, record_cb);
    for (int i = 0; i < 3; i++)
        sk_worker_schedule(&w, SK_PRIO_NORMAL, &n[i], now - 3 + (uint64_t)i);
    sk_worker_schedule(&w, SK_PRIO_HIGH, &h, now + 2000000); /* 2 ms on */
    sk_timer_run_due(&w, 1, now);
    fired[nfired] = 0;
    CHECK_STR_CONTAINS(fired, "NHNN");
    CHECK_EQ_I(nfired, 4);
    sk_heap_free(&w.heap[0]);
    sk_heap_free(&w.heap[1]);
    return 0;
}

int main(void)
{
    RUN(test_random_order);
    RUN(test_ties_fifo);
    RUN(test_remove);
    RUN(test_repush_moves);
    RUN(test_pop_due_now);
    RUN(test_growth_and_free);
    RUN(test_high_between_normal);
    return tl_summary("test_heap");
}
