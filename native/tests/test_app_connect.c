/* test_app_connect.c -- outbound app connections (app_connect.c): the engine
 * dials its own app listener and carries bytes both ways with keep-alive;
 * a refused port, a full accept queue and a TLS peer that never answers end
 * in SK_EV_APP_CLOSED alone (ECONNREFUSED, ETIMEDOUT); mutual TLS with host
 * verification to a TLS app listener, and a certificate that fails
 * verification (no APP_OPEN, -X509_V_ERR_*); a dial cancelled by
 * sk_app_close; argument errors; and dials still pending when the engine
 * stops (the sanitizers check nothing leaks).
 *
 * Certificates are made here (self-signed, SAN IP:127.0.0.1 and localhost),
 * so the test needs no files and no openssl command. Everything is loopback. */
#include "engine_fixture.h"
#include "tls_fixture.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#define UID_OUT 901
#define UID_L_TLS_APP 902

static char tmpdir[64] = "/tmp/skiff-app-connect-XXXXXX";
static char cert_a[128], key_a[128], cert_b[128], key_b[128];
static int slot_a = -1, slot_b = -1, slot_empty = -1;
static sk_listener *L_TLS_APP;
static int SILENT_FD = -1, SILENT_PORT; /* listens, never accepts */

/* ------------------------------------------------------------ material */

static int publish(int slot, const char *cert, const char *key)
{
    return fixture_publish(E, slot, cert, key, cert, 1);
}

static int setup(void)
{
    char err[SK_ERRLEN] = "";
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(cert_a, sizeof cert_a, "%s/a.pem", tmpdir);
    snprintf(key_a, sizeof key_a, "%s/a.key", tmpdir);
    snprintf(cert_b, sizeof cert_b, "%s/b.pem", tmpdir);
    snprintf(key_b, sizeof key_b, "%s/b.key", tmpdir);
    REQUIRE(make_material("skiff-router-a", cert_a, key_a) == 0);
    REQUIRE(make_material("skiff-router-b", cert_b, key_b) == 0);
    slot_a = sk_tls_slot_create(E);
    slot_b = sk_tls_slot_create(E);
    slot_empty = sk_tls_slot_create(E);
    REQUIRE(slot_a >= 0 && slot_b >= 0 && slot_empty >= 0);
    REQUIRE(publish(slot_a, cert_a, key_a) == 0);
    REQUIRE(publish(slot_b, cert_b, key_b) == 0);

    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = 1;
    lo.user_id = UID_L_APP;
    L_APP = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_APP != NULL, "%s", err);
    lo.user_id = UID_L_TLS_APP;
    lo.tls_slot = slot_a;
    lo.authenticate_peer = 1; /* mutual TLS */
    L_TLS_APP = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_TLS_APP != NULL, "%s", err);

    SILENT_FD = bound_socket(1, &SILENT_PORT);
    REQUIRE(SILENT_FD >= 0);
    fcntl(SILENT_FD, F_SETFL, O_NONBLOCK); /* the tests drain its queue */
    return 0;
}

/* ------------------------------------------------------------ helpers */

static uint64_t dial(const char *ip, int port, const char *host, int slot, int verify,
                     uint32_t timeout_ms, char *err)
{
    sk_app_connect_options o;
    sk_app_connect_options_init(&o);
    o.ip = ip;
    o.port = (uint16_t)port;
    o.host = host;
    o.tls_slot = slot;
    o.verify_host = verify;
    o.user_id = UID_OUT;
    o.timeout_ms = timeout_ms;
    err[0] = 0;
    return sk_app_connect(E, &o, err, SK_ERRLEN);
}

/* Reads exactly len bytes of app connection id into out. */
static int app_read_exact(uint64_t id, char *out, size_t len)
{
    size_t got = 0;
    uint64_t deadline = mono_ms() + WAIT_MS;
    while (got < len) {
        int64_t n = sk_app_read(E, id, out + got, len - got);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n < 0 || mono_ms() >= deadline)
            return -1;
        pump(5);
    }
    return 0;
}

/* The next APP_OPEN from the listener uid: the accepted side of a dial. */
static uint64_t accepted_side(uint64_t listener_uid)
{
    uint64_t deadline = mono_ms() + WAIT_MS;
    for (;;) {
        for (size_t i = 0; i < evlog_n; i++)
            if (!evlog[i].taken && evlog[i].ev.type == SK_EV_APP_OPEN && evlog[i].ev.b == 0 &&
                (uint64_t)evlog[i].ev.a == listener_uid) {
                evlog[i].taken = 1;
                return evlog[i].ev.id;
            }
        if (mono_ms() >= deadline)
            return 0;
        pump(5);
    }
}

/* A dial that must end without an open: returns APP_CLOSED's a. */
static int64_t closed_without_open(uint64_t id)
{
    sk_event ev;
    if (wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, &ev) < 0)
        return INT64_MIN;
    CHECK_EQ_U(count_events(SK_EV_APP_OPEN, id, 0), 0);
    return ev.a;
}

static int app_counters_zero(void *arg)
{
    SK_UNUSED_ARG(arg);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    return c.app_live == 0 && c.app_outbound_live == 0 && c.conns_live == 0;
}

/* ------------------------------------------------------------ tests */

static int test_args(void)
{
    char err[SK_ERRLEN];
    CHECK_EQ_U(dial("localhost", 80, "", -1, 0, 0, err), 0);
    CHECK_STR_CONTAINS(err, "not a numeric");
    CHECK_EQ_U(dial("127.0.0.1", 0, "", -1, 0, 0, err), 0);
    CHECK_STR_CONTAINS(err, "port");
    CHECK_EQ_U(dial("127.0.0.1", 80, "", 60, 0, 0, err), 0);
    CHECK_STR_CONTAINS(err, "slot 60");
    CHECK_EQ_U(dial("127.0.0.1", 80, "", slot_empty, 0, 0, err), 0);
    CHECK_STR_CONTAINS(err, "no TLS material");
    sk_app_connect_options o;
    sk_app_connect_options_init(&o);
    CHECK_EQ_I(o.tls_slot, -1);
    CHECK_EQ_I(o.worker, -1);
    o.ip = "127.0.0.1";
    o.port = 80;
    o.worker = 2; /* the fixture's engine has two */
    CHECK_EQ_U(sk_app_connect(E, &o, err, sizeof err), 0);
    CHECK_STR_CONTAINS(err, "worker 2");
    CHECK_EQ_U(sk_app_connect(E, NULL, err, sizeof err), 0);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.app_live, 0);
    return 0;
}

/* The engine dials its own app listener: bytes both ways, bytes written
 * before the open, keep-alive from the dialling side, close. */
static int test_plain(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    uint64_t id = dial("127.0.0.1", sk_listener_port(L_APP), "", -1, 0, 0, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(sk_app_write(E, id, "early", 5), 0); /* queued until open */
    sk_event ev;
    REQUIRE(wait_event(SK_EV_APP_OPEN, id, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, UID_OUT);
    CHECK_EQ_I(ev.b, 1);
    uint64_t peer = accepted_side(UID_L_APP);
    REQUIRE(peer != 0);
    CHECK(peer != id);

    char buf[64];
    REQUIRE(app_read_exact(peer, buf, 5) == 0);
    CHECK(memcmp(buf, "early", 5) == 0);
    CHECK_EQ_I(sk_app_write(E, peer, "pong", 4), 0);
    REQUIRE(app_read_exact(id, buf, 4) == 0);
    CHECK(memcmp(buf, "pong", 4) == 0);

    sk_conn_info ci;
    REQUIRE(sk_engine_conn_info(E, id, &ci) == 0);
    CHECK_EQ_U(ci.app, 1);
    CHECK_EQ_U(ci.outbound, 1);
    CHECK_EQ_U(ci.listener_id, 0);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", sk_listener_port(L_APP));
    CHECK_STR_CONTAINS(ci.peer, want);
    CHECK_EQ_U(ci.tls_version, 0);
    CHECK_EQ_U(ci.bytes_out, 5);
    CHECK_EQ_U(ci.bytes_in, 4);
    REQUIRE(sk_engine_conn_info(E, peer, &ci) == 0);
    CHECK_EQ_U(ci.outbound, 0);
    CHECK_EQ_U(ci.listener_id, UID_L_APP);
    sk_conn_info all[8];
    CHECK_EQ_I(sk_engine_list_connections(E, all, 8), 2);
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.app_live, 2);
    CHECK_EQ_U(c.app_outbound_live, 1);

    /* heartbeats from the dialling side, with no caller involved */
    CHECK_EQ_I(sk_app_set_keepalive(E, id, "KA", 2, 30), 0);
    REQUIRE(app_read_exact(peer, buf, 6) == 0);
    CHECK(memcmp(buf, "KAKAKA", 6) == 0);
    CHECK_EQ_I(sk_app_set_keepalive(E, id, NULL, 0, 0), 0);

    /* close after the queue drains: the other side reads it, then EOF */
    CHECK_EQ_I(sk_app_write(E, id, "bye", 3), 0);
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);
    size_t got = 0;
    uint64_t deadline = mono_ms() + WAIT_MS;
    int64_t n;
    for (;;) {
        n = sk_app_read(E, peer, buf + got, sizeof buf - got);
        if (n > 0)
            got += (size_t)n;
        if (n < 0 || mono_ms() >= deadline)
            break;
        if (n == 0)
            pump(5);
    }
    CHECK_EQ_I(n, -1); /* EOF */
    REQUIRE(got >= 3);
    CHECK(memcmp(buf + got - 3, "bye", 3) == 0); /* maybe after a last KA */
    CHECK_EQ_I(sk_app_close(E, peer, 0), 0);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, peer, WAIT_MS, NULL) >= 0);
    CHECK_EQ_I(sk_app_write(E, id, "x", 1), -2);
    CHECK(wait_until(app_counters_zero, NULL));
    return 0;
}

static int test_refused(void)
{
    REQUIRE(settle() == 0);
    int port;
    int fd = bound_socket(0, &port); /* bound, not listening: refuses */
    REQUIRE(fd >= 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    char err[SK_ERRLEN];
    uint64_t id = dial("127.0.0.1", port, "", -1, 0, 0, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(closed_without_open(id), ECONNREFUSED);
    close(fd);
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.app_connects_failed - c0.app_connects_failed, 1);
    CHECK(wait_until(app_counters_zero, NULL));
    return 0;
}

/* A listener whose accept queue is full drops the SYN: the connect never
 * completes and the dial's deadline ends it. */
static int test_connect_timeout(void)
{
    REQUIRE(settle() == 0);
    int port;
    int lfd = bound_socket(0, &port);
    REQUIRE(lfd >= 0);
    REQUIRE(listen(lfd, 0) == 0);
    int fill[3];
    for (int i = 0; i < 3; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(fill[i] >= 0);
        connect(fill[i], (struct sockaddr *)&sa, sizeof sa);
    }
    usleep(100000); /* the first is queued, the others wait for SYN retries */
    char err[SK_ERRLEN];
    uint64_t t0 = mono_ms();
    uint64_t id = dial("127.0.0.1", port, "", -1, 0, 300, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(closed_without_open(id), ETIMEDOUT);
    CHECK_OP_U(mono_ms() - t0, >=, 250);
    for (int i = 0; i < 3; i++)
        close(fill[i]);
    close(lfd);
    CHECK(wait_until(app_counters_zero, NULL));
    return 0;
}

/* TCP connects but the peer never answers the ClientHello. */
static int test_tls_handshake_timeout(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    char err[SK_ERRLEN];
    uint64_t id = dial("127.0.0.1", SILENT_PORT, "", slot_a, 0, 300, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(closed_without_open(id), ETIMEDOUT);
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.tls_failures - c0.tls_failures, 1);
    CHECK_EQ_U(c1.app_connects_failed - c0.app_connects_failed, 1);
    /* drop what queued on the silent listener */
    for (;;) {
        int fd = accept4(SILENT_FD, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        close(fd);
    }
    CHECK(wait_until(app_counters_zero, NULL));
    return 0;
}

/* Mutual TLS with host verification, to the engine's own TLS app listener. */
static int tls_round_trip(const char *host)
{
    char err[SK_ERRLEN];
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    uint64_t id = dial("127.0.0.1", sk_listener_port(L_TLS_APP), host, slot_a, 1, 0, err);
    REQUIRE_MSG(id != 0, "%s", err);
    sk_event ev;
    REQUIRE(wait_event(SK_EV_APP_OPEN, id, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.b, 1);
    uint64_t peer = accepted_side(UID_L_TLS_APP);
    REQUIRE(peer != 0);
    CHECK_EQ_I(sk_app_write(E, id, "over-tls", 8), 0);
    char buf[16];
    REQUIRE(app_read_exact(peer, buf, 8) == 0);
    CHECK(memcmp(buf, "over-tls", 8) == 0);
    CHECK_EQ_I(sk_app_write(E, peer, "back", 4), 0);
    REQUIRE(app_read_exact(id, buf, 4) == 0);
    CHECK(memcmp(buf, "back", 4) == 0);
    sk_conn_info ci;
    REQUIRE(sk_engine_conn_info(E, id, &ci) == 0);
    CHECK_EQ_U(ci.outbound, 1);
    CHECK_OP_U(ci.tls_version, >, 0);
    CHECK_EQ_U(ci.tls_ordinal, 1);
    CHECK_STR_CONTAINS(ci.tls_protocol, "TLS");
    CHECK(ci.tls_cipher[0] != 0);
    CHECK_STR_CONTAINS(ci.peer_subject, "skiff-router-a");
    REQUIRE(sk_engine_conn_info(E, peer, &ci) == 0);
    CHECK_STR_CONTAINS(ci.peer_subject, "skiff-router-a"); /* the client's certificate */
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);
    CHECK_EQ_I(sk_app_close(E, peer, 0), 0);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, peer, WAIT_MS, NULL) >= 0);
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 2);
    CHECK_EQ_U(c1.tls_failures - c0.tls_failures, 0);
    CHECK(wait_until(app_counters_zero, NULL));
    return 0;
}

static int test_tls_mutual(void)
{
    REQUIRE(settle() == 0);
    REQUIRE(tls_round_trip("127.0.0.1") == 0); /* IP SAN */
    REQUIRE(tls_round_trip("localhost") == 0); /* DNS SAN, and SNI */
    REQUIRE(tls_round_trip("") == 0);          /* the address itself */
    return 0;
}

/* The peer's certificate fails verification: no APP_OPEN on either side. */
static int test_tls_verify_failure(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    int port = sk_listener_port(L_TLS_APP);
    uint64_t id = dial("127.0.0.1", port, "wrong.example", slot_a, 1, 0, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(closed_without_open(id), -X509_V_ERR_HOSTNAME_MISMATCH);
    /* slot b trusts only its own certificate, not a's */
    id = dial("127.0.0.1", port, "", slot_b, 0, 0, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(closed_without_open(id), -X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT);
    CHECK(wait_until(app_counters_zero, NULL));
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.app_connects_failed - c0.app_connects_failed, 2);
    CHECK_OP_U(c1.tls_failures - c0.tls_failures, >=, 2); /* and the listener's sides */
    CHECK_EQ_U(count_events(SK_EV_APP_OPEN, ANY_ID, 0), 8); /* test_plain's and test_tls_mutual's */
    return 0;
}

/* sk_app_close while the dial waits: it ends at once, ECANCELED. */
static int test_cancel(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    uint64_t id = dial("127.0.0.1", SILENT_PORT, "", slot_a, 0, 0, err);
    REQUIRE_MSG(id != 0, "%s", err);
    CHECK_EQ_I(sk_app_write(E, id, "never", 5), 0);
    pump_for(50);
    sk_conn_info ci;
    CHECK_EQ_I(sk_engine_conn_info(E, id, &ci), 0); /* dialling: listed */
    CHECK_EQ_U(ci.outbound, 1);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    CHECK_EQ_I(closed_without_open(id), ECANCELED);
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.app_connects_failed, c0.app_connects_failed);
    for (;;) {
        int fd = accept4(SILENT_FD, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        close(fd);
    }
    CHECK(wait_until(app_counters_zero, NULL));
    return 0;
}

/* Dials the engine stop must end: one connected and waiting for TLS, one
 * open, and one whose message may not have run yet. */
static void leave_pending(void)
{
    char err[SK_ERRLEN];
    uint64_t a = dial("127.0.0.1", SILENT_PORT, "", slot_a, 0, 0, err);
    uint64_t b = dial("127.0.0.1", sk_listener_port(L_APP), "", -1, 0, 0, err);
    CHECK(a != 0 && b != 0);
    CHECK(sk_app_set_keepalive(E, b, "KA", 2, 1000) == 0);
    wait_event(SK_EV_APP_OPEN, b, WAIT_MS, NULL);
    pump_for(20);
    CHECK(dial("127.0.0.1", SILENT_PORT, "", -1, 0, 0, err) != 0);
}

int main(void)
{
    fx_engine_start();
    if (setup() == 0) {
        RUN(test_args);
        RUN(test_plain);
        RUN(test_refused);
        RUN(test_connect_timeout);
        RUN(test_tls_handshake_timeout);
        RUN(test_tls_mutual);
        RUN(test_tls_verify_failure);
        RUN(test_cancel);
        leave_pending();
    }
    sk_engine_stop(E);
    char err[SK_ERRLEN];
    CHECK_EQ_U(dial("127.0.0.1", SILENT_PORT, "", -1, 0, 0, err), 0);
    CHECK_STR_CONTAINS(err, "stopped");
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    CHECK_EQ_U(c.conns_live, 0);
    CHECK_EQ_U(c.app_live, 0);
    CHECK_EQ_U(c.app_outbound_live, 0);
    if (L_TLS_APP) {
        sk_listener_close(L_TLS_APP, 0);
        sk_listener_release(L_TLS_APP);
    }
    int rc = fx_finish("test_app_connect");
    if (SILENT_FD >= 0)
        close(SILENT_FD);
    unlink(cert_a);
    unlink(key_a);
    unlink(cert_b);
    unlink(key_b);
    rmdir(tmpdir);
    return rc;
}
