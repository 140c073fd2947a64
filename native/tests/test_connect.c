/* test_connect.c -- target choice, retry and back-off (connect.c): a dead
 * target is backed off and the flow retried on the live one, flows fail when
 * no target is left or the address has none, and closing a target's flows. */
#include "engine_fixture.h"

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

int main(void)
{
    fx_engine_start();
    if (fx_setup_relay() == 0) {
        RUN(test_dead_target);
        RUN(test_close_target_flows);
    }
    return fx_finish("test_connect");
}
