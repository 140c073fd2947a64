/* test_relay.c -- a relayed flow end to end (relay.c): a megabyte through
 * a listener to the echo target with ragged writes, byte exact both ways with
 * half-close, listed while open, counted and freed once both sides finished;
 * the target half-closing first; a reset from either side; flows that stall
 * while every splice pipe is taken. The program runs in one of three modes
 * (argument): splice (the default engine), copy (splice_pipes 0) and pipes1
 * (one pipe per worker, so the relay must fall back to copying). Plain
 * flows are edge-triggered: a direction whose quantum runs out while its
 * socket stays readable, with no new edge to come, must still finish; and
 * both directions busy at once must both finish. */
#include "engine_fixture.h"
#include "internal.h"

#include <netinet/tcp.h>

enum { MODE_SPLICE, MODE_COPY, MODE_PIPES1 };
static int MODE = MODE_SPLICE;

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

/* A short exchange is copied: it never takes a pipe (runs first, so no
 * pipe exists yet in any mode). */
static int test_short_flow_takes_no_pipe(void)
{
    REQUIRE(settle() == 0);
    int fd = connect_to(sk_listener_port(L_RELAY));
    REQUIRE(fd >= 0);
    for (int i = 0; i < 10; i++)
        CHECK(ping(fd, "a short request, a short answer") == 0);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.pipes_live, 0);
    close(fd);
    return 0;
}

static int test_relay_1mb(void)
{
    REQUIRE(settle() == 0);
    enum { LEN = 1 << 20 };
    /* what earlier tests left in the counters */
    sk_flow_stats ls0, ts0;
    sk_listener_stats(L_RELAY, &ls0);
    sk_target_stats(T_LIVE, &ts0);
    sk_engine_counters c0;
    sk_engine_counters_get(E, &c0);
    uint64_t echo0 = atomic_load(&ECHO.bytes);
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
    void *arg[2] = {L_RELAY, (void *)(uintptr_t)(ls0.closed + 1)};
    CHECK(wait_until(listener_closed_n, arg));
    /* both connections of the pair are freed at the end of the worker's batch */
    CHECK(wait_until(no_conns_live, NULL));
    sk_flow_stats ls, ts;
    sk_listener_stats(L_RELAY, &ls);
    CHECK_EQ_U(ls.opened - ls0.opened, 1);
    CHECK_EQ_U(ls.closed - ls0.closed, 1);
    CHECK_EQ_U(ls.active, 0);
    CHECK_EQ_U(ls.failed - ls0.failed, 0);
    CHECK_EQ_U(ls.bytes_in - ls0.bytes_in, LEN);
    CHECK_EQ_U(ls.bytes_out - ls0.bytes_out, LEN);
    sk_target_stats(T_LIVE, &ts);
    CHECK_EQ_U(ts.opened - ts0.opened, 1);
    CHECK_EQ_U(ts.closed - ts0.closed, 1);
    CHECK_EQ_U(ts.active, 0);
    CHECK_EQ_U(ts.failed - ts0.failed, 0);
    CHECK_EQ_U(ts.bytes_in - ts0.bytes_in, LEN);
    CHECK_EQ_U(ts.bytes_out - ts0.bytes_out, LEN);
    CHECK_EQ_U(atomic_load(&ECHO.bytes) - echo0, LEN);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.accepted - c0.accepted, 1);
    CHECK_EQ_U(c.connects_failed - c0.connects_failed, 0);
    CHECK_EQ_U(c.flows_failed - c0.flows_failed, 0);
    CHECK_EQ_U(c.conns_live, 0);
    sk_conn_info info[2];
    CHECK_EQ_I(sk_engine_list_connections(E, info, 2), 0);
    /* the splice path was taken (or not); a finished flow holds no pipe */
    if (MODE == MODE_COPY)
        CHECK_EQ_U(c.pipes_live, 0);
    else
        CHECK_OP_U(c.pipes_live, >, 0);
    CHECK_EQ_U(c.pipes_in_use, 0);
    return 0;
}

/* ------------------------------------------------------------ a scripted target */

enum { SRV_HALF_FIRST = 1, SRV_EXPECT_RESET, SRV_RESET_EARLY, SRV_SEND_BIG, SRV_LATE_READ,
       SRV_BIDI };

typedef struct script_server {
    int lfd, port, mode;
    size_t send_len;         /* SRV_HALF_FIRST, SRV_SEND_BIG: bytes to send first;
                              * SRV_BIDI: to send while reading */
    pthread_t th[8];
    int n;
    _Atomic size_t got[8];   /* bytes received, pattern-checked */
    _Atomic int bad[8];      /* pattern mismatches */
    _Atomic int last_err[8]; /* errno of the read that ended, 0 for EOF */
    _Atomic int done[8];
} script_server;

typedef struct script_conn {
    script_server *s;
    int fd, i;
} script_conn;

static script_conn SCONN[8];

/* SRV_BIDI: the target's sending half, beside its reading one. */
static void *script_send_main(void *arg)
{
    script_conn *sc = arg;
    static _Thread_local char buf[65536];
    for (size_t off = 0; off < sc->s->send_len;) {
        size_t n = sc->s->send_len - off < sizeof buf ? sc->s->send_len - off : sizeof buf;
        for (size_t k = 0; k < n; k++)
            buf[k] = (char)pattern(off + k);
        if (send_all(sc->fd, buf, n) != 0)
            break;
        off += n;
    }
    shutdown(sc->fd, SHUT_WR);
    return NULL;
}

static void *script_conn_main(void *arg)
{
    script_conn *sc = arg;
    script_server *s = sc->s;
    int fd = sc->fd, i = sc->i;
    static _Thread_local char buf[65536];
    pthread_t sender;
    bool sending = s->mode == SRV_BIDI && pthread_create(&sender, NULL, script_send_main, sc) == 0;
    if (s->mode == SRV_LATE_READ)
        usleep(300 * 1000); /* everything piles up in the relay's sockets first */
    if (s->mode == SRV_HALF_FIRST || s->mode == SRV_SEND_BIG) {
        for (size_t off = 0; off < s->send_len;) {
            size_t n = s->send_len - off < sizeof buf ? s->send_len - off : sizeof buf;
            for (size_t k = 0; k < n; k++)
                buf[k] = (char)pattern(off + k);
            if (send_all(fd, buf, n) != 0)
                break;
            off += n;
        }
        shutdown(fd, SHUT_WR); /* the target's half-close comes first */
    }
    size_t got = 0;
    int err = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        for (ssize_t k = 0; k < n; k++)
            if ((uint8_t)buf[k] != pattern(got + (size_t)k))
                atomic_fetch_add(&s->bad[i], 1);
        got += (size_t)n;
        atomic_store(&s->got[i], got);
        if (s->mode == SRV_RESET_EARLY && got >= 10000) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            break;
        }
    }
    if (sending)
        pthread_join(sender, NULL);
    atomic_store(&s->last_err[i], err);
    close(fd);
    atomic_store(&s->done[i], 1);
    return NULL;
}

/* Accepts n clients and runs each in its own thread; returns 0 when started. */
static void *script_accept_main(void *arg)
{
    script_server *s = arg;
    for (int i = 0; i < s->n; i++) {
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            break;
        set_timeouts(fd, WAIT_MS);
        SCONN[i] = (script_conn){.s = s, .fd = fd, .i = i};
        pthread_create(&s->th[i], NULL, script_conn_main, &SCONN[i]);
    }
    return NULL;
}

static sk_target *T_SCRIPT;
static sk_listener *L_SCRIPT; /* address 1 -> the scripted target */
#define UID_SCRIPT 201
#define UID_L_SCRIPT 202

/* Routes address 1 to a fresh scripted target expecting n clients. */
static int script_start(script_server *s, pthread_t *acceptor, int mode, int n, size_t send_len)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->n = n;
    s->send_len = send_len;
    s->lfd = bound_socket(1, &s->port);
    REQUIRE(s->lfd >= 0);
    if (!T_SCRIPT)
        T_SCRIPT = sk_target_create(E, UID_SCRIPT);
    char err[SK_ERRLEN];
    sk_routes *r = sk_routes_create(2);
    REQUIRE(r != NULL);
    REQUIRE(sk_routes_add(r, 0, T_LIVE, "127.0.0.1", ECHO.port, "echo", 1, -1, 0, err,
                          sizeof err) == 0);
    REQUIRE(sk_routes_add(r, 1, T_SCRIPT, "127.0.0.1", s->port, "script", 1, -1, 0, err,
                          sizeof err) == 0);
    sk_engine_publish_routes(E, r);
    if (!L_SCRIPT) {
        sk_listener_options lo;
        sk_listener_options_init(&lo);
        lo.host = "127.0.0.1";
        lo.address_id = 1;
        lo.user_id = UID_L_SCRIPT;
        L_SCRIPT = sk_listener_open(E, &lo, err, sizeof err);
        REQUIRE_MSG(L_SCRIPT != NULL, "%s", err);
    }
    REQUIRE(pthread_create(acceptor, NULL, script_accept_main, s) == 0);
    return 0;
}

static void script_stop(script_server *s, pthread_t acceptor)
{
    shutdown(s->lfd, SHUT_RDWR);
    pthread_join(acceptor, NULL);
    for (int i = 0; i < s->n; i++)
        if (s->th[i])
            pthread_join(s->th[i], NULL);
    close(s->lfd);
}

/* Bytes of the pattern until EOF; returns the count, mismatches in *bad. */
static size_t recv_pattern(int fd, size_t *bad)
{
    static char buf[65536];
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return got;
        for (ssize_t k = 0; k < n; k++)
            if ((uint8_t)buf[k] != pattern(got + (size_t)k))
                (*bad)++;
        got += (size_t)n;
    }
}

static int send_pattern(int fd, size_t len)
{
    static char buf[65536];
    for (size_t off = 0; off < len;) {
        size_t n = len - off < sizeof buf ? len - off : sizeof buf;
        for (size_t k = 0; k < n; k++)
            buf[k] = (char)pattern(off + k);
        if (send_all(fd, buf, n) != 0)
            return -1;
        off += n;
    }
    return 0;
}

static int settled_pipes(void *arg)
{
    SK_UNUSED_ARG(arg);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    return c.conns_live == 0 && c.pipes_in_use == 0;
}

/* The target sends 600 KB and half-closes first; the client reads it all,
 * then sends 400 KB the other way and half-closes: byte exact both ways. */
static int test_half_close_target_first(void)
{
    REQUIRE(settle() == 0);
    script_server s;
    pthread_t acc;
    REQUIRE(script_start(&s, &acc, SRV_HALF_FIRST, 1, 600000) == 0);
    int fd = connect_to(sk_listener_port(L_SCRIPT));
    REQUIRE(fd >= 0);
    size_t bad = 0;
    CHECK_EQ_U(recv_pattern(fd, &bad), 600000); /* then EOF: the half-close passed on */
    CHECK_EQ_U(bad, 0);
    CHECK_EQ_I(send_pattern(fd, 400000), 0); /* the other direction still flows */
    shutdown(fd, SHUT_WR);
    CHECK(recv_eof(fd));
    script_stop(&s, acc);
    CHECK_EQ_U(atomic_load(&s.got[0]), 400000);
    CHECK_EQ_I(atomic_load(&s.bad[0]), 0);
    CHECK_EQ_I(atomic_load(&s.last_err[0]), 0); /* an orderly EOF, no reset */
    close(fd);
    CHECK(wait_until(settled_pipes, NULL));
    sk_flow_stats ts;
    sk_target_stats(T_SCRIPT, &ts);
    CHECK_EQ_U(ts.bytes_in, 600000);
    CHECK_EQ_U(ts.bytes_out, 400000);
    return 0;
}

/* A client that resets: the target's side is reset too, and the bytes sent
 * before arrive in order. */
static int test_client_reset_resets_target(void)
{
    REQUIRE(settle() == 0);
    script_server s;
    pthread_t acc;
    REQUIRE(script_start(&s, &acc, SRV_EXPECT_RESET, 1, 0) == 0);
    int fd = connect_to(sk_listener_port(L_SCRIPT));
    REQUIRE(fd >= 0);
    CHECK_EQ_I(send_pattern(fd, 300000), 0);
    /* wait until the target has it all, then reset */
    for (int k = 0; k < WAIT_MS && atomic_load(&s.got[0]) < 300000; k++)
        usleep(1000);
    CHECK_EQ_U(atomic_load(&s.got[0]), 300000);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    script_stop(&s, acc);
    CHECK_EQ_I(atomic_load(&s.bad[0]), 0);
    CHECK_EQ_I(atomic_load(&s.last_err[0]), ECONNRESET);
    CHECK(wait_until(settled_pipes, NULL));
    return 0;
}

/* A target that resets while the client is still sending: the client's
 * sends fail soon (reset), nothing hangs, nothing leaks. */
static int test_target_reset_resets_client(void)
{
    REQUIRE(settle() == 0);
    script_server s;
    pthread_t acc;
    REQUIRE(script_start(&s, &acc, SRV_RESET_EARLY, 1, 0) == 0);
    int fd = connect_to(sk_listener_port(L_SCRIPT));
    REQUIRE(fd >= 0);
    int rc = send_pattern(fd, 64u << 20); /* far more than any buffer on the way */
    CHECK_EQ_I(rc, -1);
    CHECK(recv_eof(fd)); /* reset (or EOF), no data */
    script_stop(&s, acc);
    CHECK_EQ_I(atomic_load(&s.bad[0]), 0);
    close(fd);
    CHECK(wait_until(settled_pipes, NULL));
    return 0;
}

typedef struct pattern_writer {
    int fd;
    size_t len;
    bool half_close;
    int rc;
} pattern_writer;

static void *pattern_writer_main(void *arg)
{
    pattern_writer *pw = arg;
    static _Thread_local char buf[65536];
    pw->rc = 0;
    for (size_t off = 0; off < pw->len;) {
        size_t n = pw->len - off < sizeof buf ? pw->len - off : sizeof buf;
        for (size_t k = 0; k < n; k++)
            buf[k] = (char)pattern(off + k);
        if (send_all(pw->fd, buf, n) != 0) {
            pw->rc = -1;
            break;
        }
        off += n;
    }
    if (pw->half_close)
        shutdown(pw->fd, SHUT_WR);
    return NULL;
}

/* The target reads nothing for a while, so megabytes pile up in the relay's
 * client socket (its receive buffer made large through the listener, which
 * accepted sockets inherit); then it reads as fast as it can. The client has
 * sent everything and stays silent: no new edge comes, so the direction must
 * go on by itself each time its per-wake-up quantum runs out. */
static int test_ready_after_quantum_without_new_edge(void)
{
    enum { LEN = 3 << 20 };
    REQUIRE(settle() == 0);
    script_server s;
    pthread_t acc;
    REQUIRE(script_start(&s, &acc, SRV_LATE_READ, 1, 0) == 0);
    int big = 4 << 20;
    for (int i = 0; i < E->nworkers; i++)
        setsockopt(L_SCRIPT->fds[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    int fd = connect_to(sk_listener_port(L_SCRIPT));
    REQUIRE(fd >= 0);
    pattern_writer pw = {.fd = fd, .len = LEN};
    pthread_t wt;
    REQUIRE(pthread_create(&wt, NULL, pattern_writer_main, &pw) == 0);
    for (int k = 0; k < WAIT_MS && atomic_load(&s.got[0]) < LEN; k++)
        usleep(1000);
    CHECK_EQ_U(atomic_load(&s.got[0]), LEN); /* before the client's FIN: no edge helped */
    pthread_join(wt, NULL);
    CHECK_EQ_I(pw.rc, 0);
    shutdown(fd, SHUT_WR);
    CHECK(recv_eof(fd));
    script_stop(&s, acc);
    CHECK_EQ_I(atomic_load(&s.bad[0]), 0);
    CHECK_EQ_I(atomic_load(&s.last_err[0]), 0);
    close(fd);
    CHECK(wait_until(settled_pipes, NULL));
    return 0;
}

/* Both directions carry megabytes at the same time: each finishes byte exact,
 * then the half-closes pass on and the flow ends. */
static int test_both_directions_busy(void)
{
    enum { LEN = 6 << 20 };
    REQUIRE(settle() == 0);
    script_server s;
    pthread_t acc;
    REQUIRE(script_start(&s, &acc, SRV_BIDI, 1, LEN) == 0);
    int fd = connect_to(sk_listener_port(L_SCRIPT));
    REQUIRE(fd >= 0);
    pattern_writer pw = {.fd = fd, .len = LEN, .half_close = true};
    pthread_t wt;
    REQUIRE(pthread_create(&wt, NULL, pattern_writer_main, &pw) == 0);
    size_t bad = 0;
    CHECK_EQ_U(recv_pattern(fd, &bad), LEN);
    CHECK_EQ_U(bad, 0);
    pthread_join(wt, NULL);
    CHECK_EQ_I(pw.rc, 0);
    script_stop(&s, acc);
    CHECK_EQ_U(atomic_load(&s.got[0]), LEN);
    CHECK_EQ_I(atomic_load(&s.bad[0]), 0);
    CHECK_EQ_I(atomic_load(&s.last_err[0]), 0);
    close(fd);
    CHECK(wait_until(settled_pipes, NULL));
    return 0;
}

/* A client with a small receive buffer (fixed before connecting, so the
 * kernel does not grow it): a non-reading client stalls the relay soon. */
static int connect_small_rcvbuf(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int sz = 16384;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    set_timeouts(fd, WAIT_MS);
    return fd;
}

/* The counters as the last poll of stalled_in_pipes saw them: a direction may
 * leave its pipe for the copy path a moment later (slow under TSan), so the
 * checks use the moment the stall was seen rather than read again. */
static sk_engine_counters stalled_seen;

static int stalled_in_pipes(void *arg)
{
    const sk_engine_counters *c0 = arg;
    sk_engine_counters_get(E, &stalled_seen);
    return stalled_seen.pipes_in_use > 0 &&
           (MODE != MODE_PIPES1 || stalled_seen.splice_fallbacks > c0->splice_fallbacks);
}

/* Four targets send 8 MB each to clients that do not read yet, so every
 * direction stalls with bytes waiting; with one pipe per worker the others
 * must copy. Everything then arrives byte exact. */
static int test_stalled_flows_when_pipes_run_out(void)
{
    enum { N = 4, LEN = 8 << 20 }; /* more than the kernel's send buffer (4 MB) */
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    script_server s;
    pthread_t acc;
    REQUIRE(script_start(&s, &acc, SRV_SEND_BIG, N, LEN) == 0);
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = connect_small_rcvbuf(sk_listener_port(L_SCRIPT));
        REQUIRE(fds[i] >= 0);
    }
    /* every direction fills up and stalls (slowly under TSan) */
    if (MODE == MODE_COPY) {
        usleep(300 * 1000);
        sk_engine_counters_get(E, &c1);
    } else {
        CHECK(wait_until(stalled_in_pipes, &c0));
        c1 = stalled_seen;
    }
    if (MODE == MODE_COPY) {
        CHECK_EQ_U(c1.pipes_in_use, 0);
    } else {
        CHECK_OP_U(c1.pipes_in_use, >, 0);
        CHECK_OP_U(c1.pipes_in_use, <=, MODE == MODE_PIPES1 ? 2 : N);
    }
    if (MODE == MODE_PIPES1)
        CHECK_OP_U(c1.splice_fallbacks, >, c0.splice_fallbacks);
    if (MODE == MODE_SPLICE) /* a pipe for every stalled direction */
        CHECK_EQ_U(c1.splice_fallbacks, c0.splice_fallbacks);
    for (int i = 0; i < N; i++) {
        size_t bad = 0;
        CHECK_EQ_U(recv_pattern(fds[i], &bad), LEN);
        CHECK_EQ_U(bad, 0);
        close(fds[i]);
    }
    script_stop(&s, acc);
    CHECK(wait_until(settled_pipes, NULL));
    return 0;
}

/* How far a bulk turn may go (sk_relay_extension): not at all while the
 * worker served anything but splicing flows in the last SK_BULK_QUIET_NS;
 * after that quiet (or on a worker that never did), by SK_EVENT_QUANTUM at
 * a time up to SK_BULK_TURN per turn, while the round's allowance lasts.
 * tests/test_engine_relay.py shows a bulk flow getting long turns end to end. */
static int test_turn_follows_what_the_worker_served(void)
{
    sk_worker w;
    memset(&w, 0, sizeof w);
    w.wake_ns = 5000000000u;
    w.round_bulk_left = SK_BULK_ROUND;
    w.interactive_ns = w.wake_ns; /* served an accept in this very round */
    CHECK_EQ_U(sk_relay_extension(&w, 0), 0);
    w.interactive_ns = w.wake_ns - SK_BULK_QUIET_NS + 1;
    CHECK_EQ_U(sk_relay_extension(&w, 0), 0);
    w.interactive_ns = w.wake_ns - SK_BULK_QUIET_NS;
    CHECK_EQ_U(sk_relay_extension(&w, 0), SK_EVENT_QUANTUM);
    w.interactive_ns = 0; /* never */
    CHECK_EQ_U(sk_relay_extension(&w, 0), SK_EVENT_QUANTUM);
    /* a turn ends at SK_BULK_TURN */
    size_t extended = 0;
    while (sk_relay_extension(&w, extended))
        extended += SK_EVENT_QUANTUM;
    CHECK_EQ_U(extended + SK_EVENT_QUANTUM, SK_BULK_TURN);
    /* a round ends its long turns when its allowance is spent */
    w.round_bulk_left = SK_EVENT_QUANTUM - 1;
    CHECK_EQ_U(sk_relay_extension(&w, 0), 0);
    CHECK(SK_BULK_ROUND >= SK_BULK_TURN);
    return 0;
}

/* An accepted client keeps its peer's sockaddr raw in its label and
 * formats it only when listed (sk_conn_label); a target side keeps text. */
static int test_labels_formatted_when_listed(void)
{
    sk_conn c;
    memset(&c, 0, sizeof c);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(8080)};
    a6.sin6_addr.s6_addr[15] = 1;
    memcpy(c.label, &a6, sizeof a6);
    c.label_raw = true;
    char out[64];
    sk_conn_label(&c, out, sizeof out);
    CHECK(strcmp(out, "[::1]:8080") == 0);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(443)};
    a4.sin_addr.s_addr = htonl(0x7f000102);
    memset(c.label, 0, sizeof c.label);
    memcpy(c.label, &a4, sizeof a4);
    sk_conn_label(&c, out, sizeof out);
    CHECK(strcmp(out, "127.0.1.2:443") == 0);
    c.label_raw = false;
    snprintf(c.label, sizeof c.label, "reverse:router-b");
    sk_conn_label(&c, out, sizeof out);
    CHECK(strcmp(out, "reverse:router-b") == 0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "splice";
    if (strcmp(mode, "copy") == 0) {
        MODE = MODE_COPY;
        FX_SPLICE_PIPES = 0;
    } else if (strcmp(mode, "pipes1") == 0) {
        MODE = MODE_PIPES1;
        FX_SPLICE_PIPES = 1;
    }
    RUN(test_turn_follows_what_the_worker_served);
    RUN(test_labels_formatted_when_listed);
    fx_engine_start();
    if (fx_setup_relay() == 0) {
        RUN(test_short_flow_takes_no_pipe);
        RUN(test_relay_1mb);
        RUN(test_half_close_target_first);
        RUN(test_client_reset_resets_target);
        RUN(test_target_reset_resets_client);
        RUN(test_stalled_flows_when_pipes_run_out);
        RUN(test_ready_after_quantum_without_new_edge);
        RUN(test_both_directions_busy);
    }
    if (L_SCRIPT) {
        sk_listener_close(L_SCRIPT, 1);
        sk_listener_release(L_SCRIPT);
    }
    sk_target_release(T_SCRIPT);
    char name[64];
    snprintf(name, sizeof name, "test_relay (%s)", mode);
    return fx_finish(name);
}
