/* test_engine.c -- the public API (skiff.h) end to end: timers and events,
 * relayed flows through real loopback sockets, listener errors and close,
 * app connections with keep-alive, and a clean stop.
 *
 * Every wait has a generous deadline that only turns a hang into a failure;
 * no assertion depends on how fast anything is. */
#include "skiff.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SK_UNUSED_ARG(x) ((void)(x))
#define WAIT_MS 10000 /* failure deadline for anything we wait for */
#define ANY_ID UINT64_MAX

static sk_engine *E;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ event log */

typedef struct logged {
    sk_event ev;
    unsigned batch; /* which sk_engine_drain call returned it */
    int taken;
} logged;

static logged *evlog;
static size_t evlog_n, evlog_cap;
static unsigned drain_batches;
static int drain_overflows;

static const char *ev_name(uint32_t t)
{
    static const char *names[] = {"?",          "TIMER",        "TIMER_CANCELLED",
                                  "LISTENER_CLOSED", "TARGET_DOWN", "TARGET_UP",
                                  "ACCEPT_PAUSED", "APP_OPEN",  "APP_READABLE",
                                  "APP_CLOSED", "CLOSE_DONE"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* Drains everything pending into the log; polls the event fd up to
 * timeout_ms first. Drains even when the fd stayed quiet, so a missed
 * wake-up cannot hang the test (test_event_fd_wakeups checks wake-ups). */
static int pump(int timeout_ms)
{
    struct pollfd p = {.fd = sk_engine_event_fd(E), .events = POLLIN};
    if (poll(&p, 1, timeout_ms) > 0)
        sk_engine_ack_event_fd(E);
    int total = 0;
    for (;;) {
        sk_event buf[64];
        int of = 0;
        int n = sk_engine_drain(E, buf, 64, &of);
        drain_batches++;
        if (of)
            drain_overflows++;
        for (int i = 0; i < n; i++) {
            if (evlog_n == evlog_cap) {
                evlog_cap = evlog_cap ? evlog_cap * 2 : 256;
                evlog = realloc(evlog, evlog_cap * sizeof *evlog);
                if (!evlog)
                    abort();
            }
            evlog[evlog_n].ev = buf[i];
            evlog[evlog_n].batch = drain_batches;
            evlog[evlog_n].taken = 0;
            evlog_n++;
        }
        total += n;
        if (n < 64)
            break;
    }
    return total;
}

static long find_event(uint32_t type, uint64_t id, size_t from, int untaken_only)
{
    for (size_t i = from; i < evlog_n; i++)
        if (evlog[i].ev.type == type && (id == ANY_ID || evlog[i].ev.id == id) &&
            (!untaken_only || !evlog[i].taken))
            return (long)i;
    return -1;
}

/* Waits for the first not yet taken event of type (and id), marks it taken.
 * Returns its log index or -1 after timeout_ms. */
static long wait_event(uint32_t type, uint64_t id, int timeout_ms, sk_event *out)
{
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        long i = find_event(type, id, 0, 1);
        if (i >= 0) {
            evlog[i].taken = 1;
            if (out)
                *out = evlog[i].ev;
            return i;
        }
        if (mono_ms() >= deadline) {
            fprintf(stderr, "   timed out waiting for %s id %" PRIu64 "\n", ev_name(type), id);
            return -1;
        }
        pump(20);
    }
}

static size_t count_events(uint32_t type, uint64_t id, size_t from)
{
    size_t n = 0;
    for (size_t i = from; i < evlog_n; i++)
        if (evlog[i].ev.type == type && (id == ANY_ID || evlog[i].ev.id == id))
            n++;
    return n;
}

/* Keeps draining for ms milliseconds. */
static void pump_for(int ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;
    while (mono_ms() < end)
        pump(5);
}

/* ------------------------------------------------------------ sockets */

static int bound_socket(int do_listen, int *port_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || (do_listen && listen(fd, 64) != 0)) {
        close(fd);
        return -1;
    }
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port_out = ntohs(sa.sin_port);
    return fd;
}

static void set_timeouts(int fd, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Blocking client; returns fd, or -errno when connect fails. */
static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    set_timeouts(fd, WAIT_MS);
    return fd;
}

static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly len bytes; returns how many arrived before EOF/error/timeout. */
static size_t recv_exact(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

/* 1: orderly EOF (or reset) is next; 0: data or a time-out instead. */
static int recv_eof(int fd)
{
    char c;
    for (;;) {
        ssize_t n = recv(fd, &c, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return 1;
        if (n < 0 && errno == ECONNRESET)
            return 1;
        return 0;
    }
}

/* Whether any byte arrives within ms (a poll, the data is not consumed). */
static int readable_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) > 0;
}

static int local_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    return ntohs(sa.sin_port);
}

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i ^ (i >> 8) ^ ((i >> 16) * 7) ^ 0x5a);
}

/* ------------------------------------------------------------ echo server */

#define ECHO_MAX_CONNS 64

typedef struct echo_server {
    int lfd;
    int port;
    pthread_t acceptor;
    pthread_t conn_th[ECHO_MAX_CONNS];
    _Atomic int nconns;
    _Atomic int stop;
    _Atomic uint64_t bytes;
} echo_server;

typedef struct echo_conn_arg {
    echo_server *es;
    int fd;
} echo_conn_arg;

static void *echo_conn(void *arg)
{
    echo_conn_arg *a = arg;
    static __thread char buf[65536];
    for (;;) {
        ssize_t n = recv(a->fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        atomic_fetch_add(&a->es->bytes, (uint64_t)n);
        if (send_all(a->fd, buf, (size_t)n) != 0)
            break;
    }
    shutdown(a->fd, SHUT_WR);
    close(a->fd);
    free(a);
    return NULL;
}

static void *echo_accept(void *arg)
{
    echo_server *es = arg;
    for (;;) {
        int fd = accept4(es->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            break; /* shut down */
        }
        int k = atomic_load(&es->nconns);
        echo_conn_arg *a = malloc(sizeof *a);
        if (k >= ECHO_MAX_CONNS || !a) {
            free(a);
            close(fd);
            continue;
        }
        a->es = es;
        a->fd = fd;
        if (pthread_create(&es->conn_th[k], NULL, echo_conn, a) != 0) {
            close(fd);
            free(a);
            continue;
        }
        atomic_store(&es->nconns, k + 1);
    }
    return NULL;
}

static int echo_start(echo_server *es)
{
    memset(es, 0, sizeof *es);
    es->lfd = bound_socket(1, &es->port);
    if (es->lfd < 0)
        return -1;
    return pthread_create(&es->acceptor, NULL, echo_accept, es);
}

static void echo_stop(echo_server *es)
{
    atomic_store(&es->stop, 1);
    shutdown(es->lfd, SHUT_RDWR); /* wakes accept() */
    pthread_join(es->acceptor, NULL);
    int n = atomic_load(&es->nconns);
    for (int i = 0; i < n; i++)
        pthread_join(es->conn_th[i], NULL);
    close(es->lfd);
}

/* ------------------------------------------------------------ fixtures */

static echo_server ECHO;
static int echo_started;
static sk_target *T_LIVE, *T_DEAD;
static int DEAD_FD = -1, DEAD_PORT;
static sk_listener *L_RELAY; /* address 0 */
static uint64_t routes_published;

#define UID_LIVE 101
#define UID_DEAD 102
#define UID_L_RELAY 7

/* The priority of a timer is not in its events: test_timers notes the ids
 * of the high priority ones so test_lateness can split them by class. */
static uint64_t high_ids[64];
static int n_high_ids;

static uint64_t mark_high(uint64_t id)
{
    if (n_high_ids < 64)
        high_ids[n_high_ids++] = id;
    return id;
}

static int timer_is_high(uint64_t id)
{
    for (int i = 0; i < n_high_ids; i++)
        if (high_ids[i] == id)
            return 1;
    return 0;
}

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

static int test_timers(void)
{
    int efd = sk_engine_event_fd(E);
    REQUIRE(efd >= 0);
    CHECK_EQ_I(sk_engine_worker_count(E), 2);

    /* nothing pending yet: the fd is quiet and drain returns nothing */
    struct pollfd p = {.fd = efd, .events = POLLIN};
    CHECK_EQ_I(poll(&p, 1, 0), 0);
    sk_event tmp[4];
    int of = -1;
    CHECK_EQ_I(sk_engine_drain(E, tmp, 4, &of), 0);
    CHECK_EQ_I(of, 0);

    /* bad arguments */
    CHECK_EQ_U(sk_timer_start(E, 0, 7, 1000, 0), 0);
    CHECK_EQ_U(sk_timer_start(E, 2, SK_PRIO_HIGH, 1000, 0), 0);
    CHECK_EQ_I(sk_timer_cancel(E, 0), -1);
    CHECK_EQ_I(sk_timer_cancel(E, ((uint64_t)12345 << 8) | 200), -1);

    /* a high priority one-shot: the event fd wakes us */
    uint64_t one = mark_high(sk_timer_start(E, 0, SK_PRIO_HIGH, 20 * 1000000ull, 0));
    REQUIRE(one != 0);
    CHECK_EQ_U(one & 0xff, 0); /* low byte: owning worker */
    p.revents = 0;
    CHECK_EQ_I(poll(&p, 1, WAIT_MS), 1);
    CHECK(p.revents & POLLIN);
    sk_engine_ack_event_fd(E);
    sk_event ev;
    REQUIRE(wait_event(SK_EV_TIMER, one, WAIT_MS, &ev) >= 0);
    CHECK_EQ_U(ev.worker, 0);
    CHECK_OP_I(ev.a, >=, 0);

    /* round robin (-1) picks a worker and says so in the id */
    uint64_t rr1 = sk_timer_start(E, -1, SK_PRIO_NORMAL, 1000000, 0);
    uint64_t rr2 = sk_timer_start(E, -1, SK_PRIO_NORMAL, 1000000, 0);
    REQUIRE(rr1 && rr2);
    CHECK((rr1 & 0xff) < 2 && (rr2 & 0xff) < 2);
    CHECK((rr1 & 0xff) != (rr2 & 0xff));
    REQUIRE(wait_event(SK_EV_TIMER, rr1, WAIT_MS, &ev) >= 0);
    CHECK_EQ_U(ev.worker, rr1 & 0xff);
    REQUIRE(wait_event(SK_EV_TIMER, rr2, WAIT_MS, &ev) >= 0);
    CHECK_EQ_U(ev.worker, rr2 & 0xff);

    /* one-shots on one worker fire in deadline order, not start order (the
     * gaps are far larger than any scheduling hiccup between the calls) */
    uint64_t late = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 300 * 1000000ull, 0));
    uint64_t early = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 60 * 1000000ull, 0));
    uint64_t mid = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 180 * 1000000ull, 0));
    REQUIRE(late && early && mid);
    long i_late = wait_event(SK_EV_TIMER, late, WAIT_MS, NULL);
    long i_early = wait_event(SK_EV_TIMER, early, WAIT_MS, NULL);
    long i_mid = wait_event(SK_EV_TIMER, mid, WAIT_MS, NULL);
    CHECK(i_early >= 0 && i_mid >= 0 && i_late >= 0);
    CHECK_OP_I(i_early, <, i_mid);
    CHECK_OP_I(i_mid, <, i_late);

    /* periodic timers of both classes, then cancel them while pending */
    uint64_t ph = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 5 * 1000000ull, 10 * 1000000ull));
    uint64_t pn = sk_timer_start(E, 0, SK_PRIO_NORMAL, 5 * 1000000ull, 10 * 1000000ull);
    REQUIRE(ph && pn);
    uint64_t deadline = mono_ms() + WAIT_MS;
    while ((count_events(SK_EV_TIMER, ph, 0) < 5 || count_events(SK_EV_TIMER, pn, 0) < 5) &&
           mono_ms() < deadline)
        pump(20);
    CHECK_OP_U(count_events(SK_EV_TIMER, ph, 0), >=, 5);
    CHECK_OP_U(count_events(SK_EV_TIMER, pn, 0), >=, 5);
    for (size_t i = 0; i < evlog_n; i++)
        if (evlog[i].ev.type == SK_EV_TIMER && evlog[i].ev.id == ph)
            CHECK_EQ_U(evlog[i].ev.worker, 1);
    CHECK_EQ_I(sk_timer_cancel(E, ph), 0);
    CHECK_EQ_I(sk_timer_cancel(E, pn), 0);
    long ic_h = wait_event(SK_EV_TIMER_CANCELLED, ph, WAIT_MS, &ev);
    REQUIRE(ic_h >= 0);
    CHECK_EQ_I(ev.a, 1); /* it was still pending */
    CHECK_EQ_U(ev.worker, 1);
    long ic_n = wait_event(SK_EV_TIMER_CANCELLED, pn, WAIT_MS, &ev);
    REQUIRE(ic_n >= 0);
    CHECK_EQ_I(ev.a, 1);
    CHECK_EQ_U(ev.worker, 0);
    /* five more periods' worth of waiting: nothing for them after the cancel */
    pump_for(60);
    CHECK_EQ_U(count_events(SK_EV_TIMER, pn, (size_t)ic_n + 1), 0);
    CHECK_EQ_U(count_events(SK_EV_TIMER, ph, (size_t)ic_h + 1), 0);
    /* and none in a later drain batch than the cancellation either */
    for (size_t i = 0; i < evlog_n; i++)
        if (evlog[i].ev.type == SK_EV_TIMER && evlog[i].ev.id == ph)
            CHECK_OP_U(evlog[i].batch, <=, evlog[ic_h].batch);

    /* cancelling a one-shot that already fired: a = 0; unknown id too */
    CHECK_EQ_I(sk_timer_cancel(E, one), 0);
    REQUIRE(wait_event(SK_EV_TIMER_CANCELLED, one, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);
    uint64_t bogus = ((uint64_t)0xabcdef << 8) | 1;
    CHECK_EQ_I(sk_timer_cancel(E, bogus), 0);
    REQUIRE(wait_event(SK_EV_TIMER_CANCELLED, bogus, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);

    /* a one-shot cancelled before it fires never fires */
    uint64_t never = sk_timer_start(E, 0, SK_PRIO_NORMAL, 60ull * 1000000000ull, 0);
    REQUIRE(never);
    CHECK_EQ_I(sk_timer_cancel(E, never), 0);
    REQUIRE(wait_event(SK_EV_TIMER_CANCELLED, never, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 1);

    /* every one-shot fired exactly once */
    CHECK_EQ_U(count_events(SK_EV_TIMER, one, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, late, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, early, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, mid, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, never, 0), 0);

    /* quiet again: after an ack and a full drain the fd is not readable */
    pump(0);
    sk_engine_ack_event_fd(E);
    CHECK_EQ_I(sk_engine_drain(E, tmp, 4, &of), 0);
    p.revents = 0;
    CHECK_EQ_I(poll(&p, 1, 0), 0);
    return 0;
}

/* The lateness histograms saw exactly the timers whose events we drained,
 * with the same values (the event's a is the recorded lateness). */
static int test_lateness(void)
{
    sk_hist h;
    CHECK_EQ_I(sk_engine_timer_lateness(E, 5, -1, &h), -1);
    CHECK_EQ_I(sk_engine_timer_lateness(E, SK_PRIO_HIGH, 2, &h), -1);
    uint64_t total_fired = 0;
    for (int prio = 0; prio < 2; prio++) {
        for (int worker = -1; worker < 2; worker++) {
            uint64_t n = 0, sum = 0, max = 0;
            uint64_t per_bucket[SK_HIST_BUCKETS] = {0};
            for (size_t i = 0; i < evlog_n; i++) {
                const sk_event *ev = &evlog[i].ev;
                if (ev->type != SK_EV_TIMER || (worker >= 0 && ev->worker != (uint32_t)worker))
                    continue;
                if (timer_is_high(ev->id) != (prio == SK_PRIO_HIGH))
                    continue;
                uint64_t a = (uint64_t)ev->a;
                n++;
                sum += a;
                if (a > max)
                    max = a;
                for (int b = 0; b < SK_HIST_BUCKETS; b++)
                    if (a <= sk_hist_bound_ns(b)) {
                        per_bucket[b]++;
                        break;
                    }
            }
            memset(&h, 0xee, sizeof h);
            REQUIRE(sk_engine_timer_lateness(E, prio, worker, &h) == 0);
            CHECK_MSG(h.count == n, "prio %d worker %d: hist count %" PRIu64 ", events %" PRIu64,
                      prio, worker, h.count, n);
            CHECK_EQ_U(h.sum_ns, sum);
            CHECK_EQ_U(h.max_ns, max);
            uint64_t run = 0;
            for (int b = 0; b < SK_HIST_BUCKETS; b++) {
                run += per_bucket[b];
                CHECK_EQ_U(h.cumulative[b], run);
            }
            CHECK_EQ_U(h.cumulative[SK_HIST_BUCKETS - 1], h.count);
            if (worker < 0) {
                CHECK_OP_U(n, >, 0);
                total_fired += n;
            }
        }
    }
    uint64_t fired = 0;
    for (int w = 0; w < 2; w++) {
        sk_worker_stats ws;
        REQUIRE(sk_engine_worker_stats(E, w, &ws) == 0);
        fired += ws.timers_fired;
        CHECK_OP_U(ws.wakeups, >, 0);
        CHECK_EQ_U(ws.connections, 0);
    }
    sk_worker_stats ws;
    CHECK_EQ_I(sk_engine_worker_stats(E, 2, &ws), -1);
    CHECK_EQ_I(sk_engine_worker_stats(E, -1, &ws), -1);
    CHECK_EQ_U(fired, total_fired);
    return 0;
}

static int setup_relay(void)
{
    char err[SK_ERRLEN];
    REQUIRE(echo_start(&ECHO) == 0);
    echo_started = 1;
    /* a port that refuses: bound, never listening */
    DEAD_FD = bound_socket(0, &DEAD_PORT);
    REQUIRE(DEAD_FD >= 0);
    int probe = connect_to(DEAD_PORT);
    REQUIRE_MSG(probe == -ECONNREFUSED, "dead port %d: connect gave %d", DEAD_PORT, probe);

    T_LIVE = sk_target_create(E, UID_LIVE);
    T_DEAD = sk_target_create(E, UID_DEAD);
    REQUIRE(T_LIVE && T_DEAD);
    CHECK_EQ_I(sk_target_is_down(T_LIVE), 0);

    sk_routes *r = sk_routes_create(1);
    REQUIRE(r != NULL);
    /* argument errors */
    err[0] = 0;
    CHECK_EQ_I(sk_routes_add(r, 1, T_LIVE, "127.0.0.1", ECHO.port, "h", 1, -1, 0, err, sizeof err),
               -1);
    CHECK_STR_CONTAINS(err, "out of range");
    err[0] = 0;
    CHECK_EQ_I(sk_routes_add(r, 0, T_LIVE, "localhost", ECHO.port, "h", 1, -1, 0, err, sizeof err),
               -1);
    CHECK_STR_CONTAINS(err, "localhost");
    err[0] = 0;
    CHECK_EQ_I(sk_routes_add(r, 0, T_LIVE, "127.0.0.1", 0, "h", 1, -1, 0, err, sizeof err), -1);
    CHECK(err[0] != 0);
    err[0] = 0;
    CHECK_EQ_I(sk_routes_add(r, 0, NULL, "127.0.0.1", 80, "h", 1, -1, 0, err, sizeof err), -1);
    CHECK(err[0] != 0);
    CHECK_EQ_I(sk_routes_add(r, 0, T_LIVE, "127.0.0.1", ECHO.port, "echo", 1, -1, 0, err, sizeof err),
               0);
    uint64_t v = sk_engine_publish_routes(E, r);
    CHECK_EQ_U(v, routes_published + 1);
    routes_published = v;
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.routes_version, v);

    sk_listener_options lo;
    sk_listener_options_init(&lo);
    CHECK_EQ_I(lo.tls_slot, -1);
    lo.host = "127.0.0.1";
    lo.port = 0;
    lo.address_id = 0;
    lo.user_id = UID_L_RELAY;
    err[0] = 0;
    L_RELAY = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_RELAY != NULL, "%s", err);
    CHECK_OP_I(sk_listener_port(L_RELAY), >, 0);
    return 0;
}

typedef struct writer_arg {
    int fd;
    size_t len;
    int rc;
    _Atomic int go; /* set by the reader once it looked at the open flow */
} writer_arg;

static void *writer_main(void *arg)
{
    writer_arg *wa = arg;
    static char chunk[70000];
    size_t off = 0;
    uint64_t seed = 77;
    wa->rc = 0;
    while (off < wa->len) {
        size_t n = 1 + tl_rand(&seed) % sizeof chunk; /* ragged writes */
        if (n > wa->len - off)
            n = wa->len - off;
        for (size_t i = 0; i < n; i++)
            chunk[i] = (char)pattern(off + i);
        if (send_all(wa->fd, chunk, n) != 0) {
            wa->rc = -1;
            break;
        }
        if (off == 0) {
            /* hold the rest back until the reader saw the first echo: the flow
             * could otherwise finish before anyone looked at it */
            while (!atomic_load(&wa->go))
                sched_yield();
        }
        off += n;
    }
    shutdown(wa->fd, SHUT_WR);
    return NULL;
}

/* Waits until f(arg) is true or the failure deadline passes. */
static int wait_until(int (*f)(void *), void *arg)
{
    uint64_t deadline = mono_ms() + WAIT_MS;
    while (!f(arg)) {
        if (mono_ms() >= deadline)
            return 0;
        pump(5);
    }
    return 1;
}

static int no_conns_live(void *arg)
{
    SK_UNUSED_ARG(arg);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    return c.conns_live == 0;
}

/* Flows of earlier tests close asynchronously: start from none. */
static int settle(void)
{
    int ok = wait_until(no_conns_live, NULL);
    CHECK_MSG(ok, "connections of an earlier test never closed");
    return ok ? 0 : -1;
}

static int listener_closed_n(void *arg)
{
    void **a = arg;
    sk_flow_stats s;
    sk_listener_stats(a[0], &s);
    return s.closed >= (uint64_t)(uintptr_t)a[1];
}

static int test_relay_1mb(void)
{
    REQUIRE(settle() == 0);
    enum { LEN = 1 << 20 };
    int port = sk_listener_port(L_RELAY);
    int fd = connect_to(port);
    REQUIRE_MSG(fd >= 0, "connect to listener: %s", strerror(-fd));
    writer_arg wa = {.fd = fd, .len = LEN, .go = 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, writer_main, &wa) == 0);

    static char buf[65536];
    size_t got = 0, mismatches = 0;
    int listed = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if ((uint8_t)buf[i] != pattern(got + (size_t)i) && mismatches++ < 3)
                TL_FAIL("byte %zu: got %u want %u", got + (size_t)i, (uint8_t)buf[i],
                        pattern(got + (size_t)i));
        got += (size_t)n;
        if (!listed && got > 0) {
            /* the flow is established: list it */
            listed = 1;
            sk_conn_info info[4];
            int total = sk_engine_list_connections(E, info, 4);
            CHECK_EQ_I(total, 1);
            if (total >= 1) {
                char want_peer[64], want_target[64];
                snprintf(want_peer, sizeof want_peer, "127.0.0.1:%d", local_port(fd));
                snprintf(want_target, sizeof want_target, "127.0.0.1:%d", ECHO.port);
                CHECK_EQ_U(info[0].listener_id, UID_L_RELAY);
                CHECK_EQ_U(info[0].target_id, UID_LIVE);
                CHECK_EQ_U(info[0].app, 0);
                CHECK_OP_U(info[0].worker, <, 2);
                CHECK(strcmp(info[0].peer, want_peer) == 0);
                CHECK(strcmp(info[0].target, want_target) == 0);
                CHECK_EQ_U(info[0].tls_version, 0);
            }
            CHECK_EQ_I(sk_engine_list_connections(E, info, 0), 1); /* count only */
        }
        atomic_store(&wa.go, 1);
    }
    atomic_store(&wa.go, 1);
    pthread_join(th, NULL);
    CHECK_EQ_I(wa.rc, 0);
    CHECK_EQ_U(got, LEN); /* byte exact, then EOF */
    CHECK_EQ_U(mismatches, 0);
    close(fd);

    /* the flow closes itself once both directions finished */
    void *arg[2] = {L_RELAY, (void *)(uintptr_t)1};
    CHECK(wait_until(listener_closed_n, arg));
    /* both connections of the pair are freed at the end of the worker's batch */
    CHECK(wait_until(no_conns_live, NULL));
    sk_flow_stats ls, ts;
    sk_listener_stats(L_RELAY, &ls);
    CHECK_EQ_U(ls.opened, 1);
    CHECK_EQ_U(ls.closed, 1);
    CHECK_EQ_U(ls.active, 0);
    CHECK_EQ_U(ls.failed, 0);
    CHECK_EQ_U(ls.bytes_in, LEN);
    CHECK_EQ_U(ls.bytes_out, LEN);
    sk_target_stats(T_LIVE, &ts);
    CHECK_EQ_U(ts.opened, 1);
    CHECK_EQ_U(ts.closed, 1);
    CHECK_EQ_U(ts.active, 0);
    CHECK_EQ_U(ts.failed, 0);
    CHECK_EQ_U(ts.bytes_in, LEN);
    CHECK_EQ_U(ts.bytes_out, LEN);
    CHECK_EQ_U(atomic_load(&ECHO.bytes), LEN);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.accepted, 1);
    CHECK_EQ_U(c.connects_failed, 0);
    CHECK_EQ_U(c.flows_failed, 0);
    CHECK_EQ_U(c.conns_live, 0);
    sk_conn_info info[2];
    CHECK_EQ_I(sk_engine_list_connections(E, info, 2), 0);
    return 0;
}

/* One echo round trip; returns 0 when the bytes came back. */
static int ping(int fd, const char *msg)
{
    size_t len = strlen(msg);
    char back[128];
    if (send_all(fd, msg, len) != 0)
        return -1;
    if (recv_exact(fd, back, len) != len)
        return -1;
    return memcmp(back, msg, len) == 0 ? 0 : -1;
}

static int test_dead_target(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_flow_stats before_live;
    sk_target_stats(T_LIVE, &before_live);
    sk_engine_counters c0;
    sk_engine_counters_get(E, &c0);

    /* address 0: the dead target first, then the live one */
    sk_routes *r = sk_routes_create(2);
    REQUIRE(r != NULL);
    REQUIRE(sk_routes_add(r, 0, T_DEAD, "127.0.0.1", DEAD_PORT, "dead", 1, -1, 0, err,
                          sizeof err) == 0);
    REQUIRE(sk_routes_add(r, 0, T_LIVE, "127.0.0.1", ECHO.port, "echo", 1, -1, 0, err,
                          sizeof err) == 0);
    /* address 1: only the dead one */
    REQUIRE(sk_routes_add(r, 1, T_DEAD, "127.0.0.1", DEAD_PORT, "dead", 1, -1, 0, err,
                          sizeof err) == 0);
    uint64_t v = sk_engine_publish_routes(E, r);
    CHECK_EQ_U(v, routes_published + 1);
    routes_published = v;

    /* clients held open together: once the live target has a flow the dead
     * one has fewer, so it is tried for sure */
    enum { NCLI = 4 };
    int fds[NCLI];
    for (int i = 0; i < NCLI; i++) {
        fds[i] = connect_to(sk_listener_port(L_RELAY));
        REQUIRE(fds[i] >= 0);
        char msg[32];
        snprintf(msg, sizeof msg, "ping-%d", i);
        CHECK_MSG(ping(fds[i], msg) == 0, "client %d got no echo", i);
    }
    sk_event ev;
    REQUIRE(wait_event(SK_EV_TARGET_DOWN, UID_DEAD, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, ECONNREFUSED);
    CHECK_EQ_I(ev.b, 500); /* the first back-off step */
    CHECK_EQ_I(sk_target_is_down(T_DEAD), 1);
    CHECK_EQ_I(sk_target_is_down(T_LIVE), 0);
    CHECK_EQ_U(count_events(SK_EV_TARGET_DOWN, UID_LIVE, 0), 0);
    sk_flow_stats ds, ls;
    sk_target_stats(T_DEAD, &ds);
    CHECK_OP_U(ds.failed, >=, 1);
    CHECK_EQ_U(ds.opened, 0);
    CHECK_EQ_U(ds.active, 0);
    sk_target_stats(T_LIVE, &ls);
    CHECK_EQ_U(ls.opened - before_live.opened, NCLI);
    CHECK_EQ_U(ls.active, NCLI);
    for (int i = 0; i < NCLI; i++)
        close(fds[i]);

    /* a listener whose only target is dead: the client is closed, counted */
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.address_id = 1;
    lo.user_id = 8;
    sk_listener *ld = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(ld != NULL, "%s", err);
    /* and one whose address id has no entry in the table */
    lo.address_id = 5;
    lo.user_id = 9;
    sk_listener *ln = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(ln != NULL, "%s", err);

    int fd = connect_to(sk_listener_port(ld));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd));
    close(fd);
    fd = connect_to(sk_listener_port(ln));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd));
    close(fd);
    void *a1[2] = {ld, (void *)(uintptr_t)1};
    void *a2[2] = {ln, (void *)(uintptr_t)1};
    CHECK(wait_until(listener_closed_n, a1));
    CHECK(wait_until(listener_closed_n, a2));
    sk_flow_stats s;
    sk_listener_stats(ld, &s);
    CHECK_EQ_U(s.opened, 1);
    CHECK_EQ_U(s.failed, 1);
    CHECK_EQ_U(s.active, 0);
    sk_listener_stats(ln, &s);
    CHECK_EQ_U(s.opened, 1);
    CHECK_EQ_U(s.failed, 1);
    sk_engine_counters c1;
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.flows_failed - c0.flows_failed, 2);
    CHECK_OP_U(c1.connects_failed - c0.connects_failed, >=, 2);
    sk_target_stats(T_DEAD, &ds);
    CHECK_EQ_U(c1.connects_failed, ds.failed); /* only the dead target failed */

    sk_listener_close(ld, 0);
    sk_listener_close(ln, 0);
    CHECK(wait_event(SK_EV_LISTENER_CLOSED, 8, WAIT_MS, NULL) >= 0);
    CHECK(wait_event(SK_EV_LISTENER_CLOSED, 9, WAIT_MS, NULL) >= 0);
    sk_listener_release(ld);
    sk_listener_release(ln);

    /* back to a live-only table for the rest */
    r = sk_routes_create(1);
    REQUIRE(r != NULL);
    REQUIRE(sk_routes_add(r, 0, T_LIVE, "127.0.0.1", ECHO.port, "echo", 1, -1, 0, err,
                          sizeof err) == 0);
    routes_published = sk_engine_publish_routes(E, r);
    return 0;
}

static int test_listener_errors(void)
{
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);

    lo.host = "not-an-ip";
    lo.port = 0;
    memset(err, 0, sizeof err);
    CHECK(sk_listener_open(E, &lo, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    CHECK_STR_CONTAINS(err, "not-an-ip");

    lo.host = "127.0.0.1";
    lo.port = 70000;
    memset(err, 0, sizeof err);
    CHECK(sk_listener_open(E, &lo, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    CHECK_STR_CONTAINS(err, "70000");

    lo.port = -1;
    memset(err, 0, sizeof err);
    CHECK(sk_listener_open(E, &lo, err, sizeof err) == NULL);
    CHECK(err[0] != 0);

    /* a port held by a plain socket (no SO_REUSEPORT) */
    int held_port;
    int held = bound_socket(0, &held_port);
    REQUIRE(held >= 0);
    lo.port = held_port;
    memset(err, 0, sizeof err);
    sk_listener *l = sk_listener_open(E, &lo, err, sizeof err);
    CHECK(l == NULL);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", held_port);
    CHECK_STR_CONTAINS(err, addr);
    CHECK_STR_CONTAINS(err, "in use");
    if (l) {
        sk_listener_close(l, 0);
        sk_listener_release(l);
    }
    close(held);

    lo.port = 0;
    lo.tls_slot = SK_TLS_SLOTS; /* no such slot */
    memset(err, 0, sizeof err);
    CHECK(sk_listener_open(E, &lo, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    lo.tls_slot = -1;
    lo.max_connections = -1;
    memset(err, 0, sizeof err);
    CHECK(sk_listener_open(E, &lo, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    /* no events came out of the failures */
    pump(0);
    CHECK_EQ_U(count_events(SK_EV_LISTENER_CLOSED, 0, 0), 0);
    return 0;
}

static int test_listener_close(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.user_id = 21;
    sk_listener *l = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(l != NULL, "%s", err);
    int port = sk_listener_port(l);
    int fd = connect_to(port);
    REQUIRE(fd >= 0);
    CHECK(ping(fd, "before-close") == 0);
    sk_listener_close(l, 1); /* drop its flows too */
    sk_listener_close(l, 1); /* a second close is ignored */
    sk_event ev;
    REQUIRE(wait_event(SK_EV_LISTENER_CLOSED, 21, WAIT_MS, &ev) >= 0);
    CHECK(recv_eof(fd)); /* the open flow was closed */
    close(fd);
    /* the port is not listening any more */
    int again = connect_to(port);
    CHECK_EQ_I(again, -ECONNREFUSED);
    if (again >= 0)
        close(again);
    pump_for(30);
    CHECK_EQ_U(count_events(SK_EV_LISTENER_CLOSED, 21, 0), 1);
    sk_flow_stats s;
    sk_listener_stats(l, &s);
    CHECK_EQ_U(s.opened, 1);
    CHECK_EQ_U(s.closed, 1);
    CHECK_EQ_U(s.active, 0);
    CHECK_EQ_U(s.bytes_in, strlen("before-close"));
    sk_listener_release(l);
    return 0;
}

static int test_close_target_flows(void)
{
    REQUIRE(settle() == 0);
    int fd1 = connect_to(sk_listener_port(L_RELAY));
    int fd2 = connect_to(sk_listener_port(L_RELAY));
    REQUIRE(fd1 >= 0 && fd2 >= 0);
    CHECK(ping(fd1, "one") == 0);
    CHECK(ping(fd2, "two") == 0);
    sk_flow_stats before;
    sk_target_stats(T_LIVE, &before);
    CHECK_EQ_U(before.active, 2);
    uint64_t req = sk_engine_close_target_flows(E, T_LIVE);
    CHECK(req != 0);
    REQUIRE(wait_event(SK_EV_CLOSE_DONE, req, WAIT_MS, NULL) >= 0);
    CHECK(recv_eof(fd1));
    CHECK(recv_eof(fd2));
    close(fd1);
    close(fd2);
    sk_flow_stats after;
    sk_target_stats(T_LIVE, &after);
    CHECK_EQ_U(after.active, 0);
    CHECK_EQ_U(after.closed - before.closed, 2);
    CHECK_EQ_U(count_events(SK_EV_CLOSE_DONE, req, 0), 1);
    /* new flows still work afterwards */
    int fd3 = connect_to(sk_listener_port(L_RELAY));
    REQUIRE(fd3 >= 0);
    CHECK(ping(fd3, "three") == 0);
    close(fd3);
    return 0;
}

static int test_max_connections(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.max_connections = 1;
    lo.user_id = 44;
    sk_listener *l = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(l != NULL, "%s", err);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    int fd1 = connect_to(sk_listener_port(l));
    REQUIRE(fd1 >= 0);
    CHECK(ping(fd1, "first") == 0);
    /* the second client is over the limit: accepted by the kernel, closed */
    int fd2 = connect_to(sk_listener_port(l));
    REQUIRE(fd2 >= 0);
    CHECK(recv_eof(fd2));
    close(fd2);
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.limit_rejected - c0.limit_rejected, 1);
    CHECK(ping(fd1, "still") == 0);
    close(fd1);
    /* room again once the first flow is gone */
    REQUIRE(settle() == 0);
    int fd3 = connect_to(sk_listener_port(l));
    REQUIRE(fd3 >= 0);
    CHECK(ping(fd3, "third") == 0);
    close(fd3);
    sk_flow_stats s;
    sk_listener_stats(l, &s);
    CHECK_EQ_U(s.opened, 2); /* the rejected one never became a flow */
    sk_listener_close(l, 1);
    CHECK(wait_event(SK_EV_LISTENER_CLOSED, 44, WAIT_MS, NULL) >= 0);
    sk_listener_release(l);
    return 0;
}

/* ------------------------------------------------------------ app mode */

static sk_listener *L_APP;
#define UID_L_APP 33

/* Reads what the app connection has into out (appending); returns -1 at
 * EOF, else the bytes read now. Waits for APP_READABLE when nothing is
 * buffered. */
static int64_t app_read_some(uint64_t id, char *out, size_t cap, size_t *len)
{
    for (;;) {
        int64_t n = sk_app_read(E, id, out + *len, cap - *len);
        if (n > 0) {
            *len += (size_t)n;
            return n;
        }
        if (n == -1)
            return -1;
        if (n != 0)
            return n; /* -2: unknown */
        if (wait_event(SK_EV_APP_READABLE, id, WAIT_MS, NULL) < 0)
            return -9;
    }
}

static int test_app(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = 1;
    lo.user_id = UID_L_APP;
    L_APP = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_APP != NULL, "%s", err);

    int fd = connect_to(sk_listener_port(L_APP));
    REQUIRE(fd >= 0);
    REQUIRE(send_all(fd, "hello", 5) == 0);
    sk_event ev;
    long io = wait_event(SK_EV_APP_OPEN, ANY_ID, WAIT_MS, &ev);
    REQUIRE(io >= 0);
    uint64_t id = ev.id;
    CHECK_EQ_I(ev.a, UID_L_APP);
    long ir = wait_event(SK_EV_APP_READABLE, id, WAIT_MS, NULL);
    REQUIRE(ir >= 0);
    CHECK_OP_I(io, <, ir);

    char in[256];
    size_t inlen = 0;
    while (inlen < 5) {
        int64_t n = app_read_some(id, in, 5, &inlen);
        REQUIRE_MSG(n > 0, "sk_app_read gave %" PRId64, n);
    }
    CHECK(memcmp(in, "hello", 5) == 0);
    CHECK_EQ_I(sk_app_read(E, id, in, sizeof in), 0); /* nothing buffered */

    sk_conn_info info[4];
    int total = sk_engine_list_connections(E, info, 4);
    CHECK_EQ_I(total, 1);
    if (total == 1) {
        CHECK_EQ_U(info[0].id, id);
        CHECK_EQ_U(info[0].app, 1);
        CHECK_EQ_U(info[0].listener_id, UID_L_APP);
        CHECK_EQ_U(info[0].target_id, 0);
    }

    /* echo back through the worker */
    size_t client_got = 0;
    CHECK_EQ_I(sk_app_write(E, id, "hello", 5), 0);
    char back[64];
    CHECK_EQ_U(recv_exact(fd, back, 5), 5);
    CHECK(memcmp(back, "hello", 5) == 0);
    client_got += 5;
    CHECK_OP_I(sk_app_pending(E, id), >=, 0);

    /* keep-alive: "KA" while idle, repeatedly, with no Python involved */
    CHECK_EQ_I(sk_app_set_keepalive(E, id, "KA", 2, 50), 0);
    char ka[6];
    CHECK_EQ_U(recv_exact(fd, ka, 6), 6);
    CHECK(memcmp(ka, "KAKAKA", 6) == 0);
    client_got += 6;
    /* off again; a frame written after switching it off is the last byte */
    CHECK_EQ_I(sk_app_set_keepalive(E, id, NULL, 0, 0), 0);
    CHECK_EQ_I(sk_app_write(E, id, "END", 3), 0);
    char tail[4096];
    size_t tl = 0;
    while (tl < 3 || memcmp(tail + tl - 3, "END", 3) != 0) {
        ssize_t n = recv(fd, tail + tl, sizeof tail - tl, 0);
        if (n <= 0)
            break;
        tl += (size_t)n;
    }
    REQUIRE(tl >= 3 && memcmp(tail + tl - 3, "END", 3) == 0);
    /* only whole keep-alive frames came before it */
    CHECK_EQ_U((tl - 3) % 2, 0);
    for (size_t i = 0; i + 3 < tl; i += 2)
        CHECK(tail[i] == 'K' && tail[i + 1] == 'A');
    client_got += tl;
    CHECK(!readable_within(fd, 200)); /* keep-alive really off */

    /* the client half-closes: the app reads its last bytes, then EOF */
    REQUIRE(send_all(fd, "bye", 3) == 0);
    shutdown(fd, SHUT_WR);
    inlen = 0;
    int64_t n;
    while ((n = app_read_some(id, in, sizeof in, &inlen)) > 0) {
    }
    CHECK_EQ_I(n, -1);
    CHECK_EQ_U(inlen, 3);
    CHECK(memcmp(in, "bye", 3) == 0);
    CHECK_EQ_I(sk_app_read(E, id, in, sizeof in), -1);
    /* half-closed: writing still works */
    CHECK_EQ_I(sk_app_write(E, id, "ciao", 4), 0);
    CHECK_EQ_U(recv_exact(fd, back, 4), 4);
    CHECK(memcmp(back, "ciao", 4) == 0);
    client_got += 4;

    /* close after the queue drains: the client sees the bytes, then EOF */
    CHECK_EQ_I(sk_app_write(E, id, "last", 4), 0);
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    CHECK_EQ_U(recv_exact(fd, back, 4), 4);
    CHECK(memcmp(back, "last", 4) == 0);
    client_got += 4;
    CHECK(recv_eof(fd));
    close(fd);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);
    CHECK_EQ_I(sk_app_read(E, id, in, sizeof in), -2);
    CHECK_EQ_I(sk_app_write(E, id, "x", 1), -2);
    CHECK_EQ_I(sk_app_pending(E, id), -2);
    CHECK_EQ_I(sk_app_close(E, id, 0), -2);
    CHECK_EQ_I(sk_app_set_keepalive(E, id, "KA", 2, 10), -2);

    sk_flow_stats s;
    void *arg[2] = {L_APP, (void *)(uintptr_t)1};
    CHECK(wait_until(listener_closed_n, arg));
    sk_listener_stats(L_APP, &s);
    CHECK_EQ_U(s.opened, 1);
    CHECK_EQ_U(s.closed, 1);
    CHECK_EQ_U(s.active, 0);
    CHECK_EQ_U(s.bytes_in, 8); /* "hello" + "bye" */
    CHECK_EQ_U(s.bytes_out, client_got);
    return 0;
}

typedef struct app_writer {
    int fd;
    size_t len;
} app_writer;

static void *app_writer_main(void *arg)
{
    app_writer *aw = arg;
    static char chunk[8192];
    for (size_t off = 0; off < aw->len;) {
        size_t n = aw->len - off < sizeof chunk ? aw->len - off : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = (char)pattern(off + i);
        if (send_all(aw->fd, chunk, n) != 0)
            break;
        off += n;
    }
    shutdown(aw->fd, SHUT_WR);
    return NULL;
}

/* Much more than the read credit (relay_buffer_bytes): the worker must stop
 * and resume reading as the app consumes, losing nothing. */
static int test_app_backpressure(void)
{
    REQUIRE(settle() == 0);
    enum { LEN = 300000 };
    int fd = connect_to(sk_listener_port(L_APP));
    REQUIRE(fd >= 0);
    sk_event ev;
    REQUIRE(wait_event(SK_EV_APP_OPEN, ANY_ID, WAIT_MS, &ev) >= 0);
    uint64_t id = ev.id;
    app_writer aw = {.fd = fd, .len = LEN};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, app_writer_main, &aw) == 0);
    static char in[LEN + 16];
    size_t len = 0, max_chunk = 0;
    int64_t n;
    for (;;) {
        size_t before = len;
        size_t room = sizeof in - len < 5000 ? sizeof in - len : 5000;
        n = app_read_some(id, in, len + room, &len);
        if (n <= 0)
            break;
        if (len - before > max_chunk)
            max_chunk = len - before;
    }
    pthread_join(th, NULL);
    CHECK_EQ_I(n, -1);
    CHECK_EQ_U(len, LEN);
    size_t bad = 0;
    for (size_t i = 0; i < len; i++)
        bad += (uint8_t)in[i] != pattern(i);
    CHECK_EQ_U(bad, 0);
    /* abortive close: the client sees a reset or EOF, the app its close */
    CHECK_EQ_I(sk_app_close(E, id, 1), 0);
    CHECK(recv_eof(fd));
    close(fd);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, NULL) >= 0);
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

    sk_engine_options o;
    sk_engine_options_init(&o);
    o.worker_threads = 2;
    o.relay_buffer_bytes = 16384;
    char err[SK_ERRLEN] = "";
    E = sk_engine_create(&o, err, sizeof err);
    if (!E) {
        fprintf(stderr, "sk_engine_create: %s\n", err);
        return 1;
    }
    RUN(test_timers);
    RUN(test_lateness);
    if (setup_relay() == 0) {
        RUN(test_relay_1mb);
        RUN(test_dead_target);
        RUN(test_listener_errors);
        RUN(test_listener_close);
        RUN(test_close_target_flows);
        RUN(test_max_connections);
        RUN(test_app);
        RUN(test_app_backpressure);
        RUN(test_stop);
    }
    sk_engine_stop(E);
    if (L_RELAY) {
        sk_listener_close(L_RELAY, 0);
        sk_listener_release(L_RELAY);
    }
    if (L_APP) {
        sk_listener_close(L_APP, 0);
        sk_listener_release(L_APP);
    }
    sk_target_release(T_LIVE);
    sk_target_release(T_DEAD);
    sk_engine_destroy(E);
    if (echo_started)
        echo_stop(&ECHO);
    if (DEAD_FD >= 0)
        close(DEAD_FD);
    free(evlog);
    return tl_summary("test_engine");
}
