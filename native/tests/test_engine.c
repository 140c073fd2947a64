/* test_engine.c -- the engine object through the public API (engine.c,
 * worker.c, event.c): option errors, event ring overflow, and a stop with a
 * relayed flow, an app connection and timers still open. */
#include "engine_fixture.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

/* ------------------------------------------------------------ tests */

static int test_create_errors(void)
{
    char err[SK_ERRLEN];
    sk_engine_options o;

    sk_engine_options_init(&o);
    CHECK_EQ_I(o.worker_threads, 0);
    CHECK_EQ_I(o.relay_buffer_bytes, 65536);
    CHECK_EQ_I(o.event_ring_size, 4096);
    CHECK_EQ_I(o.keepalive, 1);

    sk_engine_options_init(&o);
    o.worker_threads = 300;
    err[0] = 0;
    CHECK(sk_engine_create(&o, err, sizeof err) == NULL);
    CHECK_STR_CONTAINS(err, "300");

    sk_engine_options_init(&o);
    o.worker_threads = 1;
    o.relay_buffer_bytes = 100;
    err[0] = 0;
    CHECK(sk_engine_create(&o, err, sizeof err) == NULL);
    CHECK_STR_CONTAINS(err, "relay_buffer_bytes");

    /* a ring size that is not a power of two fails in the first worker */
    sk_engine_options_init(&o);
    o.worker_threads = 1;
    o.event_ring_size = 1000;
    err[0] = 0;
    CHECK(sk_engine_create(&o, err, sizeof err) == NULL);
    CHECK_STR_CONTAINS(err, "event_ring_size");
    return 0;
}

/* worker_cpus: each worker starts pinned to its CPU of the set (round robin)
 * and the kernel reports that set; a CPU this process may not use is an
 * error at create naming it. */
static int test_worker_cpus(void)
{
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    REQUIRE(sched_getaffinity(0, sizeof allowed, &allowed) == 0);
    int cpus[2], n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[n++] = c;
    REQUIRE(n >= 1);

    char err[SK_ERRLEN] = "";
    sk_engine_options o;
    sk_engine_options_init(&o);
    for (int i = 0; i < SK_CPU_WORDS; i++)
        CHECK_EQ_U(o.worker_cpus[i], 0);
    o.worker_threads = 3;
    for (int k = 0; k < n; k++)
        o.worker_cpus[cpus[k] / 64] |= (uint64_t)1 << (cpus[k] % 64);
    sk_engine *e = sk_engine_create(&o, err, sizeof err);
    REQUIRE_MSG(e != NULL, "%s", err);
    for (int i = 0; i < 3; i++) {
        int want = cpus[i % n];
        CHECK_EQ_I(sk_engine_worker_cpu(e, i), want);
        uint64_t mask[SK_CPU_WORDS];
        CHECK_EQ_I(sk_engine_worker_affinity(e, i, mask, SK_CPU_WORDS), 1);
        CHECK((mask[want / 64] >> (want % 64)) & 1u);
    }
    CHECK_EQ_I(sk_engine_worker_cpu(e, 3), -1);
    CHECK_EQ_I(sk_engine_worker_affinity(e, 3, NULL, 0), -1);
    sk_engine_stop(e);
    sk_engine_destroy(e);

    /* no pinning: the workers keep the creating thread's whole set */
    sk_engine_options_init(&o);
    o.worker_threads = 1;
    e = sk_engine_create(&o, err, sizeof err);
    REQUIRE_MSG(e != NULL, "%s", err);
    CHECK_EQ_I(sk_engine_worker_cpu(e, 0), -1);
    uint64_t mask[SK_CPU_WORDS];
    CHECK_EQ_I(sk_engine_worker_affinity(e, 0, mask, SK_CPU_WORDS), CPU_COUNT(&allowed));
    sk_engine_stop(e);
    sk_engine_destroy(e);

    /* the first CPU this process may not use */
    int bad = -1;
    for (int c = 0; c < SK_CPU_WORDS * 64 && bad < 0; c++)
        if (!CPU_ISSET(c, &allowed))
            bad = c;
    REQUIRE(bad >= 0);
    sk_engine_options_init(&o);
    o.worker_threads = 1;
    o.worker_cpus[cpus[0] / 64] |= (uint64_t)1 << (cpus[0] % 64);
    o.worker_cpus[bad / 64] |= (uint64_t)1 << (bad % 64);
    err[0] = 0;
    CHECK(sk_engine_create(&o, err, sizeof err) == NULL);
    CHECK_STR_CONTAINS(err, "worker_cpus");
    char num[16];
    snprintf(num, sizeof num, "CPU %d ", bad);
    CHECK_STR_CONTAINS(err, num);
    return 0;
}

/* The nice values of this process's threads named skiff-wN, in out[N]
 * (-100 where none); how many there are. */
static int worker_nices(int *out, int max)
{
    for (int i = 0; i < max; i++)
        out[i] = -100;
    int found = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[300], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        bool named = fgets(comm, sizeof comm, f) != NULL;
        fclose(f);
        int w;
        if (named && sscanf(comm, "skiff-w%d", &w) == 1 && w >= 0 && w < max) {
            errno = 0;
            int v = getpriority(PRIO_PROCESS, (id_t)atoi(de->d_name));
            if (errno == 0) {
                out[w] = v;
                found++;
            }
        }
    }
    closedir(d);
    return found;
}

/* worker_nice: every worker runs at the value given (set on itself, and
 * named, before sk_engine_create returns), the creating thread keeps its own; without it
 * the workers inherit; a value outside -20..19 is an error naming it. */
static int test_worker_nice(void)
{
    int own = getpriority(PRIO_PROCESS, 0);
    int want = own + 3 > 19 ? 19 : own + 3; /* never below our own: no privilege needed */
    char err[SK_ERRLEN] = "";
    sk_engine_options o;
    sk_engine_options_init(&o);
    CHECK_EQ_I(o.set_worker_nice, 0);
    o.worker_threads = 2;
    o.set_worker_nice = 1;
    o.worker_nice = want;
    sk_engine *e = sk_engine_create(&o, err, sizeof err);
    REQUIRE_MSG(e != NULL, "%s", err);
    int nices[2];
    CHECK_EQ_I(worker_nices(nices, 2), 2);
    CHECK_EQ_I(nices[0], want);
    CHECK_EQ_I(nices[1], want);
    CHECK_EQ_I(getpriority(PRIO_PROCESS, 0), own);
    sk_engine_stop(e);
    sk_engine_destroy(e);

    sk_engine_options_init(&o);
    o.worker_threads = 1;
    e = sk_engine_create(&o, err, sizeof err);
    REQUIRE_MSG(e != NULL, "%s", err);
    /* without worker_nice, create does not wait for the worker to name itself */
    uint64_t deadline = mono_ms() + WAIT_MS;
    while (worker_nices(nices, 1) < 1 && mono_ms() < deadline)
        usleep(1000);
    CHECK_EQ_I(worker_nices(nices, 1), 1);
    CHECK_EQ_I(nices[0], own);
    sk_engine_stop(e);
    sk_engine_destroy(e);

    int bad[] = {20, -21};
    for (int i = 0; i < 2; i++) {
        sk_engine_options_init(&o);
        o.worker_threads = 1;
        o.set_worker_nice = 1;
        o.worker_nice = bad[i];
        err[0] = 0;
        CHECK(sk_engine_create(&o, err, sizeof err) == NULL);
        CHECK_STR_CONTAINS(err, "worker_nice");
        CHECK_STR_CONTAINS(err, "not a nice value");
    }
    return 0;
}

/* A ring that fills up drops what does not fit, says so once in the next
 * drain, and counts the loss. */
static int test_event_overflow(void)
{
    sk_engine_options o;
    sk_engine_options_init(&o);
    o.worker_threads = 1;
    o.event_ring_size = 4;
    char err[SK_ERRLEN] = "";
    sk_engine *e = sk_engine_create(&o, err, sizeof err);
    REQUIRE_MSG(e != NULL, "%s", err);
    enum { N = 20 };
    uint64_t ids[N];
    for (int i = 0; i < N; i++) {
        ids[i] = sk_timer_start(e, 0, SK_PRIO_NORMAL, 1000000, 0);
        REQUIRE(ids[i] != 0);
    }
    /* let every timer fire without draining anything */
    sk_worker_stats ws;
    uint64_t deadline = mono_ms() + WAIT_MS;
    do {
        REQUIRE(sk_engine_worker_stats(e, 0, &ws) == 0);
        if (ws.timers_fired >= N)
            break;
        poll(NULL, 0, 2);
    } while (mono_ms() < deadline);
    CHECK_EQ_U(ws.timers_fired, N);
    sk_event out[64];
    int of = -1;
    int n = sk_engine_drain(e, out, 64, &of);
    CHECK_EQ_I(n, 4);
    CHECK_EQ_I(of, 1);
    for (int i = 0; i < n; i++) {
        CHECK_EQ_U(out[i].type, SK_EV_TIMER);
        CHECK_EQ_U(out[i].id, ids[i]); /* the first ones fired are the ones kept */
    }
    sk_engine_counters c;
    sk_engine_counters_get(e, &c);
    CHECK_EQ_U(c.events_dropped, N - 4);
    /* the flag was consumed; new events flow again */
    of = -1;
    CHECK_EQ_I(sk_engine_drain(e, out, 64, &of), 0);
    CHECK_EQ_I(of, 0);
    uint64_t more = sk_timer_start(e, 0, SK_PRIO_NORMAL, 1000000, 0);
    REQUIRE(more != 0);
    deadline = mono_ms() + WAIT_MS;
    n = 0;
    while (n == 0 && mono_ms() < deadline) {
        struct pollfd p = {.fd = sk_engine_event_fd(e), .events = POLLIN};
        poll(&p, 1, 20);
        sk_engine_ack_event_fd(e);
        n = sk_engine_drain(e, out, 64, &of);
    }
    CHECK_EQ_I(n, 1);
    CHECK_EQ_U(out[0].id, more);
    CHECK_EQ_I(of, 0);
    sk_engine_stop(e);
    sk_engine_destroy(e);
    return 0;
}

/* test_stop needs an app listener like the one test_app.c opens. */
static int setup_app(void)
{
    char err[SK_ERRLEN] = "";
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = 1;
    lo.user_id = UID_L_APP;
    L_APP = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_APP != NULL, "%s", err);
    return 0;
}

/* Leaves a relayed flow and an app connection open and stops the engine:
 * everything is closed and freed. */
static int test_stop(void)
{
    REQUIRE(settle() == 0);
    int rfd = connect_to(sk_listener_port(L_RELAY));
    REQUIRE(rfd >= 0);
    CHECK(ping(rfd, "still-open") == 0);
    int afd = connect_to(sk_listener_port(L_APP));
    REQUIRE(afd >= 0);
    sk_event ev;
    REQUIRE(wait_event(SK_EV_APP_OPEN, ANY_ID, WAIT_MS, &ev) >= 0);
    uint64_t app_id = ev.id;
    CHECK_EQ_I(sk_app_write(E, app_id, "hi", 2), 0);
    char b[2];
    CHECK_EQ_U(recv_exact(afd, b, 2), 2);
    CHECK_EQ_I(sk_app_set_keepalive(E, app_id, "KA", 2, 30), 0);
    /* user timers still pending: a one-shot far out and a periodic one */
    CHECK(sk_timer_start(E, 0, SK_PRIO_NORMAL, 3600ull * 1000000000ull, 0) != 0);
    CHECK(sk_timer_start(E, 1, SK_PRIO_HIGH, 1000000, 1000000) != 0);

    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_OP_U(c.conns_live, >=, 3); /* relay pair + app */

    sk_engine_stop(E);
    sk_engine_stop(E); /* idempotent */
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.conns_live, 0);
    CHECK_EQ_U(c.bufs_live, 0);
    CHECK_EQ_U(c.buf_bytes_live, 0);
    CHECK_EQ_U(c.events_dropped, 0);
    for (int w = 0; w < 2; w++) {
        sk_worker_stats ws;
        CHECK_EQ_I(sk_engine_worker_stats(E, w, &ws), 0);
        CHECK_EQ_U(ws.connections, 0);
    }
    /* the clients see their connections end */
    CHECK(recv_eof(rfd));
    CHECK(recv_eof(afd));
    close(rfd);
    close(afd);
    /* the app connection reported its close while stopping */
    CHECK(wait_event(SK_EV_APP_CLOSED, app_id, WAIT_MS, NULL) >= 0);
    CHECK_EQ_I(sk_app_write(E, app_id, "x", 1), -2);

    /* nothing new starts on a stopped engine */
    CHECK_EQ_U(sk_timer_start(E, 0, SK_PRIO_HIGH, 1000, 0), 0);
    char err[SK_ERRLEN] = "";
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    CHECK(sk_listener_open(E, &lo, err, sizeof err) == NULL);
    CHECK(err[0] != 0);

    /* stats of what the caller still holds stay readable */
    sk_flow_stats s;
    sk_listener_stats(L_RELAY, &s);
    CHECK_EQ_U(s.active, 0);
    CHECK_EQ_U(s.opened, s.closed);
    sk_target_stats(T_LIVE, &s);
    CHECK_EQ_U(s.active, 0);
    CHECK_EQ_U(s.opened, s.closed);
    sk_listener_stats(L_APP, &s);
    CHECK_EQ_U(s.active, 0);
    CHECK_EQ_U(s.opened, s.closed);
    CHECK_EQ_I(drain_overflows, 0);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(110); /* a hang fails instead of stalling ctest */
    RUN(test_create_errors);
    RUN(test_event_overflow);
    RUN(test_worker_cpus);
    RUN(test_worker_nice);
    fx_engine_start();
    if (fx_setup_relay() == 0 && setup_app() == 0)
        RUN(test_stop);
    return fx_finish("test_engine");
}
