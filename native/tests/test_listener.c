/* test_listener.c -- listening sockets (listener.c): bad options and a
 * port in use (by a plain socket or by another SO_REUSEPORT group), a port
 * freed at once by close, closing a listener with and without its flows,
 * and the max_connections limit. */
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

/* A socket of another process (here: of this one) that listens with
 * SO_REUSEPORT on 127.0.0.1 or on every address. */
static int reuseport_listener(int family, const char *ip, int port, int *port_out)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
        len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, ip, &s4->sin_addr);
        len = sizeof *s4;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 16) != 0) {
        close(fd);
        return -1;
    }
    *port_out = local_port(fd);
    return fd;
}

static int test_port_shared_by_reuseport_refused(void)
{
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    int port;
    int other = reuseport_listener(AF_INET, "127.0.0.1", 0, &port);
    REQUIRE(other >= 0);
    /* the kernel would let the router's group join it and split clients */
    lo.host = "127.0.0.1";
    lo.port = port;
    memset(err, 0, sizeof err);
    sk_listener *l = sk_listener_open(E, &lo, err, sizeof err);
    CHECK(l == NULL);
    char want[96];
    snprintf(want, sizeof want, "port %d on 127.0.0.1 is already in use by another socket or process",
             port);
    CHECK_STR_CONTAINS(err, want);
    if (l) {
        sk_listener_close(l, 0);
        sk_listener_release(l);
    }
    /* every address (IPv6 dual-stack, or IPv4 without IPv6) overlaps it */
    lo.host = "";
    memset(err, 0, sizeof err);
    l = sk_listener_open(E, &lo, err, sizeof err);
    CHECK(l == NULL);
    CHECK_STR_CONTAINS(err, "is already in use by another socket or process");
    if (l) {
        sk_listener_close(l, 0);
        sk_listener_release(l);
    }
    close(other);

    /* the same with the other socket on every IPv6 address, dual-stack */
    int other6 = reuseport_listener(AF_INET6, "::", 0, &port);
    if (other6 >= 0) {
        lo.host = "";
        lo.port = port;
        memset(err, 0, sizeof err);
        l = sk_listener_open(E, &lo, err, sizeof err);
        CHECK(l == NULL);
        snprintf(want, sizeof want, "port %d on * is already in use", port);
        CHECK_STR_CONTAINS(err, want);
        if (l) {
            sk_listener_close(l, 0);
            sk_listener_release(l);
        }
        lo.host = "127.0.0.1";
        memset(err, 0, sizeof err);
        l = sk_listener_open(E, &lo, err, sizeof err);
        CHECK(l == NULL);
        CHECK_STR_CONTAINS(err, "already in use by another socket or process");
        if (l) {
            sk_listener_close(l, 0);
            sk_listener_release(l);
        }
        close(other6);
    }
    pump(0);
    CHECK_EQ_U(count_events(SK_EV_LISTENER_CLOSED, 0, 0), 0);
    return 0;
}

/* Closing leaves the port at once (not when the workers get to it), so a
 * listener replaced on the same port reopens; the router's own group still
 * shares the port between its workers. (First run: the shut-down socket's
 * event, later in the batch whose mailbox freed it, was a use after free;
 * listening sockets are now freed after the batch.) */
static int test_close_frees_port_at_once(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.user_id = 31;
    sk_listener *l = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(l != NULL, "%s", err);
    int port = sk_listener_port(l);
    for (int round = 0; round < 20; round++) {
        lo.port = port;
        lo.user_id = 32 + (uint64_t)round;
        sk_listener_close(l, 0);
        sk_listener_release(l);
        l = sk_listener_open(E, &lo, err, sizeof err);
        REQUIRE_MSG(l != NULL, "round %d: %s", round, err);
        CHECK_EQ_I(sk_listener_port(l), port);
    }
    /* every worker's socket serves it: a few clients all get relayed */
    for (int i = 0; i < 8; i++) {
        int fd = connect_to(port);
        REQUIRE(fd >= 0);
        CHECK(ping(fd, "reopened") == 0);
        close(fd);
    }
    sk_listener_close(l, 1);
    CHECK(wait_event(SK_EV_LISTENER_CLOSED, 51, WAIT_MS, NULL) >= 0);
    sk_listener_release(l);
    /* no worker spun on a shut-down socket: wake-ups stay few */
    pump_for(50);
    uint64_t w0 = 0, w1 = 0;
    sk_worker_stats ws;
    for (int i = 0; i < sk_engine_worker_count(E); i++) {
        sk_engine_worker_stats(E, i, &ws);
        w0 += ws.wakeups;
    }
    pump_for(100);
    for (int i = 0; i < sk_engine_worker_count(E); i++) {
        sk_engine_worker_stats(E, i, &ws);
        w1 += ws.wakeups;
    }
    CHECK(w1 - w0 < 50);
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
        RUN(test_port_shared_by_reuseport_refused);
        RUN(test_close_frees_port_at_once);
        RUN(test_listener_close);
        RUN(test_max_connections);
    }
    return fx_finish("test_listener");
}
