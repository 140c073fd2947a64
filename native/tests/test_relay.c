/* test_relay.c -- a relayed flow end to end (relay.c): a megabyte through
 * a listener to the echo target with ragged writes, byte exact both ways with
 * half-close, listed while open, counted and freed once both sides finished. */
#include "engine_fixture.h"

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

int main(void)
{
    fx_engine_start();
    if (fx_setup_relay() == 0)
        RUN(test_relay_1mb);
    return fx_finish("test_relay");
}
