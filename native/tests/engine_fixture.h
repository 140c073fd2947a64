/* engine_fixture.h -- what the engine tests share: one engine (E, two
 * workers, 16 KiB relay buffers), a log of every drained event, blocking
 * loopback clients, an echo server as the relay target, and a relay listener
 * on address 0 with a live and a dead target.
 *
 * Each test program includes it once, calls fx_engine_start(), the setup its
 * tests need (fx_setup_relay), its RUNs, and returns fx_finish(name). Every
 * wait has a generous deadline that only turns a hang into a failure; no
 * assertion depends on how fast anything is. Helpers a program does not use
 * are marked unused. */
#ifndef SKIFF_ENGINE_FIXTURE_H
#define SKIFF_ENGINE_FIXTURE_H

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

static __attribute__((unused)) uint64_t mono_ms(void)
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

static __attribute__((unused)) const char *ev_name(uint32_t t)
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
static __attribute__((unused)) int pump(int timeout_ms)
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

static __attribute__((unused)) long find_event(uint32_t type, uint64_t id, size_t from, int untaken_only)
{
    for (size_t i = from; i < evlog_n; i++)
        if (evlog[i].ev.type == type && (id == ANY_ID || evlog[i].ev.id == id) &&
            (!untaken_only || !evlog[i].taken))
            return (long)i;
    return -1;
}

/* Waits for the first not yet taken event of type (and id), marks it taken.
 * Returns its log index or -1 after timeout_ms. */
static __attribute__((unused)) long wait_event(uint32_t type, uint64_t id, int timeout_ms, sk_event *out)
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

static __attribute__((unused)) size_t count_events(uint32_t type, uint64_t id, size_t from)
{
    size_t n = 0;
    for (size_t i = from; i < evlog_n; i++)
        if (evlog[i].ev.type == type && (id == ANY_ID || evlog[i].ev.id == id))
            n++;
    return n;
}

/* Keeps draining for ms milliseconds. */
static __attribute__((unused)) void pump_for(int ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;
    while (mono_ms() < end)
        pump(5);
}

/* ------------------------------------------------------------ sockets */

static __attribute__((unused)) int bound_socket(int do_listen, int *port_out)
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

static __attribute__((unused)) void set_timeouts(int fd, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Blocking client; returns fd, or -errno when connect fails. */
static __attribute__((unused)) int connect_to(int port)
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

static __attribute__((unused)) int send_all(int fd, const void *buf, size_t len)
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
static __attribute__((unused)) size_t recv_exact(int fd, void *buf, size_t len)
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
static __attribute__((unused)) int recv_eof(int fd)
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
static __attribute__((unused)) int readable_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) > 0;
}

static __attribute__((unused)) int local_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    return ntohs(sa.sin_port);
}

static __attribute__((unused)) uint8_t pattern(size_t i)
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

static __attribute__((unused)) void *echo_conn(void *arg)
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

static __attribute__((unused)) void *echo_accept(void *arg)
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

static __attribute__((unused)) int echo_start(echo_server *es)
{
    memset(es, 0, sizeof *es);
    es->lfd = bound_socket(1, &es->port);
    if (es->lfd < 0)
        return -1;
    return pthread_create(&es->acceptor, NULL, echo_accept, es);
}

static __attribute__((unused)) void echo_stop(echo_server *es)
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

static sk_listener *L_APP; /* app mode, opened by the tests that use it */
#define UID_L_APP 33

static __attribute__((unused)) int fx_setup_relay(void)
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

/* Waits until f(arg) is true or the failure deadline passes. */
static __attribute__((unused)) int wait_until(int (*f)(void *), void *arg)
{
    uint64_t deadline = mono_ms() + WAIT_MS;
    while (!f(arg)) {
        if (mono_ms() >= deadline)
            return 0;
        pump(5);
    }
    return 1;
}

static __attribute__((unused)) int no_conns_live(void *arg)
{
    SK_UNUSED_ARG(arg);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    return c.conns_live == 0;
}

/* Flows of earlier tests close asynchronously: start from none. */
static __attribute__((unused)) int settle(void)
{
    int ok = wait_until(no_conns_live, NULL);
    CHECK_MSG(ok, "connections of an earlier test never closed");
    return ok ? 0 : -1;
}

static __attribute__((unused)) int listener_closed_n(void *arg)
{
    void **a = arg;
    sk_flow_stats s;
    sk_listener_stats(a[0], &s);
    return s.closed >= (uint64_t)(uintptr_t)a[1];
}

/* One echo round trip; returns 0 when the bytes came back. */
static __attribute__((unused)) int ping(int fd, const char *msg)
{
    size_t len = strlen(msg);
    char back[128];
    if (send_all(fd, msg, len) != 0)
        return -1;
    if (recv_exact(fd, back, len) != len)
        return -1;
    return memcmp(back, msg, len) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ program */

/* splice_pipes of the shared engine: -1 keeps the engine's default (a test
 * program may run its tests again with the copy path: 0). */
static int FX_SPLICE_PIPES = -1;

/* The shared engine; exits the program when it cannot be created. */
static __attribute__((unused)) void fx_engine_start(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(110); /* a hang fails instead of stalling ctest */
    sk_engine_options o;
    sk_engine_options_init(&o);
    o.worker_threads = 2;
    o.relay_buffer_bytes = 16384;
    if (FX_SPLICE_PIPES >= 0)
        o.splice_pipes = FX_SPLICE_PIPES;
    char err[SK_ERRLEN] = "";
    E = sk_engine_create(&o, err, sizeof err);
    if (!E) {
        fprintf(stderr, "sk_engine_create: %s\n", err);
        exit(1);
    }
}

/* Stops and frees everything the fixture holds; returns the exit code. */
static __attribute__((unused)) int fx_finish(const char *name)
{
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
    return tl_summary(name);
}

#endif /* SKIFF_ENGINE_FIXTURE_H */
