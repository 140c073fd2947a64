/* test_inbound.c -- the INBOUND direction of pooled data connections
 * (dataconn.c, peer.c, connect.c): a router that only dials out still
 * receives flows. D dials A (D has no data_ok listener at all) and keeps
 * idle INBOUND connections there; A holds a reverse peer for D and claims
 * them with FLOW REVERSE. Engines in one process, routes published by hand.
 *
 * Byte-exact both ways, half-close and reset, refill after each claim, two
 * multi-hop cases (E -> A -> D and A -> D -> E), the HELLO checks (unknown
 * router, instance, cap), a hand-written INBOUND dialler (the FLOW REVERSE
 * on the wire), the bounded wait (served by a late HELLO, or timed out and
 * retried on another destination), hand-offs between A's workers, D's
 * refill back-off while A is down and its recovery, mutual TLS, demand
 * sizing, sk_peer_close on both sides, and no leak. */
#include "engine_fixture.h"
#include "tls_fixture.h"

#include "internal.h"
#include "dataplane_fixture.h"

#include <openssl/sha.h>

static sk_engine *A, *D, *EE;
static sk_listener *DLA, *DLE; /* data_ok listeners of A and E (D has none) */
static sk_listener *CLA, *CLD, *CLE; /* client listeners, address 0 */
static sk_peer *RPD;                 /* A's reverse peer for D */
static sk_peer *PDA;                 /* D's peer for A: INBOUND pool */
static sk_target *T_ECHOD, *T_ECHOE, *T_SRVD;
static echo_server ECHOD, ECHOE;

static sk_listener *mk_listener_on(sk_engine *e, int data_ok, uint64_t uid, int port,
                                   int tls_slot)
{
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = data_ok; /* a data_ok listener's other connections go to Python */
    lo.data_ok = data_ok;
    lo.address_id = 0;
    lo.user_id = uid;
    lo.port = port;
    if (tls_slot >= 0) {
        lo.tls_slot = tls_slot;
        lo.authenticate_peer = 1;
    }
    char err[SK_ERRLEN] = "";
    sk_listener *l = sk_listener_open(e, &lo, err, sizeof err);
    if (!l) {
        fprintf(stderr, "listen: %s\n", err);
        exit(1);
    }
    return l;
}

static sk_listener *mk_listener(sk_engine *e, int data_ok, uint64_t uid)
{
    return mk_listener_on(e, data_ok, uid, 0, -1);
}

/* A reverse peer at e for router id. */
static sk_peer *mk_reverse(sk_engine *e, const char *id, uint64_t instance, uint32_t cap,
                           uint32_t wait_ms)
{
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = id;
    po.reverse = 1;
    po.instance = instance;
    po.inbound_cap = cap;
    po.pool_wait_ms = wait_ms;
    char err[SK_ERRLEN] = "";
    sk_peer *p = sk_peer_create(e, &po, err, sizeof err);
    if (!p) {
        fprintf(stderr, "reverse peer: %s\n", err);
        exit(1);
    }
    return p;
}

/* A dialler's peer for router id at port with an INBOUND pool. */
static sk_peer *mk_inbound(sk_engine *e, const char *id, int port, uint32_t n, uint32_t max,
                           int tls_slot)
{
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = id;
    po.ip = "127.0.0.1";
    po.port = port;
    po.inbound_pool_size = n;
    po.pool_max = max;
    po.instance = 5;
    if (tls_slot >= 0) {
        po.tls_slot = tls_slot;
        po.host = "127.0.0.1";
        po.verify_host = 1;
    }
    char err[SK_ERRLEN] = "";
    sk_peer *p = sk_peer_create(e, &po, err, sizeof err);
    if (!p) {
        fprintf(stderr, "inbound peer: %s\n", err);
        exit(1);
    }
    return p;
}

/* Route table of e: "svc" (address 0) served by local (if any) and by the
 * remote destinations dest[i] through via[i] at cost[i]. */
typedef struct rspec {
    sk_target *local;
    int local_port;
    const char *dest[3];
    uint32_t cost[3];
    sk_peer *via[3];
} rspec;

static int publish(sk_engine *e, const rspec *s)
{
    char err[SK_ERRLEN] = "";
    sk_routes *r = sk_routes_create(1);
    if (!r || sk_routes_set_address(r, 0, "svc", err, sizeof err) != 0)
        return -1;
    if (s->local && sk_routes_add(r, 0, s->local, "127.0.0.1", s->local_port, "", 1, -1, 0, err,
                                  sizeof err) != 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (s->dest[i] &&
            sk_routes_add_remote(r, 0, s->dest[i], s->cost[i], s->via[i], 1, err, sizeof err) != 0) {
            fprintf(stderr, "add_remote: %s\n", err);
            sk_routes_free(r);
            return -1;
        }
    sk_engine_publish_routes(e, r);
    return 0;
}

static int wait_u64_ge(_Atomic uint64_t *v, uint64_t want)
{
    uint64_t end = mono_ms() + WAIT_MS;
    while (SK_LOAD(v) < want && mono_ms() < end)
        usleep(5000);
    return SK_LOAD(v) >= want ? 0 : -1;
}

/* ------------------------------------------------------------ byte-exact */

static int echo_a(size_t len, uint64_t seed)
{
    return echo_exact_on(sk_listener_port(CLA), len, seed);
}

/* D's "svc" served by a fresh echo server (the fixture's takes at most
 * ECHO_MAX_CONNS connections in its life); echo_done puts ECHOD back. */
static int echo_fresh(echo_server *es)
{
    REQUIRE(echo_start(es) == 0);
    rspec rd = {.local = T_ECHOD, .local_port = es->port};
    REQUIRE(publish(D, &rd) == 0);
    return 0;
}

static int echo_done(echo_server *es)
{
    rspec rd = {.local = T_ECHOD, .local_port = ECHOD.port};
    REQUIRE(publish(D, &rd) == 0);
    echo_stop(es);
    return 0;
}

/* ------------------------------------------------------------ tests */

/* D dials A and keeps 2 idle INBOUND connections there; flows A -> D claim
 * them (REVERSE), byte-exact both ways, and each claim is refilled. */
static int test_reverse_flows(void)
{
    rspec rd = {.local = T_ECHOD, .local_port = ECHOD.port};
    rspec ra = {.dest = {"D"}, .cost = {1}, .via = {RPD}};
    REQUIRE(publish(D, &rd) == 0);
    REQUIRE(publish(A, &ra) == 0);
    CHECK(wait_u64(&RPD->pool_idle, 2) == 0);
    CHECK(wait_u64(&PDA->inbound_idle, 2) == 0);
    sk_dataplane_counters a0, d0, a1, d1;
    sk_engine_dataplane_counters(A, &a0);
    sk_engine_dataplane_counters(D, &d0);
    sk_engine_counters ac;
    sk_engine_counters_get(A, &ac);
    CHECK_EQ_U(ac.pool_idle_in, 2);
    sk_engine_counters dc;
    sk_engine_counters_get(D, &dc);
    CHECK_EQ_U(dc.pool_idle_out, 2);
    uint64_t seed = 9;
    size_t sizes[] = {0, 1, 100, 65536, 300001, (size_t)(tl_rand(&seed) % (3u << 20)), 3u << 20};
    size_t n = sizeof sizes / sizeof *sizes;
    for (size_t i = 0; i < n; i++)
        CHECK(echo_a(sizes[i], 500 + i) == 0);
    sk_engine_dataplane_counters(A, &a1);
    sk_engine_dataplane_counters(D, &d1);
    CHECK_EQ_U(a1.flows_originated - a0.flows_originated, n);
    CHECK_EQ_U(d1.flows_terminated - d0.flows_terminated, n);
    CHECK_EQ_U(d1.verdicts_sent[0] - d0.verdicts_sent[0], n);
    CHECK_EQ_U(d1.data_accepted - d0.data_accepted, 0); /* D accepts nothing */
    sk_peer_stats as, ds;
    sk_peer_stats_get(RPD, &as);
    sk_peer_stats_get(PDA, &ds);
    CHECK_EQ_U(as.flows, n);
    CHECK_OP_U(as.pool_hits, >=, n);
    CHECK_EQ_U(ds.inbound_claims, n);
    CHECK_OP_U(as.bytes_out, >=, 3u << 20);
    /* refilled after every claim */
    CHECK(wait_u64(&RPD->pool_idle, 2) == 0);
    CHECK(wait_u64(&PDA->inbound_idle, 2) == 0);
    CHECK_OP_U(as.inbound_accepted, >=, 2 + n - 1);
    return 0;
}

/* The listing of a REVERSE flow: at A it goes to D, at D it came from A. */
static int test_listing(void)
{
    int fd = connect_to(sk_listener_port(CLA));
    REQUIRE(fd >= 0);
    CHECK(ping(fd, "listed") == 0);
    sk_conn_info ci[8];
    int na = sk_engine_list_connections(A, ci, 8);
    CHECK_EQ_I(na, 1);
    if (na == 1) {
        CHECK(strcmp(ci[0].remote_router, "D") == 0);
        CHECK(!ci[0].remote_incoming);
    }
    int nd = sk_engine_list_connections(D, ci, 8);
    CHECK_EQ_I(nd, 1);
    if (nd == 1) {
        CHECK(strcmp(ci[0].remote_router, "A") == 0);
        CHECK(ci[0].remote_incoming);
    }
    close(fd);
    return 0;
}

/* Half-close each way and a reset, over a REVERSE data connection. */
static int test_half_close_and_reset(void)
{
    oneshot o = {.mode = SRV_HALF};
    o.lfd = bound_socket(1, &o.port);
    REQUIRE(o.lfd >= 0);
    pthread_create(&o.th, NULL, oneshot_th, &o);
    rspec rd = {.local = T_SRVD, .local_port = o.port};
    REQUIRE(publish(D, &rd) == 0);
    int fd = connect_to(sk_listener_port(CLA));
    REQUIRE(fd >= 0);
    char b[8];
    CHECK_EQ_U(recv_exact(fd, b, 3), 3); /* the server's bytes, then its FIN */
    CHECK(memcmp(b, "bye", 3) == 0);
    CHECK(recv_eof(fd) == 1);
    CHECK(send_all(fd, "still-open", 10) == 0); /* the other way still flows */
    shutdown(fd, SHUT_WR);
    pthread_join(o.th, NULL);
    CHECK_EQ_U(o.got_n, 10);
    CHECK(memcmp(o.got, "still-open", 10) == 0);
    close(fd);
    close(o.lfd);

    sk_peer_stats s0, s1;
    sk_peer_stats_get(RPD, &s0);
    oneshot r = {.mode = SRV_RESET};
    r.lfd = bound_socket(1, &r.port);
    REQUIRE(r.lfd >= 0);
    pthread_create(&r.th, NULL, oneshot_th, &r);
    rd.local_port = r.port;
    REQUIRE(publish(D, &rd) == 0);
    fd = connect_to(sk_listener_port(CLA));
    REQUIRE(fd >= 0);
    CHECK(send_all(fd, "boom", 4) == 0);
    pthread_join(r.th, NULL);
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    CHECK_MSG(n < 0 && errno == ECONNRESET, "expected a reset, got %zd (errno %d)", n, errno);
    close(fd);
    close(r.lfd);
    uint64_t end = mono_ms() + WAIT_MS;
    do {
        sk_peer_stats_get(RPD, &s1);
    } while (s1.resets == s0.resets && mono_ms() < end && usleep(5000) == 0);
    CHECK_EQ_U(s1.resets - s0.resets, 1);
    rspec back = {.local = T_ECHOD, .local_port = ECHOD.port};
    REQUIRE(publish(D, &back) == 0);
    return 0;
}

/* E -> A -> D: A forwards an incoming flow through its reverse peer; and
 * A -> D -> E: D forwards a flow that came REVERSE. */
static int test_multi_hop(void)
{
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = "A";
    po.ip = "127.0.0.1";
    po.port = sk_listener_port(DLA);
    char err[SK_ERRLEN];
    sk_peer *pea = sk_peer_create(EE, &po, err, sizeof err);
    REQUIRE(pea != NULL);
    rspec re = {.dest = {"D"}, .cost = {2}, .via = {pea}};
    rspec ra = {.dest = {"D"}, .cost = {1}, .via = {RPD}};
    REQUIRE(publish(EE, &re) == 0);
    REQUIRE(publish(A, &ra) == 0);
    sk_dataplane_counters a0, a1;
    sk_engine_dataplane_counters(A, &a0);
    CHECK(echo_exact_on(sk_listener_port(CLE), 200000, 31) == 0);
    sk_engine_dataplane_counters(A, &a1);
    CHECK_EQ_U(a1.flows_transited - a0.flows_transited, 1);

    /* A -> D -> E */
    po.router_id = "E";
    po.port = sk_listener_port(DLE);
    sk_peer *pde = sk_peer_create(D, &po, err, sizeof err);
    REQUIRE(pde != NULL);
    rspec rE = {.local = T_ECHOE, .local_port = ECHOE.port};
    rspec rd = {.local = T_ECHOD, .local_port = ECHOD.port, .dest = {"E"}, .cost = {1},
                .via = {pde}};
    rspec ra2 = {.dest = {"E"}, .cost = {2}, .via = {RPD}};
    REQUIRE(publish(EE, &rE) == 0);
    REQUIRE(publish(D, &rd) == 0);
    REQUIRE(publish(A, &ra2) == 0);
    sk_dataplane_counters d0, d1, e0, e1;
    sk_engine_dataplane_counters(D, &d0);
    sk_engine_dataplane_counters(EE, &e0);
    CHECK(echo_a(123457, 32) == 0);
    sk_engine_dataplane_counters(D, &d1);
    sk_engine_dataplane_counters(EE, &e1);
    CHECK_EQ_U(d1.flows_transited - d0.flows_transited, 1);
    CHECK_EQ_U(e1.flows_terminated - e0.flows_terminated, 1);
    rspec rd0 = {.local = T_ECHOD, .local_port = ECHOD.port};
    rspec none = {0};
    REQUIRE(publish(D, &rd0) == 0);
    REQUIRE(publish(EE, &none) == 0);
    REQUIRE(publish(A, &ra) == 0);
    sk_peer_release(pea);
    sk_peer_release(pde);
    return 0;
}

/* A hand-written INBOUND dialler: its HELLO's verdict, then (code OK) the
 * connection stays open for A to claim. from/instance as given. */
static int inbound_hello_fd(sk_listener *l, const char *from, uint64_t instance, uint8_t *code)
{
    int fd = connect_to(sk_listener_port(l));
    if (fd < 0)
        return -1;
    uint8_t m[128];
    sk_flow_str f = {from, strlen(from)}, t = {"A", 1};
    int n = sk_flow_encode_hello(m, sizeof m, SK_FLOW_ROLE_INBOUND, instance, 3, 0, f, t);
    uint8_t v[16];
    if (n < 0 || send_all(fd, m, (size_t)n) != 0 || recv_exact(fd, v, 16) != 16 || v[3] != 'V') {
        close(fd);
        return -1;
    }
    *code = v[6];
    return fd;
}

/* Reads a FLOW on fd (A claimed it): 0 and its id when it is REVERSE. */
static int read_reverse_flow(int fd, uint64_t *id)
{
    uint8_t pre[6], rest[2048];
    if (recv_exact(fd, pre, 6) != 6 || pre[3] != 'F')
        return -1;
    size_t len = (size_t)pre[4] << 8 | pre[5];
    if (len < 22 || recv_exact(fd, rest, len - 6) != len - 6)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | rest[i];
    *id = v;
    return rest[9] == SK_FLOW_F_REVERSE ? 0 : -1;
}

/* Echoes on fd until EOF (a served flow's far end). */
static void *echo_fd_th(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char b[4096];
    for (;;) {
        ssize_t n = recv(fd, b, sizeof b, 0);
        if (n <= 0)
            break;
        if (send_all(fd, b, (size_t)n) != 0)
            break;
    }
    shutdown(fd, SHUT_WR);
    return NULL;
}

/* The HELLO checks of an acceptor, and a flow on a hand-written INBOUND
 * connection: the FLOW REVERSE on the wire. */
static int test_hello_checks(void)
{
    sk_dataplane_counters a0, a1;
    sk_engine_dataplane_counters(A, &a0);
    uint8_t code = 0xff;
    int fd = inbound_hello_fd(DLA, "RX", 1, &code); /* no reverse peer for RX */
    CHECK(fd >= 0);
    CHECK_EQ_U(code, SK_FLOW_V_REFUSED);
    if (fd >= 0) {
        CHECK(recv_eof(fd) == 1);
        close(fd);
    }
    sk_engine_dataplane_counters(A, &a1);
    CHECK_EQ_U(a1.hello_unknown - a0.hello_unknown, 1);

    sk_peer *rc = mk_reverse(A, "RC", 7, 1, 0);
    fd = inbound_hello_fd(DLA, "RC", 8, &code); /* another instance */
    CHECK(fd >= 0 && code == SK_FLOW_V_REFUSED);
    if (fd >= 0)
        close(fd);
    int f1 = inbound_hello_fd(DLA, "RC", 7, &code);
    CHECK(f1 >= 0 && code == SK_FLOW_V_OK);
    CHECK(wait_u64(&rc->pool_idle, 1) == 0);
    int f2 = inbound_hello_fd(DLA, "RC", 7, &code); /* over inbound_cap 1 */
    CHECK(f2 >= 0 && code == SK_FLOW_V_OVERLOADED);
    if (f2 >= 0)
        close(f2);
    sk_peer_stats s;
    sk_peer_stats_get(rc, &s);
    CHECK_EQ_U(s.hello_refused, 1);
    CHECK_EQ_U(s.hello_overloaded, 1);
    CHECK_EQ_U(s.inbound_accepted, 1);
    /* a newer reverse peer for the same router takes its HELLOs; once
     * closed, the older one has them again */
    sk_peer *rc2 = mk_reverse(A, "RC", 7, 1, 0);
    int f3 = inbound_hello_fd(DLA, "RC", 7, &code);
    CHECK(f3 >= 0 && code == SK_FLOW_V_OK);
    CHECK(wait_u64(&rc2->pool_idle, 1) == 0);
    CHECK_EQ_U(SK_LOAD(&rc->pool_idle), 1);
    sk_peer_close(rc2);
    if (f3 >= 0)
        CHECK(recv_eof(f3) == 1); /* closed with the peer that held it */
    if (f3 >= 0)
        close(f3);
    int f4 = inbound_hello_fd(DLA, "RC", 7, &code);
    CHECK(f4 >= 0 && code == SK_FLOW_V_OVERLOADED); /* rc again: at its cap */
    if (f4 >= 0)
        close(f4);

    /* a flow through RC: A writes FLOW REVERSE on f1, we answer OK and echo */
    rspec ra = {.dest = {"RC"}, .cost = {1}, .via = {rc}};
    REQUIRE(publish(A, &ra) == 0);
    int cfd = connect_to(sk_listener_port(CLA));
    REQUIRE(cfd >= 0 && f1 >= 0);
    uint64_t id = 0;
    CHECK(read_reverse_flow(f1, &id) == 0);
    uint8_t v[16];
    int n = sk_flow_encode_verdict(v, sizeof v, SK_FLOW_V_OK, 0, id);
    CHECK(send_all(f1, v, (size_t)n) == 0);
    pthread_t th;
    pthread_create(&th, NULL, echo_fd_th, (void *)(intptr_t)f1);
    CHECK(ping(cfd, "reverse on the wire") == 0);
    close(cfd);
    pthread_join(th, NULL);
    close(f1);
    rspec back = {.dest = {"D"}, .cost = {1}, .via = {RPD}};
    REQUIRE(publish(A, &back) == 0);
    sk_peer_close(rc);
    return 0;
}

/* No idle connection of the reverse peer: the flow waits, and an INBOUND
 * HELLO that arrives meanwhile serves it. */
static int test_wait_served(void)
{
    sk_peer *rw = mk_reverse(A, "RW", 0, 0, 5000);
    rspec ra = {.dest = {"RW"}, .cost = {1}, .via = {rw}};
    REQUIRE(publish(A, &ra) == 0);
    int cfd = connect_to(sk_listener_port(CLA));
    REQUIRE(cfd >= 0);
    CHECK(wait_u64(&rw->pool_waits, 1) == 0);
    uint8_t code = 0xff;
    int f1 = inbound_hello_fd(DLA, "RW", 1, &code);
    REQUIRE(f1 >= 0);
    CHECK_EQ_U(code, SK_FLOW_V_OK);
    uint64_t id = 0;
    CHECK(read_reverse_flow(f1, &id) == 0);
    uint8_t v[16];
    int n = sk_flow_encode_verdict(v, sizeof v, SK_FLOW_V_OK, 0, id);
    CHECK(send_all(f1, v, (size_t)n) == 0);
    pthread_t th;
    pthread_create(&th, NULL, echo_fd_th, (void *)(intptr_t)f1);
    CHECK(ping(cfd, "waited") == 0);
    close(cfd);
    pthread_join(th, NULL);
    close(f1);
    sk_peer_stats s;
    sk_peer_stats_get(rw, &s);
    CHECK_EQ_U(s.pool_waits, 1);
    CHECK_EQ_U(s.pool_exhausted, 0);
    CHECK_EQ_U(s.flows, 1);
    rspec back = {.dest = {"D"}, .cost = {1}, .via = {RPD}};
    REQUIRE(publish(A, &back) == 0);
    sk_peer_close(rw);
    return 0;
}

/* Exhaustion: the wait times out, the destination backs off and the client
 * is retried on the other destination; with no other, it is closed. */
static int test_exhausted(void)
{
    sk_peer *rz = mk_reverse(A, "RZ", 0, 0, 300);
    rspec ra = {.dest = {"RZ", "D"}, .cost = {1, 2}, .via = {rz, RPD}};
    REQUIRE(publish(A, &ra) == 0);
    sk_dataplane_counters a0, a1;
    sk_engine_dataplane_counters(A, &a0);
    CHECK(echo_a(1000, 41) == 0); /* waited on RZ, then served by D */
    sk_engine_dataplane_counters(A, &a1);
    CHECK_EQ_U(a1.origin_retries - a0.origin_retries, 1);
    sk_peer_stats s;
    sk_peer_stats_get(rz, &s);
    CHECK_EQ_U(s.pool_waits, 1);
    CHECK_EQ_U(s.pool_exhausted, 1);
    CHECK_EQ_U(s.destinations_down, 1);
    usleep(300 * 1000); /* past RZ's back-off */
    rspec only = {.dest = {"RZ"}, .cost = {1}, .via = {rz}};
    REQUIRE(publish(A, &only) == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(A, &c0);
    int fd = connect_to(sk_listener_port(CLA));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1);
    close(fd);
    sk_engine_counters_get(A, &c1);
    CHECK_EQ_U(c1.flows_failed - c0.flows_failed, 1);
    sk_peer_stats_get(rz, &s);
    CHECK_EQ_U(s.pool_exhausted, 2);
    rspec back = {.dest = {"D"}, .cost = {1}, .via = {RPD}};
    REQUIRE(publish(A, &back) == 0);
    sk_peer_close(rz);
    return 0;
}

/* Closes fd once a FLOW arrives on it, without a verdict (an INBOUND
 * connection that died under its claim). */
static void *close_on_flow_th(void *arg)
{
    int fd = (int)(intptr_t)arg;
    uint64_t id;
    read_reverse_flow(fd, &id);
    close(fd);
    return NULL;
}

/* Claimed INBOUND connections that die before their verdict are not held
 * against the destination: the client takes the next one, then waits; and
 * a full wait queue fails the attempt at once. */
static int test_dead_claims_and_full_queue(void)
{
    sk_peer *rk = mk_reverse(A, "RK", 0, 0, 300);
    uint8_t code = 0xff;
    int f[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        f[i] = inbound_hello_fd(DLA, "RK", 1, &code);
        REQUIRE(f[i] >= 0 && code == SK_FLOW_V_OK);
    }
    CHECK(wait_u64(&rk->pool_idle, 2) == 0);
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, close_on_flow_th, (void *)(intptr_t)f[i]);
    rspec ra = {.dest = {"RK"}, .cost = {1}, .via = {rk}};
    REQUIRE(publish(A, &ra) == 0);
    sk_dataplane_counters a0, a1;
    sk_engine_dataplane_counters(A, &a0);
    int fd = connect_to(sk_listener_port(CLA));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1); /* two dead claims, then a wait that times out */
    close(fd);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    sk_engine_dataplane_counters(A, &a1);
    sk_peer_stats s;
    sk_peer_stats_get(rk, &s);
    CHECK_EQ_U(s.pool_hits, 2);
    CHECK_EQ_U(s.pool_waits, 1);
    CHECK_EQ_U(s.pool_exhausted, 1);
    CHECK_EQ_U(a1.origin_retries - a0.origin_retries, 1); /* the dead claims are not attempts */
    sk_peer_close(rk);

    /* a queue of one: the second waiting flow fails at once */
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = "RQ";
    po.reverse = 1;
    po.pool_wait_ms = 60000; /* longer than the test: only a refusal ends w2 */
    po.pool_wait_max = 1;
    char err[SK_ERRLEN] = "";
    sk_peer *rq = sk_peer_create(A, &po, err, sizeof err);
    REQUIRE_MSG(rq != NULL, "%s", err);
    rspec rqs = {.dest = {"RQ"}, .cost = {1}, .via = {rq}};
    REQUIRE(publish(A, &rqs) == 0);
    int w1 = connect_to(sk_listener_port(CLA));
    REQUIRE(w1 >= 0);
    CHECK(wait_u64(&rq->pool_waits, 1) == 0);
    int w2 = connect_to(sk_listener_port(CLA));
    REQUIRE(w2 >= 0);
    CHECK(recv_eof(w2) == 1); /* refused, not queued */
    CHECK_EQ_U(SK_LOAD(&rq->pool_exhausted), 1);
    CHECK_EQ_U(SK_LOAD(&rq->pool_waits), 1);
    close(w2);
    /* the first one is still waiting: a HELLO now serves it */
    int fq = inbound_hello_fd(DLA, "RQ", 1, &code);
    REQUIRE(fq >= 0 && code == SK_FLOW_V_OK);
    uint64_t id = 0;
    CHECK(read_reverse_flow(fq, &id) == 0);
    uint8_t v[16];
    int n = sk_flow_encode_verdict(v, sizeof v, SK_FLOW_V_OK, 0, id);
    CHECK(send_all(fq, v, (size_t)n) == 0);
    pthread_t et;
    pthread_create(&et, NULL, echo_fd_th, (void *)(intptr_t)fq);
    CHECK(ping(w1, "first in the queue") == 0);
    close(w1);
    pthread_join(et, NULL);
    close(fq);
    rspec back = {.dest = {"D"}, .cost = {1}, .via = {RPD}};
    REQUIRE(publish(A, &back) == 0);
    sk_peer_close(rq);
    return 0;
}

/* A with two workers, D with one INBOUND connection per worker: flows land
 * on either of A's workers, the idle connection on one; the other worker's
 * flows get it handed over (or wait for a refill on their own worker). */
static int test_handoff(void)
{
    echo_server es;
    REQUIRE(echo_fresh(&es) == 0);
    sk_engine *a2 = dp_engine("A2", 2);
    sk_listener *dl = mk_listener(a2, 1, 700);
    sk_listener *cl = mk_listener(a2, 0, 701);
    sk_peer *rp = mk_reverse(a2, "D", 0, 0, 5000);
    sk_peer *pd = mk_inbound(D, "A2", sk_listener_port(dl), 1, 1, -1);
    rspec ra = {.dest = {"D"}, .cost = {1}, .via = {rp}};
    REQUIRE(publish(a2, &ra) == 0);
    CHECK(wait_u64(&rp->pool_idle, 1) == 0);
    int flows = 0;
    for (; flows < 24 && SK_LOAD(&rp->pool_handoffs) == 0; flows++) /* 24 + 32 < ECHO_MAX_CONNS */
        CHECK(echo_exact_on(sk_listener_port(cl), 3000, 800 + (uint64_t)flows) == 0);
    sk_peer_stats s;
    sk_peer_stats_get(rp, &s);
    CHECK_OP_U(s.pool_handoffs, >=, 1);
    CHECK_EQ_U(s.flows, (uint64_t)flows);
    CHECK_EQ_U(s.pool_exhausted, 0);
    /* concurrent flows: more than the one idle connection at a time, so
     * flows wait on both workers while refills land on either */
    for (int round = 0; round < 4; round++) {
        int fds[8];
        for (int i = 0; i < 8; i++)
            fds[i] = connect_to(sk_listener_port(cl));
        for (int i = 0; i < 8; i++) {
            char msg[16];
            snprintf(msg, sizeof msg, "conc-%d", i);
            CHECK(fds[i] >= 0 && ping(fds[i], msg) == 0);
        }
        for (int i = 0; i < 8; i++)
            close(fds[i]);
    }
    sk_peer_stats_get(rp, &s);
    CHECK_EQ_U(s.pool_exhausted, 0);
    sk_peer_close(pd);
    CHECK(wait_u64(&rp->pool_idle, 0) == 0); /* D closed its idle one */
    sk_engine_stop(a2);
    sk_listener_close(dl, 0);
    sk_listener_release(dl);
    sk_listener_close(cl, 0);
    sk_listener_release(cl);
    sk_peer_close(rp);
    sk_engine_destroy(a2);
    return echo_done(&es);
}

/* The most dials a back-off of 0.25 s doubling per round allows in ms
 * milliseconds (rounds start at 0, 0.25, 0.75, 1.75 s ...), per_round dials
 * a round, plus one round of slack for an immediate refill. */
static uint64_t backoff_dials_max(uint64_t ms, uint64_t per_round)
{
    uint64_t rounds = 0;
    for (uint64_t start = 0, step = 250; start <= ms; start += step, step *= 2)
        rounds++;
    return (rounds + 1) * per_round;
}

/* D's INBOUND pool towards a router that is down: it retries with back-off
 * (no redial storm), and fills once that router listens. */
static int test_refill_backoff(void)
{
    int port = 0;
    int hold = bound_socket(0, &port); /* bound, not listening: refused */
    REQUIRE(hold >= 0);
    uint64_t t0 = mono_ms();
    sk_peer *pd = mk_inbound(D, "A3", port, 2, 2, -1);
    usleep(1300 * 1000);
    sk_peer_stats s;
    sk_peer_stats_get(pd, &s);
    uint64_t elapsed = mono_ms() - t0;
    /* about 3 rounds of 2 dials in 1.3 s, not hundreds */
    CHECK_OP_U(s.inbound_failures, >=, 1);
    CHECK_OP_U(s.inbound_failures, <=, backoff_dials_max(elapsed, 2));
    CHECK_EQ_U(s.inbound_idle, 0);
    close(hold);
    sk_engine *a3 = dp_engine("A3", 1);
    sk_listener *dl = mk_listener_on(a3, 1, 900, port, -1);
    sk_listener *cl = mk_listener(a3, 0, 901);
    sk_peer *rp = mk_reverse(a3, "D", 0, 0, 0);
    rspec ra = {.dest = {"D"}, .cost = {1}, .via = {rp}};
    REQUIRE(publish(a3, &ra) == 0);
    CHECK(wait_u64(&pd->inbound_idle, 2) == 0); /* within the 8 s ceiling */
    CHECK(wait_u64(&rp->pool_idle, 2) == 0);
    CHECK(echo_exact_on(sk_listener_port(cl), 50000, 77) == 0);
    /* the acceptor drops its reverse peer: D's idle ones end, and D's
     * refills are refused (unknown router) with back-off */
    sk_dataplane_counters c0, c1;
    sk_engine_dataplane_counters(a3, &c0);
    t0 = mono_ms();
    sk_peer_close(rp);
    CHECK(wait_u64(&pd->inbound_idle, 0) == 0);
    usleep(800 * 1000);
    sk_engine_dataplane_counters(a3, &c1);
    elapsed = mono_ms() - t0;
    CHECK_OP_U(c1.hello_unknown - c0.hello_unknown, >=, 1);
    CHECK_OP_U(c1.hello_unknown - c0.hello_unknown, <=, backoff_dials_max(elapsed, 2));
    sk_peer_close(pd);
    sk_engine_stop(a3);
    sk_listener_close(dl, 0);
    sk_listener_release(dl);
    sk_listener_close(cl, 0);
    sk_listener_release(cl);
    sk_engine_destroy(a3);
    return 0;
}

/* Demand sizing: concurrent flows drain D's pool faster than it refills, so
 * its per-worker target grows (up to pool_max); everything is served. */
static int test_demand(void)
{
    echo_server es;
    REQUIRE(echo_fresh(&es) == 0);
    sk_engine *a4 = dp_engine("A4", 1);
    sk_listener *dl = mk_listener(a4, 1, 950);
    sk_listener *cl = mk_listener(a4, 0, 951);
    sk_peer *rp = mk_reverse(a4, "D", 0, 0, 5000);
    sk_peer *pd = mk_inbound(D, "A4", sk_listener_port(dl), 1, 8, -1);
    rspec ra = {.dest = {"D"}, .cost = {1}, .via = {rp}};
    REQUIRE(publish(a4, &ra) == 0);
    CHECK(wait_u64(&rp->pool_idle, 1) == 0);
    enum { NC = 12 };
    int fds[NC];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < NC; i++)
            fds[i] = connect_to(sk_listener_port(cl));
        for (int i = 0; i < NC; i++) {
            CHECK(fds[i] >= 0 && ping(fds[i], "demand") == 0);
            close(fds[i]);
        }
    }
    sk_peer_stats s;
    sk_peer_stats_get(pd, &s);
    CHECK_OP_U(s.pool_target, >, 1);
    CHECK_OP_U(s.pool_target, <=, 8);
    CHECK(wait_u64_ge(&rp->pool_idle, 2) == 0); /* the larger target is kept */
    sk_peer_stats_get(rp, &s);
    CHECK_EQ_U(s.flows, 3 * NC);
    sk_peer_close(pd);
    sk_engine_stop(a4);
    sk_listener_close(dl, 0);
    sk_listener_release(dl);
    sk_listener_close(cl, 0);
    sk_listener_release(cl);
    sk_peer_close(rp);
    sk_engine_destroy(a4);
    return echo_done(&es);
}

/* Mutual TLS: D dials A's TLS data_ok listener (client certificate
 * required) for its INBOUND pool; flows A -> D over it, byte-exact. */
static char tmpdir[64] = "/tmp/inbound-test-XXXXXX";

static int tls_publish(sk_engine *e, int slot, const char *cert, const char *key,
                       const char *ca)
{
    REQUIRE(fixture_publish(e, slot, cert, key, ca, 1) == 0);
    return slot;
}

static int tls_slot(sk_engine *e, const char *cert, const char *key, const char *ca)
{
    int slot = sk_tls_slot_create(e);
    REQUIRE(slot >= 0);
    return tls_publish(e, slot, cert, key, ca);
}

static int test_tls(void)
{
    echo_server es;
    REQUIRE(echo_fresh(&es) == 0);
    char ca[160], cak[160];
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(ca, sizeof ca, "%s/a.pem", tmpdir);
    snprintf(cak, sizeof cak, "%s/a.key", tmpdir);
    REQUIRE(make_material("router-link", ca, cak) == 0);
    sk_engine *a5 = dp_engine("A5", 1);
    int sa = tls_slot(a5, ca, cak, ca);
    int sd = tls_slot(D, ca, cak, ca);
    REQUIRE(sa >= 0 && sd >= 0);
    sk_listener *dl = mk_listener_on(a5, 1, 960, 0, sa);
    sk_listener *cl = mk_listener(a5, 0, 961);
    sk_peer *rp = mk_reverse(a5, "D", 0, 0, 0);
    sk_peer *pd = mk_inbound(D, "A5", sk_listener_port(dl), 2, 2, sd);
    rspec ra = {.dest = {"D"}, .cost = {1}, .via = {rp}};
    REQUIRE(publish(a5, &ra) == 0);
    CHECK(wait_u64(&rp->pool_idle, 2) == 0);
    sk_engine_counters c;
    sk_engine_counters_get(a5, &c);
    CHECK_OP_U(c.tls_handshakes, >=, 2);
    usleep(200 * 1000); /* session tickets: the idle connections survive them */
    CHECK_EQ_U(SK_LOAD(&rp->pool_idle), 2);
    CHECK(echo_exact_on(sk_listener_port(cl), 1u << 20, 88) == 0);
    CHECK(echo_exact_on(sk_listener_port(cl), 777, 89) == 0);
    sk_peer_stats s;
    sk_peer_stats_get(rp, &s);
    CHECK_EQ_U(s.flows, 2);
    /* D's link profile rotates: at the next refill (after a claim) its idle
     * INBOUND connection of the old version is closed and replaced */
    CHECK(wait_u64(&rp->pool_idle, 2) == 0);
    REQUIRE(tls_publish(D, sd, ca, cak, ca) >= 0);
    CHECK_EQ_U(SK_LOAD(&pd->pool_stale), 0);
    CHECK(echo_exact_on(sk_listener_port(cl), 5000, 90) == 0);
    CHECK(wait_u64(&pd->pool_stale, 1) == 0);
    CHECK(wait_u64(&rp->pool_idle, 2) == 0);
    CHECK(echo_exact_on(sk_listener_port(cl), 5000, 91) == 0); /* on a new one */
    CHECK_EQ_U(SK_LOAD(&pd->pool_stale), 1);
    sk_peer_close(pd);
    sk_engine_stop(a5);
    sk_listener_close(dl, 0);
    sk_listener_release(dl);
    sk_listener_close(cl, 0);
    sk_listener_release(cl);
    sk_peer_close(rp);
    sk_engine_destroy(a5);
    unlink(ca);
    unlink(cak);
    rmdir(tmpdir);
    return echo_done(&es);
}

static int no_conns(void *arg)
{
    SK_UNUSED_ARG(arg);
    sk_engine *es[3] = {A, D, EE};
    for (int i = 0; i < 3; i++) {
        sk_engine_counters c;
        sk_engine_counters_get(es[i], &c);
        if (c.conns_live)
            return 0;
    }
    return 1;
}

/* D closes its peer: A's idle INBOUND connections end; then nothing is left. */
static int test_close_and_no_leak(void)
{
    sk_peer_close(PDA);
    PDA = NULL;
    CHECK(wait_u64(&RPD->pool_idle, 0) == 0);
    uint64_t end = mono_ms() + WAIT_MS;
    while (!no_conns(NULL) && mono_ms() < end)
        usleep(10000);
    CHECK_MSG(no_conns(NULL), "connections still live");
    sk_engine_counters c;
    sk_engine_counters_get(A, &c);
    CHECK_EQ_U(c.pool_idle_in, 0);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(110);
    A = dp_engine("A", 1);
    D = dp_engine("D", 1);
    EE = dp_engine("E", 1);
    DLA = mk_listener(A, 1, 200);
    DLE = mk_listener(EE, 1, 201);
    CLA = mk_listener(A, 0, 100);
    CLD = mk_listener(D, 0, 101);
    CLE = mk_listener(EE, 0, 102);
    if (echo_start(&ECHOD) != 0 || echo_start(&ECHOE) != 0)
        return 1;
    T_ECHOD = sk_target_create(D, 21);
    T_ECHOE = sk_target_create(EE, 31);
    T_SRVD = sk_target_create(D, 23);
    RPD = mk_reverse(A, "D", 5, 0, 0);
    PDA = mk_inbound(D, "A", sk_listener_port(DLA), 2, 2, -1);

    RUN(test_reverse_flows);
    RUN(test_listing);
    RUN(test_half_close_and_reset);
    RUN(test_multi_hop);
    RUN(test_hello_checks);
    RUN(test_wait_served);
    RUN(test_exhausted);
    RUN(test_dead_claims_and_full_queue);
    RUN(test_handoff);
    RUN(test_refill_backoff);
    RUN(test_demand);
    RUN(test_tls);
    RUN(test_close_and_no_leak);

    sk_engine *es[3] = {A, D, EE};
    for (int i = 0; i < 3; i++)
        sk_engine_stop(es[i]);
    sk_listener *ls[5] = {DLA, DLE, CLA, CLD, CLE};
    for (int i = 0; i < 5; i++) {
        sk_listener_close(ls[i], 0);
        sk_listener_release(ls[i]);
    }
    sk_peer_close(RPD);
    if (PDA)
        sk_peer_close(PDA);
    sk_target_release(T_ECHOD);
    sk_target_release(T_ECHOE);
    sk_target_release(T_SRVD);
    for (int i = 0; i < 3; i++)
        sk_engine_destroy(es[i]);
    echo_stop(&ECHOD);
    echo_stop(&ECHOE);
    return tl_summary("test_inbound");
}
