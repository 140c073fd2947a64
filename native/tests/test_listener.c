/* test_listener.c -- listening sockets (listener.c): bad options and a
 * port in use, closing a listener with and without its flows, and the
 * max_connections limit. */
#include "engine_fixture.h"

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

int main(void)
{
    fx_engine_start();
    if (fx_setup_relay() == 0) {
        RUN(test_listener_errors);
        RUN(test_listener_close);
        RUN(test_max_connections);
    }
    return fx_finish("test_listener");
}
