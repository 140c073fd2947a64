/* test_ring.c -- the single-producer single-consumer event ring (ring.c). */
#include "internal.h"
#include "testlib.h"

#include <sched.h>

static sk_event mk(uint64_t id)
{
    sk_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = SK_EV_TIMER;
    ev.worker = (uint32_t)(id % 7);
    ev.id = id;
    ev.a = (int64_t)(id * 3);
    ev.b = -(int64_t)id;
    return ev;
}

static int ev_ok(const sk_event *ev, uint64_t id)
{
    return ev->type == SK_EV_TIMER && ev->worker == (uint32_t)(id % 7) && ev->id == id &&
           ev->a == (int64_t)(id * 3) && ev->b == -(int64_t)id;
}

static int test_init(void)
{
    sk_ring r;
    const uint32_t bad[] = {0, 1, 3, 5, 6, 12, 100, 1023, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(sk_ring_init(&r, bad[i]) == -1, "size %u accepted", bad[i]);
    const uint32_t good[] = {2, 4, 8, 1024, 65536};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        CHECK_MSG(sk_ring_init(&r, good[i]) == 0, "size %u rejected", good[i]);
        CHECK_EQ_U(r.mask, good[i] - 1);
        CHECK_EQ_U(atomic_load(&r.head), 0);
        CHECK_EQ_U(atomic_load(&r.tail), 0);
        CHECK_EQ_U(atomic_load(&r.dropped), 0);
        CHECK_EQ_I(sk_ring_take_overflow(&r), 0);
        sk_event out[1];
        CHECK_EQ_I(sk_ring_pop(&r, out, 1), 0);
        sk_ring_free(&r);
        CHECK(r.slot == NULL);
    }
    return 0;
}

static int test_fifo_and_partial_pop(void)
{
    sk_ring r;
    REQUIRE(sk_ring_init(&r, 16) == 0);
    for (uint64_t i = 1; i <= 10; i++) {
        sk_event ev = mk(i);
        CHECK_EQ_I(sk_ring_push(&r, &ev), 0);
    }
    sk_event out[16];
    CHECK_EQ_I(sk_ring_pop(&r, out, 0), 0);
    CHECK_EQ_I(sk_ring_pop(&r, out, 3), 3);
    for (int i = 0; i < 3; i++)
        CHECK(ev_ok(&out[i], (uint64_t)i + 1));
    CHECK_EQ_I(sk_ring_pop(&r, out, 16), 7);
    for (int i = 0; i < 7; i++)
        CHECK(ev_ok(&out[i], (uint64_t)i + 4));
    CHECK_EQ_I(sk_ring_pop(&r, out, 16), 0);
    CHECK_EQ_U(atomic_load(&r.dropped), 0);
    CHECK_EQ_I(sk_ring_take_overflow(&r), 0);
    sk_ring_free(&r);
    return 0;
}

static int test_wraparound(void)
{
    sk_ring r;
    REQUIRE(sk_ring_init(&r, 8) == 0);
    uint64_t next_in = 1, next_out = 1;
    sk_event out[8];
    /* odd batch sizes so the slots rotate through every offset: 40x capacity */
    for (int round = 0; round < 320; round++) {
        int k = 1 + round % 8;
        for (int i = 0; i < k; i++) {
            sk_event ev = mk(next_in);
            REQUIRE(sk_ring_push(&r, &ev) == 0);
            next_in++;
        }
        int want = k - (round % 3 == 0 && k > 1 ? 1 : 0); /* sometimes leave one */
        int got = sk_ring_pop(&r, out, want);
        CHECK_EQ_I(got, want);
        for (int i = 0; i < got; i++) {
            CHECK_MSG(ev_ok(&out[i], next_out), "round %d got id %" PRIu64 " want %" PRIu64,
                      round, out[i].id, next_out);
            next_out++;
        }
        /* drain the leftover so the next round starts from any offset */
        got = sk_ring_pop(&r, out, 8);
        for (int i = 0; i < got; i++) {
            CHECK(ev_ok(&out[i], next_out));
            next_out++;
        }
    }
    CHECK_EQ_U(next_in, next_out);
    CHECK_OP_U(next_in, >, 10 * 8);
    CHECK_EQ_U(atomic_load(&r.dropped), 0);
    sk_ring_free(&r);
    return 0;
}

/* The 32-bit positions wrap after 4G events; start just below the wrap. */
static int test_index_wrap(void)
{
    sk_ring r;
    REQUIRE(sk_ring_init(&r, 4) == 0);
    atomic_store(&r.head, UINT32_MAX - 5);
    atomic_store(&r.tail, UINT32_MAX - 5);
    uint64_t id = 1, expect = 1;
    sk_event out[4];
    for (int round = 0; round < 6; round++) {
        /* fill to the brim: the full check must hold across the wrap */
        for (int i = 0; i < 4; i++) {
            sk_event ev = mk(id++);
            CHECK_EQ_I(sk_ring_push(&r, &ev), 0);
        }
        sk_event extra = mk(999);
        CHECK_MSG(sk_ring_push(&r, &extra) == -1, "round %d: full ring accepted a 5th event",
                  round);
        CHECK_EQ_I(sk_ring_take_overflow(&r), 1);
        int got = sk_ring_pop(&r, out, 4);
        CHECK_EQ_I(got, 4);
        for (int i = 0; i < got; i++)
            CHECK(ev_ok(&out[i], expect++));
        CHECK_EQ_I(sk_ring_pop(&r, out, 4), 0);
    }
    CHECK(atomic_load(&r.tail) < 100); /* really wrapped */
    CHECK_EQ_U(atomic_load(&r.dropped), 6);
    sk_ring_free(&r);
    return 0;
}

static int test_overflow(void)
{
    sk_ring r;
    REQUIRE(sk_ring_init(&r, 4) == 0);
    for (uint64_t i = 1; i <= 4; i++) {
        sk_event ev = mk(i);
        CHECK_EQ_I(sk_ring_push(&r, &ev), 0);
    }
    CHECK_EQ_I(sk_ring_take_overflow(&r), 0);
    for (uint64_t i = 5; i <= 7; i++) {
        sk_event ev = mk(i);
        CHECK_EQ_I(sk_ring_push(&r, &ev), -1);
    }
    CHECK_EQ_U(atomic_load(&r.dropped), 3);
    CHECK_EQ_I(atomic_load(&r.overflow), 1);
    CHECK_EQ_I(sk_ring_take_overflow(&r), 1);
    CHECK_EQ_I(sk_ring_take_overflow(&r), 0);
    /* the events queued before the overflow are intact, the dropped are gone */
    sk_event out[8];
    CHECK_EQ_I(sk_ring_pop(&r, out, 8), 4);
    for (int i = 0; i < 4; i++)
        CHECK(ev_ok(&out[i], (uint64_t)i + 1));
    /* room again: pushes succeed and do not touch the flag or counter */
    sk_event ev = mk(8);
    CHECK_EQ_I(sk_ring_push(&r, &ev), 0);
    CHECK_EQ_I(sk_ring_take_overflow(&r), 0);
    CHECK_EQ_U(atomic_load(&r.dropped), 3);
    CHECK_EQ_I(sk_ring_pop(&r, out, 8), 1);
    CHECK(ev_ok(&out[0], 8));
    sk_ring_free(&r);
    return 0;
}

/* ---------------------------------------------------- two threads */

enum { SPSC_N = 1000000 };

static sk_ring spsc;
static _Atomic int producer_done;

static void *producer(void *arg)
{
    SK_UNUSED(arg);
    for (uint64_t i = 1; i <= SPSC_N; i++) {
        sk_event ev = mk(i);
        while (sk_ring_push(&spsc, &ev) != 0)
            sched_yield(); /* full: wait for the consumer instead of dropping */
    }
    atomic_store(&producer_done, 1);
    return NULL;
}

static int test_two_threads(void)
{
    REQUIRE(sk_ring_init(&spsc, 1024) == 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, producer, NULL) == 0);
    uint64_t expect = 1;
    uint64_t bad = 0;
    sk_event out[64];
    while (expect <= SPSC_N) {
        int done = atomic_load(&producer_done);
        int n = sk_ring_pop(&spsc, out, 64);
        for (int i = 0; i < n; i++) {
            if (!ev_ok(&out[i], expect)) {
                if (bad++ < 5)
                    TL_FAIL("event %" PRIu64 ": got id %" PRIu64 " a %" PRId64, expect,
                            out[i].id, out[i].a);
            }
            expect = out[i].id + 1;
        }
        if (n == 0) {
            if (done)
                break; /* producer finished and the ring is empty */
            sched_yield();
        }
    }
    pthread_join(th, NULL);
    CHECK_EQ_U(bad, 0);
    CHECK_EQ_U(expect, (uint64_t)SPSC_N + 1);
    sk_event tail[4];
    CHECK_EQ_I(sk_ring_pop(&spsc, tail, 4), 0);
    sk_ring_free(&spsc);
    return 0;
}

int main(void)
{
    RUN(test_init);
    RUN(test_fifo_and_partial_pop);
    RUN(test_wraparound);
    RUN(test_index_wrap);
    RUN(test_overflow);
    RUN(test_two_threads);
    return tl_summary("test_ring");
}
