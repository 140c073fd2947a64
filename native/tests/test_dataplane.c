/* test_dataplane.c -- flows across routers (dataconn.c, peer.c, the remote
 * routes of routes.c and connect.c): three engines in one process, R1, R2
 * and R3, each with a data_ok listener, routes published by hand. Byte-exact
 * relay over two and three hops, half-close each way, a reset propagated,
 * NO_ROUTE and REFUSED verdicts retried elsewhere, refused headers (each
 * closes only its connection, after its verdict), and no leak. */
#include "engine_fixture.h"
#include "tls_fixture.h"

#include "internal.h"
#include "dataplane_fixture.h"

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define NR 3
static sk_engine *R[NR];
static sk_listener *DL[NR]; /* data_ok listeners (app) */
static sk_listener *CL;     /* R1's client listener, address 0 */
static sk_peer *P12, *P13, *P23;
static sk_target *T_ECHO2, *T_ECHO3, *T_DEAD2, *T_SRV2;
static echo_server ECHO2, ECHO3;
static int DEADP = 0, DEADFD = -1;

static sk_listener *mk_listener(sk_engine *e, int app, int data_ok, uint32_t aid, uint64_t uid)
{
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = app;
    lo.data_ok = data_ok;
    lo.address_id = aid;
    lo.user_id = uid;
    char err[SK_ERRLEN] = "";
    sk_listener *l = sk_listener_open(e, &lo, err, sizeof err);
    if (!l) {
        fprintf(stderr, "listen: %s\n", err);
        exit(1);
    }
    return l;
}

static sk_peer *mk_peer(sk_engine *e, const char *id, int to)
{
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = id;
    po.ip = "127.0.0.1";
    po.port = sk_listener_port(DL[to]);
    char err[SK_ERRLEN] = "";
    sk_peer *p = sk_peer_create(e, &po, err, sizeof err);
    if (!p) {
        fprintf(stderr, "peer: %s\n", err);
        exit(1);
    }
    return p;
}

/* Route tables: each entry names "svc" (address 0). */
typedef struct rspec {
    sk_target *local;
    int local_port;
    const char *dest[2];
    uint32_t cost[2];
    sk_peer *via[2];
} rspec;

static int publish(sk_engine *e, const rspec *s)
{
    char err[SK_ERRLEN] = "";
    sk_routes *r = sk_routes_create(2);
    if (!r || sk_routes_set_address(r, 0, "svc", err, sizeof err) != 0 ||
        sk_routes_set_address(r, 1, "other", err, sizeof err) != 0)
        return -1;
    if (s->local && sk_routes_add(r, 0, s->local, "127.0.0.1", s->local_port, "", 1, -1, 0, err,
                                  sizeof err) != 0)
        return -1;
    for (int i = 0; i < 2; i++)
        if (s->dest[i] &&
            sk_routes_add_remote(r, 0, s->dest[i], s->cost[i], s->via[i], 1, err, sizeof err) != 0) {
            fprintf(stderr, "add_remote: %s\n", err);
            sk_routes_free(r);
            return -1;
        }
    sk_engine_publish_routes(e, r);
    return 0;
}

static void counters(int i, sk_dataplane_counters *c)
{
    sk_engine_dataplane_counters(R[i], c);
}

/* ------------------------------------------------------------ byte-exact */

/* Sends len random bytes through R1's client listener and checks the echo
 * (sha256 of both) and the EOF after it. */

static int echo_exact(size_t len, uint64_t seed)
{
    return echo_exact_on(sk_listener_port(CL), len, seed);
}

static int test_two_hops(void)
{
    rspec r2 = {.local = T_ECHO2, .local_port = ECHO2.port};
    rspec r1 = {.dest = {"R2"}, .cost = {1}, .via = {P12}};
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_dataplane_counters a0, a1, b0, b1;
    counters(0, &a0);
    counters(1, &a1);
    uint64_t seed = 42;
    size_t sizes[] = {0, 1, 100, 65536, 300001, (size_t)(tl_rand(&seed) % (3u << 20)), 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        CHECK(echo_exact(sizes[i], 1000 + i) == 0);
    counters(0, &b0);
    counters(1, &b1);
    size_t n = sizeof sizes / sizeof *sizes;
    CHECK_EQ_U(b0.flows_originated - a0.flows_originated, n);
    CHECK_EQ_U(b0.verdicts_received[0] - a0.verdicts_received[0], n);
    CHECK_EQ_U(b1.data_accepted - a1.data_accepted, n);
    CHECK_EQ_U(b1.flows_terminated - a1.flows_terminated, n);
    CHECK_EQ_U(b1.verdicts_sent[0] - a1.verdicts_sent[0], n);
    sk_peer_stats ps;
    sk_peer_stats_get(P12, &ps);
    CHECK_OP_U(ps.flows, >=, n);
    CHECK_OP_U(ps.bytes_out, >=, 3u << 20);
    return 0;
}

static int test_three_hops(void)
{
    rspec r3 = {.local = T_ECHO3, .local_port = ECHO3.port};
    rspec r2 = {.dest = {"R3"}, .cost = {1}, .via = {P23}};
    rspec r1 = {.dest = {"R3"}, .cost = {2}, .via = {P12}};
    REQUIRE(publish(R[2], &r3) == 0);
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_dataplane_counters a1, b1, a2, b2;
    counters(1, &a1);
    counters(2, &a2);
    CHECK(echo_exact(1u << 20, 7) == 0);
    CHECK(echo_exact(12345, 8) == 0);
    counters(1, &b1);
    counters(2, &b2);
    CHECK_EQ_U(b1.flows_transited - a1.flows_transited, 2);
    CHECK_EQ_U(b2.flows_terminated - a2.flows_terminated, 2);
    return 0;
}

/* ------------------------------------------------------------ one-shot server */

static int test_half_close_and_reset(void)
{
    oneshot o = {.mode = SRV_HALF};
    o.lfd = bound_socket(1, &o.port);
    REQUIRE(o.lfd >= 0);
    pthread_create(&o.th, NULL, oneshot_th, &o);
    rspec r2 = {.local = T_SRV2, .local_port = o.port};
    rspec r1 = {.dest = {"R2"}, .cost = {1}, .via = {P12}};
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    int fd = connect_to(sk_listener_port(CL));
    REQUIRE(fd >= 0);
    char b[8];
    CHECK_EQ_U(recv_exact(fd, b, 3), 3);
    CHECK(memcmp(b, "bye", 3) == 0);
    CHECK(recv_eof(fd) == 1); /* the server's FIN crossed both hops */
    CHECK(send_all(fd, "more", 4) == 0); /* the other way still flows */
    shutdown(fd, SHUT_WR);
    pthread_join(o.th, NULL);
    CHECK_EQ_U(o.got_n, 4);
    CHECK(memcmp(o.got, "more", 4) == 0);
    close(fd);
    close(o.lfd);

    sk_peer_stats p0, p1;
    sk_peer_stats_get(P12, &p0);
    oneshot q = {.mode = SRV_RESET};
    q.lfd = bound_socket(1, &q.port);
    REQUIRE(q.lfd >= 0);
    pthread_create(&q.th, NULL, oneshot_th, &q);
    r2.local_port = q.port;
    REQUIRE(publish(R[1], &r2) == 0);
    fd = connect_to(sk_listener_port(CL));
    REQUIRE(fd >= 0);
    CHECK(send_all(fd, "ping", 4) == 0);
    pthread_join(q.th, NULL);
    ssize_t n = recv(fd, b, sizeof b, 0);
    CHECK_MSG(n < 0 && errno == ECONNRESET, "expected a reset, got %zd (%s)", n,
              n < 0 ? strerror(errno) : "data/eof");
    close(fd);
    close(q.lfd);
    uint64_t end = mono_ms() + WAIT_MS;
    do {
        sk_peer_stats_get(P12, &p1);
    } while (p1.resets == p0.resets && mono_ms() < end && usleep(10000) == 0);
    CHECK_EQ_U(p1.resets - p0.resets, 1);
    return 0;
}

/* ------------------------------------------------------------ retries */

static int test_no_route_retried(void)
{
    /* R1 prefers R3 through R2, but R2 has no way to R3: NO_ROUTE, then R2 */
    rspec r2 = {.local = T_ECHO2, .local_port = ECHO2.port};
    rspec r1 = {.dest = {"R3", "R2"}, .cost = {1, 2}, .via = {P12, P12}};
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_dataplane_counters a0, b0, a1, b1;
    counters(0, &a0);
    counters(1, &a1);
    uint64_t t0 = mono_ms();
    CHECK(echo_exact(5000, 3) == 0);
    counters(0, &b0);
    counters(1, &b1);
    CHECK_EQ_U(b0.verdicts_received[SK_FLOW_V_NO_ROUTE] - a0.verdicts_received[SK_FLOW_V_NO_ROUTE], 1);
    CHECK_EQ_U(b0.origin_retries - a0.origin_retries, 1);
    CHECK_EQ_U(b0.flows_originated - a0.flows_originated, 1);
    CHECK_EQ_U(b1.verdicts_sent[SK_FLOW_V_NO_ROUTE] - a1.verdicts_sent[SK_FLOW_V_NO_ROUTE], 1);
    /* backed off now: the next flow goes to R2 at once */
    counters(0, &a0);
    CHECK(echo_exact(10, 4) == 0);
    counters(0, &b0);
    if (mono_ms() - t0 < 90) /* within the 100 ms back-off (a slow run may be past it) */
        CHECK_EQ_U(b0.origin_retries - a0.origin_retries, 0);
    usleep(300 * 1000); /* past the back-off */
    return 0;
}

static int test_refused_retried(void)
{
    /* R2's only target refuses: REFUSED; R1 retries on R3 directly */
    rspec r2 = {.local = T_DEAD2, .local_port = DEADP};
    rspec r3 = {.local = T_ECHO3, .local_port = ECHO3.port};
    rspec r1 = {.dest = {"R2", "R3"}, .cost = {1, 5}, .via = {P12, P13}};
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[2], &r3) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_dataplane_counters a0, b0;
    counters(0, &a0);
    CHECK(echo_exact(70000, 5) == 0);
    counters(0, &b0);
    CHECK_EQ_U(b0.verdicts_received[SK_FLOW_V_REFUSED] - a0.verdicts_received[SK_FLOW_V_REFUSED], 1);
    CHECK_EQ_U(b0.origin_retries - a0.origin_retries, 1);
    /* nothing anywhere: the client is closed, counted */
    rspec none = {0};
    REQUIRE(publish(R[0], &none) == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(R[0], &c0);
    int fd = connect_to(sk_listener_port(CL));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1);
    close(fd);
    sk_engine_counters_get(R[0], &c1);
    CHECK_EQ_U(c1.flows_failed - c0.flows_failed, 1);
    usleep(300 * 1000);
    return 0;
}

/* ------------------------------------------------------------ refused headers */

/* Writes raw bytes to R2's data listener; reads the verdict and the EOF. */
static int raw_exchange(const void *msg, size_t len, uint8_t *code, uint8_t *detail,
                        uint64_t *fid)
{
    int fd = connect_to(sk_listener_port(DL[1]));
    if (fd < 0)
        return -1;
    send_all(fd, msg, len);
    uint8_t v[16];
    size_t got = recv_exact(fd, v, 16);
    int eof = recv_eof(fd);
    close(fd);
    if (got != 16 || v[0] != 'S' || v[1] != 'K' || v[3] != 'V' || !eof)
        return -1;
    *code = v[6];
    *detail = v[7];
    *fid = 0;
    for (int i = 0; i < 8; i++)
        *fid = *fid << 8 | v[8 + i];
    return 0;
}

static int test_bad_headers(void)
{
    rspec r2 = {.local = T_ECHO2, .local_port = ECHO2.port};
    REQUIRE(publish(R[1], &r2) == 0);
    sk_dataplane_counters a1, b1;
    counters(1, &a1);
    uint8_t code, detail;
    uint64_t fid;
    /* an unknown version */
    const uint8_t v2[] = {'S', 'K', 2, 'F', 0, 24};
    REQUIRE(raw_exchange(v2, sizeof v2, &code, &detail, &fid) == 0);
    CHECK_EQ_U(code, SK_FLOW_V_BAD_HEADER);
    CHECK_EQ_U(detail, SK_FLOW_E_VERSION);
    /* an address over 1024 bytes: refused at its length */
    uint8_t big[32] = {'S', 'K', 1, 'F', 0x07, 0xd0, 0, 0, 0, 0, 0, 0, 0, 9, 5, 0, 0x04, 0x01};
    REQUIRE(raw_exchange(big, 18, &code, &detail, &fid) == 0);
    CHECK_EQ_U(code, SK_FLOW_V_BAD_HEADER);
    CHECK_EQ_U(detail, SK_FLOW_E_ADDR_LEN);
    CHECK_EQ_U(fid, 9);
    /* no hop left */
    uint8_t h0[64];
    sk_flow_str a = {"svc", 3}, o = {"RX", 2}, d = {"", 0};
    int n = sk_flow_encode_hdr(h0, sizeof h0, 77, 1, 0, a, o, d);
    REQUIRE(n > 0);
    h0[14] = 0;
    REQUIRE(raw_exchange(h0, (size_t)n, &code, &detail, &fid) == 0);
    CHECK_EQ_U(code, SK_FLOW_V_HOP_LIMIT);
    CHECK_EQ_U(detail, SK_FLOW_E_HOP_LIMIT);
    CHECK_EQ_U(fid, 77);
    /* an address R2 does not know */
    sk_flow_str unk = {"nope", 4};
    n = sk_flow_encode_hdr(h0, sizeof h0, 78, 3, 0, unk, o, d);
    REQUIRE(raw_exchange(h0, (size_t)n, &code, &detail, &fid) == 0);
    CHECK_EQ_U(code, SK_FLOW_V_NO_ROUTE);
    CHECK_EQ_U(fid, 78);
    /* for another router, with one hop: forwarding would leave none */
    sk_flow_str r9 = {"R9", 2};
    n = sk_flow_encode_hdr(h0, sizeof h0, 79, 1, 0, a, o, r9);
    REQUIRE(raw_exchange(h0, (size_t)n, &code, &detail, &fid) == 0);
    CHECK_EQ_U(code, SK_FLOW_V_HOP_LIMIT);
    /* a by-hand flow that is fine: OK, then relayed */
    n = sk_flow_encode_hdr(h0, sizeof h0, 80, 2, 0, a, o, d);
    int fd = connect_to(sk_listener_port(DL[1]));
    REQUIRE(fd >= 0);
    CHECK(send_all(fd, h0, (size_t)n) == 0);
    uint8_t v[16];
    CHECK_EQ_U(recv_exact(fd, v, 16), 16);
    CHECK_EQ_U(v[6], SK_FLOW_V_OK);
    CHECK(ping(fd, "after-ok") == 0);
    close(fd);
    counters(1, &b1);
    CHECK_EQ_U(b1.header_errors[SK_FLOW_E_VERSION] - a1.header_errors[SK_FLOW_E_VERSION], 1);
    CHECK_EQ_U(b1.header_errors[SK_FLOW_E_ADDR_LEN] - a1.header_errors[SK_FLOW_E_ADDR_LEN], 1);
    CHECK_EQ_U(b1.header_errors[SK_FLOW_E_HOP_LIMIT] - a1.header_errors[SK_FLOW_E_HOP_LIMIT], 1);
    CHECK_EQ_U(b1.verdicts_sent[SK_FLOW_V_BAD_HEADER] - a1.verdicts_sent[SK_FLOW_V_BAD_HEADER], 2);
    CHECK_EQ_U(b1.verdicts_sent[SK_FLOW_V_HOP_LIMIT] - a1.verdicts_sent[SK_FLOW_V_HOP_LIMIT], 2);
    /* another protocol on the data_ok (app) listener stays an app connection */
    fd = connect_to(sk_listener_port(DL[1]));
    REQUIRE(fd >= 0);
    CHECK(send_all(fd, "AMQP", 4) == 0);
    sk_event ev[16];
    int seen = 0, ovf = 0;
    uint64_t end = mono_ms() + WAIT_MS;
    while (!seen && mono_ms() < end) {
        int k = sk_engine_drain(R[1], ev, 16, &ovf);
        for (int i = 0; i < k; i++)
            if (ev[i].type == SK_EV_APP_OPEN && ev[i].a == 201) {
                seen = 1;
                char b[8];
                CHECK_EQ_I(sk_app_read(R[1], ev[i].id, b, sizeof b), 4);
                sk_app_close(R[1], ev[i].id, 1);
            }
        if (!k)
            usleep(5000);
    }
    CHECK_MSG(seen, "no APP_OPEN for an AMQP client of the data_ok listener");
    close(fd);
    return 0;
}

/* ------------------------------------------------------------ TLS */

static char tmpdir[64] = "/tmp/dataplane-test-XXXXXX";

/* A slot of e with cert/key, trusting ca. */
static int tls_slot(sk_engine *e, const char *cert, const char *key, const char *ca)
{
    int slot = sk_tls_slot_create(e);
    REQUIRE(slot >= 0);
    REQUIRE(fixture_publish(e, slot, cert, key, ca, 1) == 0);
    return slot;
}

/* Mutual TLS between R1 and R2 (a TLS data_ok listener that requires a
 * client certificate): byte-exact over TLS; a peer whose certificate R2 does
 * not trust fails its handshake and the flow is retried on the good one. */
static int test_tls(void)
{
    char ca[160], cak[160], bad[160], badk[160];
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(ca, sizeof ca, "%s/a.pem", tmpdir);
    snprintf(cak, sizeof cak, "%s/a.key", tmpdir);
    snprintf(bad, sizeof bad, "%s/b.pem", tmpdir);
    snprintf(badk, sizeof badk, "%s/b.key", tmpdir);
    REQUIRE(make_material("router-link", ca, cak) == 0);
    REQUIRE(make_material("intruder", bad, badk) == 0);
    int s1 = tls_slot(R[0], ca, cak, ca);
    int s1bad = tls_slot(R[0], bad, badk, ca);
    int s2 = tls_slot(R[1], ca, cak, ca);
    REQUIRE(s1 >= 0 && s1bad >= 0 && s2 >= 0);

    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = 1;
    lo.data_ok = 1;
    lo.tls_slot = s2;
    lo.authenticate_peer = 1;
    lo.user_id = 299;
    char err[SK_ERRLEN] = "";
    sk_listener *tl = sk_listener_open(R[1], &lo, err, sizeof err);
    REQUIRE_MSG(tl != NULL, "%s", err);
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = "R2";
    po.ip = "127.0.0.1";
    po.port = sk_listener_port(tl);
    po.host = "127.0.0.1";
    po.tls_slot = s1;
    po.verify_host = 1;
    sk_peer *good = sk_peer_create(R[0], &po, err, sizeof err);
    po.tls_slot = s1bad;
    sk_peer *badp = sk_peer_create(R[0], &po, err, sizeof err);
    REQUIRE(good && badp);

    rspec r2 = {.local = T_ECHO2, .local_port = ECHO2.port};
    rspec r1 = {.dest = {"R2", "R2"}, .cost = {1, 2}, .via = {badp, good}};
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(R[1], &c0);
    CHECK(echo_exact(1u << 20, 99) == 0);
    CHECK(echo_exact(777, 98) == 0);
    sk_engine_counters_get(R[1], &c1);
    CHECK_OP_U(c1.tls_handshakes - c0.tls_handshakes, >=, 2);
    sk_peer_stats gs, bs;
    sk_peer_stats_get(good, &gs);
    sk_peer_stats_get(badp, &bs);
    CHECK_EQ_U(gs.flows, 2);
    CHECK_OP_U(gs.bytes_out, >=, 1u << 20); /* relayed bytes (added at close) */
    CHECK_EQ_U(bs.flows, 0);
    CHECK_OP_U(bs.failures, >=, 1); /* backed off (100 ms: a slow run may try it again) */
    CHECK_EQ_U(bs.destinations, 1);
    CHECK_EQ_U(gs.destinations_down, 0);

    /* a pooled TLS peer: HELLO over TLS, and the idle connection survives
     * the server's session tickets */
    po.tls_slot = s1;
    po.pool_size = 1;
    po.pool_idle_ms = 600;
    sk_peer *pooled = sk_peer_create(R[0], &po, err, sizeof err);
    REQUIRE(pooled != NULL);
    rspec rp = {.dest = {"R2"}, .cost = {1}, .via = {pooled}};
    REQUIRE(publish(R[0], &rp) == 0);
    CHECK(echo_exact(5000, 97) == 0);
    uint64_t end = mono_ms() + WAIT_MS;
    while (SK_LOAD(&pooled->pool_idle) == 0 && mono_ms() < end)
        usleep(5000);
    CHECK_EQ_U(SK_LOAD(&pooled->pool_idle), 1);
    usleep(200 * 1000);
    CHECK_EQ_U(SK_LOAD(&pooled->pool_idle), 1);

    rspec none = {0};
    REQUIRE(publish(R[0], &none) == 0);
    end = mono_ms() + WAIT_MS;
    while ((SK_LOAD(&good->active) || SK_LOAD(&badp->active) || SK_LOAD(&pooled->active)) &&
           mono_ms() < end)
        usleep(10000);
    CHECK_EQ_U(SK_LOAD(&pooled->active), 0); /* closed after pool_idle_ms */
    sk_peer_release(pooled);
    sk_peer_release(good);
    sk_peer_release(badp);
    sk_listener_close(tl, 0);
    sk_listener_release(tl);
    unlink(ca);
    unlink(cak);
    unlink(bad);
    unlink(badk);
    rmdir(tmpdir);
    return 0;
}

/* R3's target refuses: R3 answers REFUSED, R2 passes it upstream as is. */
static int test_verdict_relayed_upstream(void)
{
    rspec r3 = {.local = T_DEAD2, .local_port = DEADP};
    rspec r2 = {.dest = {"R3"}, .cost = {1}, .via = {P23}};
    rspec r1 = {.dest = {"R3"}, .cost = {2}, .via = {P12}};
    REQUIRE(publish(R[2], &r3) == 0);
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_dataplane_counters a0, b0, a1, b1, a2, b2;
    counters(0, &a0);
    counters(1, &a1);
    counters(2, &a2);
    int fd = connect_to(sk_listener_port(CL));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1);
    close(fd);
    counters(0, &b0);
    counters(1, &b1);
    counters(2, &b2);
    int rf = SK_FLOW_V_REFUSED;
    CHECK_EQ_U(b2.verdicts_sent[rf] - a2.verdicts_sent[rf], 1);
    CHECK_EQ_U(b1.verdicts_received[rf] - a1.verdicts_received[rf], 1);
    CHECK_EQ_U(b1.verdicts_sent[rf] - a1.verdicts_sent[rf], 1);
    CHECK_EQ_U(b0.verdicts_received[rf] - a0.verdicts_received[rf], 1);
    usleep(300 * 1000);
    return 0;
}

/* ------------------------------------------------------------ concurrency */

typedef struct conc_arg {
    int idx;
    int rc;
} conc_arg;

static void *conc_th(void *arg)
{
    conc_arg *a = arg;
    a->rc = echo_exact(50000 + (size_t)a->idx * 3001, 500 + (uint64_t)a->idx);
    return NULL;
}

/* Many flows at once over both hops of R1 -> R2 -> R3, on every worker. */
static int test_concurrent(void)
{
    echo_server es;
    REQUIRE(echo_start(&es) == 0);
    sk_target *t = sk_target_create(R[2], 32);
    rspec r3 = {.local = t, .local_port = es.port};
    rspec r1 = {.dest = {"R3", "R2"}, .cost = {2, 2}, .via = {P12, P12}};
    rspec r2b = {.local = T_ECHO2, .local_port = ECHO2.port, .dest = {"R3"}, .cost = {1},
                 .via = {P23}};
    REQUIRE(publish(R[2], &r3) == 0);
    REQUIRE(publish(R[1], &r2b) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    enum { N = 24 };
    pthread_t th[N];
    conc_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i].idx = i;
        pthread_create(&th[i], NULL, conc_th, &args[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].rc == 0;
    }
    CHECK_EQ_I(ok, N);
    sk_flow_stats ts;
    sk_target_stats(t, &ts);
    /* fewest open flows: both destinations served some */
    CHECK_OP_U(ts.opened, >, 0);
    CHECK_OP_U(ts.opened, <, N);
    rspec none = {0};
    REQUIRE(publish(R[2], &none) == 0);
    sk_target_release(t);
    echo_stop(&es);
    return 0;
}

/* A next hop that accepts and never answers: the engine stops with the
 * flow waiting for its verdict (nothing may leak: ASan). */
static int SILENT_FD = -1;

static int test_stop_while_waiting(void)
{
    int port;
    SILENT_FD = bound_socket(1, &port);
    REQUIRE(SILENT_FD >= 0);
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = "R2";
    po.ip = "127.0.0.1";
    po.port = port;
    char err[SK_ERRLEN];
    sk_peer *p = sk_peer_create(R[0], &po, err, sizeof err);
    REQUIRE(p != NULL);
    rspec r1 = {.dest = {"R2"}, .cost = {1}, .via = {p}};
    REQUIRE(publish(R[0], &r1) == 0);
    int fd = connect_to(sk_listener_port(CL));
    REQUIRE(fd >= 0);
    uint64_t end = mono_ms() + WAIT_MS;
    sk_peer_stats ps;
    do {
        sk_peer_stats_get(p, &ps);
    } while (ps.active == 0 && mono_ms() < end && usleep(5000) == 0);
    CHECK_EQ_U(ps.active, 1);
    CHECK(!readable_within(fd, 100)); /* no verdict: the client waits */
    sk_peer_release(p); /* the route table and the data connection hold it */
    close(fd);
    return 0;
}

/* A routing loop (R1 and R2 each think R3 is behind the other): the flow
 * bounces until its hops run out, and HOP_LIMIT comes back to the origin. */
static int test_loop_hop_limit(void)
{
    sk_peer *p21 = mk_peer(R[1], "R1", 0);
    rspec r2 = {.dest = {"R3"}, .cost = {1}, .via = {p21}};
    rspec r1 = {.dest = {"R3"}, .cost = {1}, .via = {P12}};
    REQUIRE(publish(R[1], &r2) == 0);
    REQUIRE(publish(R[0], &r1) == 0);
    sk_dataplane_counters a0, b0;
    counters(0, &a0);
    int fd = connect_to(sk_listener_port(CL));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1);
    close(fd);
    counters(0, &b0);
    int hl = SK_FLOW_V_HOP_LIMIT;
    /* the origin got it, and so did R1 as an intermediate hop (15 times) */
    CHECK_OP_U(b0.verdicts_received[hl] - a0.verdicts_received[hl], >=, 2);
    CHECK_EQ_U(b0.flows_originated - a0.flows_originated, 0);
    rspec none = {0};
    REQUIRE(publish(R[1], &none) == 0);
    REQUIRE(publish(R[0], &none) == 0);
    sk_peer_release(p21);
    usleep(300 * 1000);
    return 0;
}

/* ------------------------------------------------------------ pools */

/* Writes a HELLO to listener l of R2; returns the fd after reading the
 * verdict (code in *code), or -1. */
static int hello(sk_listener *l, const char *to, uint8_t *code)
{
    int fd = connect_to(sk_listener_port(l));
    if (fd < 0)
        return -1;
    uint8_t m[128];
    sk_flow_str from = {"RX", 2}, t = {to, strlen(to)};
    int n = sk_flow_encode_hello(m, sizeof m, SK_FLOW_ROLE_OUTBOUND, 1, 2, 0, from, t);
    uint8_t v[16];
    if (n < 0 || send_all(fd, m, (size_t)n) != 0 || recv_exact(fd, v, 16) != 16 || v[3] != 'V') {
        close(fd);
        return -1;
    }
    *code = v[6];
    return fd;
}

/* OUTBOUND pools: the first flow on a worker misses and fills the pool, the
 * next claims a warm connection; idle ones close after pool_idle_ms; the
 * accepting side checks the HELLO and its cap. */
/* Connected sockets of this process (listening ones left out: accepted
 * connections must have inherited it) with keep-alive on and dataconn.c's
 * 30 s idle time (the kernel's default is 7200 s). */
static unsigned short_keepalive_sockets(void)
{
    unsigned n = 0;
    for (int fd = 3; fd < 4096; fd++) {
        int on = 0, idle = 0, listening = 0;
        socklen_t l1 = sizeof on, l2 = sizeof idle, l3 = sizeof listening;
        if (getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &l1) != 0 || !on)
            continue;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l3) != 0 || listening)
            continue;
        if (getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &l2) == 0 && idle == 30)
            n++;
    }
    return n;
}

static int test_pool(void)
{
    rspec r2 = {.local = T_ECHO2, .local_port = ECHO2.port};
    REQUIRE(publish(R[1], &r2) == 0);
    sk_engine *rp = dp_engine("RP", 1);
    sk_listener *cl = mk_listener(rp, 0, 0, 0, 400);
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = "R2";
    po.ip = "127.0.0.1";
    po.port = sk_listener_port(DL[1]);
    po.pool_size = 2;
    po.pool_idle_ms = 400;
    char err[SK_ERRLEN];
    sk_peer *pp = sk_peer_create(rp, &po, err, sizeof err);
    REQUIRE(pp != NULL);
    rspec r = {.dest = {"R2"}, .cost = {1}, .via = {pp}};
    REQUIRE(publish(rp, &r) == 0);

    sk_dataplane_counters a1, b1;
    counters(1, &a1);
    CHECK(echo_exact_on(sk_listener_port(cl), 20000, 61) == 0);
    CHECK_EQ_U(SK_LOAD(&pp->pool_misses), 1);
    CHECK(wait_u64(&pp->pool_idle, 2) == 0);
    CHECK(wait_i64(&DL[1]->dp_idle, 2) == 0);
    CHECK(echo_exact_on(sk_listener_port(cl), 300000, 62) == 0);
    CHECK(echo_exact_on(sk_listener_port(cl), 10, 63) == 0);
    CHECK_EQ_U(SK_LOAD(&pp->pool_hits), 2);
    CHECK_EQ_U(SK_LOAD(&pp->pool_misses), 1);
    CHECK(wait_u64(&pp->pool_idle, 2) == 0); /* refilled */
    /* both ends of the idle pooled connections probe with short keep-alive */
    CHECK_OP_U(short_keepalive_sockets(), >=, 4);
    counters(1, &b1);
    CHECK_EQ_U(b1.flows_terminated - a1.flows_terminated, 3);
    CHECK_OP_U(b1.verdicts_sent[0] - a1.verdicts_sent[0], >=, 3 + 4); /* flows and HELLOs */
    /* idle ones close after pool_idle_ms, on both ends */
    CHECK(wait_u64(&pp->pool_idle, 0) == 0);
    CHECK(wait_i64(&DL[1]->dp_idle, 0) == 0);

    /* the accepting side: a misdialled HELLO is refused */
    uint8_t code = 0xff;
    int fd = hello(DL[1], "R9", &code);
    CHECK(fd >= 0);
    CHECK_EQ_U(code, SK_FLOW_V_REFUSED);
    if (fd >= 0) {
        CHECK(recv_eof(fd) == 1);
        close(fd);
    }
    /* a HELLO answered OK, then a FLOW on the same connection */
    fd = hello(DL[1], "R2", &code);
    REQUIRE(fd >= 0);
    CHECK_EQ_U(code, SK_FLOW_V_OK);
    CHECK(wait_i64(&DL[1]->dp_idle, 1) == 0);
    uint8_t h[64];
    sk_flow_str a = {"svc", 3}, o = {"RX", 2}, d = {"", 0};
    int n = sk_flow_encode_hdr(h, sizeof h, 90, 2, 0, a, o, d);
    CHECK(send_all(fd, h, (size_t)n) == 0);
    uint8_t v[16];
    CHECK_EQ_U(recv_exact(fd, v, 16), 16);
    CHECK_EQ_U(v[6], SK_FLOW_V_OK);
    CHECK(ping(fd, "pooled") == 0);
    close(fd);
    CHECK(wait_i64(&DL[1]->dp_idle, 0) == 0);
    /* the cap of a listener */
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = 1;
    lo.data_ok = 1;
    lo.data_pool_cap = 1;
    lo.user_id = 401;
    sk_listener *capl = sk_listener_open(R[1], &lo, err, sizeof err);
    REQUIRE(capl != NULL);
    int f1 = hello(capl, "R2", &code);
    CHECK(f1 >= 0 && code == SK_FLOW_V_OK);
    CHECK(wait_i64(&capl->dp_idle, 1) == 0);
    int f2 = hello(capl, "R2", &code);
    CHECK(f2 >= 0 && code == SK_FLOW_V_OVERLOADED);
    if (f1 >= 0)
        close(f1);
    if (f2 >= 0)
        close(f2);
    CHECK(wait_i64(&capl->dp_idle, 0) == 0);

    sk_engine_stop(rp);
    sk_listener_close(cl, 0);
    sk_listener_release(cl);
    sk_listener_close(capl, 0);
    sk_listener_release(capl);
    sk_peer_release(pp);
    sk_engine_destroy(rp);
    return 0;
}

/* A fake neighbour: answers a HELLO with OK, then reads the FLOW and closes
 * without a verdict (a pooled connection that died under its claim). */
static _Atomic int FAKE_HELLOS, FAKE_FLOWS;

static void *fake_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    set_timeouts(fd, WAIT_MS);
    for (;;) {
        uint8_t pre[6], rest[2048];
        if (recv_exact(fd, pre, 6) != 6)
            break;
        size_t len = (size_t)pre[4] << 8 | pre[5];
        if (len < 6 || len > sizeof rest || recv_exact(fd, rest, len - 6) != len - 6)
            break;
        if (pre[3] != 'H') {
            atomic_fetch_add(&FAKE_FLOWS, 1);
            break; /* a FLOW: close without a verdict */
        }
        atomic_fetch_add(&FAKE_HELLOS, 1);
        uint8_t v[16];
        int n = sk_flow_encode_verdict(v, sizeof v, SK_FLOW_V_OK, 0, 0);
        send_all(fd, v, (size_t)n);
    }
    close(fd);
    return NULL;
}

typedef struct fake_srv {
    int lfd, port;
    pthread_t th;
    pthread_t conns[32];
    int n;
} fake_srv;

static void *fake_accept(void *arg)
{
    fake_srv *f = arg;
    while (f->n < 32) {
        int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            break;
        if (pthread_create(&f->conns[f->n], NULL, fake_conn, (void *)(intptr_t)fd) != 0) {
            close(fd);
            break;
        }
        f->n++;
    }
    return NULL;
}

/* Claimed pooled connections that die before their verdict are not held
 * against the destination: the client takes the next one, then dials. */
static int test_pool_dead_claims(void)
{
    fake_srv f = {0};
    f.lfd = bound_socket(1, &f.port);
    REQUIRE(f.lfd >= 0);
    pthread_create(&f.th, NULL, fake_accept, &f);
    sk_engine *rp = dp_engine("RP", 1);
    sk_listener *cl = mk_listener(rp, 0, 0, 0, 500);
    sk_peer_options po;
    sk_peer_options_init(&po);
    po.router_id = "RF";
    po.ip = "127.0.0.1";
    po.port = f.port;
    po.pool_size = 2;
    char err[SK_ERRLEN];
    sk_peer *pp = sk_peer_create(rp, &po, err, sizeof err);
    REQUIRE(pp != NULL);
    rspec r = {.dest = {"RF"}, .cost = {1}, .via = {pp}};
    REQUIRE(publish(rp, &r) == 0);
    sk_dataplane_counters c0, c1;
    sk_engine_dataplane_counters(rp, &c0);
    /* first flow: a miss, dialled, refused by EOF; the pool fills */
    int fd = connect_to(sk_listener_port(cl));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1);
    close(fd);
    CHECK(wait_u64(&pp->pool_idle, 2) == 0);
    usleep(250 * 1000); /* past the destination's back-off (100 ms) */
    /* second flow: both warm ones die under their claims, then a dial */
    fd = connect_to(sk_listener_port(cl));
    REQUIRE(fd >= 0);
    CHECK(recv_eof(fd) == 1);
    close(fd);
    sk_engine_dataplane_counters(rp, &c1);
    /* flow 2: two dead claims (pool_size), then one more attempt, claimed
     * (a refill was ready) or dialled, that fails as any attempt does */
    CHECK_OP_U(SK_LOAD(&pp->pool_hits), >=, 2);
    CHECK_EQ_U(SK_LOAD(&pp->pool_hits) + SK_LOAD(&pp->pool_misses), 4);
    CHECK_EQ_U(c1.origin_retries - c0.origin_retries, 2); /* one failed attempt per flow */
    CHECK_OP_I(atomic_load(&FAKE_FLOWS), >=, 4);
    CHECK_OP_I(atomic_load(&FAKE_HELLOS), >=, 2); /* refills may still be on their way */
    sk_engine_stop(rp);
    sk_listener_close(cl, 0);
    sk_listener_release(cl);
    sk_peer_release(pp);
    sk_engine_destroy(rp);
    shutdown(f.lfd, SHUT_RDWR);
    pthread_join(f.th, NULL);
    for (int i = 0; i < f.n; i++)
        pthread_join(f.conns[i], NULL);
    close(f.lfd);
    return 0;
}

static int all_closed(void *arg)
{
    SK_UNUSED_ARG(arg);
    for (int i = 0; i < NR; i++) {
        sk_engine_counters c;
        sk_engine_counters_get(R[i], &c);
        if (c.conns_live)
            return 0;
    }
    return 1;
}

static int test_no_leak(void)
{
    uint64_t end = mono_ms() + WAIT_MS;
    while (!all_closed(NULL) && mono_ms() < end)
        usleep(10000);
    CHECK_MSG(all_closed(NULL), "connections still live");
    sk_peer_stats ps;
    sk_peer_stats_get(P12, &ps);
    CHECK_EQ_U(ps.active, 0);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(110);
    const char *ids[NR] = {"R1", "R2", "R3"};
    for (int i = 0; i < NR; i++) {
        R[i] = dp_engine(ids[i], 2);
        DL[i] = mk_listener(R[i], 1, 1, 0, 200 + (uint64_t)i);
    }
    CL = mk_listener(R[0], 0, 0, 0, 100);
    P12 = mk_peer(R[0], "R2", 1);
    P13 = mk_peer(R[0], "R3", 2);
    P23 = mk_peer(R[1], "R3", 2);
    if (echo_start(&ECHO2) != 0 || echo_start(&ECHO3) != 0)
        return 1;
    DEADFD = bound_socket(0, &DEADP);
    T_ECHO2 = sk_target_create(R[1], 21);
    T_ECHO3 = sk_target_create(R[2], 31);
    T_DEAD2 = sk_target_create(R[1], 22);
    T_SRV2 = sk_target_create(R[1], 23);

    RUN(test_two_hops);
    RUN(test_three_hops);
    RUN(test_half_close_and_reset);
    RUN(test_no_route_retried);
    RUN(test_refused_retried);
    RUN(test_bad_headers);
    RUN(test_verdict_relayed_upstream);
    RUN(test_tls);
    RUN(test_concurrent);
    RUN(test_loop_hop_limit);
    RUN(test_pool);
    RUN(test_pool_dead_claims);
    RUN(test_no_leak);
    RUN(test_stop_while_waiting); /* last: leaves a flow open for the stop */

    for (int i = 0; i < NR; i++)
        sk_engine_stop(R[i]);
    for (int i = 0; i < NR; i++) {
        sk_listener_close(DL[i], 0);
        sk_listener_release(DL[i]);
    }
    sk_listener_close(CL, 0);
    sk_listener_release(CL);
    sk_peer_release(P12);
    sk_peer_release(P13);
    sk_peer_release(P23);
    sk_target_release(T_ECHO2);
    sk_target_release(T_ECHO3);
    sk_target_release(T_DEAD2);
    sk_target_release(T_SRV2);
    for (int i = 0; i < NR; i++)
        sk_engine_destroy(R[i]);
    echo_stop(&ECHO2);
    echo_stop(&ECHO3);
    close(DEADFD);
    if (SILENT_FD >= 0)
        close(SILENT_FD);
    free(evlog);
    return tl_summary("test_dataplane");
}
