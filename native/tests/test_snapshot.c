/* test_snapshot.c -- reference-counted snapshots published into slots
 * (snapshot.c). */
#include "internal.h"
#include "testlib.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct obj {
    sk_snap snap; /* first member */
    uint64_t magic;
    uint64_t seq;        /* publication order, set before publish */
    uint64_t payload[8]; /* payload[i] == seq * 8 + i */
    _Atomic int destroyed;
} obj;

static _Atomic uint64_t destroy_count;
static _Atomic uint64_t destroy_twice;

#define OBJ_MAGIC 0x5ca1ab1e0ddba11ull

static void obj_destroy(sk_snap *s)
{
    obj *o = (obj *)s;
    if (atomic_exchange(&o->destroyed, 1))
        atomic_fetch_add(&destroy_twice, 1);
    o->magic = 0xdead;
    atomic_fetch_add(&destroy_count, 1);
    free(o);
}

static obj *obj_new(uint64_t seq)
{
    obj *o = calloc(1, sizeof *o);
    if (!o)
        abort();
    sk_snap_init(&o->snap, obj_destroy);
    o->magic = OBJ_MAGIC;
    o->seq = seq;
    for (int i = 0; i < 8; i++)
        o->payload[i] = seq * 8 + (uint64_t)i;
    return o;
}

static int test_refcount(void)
{
    atomic_store(&destroy_count, 0);
    obj *o = obj_new(1);
    CHECK_EQ_U(atomic_load(&o->snap.refs), 1);
    CHECK_EQ_U(o->snap.version, 0);
    sk_snap_ref(&o->snap);
    sk_snap_ref(&o->snap);
    CHECK_EQ_U(atomic_load(&o->snap.refs), 3);
    sk_snap_release(&o->snap);
    sk_snap_release(&o->snap);
    CHECK_EQ_U(atomic_load(&destroy_count), 0);
    CHECK_EQ_U(atomic_load(&o->snap.refs), 1);
    sk_snap_release(&o->snap); /* last: destroyed */
    CHECK_EQ_U(atomic_load(&destroy_count), 1);
    sk_snap_release(NULL); /* tolerated */
    CHECK_EQ_U(atomic_load(&destroy_count), 1);
    return 0;
}

static int test_publish_acquire(void)
{
    atomic_store(&destroy_count, 0);
    sk_slot slot;
    sk_slot_init(&slot);
    CHECK(sk_slot_acquire(&slot) == NULL);
    CHECK_EQ_U(atomic_load(&slot.version), 0);

    obj *a = obj_new(1);
    CHECK_EQ_U(sk_slot_publish(&slot, &a->snap), 1);
    CHECK_EQ_U(a->snap.version, 1);
    CHECK_EQ_U(atomic_load(&a->snap.refs), 1); /* the slot owns the caller's ref */

    sk_snap *got = sk_slot_acquire(&slot);
    CHECK(got == &a->snap);
    CHECK_EQ_U(atomic_load(&a->snap.refs), 2);

    obj *b = obj_new(2);
    CHECK_EQ_U(sk_slot_publish(&slot, &b->snap), 2);
    CHECK_EQ_U(b->snap.version, 2);
    /* a is still held by the reader: not destroyed */
    CHECK_EQ_U(atomic_load(&destroy_count), 0);
    CHECK_EQ_U(atomic_load(&a->snap.refs), 1);
    CHECK_EQ_U(((obj *)got)->magic, OBJ_MAGIC);
    sk_snap_release(got);
    CHECK_EQ_U(atomic_load(&destroy_count), 1); /* a gone now */

    /* versions keep increasing */
    uint64_t last = 2;
    for (uint64_t i = 3; i < 20; i++) {
        uint64_t v = sk_slot_publish(&slot, &obj_new(i)->snap);
        CHECK_EQ_U(v, last + 1);
        last = v;
    }
    CHECK_EQ_U(atomic_load(&slot.version), 19);
    CHECK_EQ_U(atomic_load(&destroy_count), 18); /* a, b and 3..18 */
    sk_slot_destroy(&slot);
    CHECK_EQ_U(atomic_load(&destroy_count), 19);
    CHECK_EQ_U(atomic_load(&destroy_twice), 0);
    return 0;
}

static int test_cache(void)
{
    atomic_store(&destroy_count, 0);
    sk_slot slot;
    sk_slot_init(&slot);
    sk_slot_cache c = {0};
    CHECK(sk_slot_cached(&slot, &c) == NULL); /* nothing published */
    CHECK(c.snap == NULL);

    obj *a = obj_new(1);
    sk_slot_publish(&slot, &a->snap);
    CHECK(sk_slot_cached(&slot, &c) == &a->snap);
    CHECK_EQ_U(c.version, 1);
    CHECK_EQ_U(atomic_load(&a->snap.refs), 2); /* slot + cache */
    /* the version did not move: no new reference taken */
    for (int i = 0; i < 5; i++)
        CHECK(sk_slot_cached(&slot, &c) == &a->snap);
    CHECK_EQ_U(atomic_load(&a->snap.refs), 2);

    obj *b = obj_new(2);
    sk_slot_publish(&slot, &b->snap);
    CHECK_EQ_U(atomic_load(&a->snap.refs), 1); /* only the cache now */
    CHECK_EQ_U(atomic_load(&destroy_count), 0);
    /* refresh swaps the reference: a dies, b gains one */
    CHECK(sk_slot_cached(&slot, &c) == &b->snap);
    CHECK_EQ_U(c.version, 2);
    CHECK_EQ_U(atomic_load(&destroy_count), 1);
    CHECK_EQ_U(atomic_load(&b->snap.refs), 2);

    /* a second cache is independent */
    sk_slot_cache c2 = {0};
    CHECK(sk_slot_cached(&slot, &c2) == &b->snap);
    CHECK_EQ_U(atomic_load(&b->snap.refs), 3);
    sk_slot_cache_clear(&c2);
    CHECK(c2.snap == NULL);
    CHECK_EQ_U(c2.version, 0);
    CHECK_EQ_U(atomic_load(&b->snap.refs), 2);

    /* after destroying the slot the cache alone keeps b alive */
    sk_slot_destroy(&slot);
    CHECK_EQ_U(atomic_load(&destroy_count), 1);
    CHECK_EQ_U(((obj *)c.snap)->magic, OBJ_MAGIC);
    sk_slot_cache_clear(&c);
    CHECK_EQ_U(atomic_load(&destroy_count), 2);
    sk_slot_cache_clear(&c); /* idempotent */
    CHECK_EQ_U(atomic_load(&destroy_count), 2);
    CHECK_EQ_U(atomic_load(&destroy_twice), 0);
    return 0;
}

/* ------------------------------------------------------------ stress */

enum { PUBLISHES = 20000, READERS = 2 };

static sk_slot stress_slot;
static _Atomic int stress_done;
static _Atomic int readers_ready;

typedef struct reader_result {
    uint64_t reads, cached_refreshes, bad, regressions;
} reader_result;

static int obj_intact(const obj *o)
{
    if (o->magic != OBJ_MAGIC || atomic_load(&o->destroyed))
        return 0;
    if (o->snap.version != o->seq)
        return 0; /* published in seq order starting at 1: version == seq */
    for (int i = 0; i < 8; i++)
        if (o->payload[i] != o->seq * 8 + (uint64_t)i)
            return 0;
    return 1;
}

static void *reader(void *arg)
{
    reader_result *res = arg;
    sk_slot_cache cache = {0};
    uint64_t last_cached = 0, last_acq = 0;
    atomic_fetch_add(&readers_ready, 1);
    while (!atomic_load(&stress_done)) {
        /* the worker hot path: borrowed pointer through a cache */
        obj *o = (obj *)sk_slot_cached(&stress_slot, &cache);
        if (o) {
            if (!obj_intact(o))
                res->bad++;
            if (o->seq < last_cached)
                res->regressions++;
            if (o->seq != last_cached)
                res->cached_refreshes++;
            last_cached = o->seq;
        }
        /* the control path: a counted reference held across a yield */
        obj *p = (obj *)sk_slot_acquire(&stress_slot);
        if (p) {
            if (p->seq < last_acq)
                res->regressions++;
            last_acq = p->seq;
            if ((res->reads & 63) == 0)
                sched_yield(); /* let the publisher drop its reference meanwhile */
            if (!obj_intact(p))
                res->bad++;
            sk_snap_release(&p->snap);
        }
        res->reads++;
    }
    /* a final look must see the last publication */
    obj *o = (obj *)sk_slot_cached(&stress_slot, &cache);
    if (!o || o->seq != PUBLISHES)
        res->bad++;
    sk_slot_cache_clear(&cache);
    return NULL;
}

static int test_stress(void)
{
    atomic_store(&destroy_count, 0);
    atomic_store(&destroy_twice, 0);
    sk_slot_init(&stress_slot);
    pthread_t th[READERS];
    reader_result res[READERS];
    memset(res, 0, sizeof res);
    for (int i = 0; i < READERS; i++)
        REQUIRE(pthread_create(&th[i], NULL, reader, &res[i]) == 0);
    /* publish only once both readers are looping (they first see NULL) */
    while (atomic_load(&readers_ready) < READERS)
        sched_yield();
    uint64_t published = 0;
    for (uint64_t i = 1; i <= PUBLISHES; i++) {
        uint64_t v = sk_slot_publish(&stress_slot, &obj_new(i)->snap);
        if (v != i)
            TL_FAIL("publish %" PRIu64 " got version %" PRIu64, i, v);
        published++;
        if ((i & 63) == 0)
            sched_yield();
    }
    atomic_store(&stress_done, 1);
    for (int i = 0; i < READERS; i++)
        pthread_join(th[i], NULL);
    /* every publication but the current one is gone already */
    CHECK_EQ_U(atomic_load(&destroy_count), published - 1);
    sk_slot_destroy(&stress_slot);
    CHECK_EQ_U(atomic_load(&destroy_count), published);
    CHECK_EQ_U(atomic_load(&destroy_twice), 0);
    for (int i = 0; i < READERS; i++) {
        CHECK_EQ_U(res[i].bad, 0);
        CHECK_EQ_U(res[i].regressions, 0);
        CHECK_OP_U(res[i].reads, >, 0);
        fprintf(stderr, "   reader %d: %" PRIu64 " reads, %" PRIu64 " cache refreshes\n", i,
                res[i].reads, res[i].cached_refreshes);
    }
    return 0;
}

/* ------------------------------------------------------------ reaper */

typedef struct reaped_obj {
    sk_snap snap;
    pthread_t thread;
    _Atomic int done;
} reaped_obj;

static void reaped_destroy(sk_snap *s)
{
    reaped_obj *o = (reaped_obj *)s;
    o->thread = pthread_self();
    atomic_store(&o->done, 1);
    /* not freed here: the test reads it after; freed by the test */
}

typedef struct drop_arg {
    sk_snap *snap;
    bool as_worker;
    pthread_t self;
} drop_arg;

static void *drop_main(void *arg)
{
    drop_arg *d = arg;
    d->self = pthread_self();
    if (d->as_worker)
        sk_snap_thread_is_worker();
    sk_snap_release(d->snap);
    return NULL;
}

static int wait_done(reaped_obj *o)
{
    for (int i = 0; i < 10000 && !atomic_load(&o->done); i++)
        sched_yield(), usleep(1000);
    return atomic_load(&o->done);
}

/* A snapshot marked off-worker whose last reference a worker drops is
 * destroyed by the reaper thread, not the worker; dropped by any other
 * thread, at once on that thread; plain snapshots always at once. */
static int test_reaper(void)
{
    sk_snap_reaper_start(); /* sk_engine_create's part */
    sk_snap_reaper_start(); /* once per process: a second call is a no-op */
    uint64_t reaped0 = sk_snap_reaped();

    reaped_obj *a = calloc(1, sizeof *a);
    REQUIRE(a != NULL);
    sk_snap_init_off_worker(&a->snap, reaped_destroy);
    drop_arg da = {.snap = &a->snap, .as_worker = true};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, drop_main, &da) == 0);
    pthread_join(th, NULL);
    CHECK(wait_done(a));
    CHECK(!pthread_equal(a->thread, da.self));
    CHECK(!pthread_equal(a->thread, pthread_self()));
    CHECK_EQ_U(sk_snap_reaped() - reaped0, 1);

    reaped_obj *b = calloc(1, sizeof *b);
    REQUIRE(b != NULL);
    sk_snap_init_off_worker(&b->snap, reaped_destroy);
    drop_arg db = {.snap = &b->snap, .as_worker = false};
    REQUIRE(pthread_create(&th, NULL, drop_main, &db) == 0);
    pthread_join(th, NULL);
    CHECK(atomic_load(&b->done)); /* inline, before release returned */
    CHECK(pthread_equal(b->thread, db.self));

    reaped_obj *c = calloc(1, sizeof *c);
    REQUIRE(c != NULL);
    sk_snap_init(&c->snap, reaped_destroy);
    drop_arg dc = {.snap = &c->snap, .as_worker = true};
    REQUIRE(pthread_create(&th, NULL, drop_main, &dc) == 0);
    pthread_join(th, NULL);
    CHECK(atomic_load(&c->done));
    CHECK(pthread_equal(c->thread, dc.self));
    CHECK_EQ_U(sk_snap_reaped() - reaped0, 1);
    free(a);
    free(b);
    free(c);

    /* many, from several worker threads at once: each destroyed once */
    enum { N = 400, T = 4 };
    static reaped_obj many[N];
    drop_arg args[N];
    for (int i = 0; i < N; i++) {
        sk_snap_init_off_worker(&many[i].snap, reaped_destroy);
        args[i] = (drop_arg){.snap = &many[i].snap, .as_worker = true};
    }
    pthread_t ths[N];
    for (int i = 0; i < N; i++)
        REQUIRE(pthread_create(&ths[i], NULL, drop_main, &args[i]) == 0);
    for (int i = 0; i < N; i++)
        pthread_join(ths[i], NULL);
    int done = 0;
    for (int i = 0; i < N; i++)
        done += wait_done(&many[i]);
    CHECK_EQ_I(done, N);
    CHECK_EQ_U(sk_snap_reaped() - reaped0, 1 + N);
    return 0;
}

int main(void)
{
    RUN(test_refcount);
    RUN(test_publish_acquire);
    RUN(test_cache);
    RUN(test_stress);
    RUN(test_reaper);
    return tl_summary("test_snapshot");
}
