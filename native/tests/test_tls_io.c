/* test_tls_io.c -- TLS on connections (tls_io.c) end to end, so the handshake
 * and record paths also run under the sanitizers: terminating TLS from an
 * OpenSSL client, originating it to a target with IP verification (the
 * engine's own TLS listener), optional TLS on a plain client, a client that
 * does not speak TLS, and closing the flows of a retired config version.
 *
 * The certificate is made here (self-signed, SAN IP:127.0.0.1), so the test
 * needs no files and no openssl command. */
#include "engine_fixture.h"
#include "tls_fixture.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#define UID_L_TLS 61
#define UID_L_ORIG 62
#define UID_L_OPT 63
#define UID_TLS_TARGET 201

static char tmpdir[64] = "/tmp/skiff-tls-io-XXXXXX";
static char cert_path[128], key_path[128];
static int tls_slot = -1;
static sk_target *T_TLS;
static sk_listener *L_TLS, *L_ORIG, *L_OPT;
static SSL_CTX *client_ctx;

/* ------------------------------------------------------------ material */

/* A self-signed certificate and its key, written as PEM into tmpdir. */
static int make_material_in_tmpdir(void)
{
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", tmpdir);
    snprintf(key_path, sizeof key_path, "%s/key.pem", tmpdir);
    return make_material("skiff-test", cert_path, key_path);
}

/* Loads the material as config `ordinal` and publishes it in tls_slot. */
static int publish_config(uint64_t ordinal)
{
    sk_tls_load_params p;
    sk_tls_load_params_init(&p);
    p.cert_file = cert_path;
    p.key_file = key_path;
    p.ca_file = cert_path;
    p.ordinal = ordinal;
    sk_tls_load_result r;
    memset(&r, 0, sizeof r);
    sk_tls_load(&p, &r);
    REQUIRE_MSG(r.status == SK_TLS_OK, "sk_tls_load: %s", r.error);
    CHECK(sk_tls_publish(E, tls_slot, r.config) != 0);
    r.config = NULL; /* the slot owns it now */
    sk_tls_result_clear(&r);
    return 0;
}

static sk_listener *open_listener(uint64_t uid, uint32_t address, int slot, int optional)
{
    char err[SK_ERRLEN] = "";
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.user_id = uid;
    lo.address_id = address;
    lo.tls_slot = slot;
    lo.tls_optional = optional;
    sk_listener *l = sk_listener_open(E, &lo, err, sizeof err);
    if (!l)
        fprintf(stderr, "   sk_listener_open: %s\n", err);
    return l;
}

/* Address 0: the echo server in plain TCP (fx_setup_relay's target).
 * Address 1: the engine's own TLS listener, reached over TLS with the
 * certificate checked against IP 127.0.0.1. */
static int setup_tls(void)
{
    REQUIRE(make_material_in_tmpdir() == 0);
    tls_slot = sk_tls_slot_create(E);
    REQUIRE(tls_slot >= 0);
    REQUIRE(publish_config(1) == 0);
    L_TLS = open_listener(UID_L_TLS, 0, tls_slot, 0);
    L_ORIG = open_listener(UID_L_ORIG, 1, -1, 0);
    L_OPT = open_listener(UID_L_OPT, 0, tls_slot, 1);
    REQUIRE(L_TLS && L_ORIG && L_OPT);
    T_TLS = sk_target_create(E, UID_TLS_TARGET);
    REQUIRE(T_TLS != NULL);
    char err[SK_ERRLEN] = "";
    sk_routes *r = sk_routes_create(2);
    REQUIRE(r != NULL);
    REQUIRE_MSG(sk_routes_add(r, 0, T_LIVE, "127.0.0.1", ECHO.port, "echo", 1, -1, 0, err,
                              sizeof err) == 0, "%s", err);
    REQUIRE_MSG(sk_routes_add(r, 1, T_TLS, "127.0.0.1", sk_listener_port(L_TLS), "127.0.0.1", 1,
                              tls_slot, 1, err, sizeof err) == 0, "%s", err);
    routes_published = sk_engine_publish_routes(E, r);
    client_ctx = SSL_CTX_new(TLS_client_method());
    REQUIRE(client_ctx != NULL);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    return 0;
}

/* A blocking OpenSSL client on a connected fd; NULL when the handshake fails. */
static SSL *tls_client(int fd)
{
    SSL *ssl = SSL_new(client_ctx);
    if (!ssl)
        return NULL;
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static int tls_ping(SSL *ssl, const char *msg)
{
    size_t len = strlen(msg), got = 0;
    char back[128];
    if (SSL_write(ssl, msg, (int)len) != (int)len)
        return -1;
    while (got < len) {
        int n = SSL_read(ssl, back + got, (int)(len - got));
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return memcmp(back, msg, len) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ tests */

/* TLS terminated by the engine, relayed in plain TCP to the echo server. */
static int test_tls_terminate(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    int fd = connect_to(sk_listener_port(L_TLS));
    REQUIRE(fd >= 0);
    SSL *ssl = tls_client(fd);
    REQUIRE(ssl != NULL);
    /* more than one record and more than one relay buffer each way */
    enum { LEN = 100000 };
    static char out[LEN], in[LEN];
    for (size_t i = 0; i < LEN; i++)
        out[i] = (char)pattern(i);
    size_t sent = 0, got = 0;
    while (sent < LEN) {
        int n = SSL_write(ssl, out + sent, (int)(LEN - sent < 8192 ? LEN - sent : 8192));
        REQUIRE(n > 0);
        sent += (size_t)n;
        while (got < sent) { /* read the echo as we go: the echo server blocks */
            int m = SSL_read(ssl, in + got, (int)(sent - got));
            REQUIRE(m > 0);
            got += (size_t)m;
        }
    }
    CHECK(memcmp(in, out, LEN) == 0);

    sk_conn_info info[8];
    int total = sk_engine_list_connections(E, info, 8);
    CHECK_EQ_I(total, 1);
    if (total == 1) {
        CHECK_EQ_U(info[0].listener_id, UID_L_TLS);
        CHECK_EQ_U(info[0].tls_ordinal, 1);
        CHECK_OP_U(info[0].tls_version, >, 0);
        CHECK_STR_CONTAINS(info[0].tls_protocol, "TLS");
        CHECK(info[0].tls_cipher[0] != 0);
    }
    SSL_shutdown(ssl); /* close_notify: the engine passes the end on */
    CHECK(SSL_read(ssl, in, 1) <= 0);
    SSL_free(ssl);
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 1);
    CHECK_EQ_U(c1.tls_failures - c0.tls_failures, 0);
    CHECK_EQ_U(c1.tls_unexpected_eof - c0.tls_unexpected_eof, 0);
    sk_flow_stats s;
    sk_listener_stats(L_TLS, &s);
    CHECK_EQ_U(s.bytes_in, LEN); /* plaintext bytes, not records */
    CHECK_EQ_U(s.bytes_out, LEN);
    return 0;
}

/* A plain client whose flow the engine carries over TLS to a target (its own
 * TLS listener here): both handshake sides run on the workers. */
static int test_tls_originate(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    int fd = connect_to(sk_listener_port(L_ORIG));
    REQUIRE(fd >= 0);
    CHECK(ping(fd, "over-tls-1") == 0);
    CHECK(ping(fd, "over-tls-2") == 0);
    sk_conn_info info[8];
    int total = sk_engine_list_connections(E, info, 8);
    CHECK_EQ_I(total, 2); /* L_ORIG's flow and L_TLS's */
    for (int i = 0; i < total && i < 8; i++)
        CHECK_EQ_U(info[i].tls_ordinal, 1);
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 2);
    CHECK_EQ_U(c1.tls_failures - c0.tls_failures, 0);
    CHECK_EQ_I(sk_target_is_down(T_TLS), 0);
    sk_flow_stats s;
    sk_target_stats(T_TLS, &s);
    CHECK_EQ_U(s.opened, 1);
    CHECK_EQ_U(s.failed, 0);
    return 0;
}

/* Optional TLS: a plain client is relayed as is, a TLS client is terminated. */
static int test_tls_optional(void)
{
    REQUIRE(settle() == 0);
    int fd = connect_to(sk_listener_port(L_OPT));
    REQUIRE(fd >= 0);
    CHECK(ping(fd, "plain-on-optional") == 0);
    close(fd);
    fd = connect_to(sk_listener_port(L_OPT));
    REQUIRE(fd >= 0);
    SSL *ssl = tls_client(fd);
    CHECK(ssl != NULL);
    if (ssl) {
        CHECK(tls_ping(ssl, "tls-on-optional") == 0);
        SSL_shutdown(ssl);
        SSL_free(ssl);
    }
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    return 0;
}

/* A client that does not speak TLS to a TLS listener is closed and counted;
 * the echo server never sees its bytes. */
static int test_tls_bad_client(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    uint64_t echoed = atomic_load(&ECHO.bytes);
    int fd = connect_to(sk_listener_port(L_TLS));
    REQUIRE(fd >= 0);
    const char req[] = "GET / HTTP/1.0\r\n\r\n";
    CHECK(send_all(fd, req, sizeof req - 1) == 0);
    CHECK(recv_eof(fd));
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.tls_failures - c0.tls_failures, 1);
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 0);
    CHECK_EQ_U(atomic_load(&ECHO.bytes), echoed);
    return 0;
}

/* A new config version is published and the older one retired: open flows
 * on it are closed, new flows use the new one. */
static int test_tls_close_older(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    int fd = connect_to(sk_listener_port(L_ORIG));
    REQUIRE(fd >= 0);
    CHECK(ping(fd, "before-rotation") == 0);
    REQUIRE(publish_config(2) == 0);
    CHECK(ping(fd, "pinned-to-1") == 0); /* publishing alone closes nothing */
    CHECK_EQ_I(sk_tls_close_older(E, tls_slot, 2), 0);
    CHECK(recv_eof(fd));
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters_get(E, &c1);
    /* the originating side for sure; the terminating side too unless it was
     * on another worker that saw the first close's EOF before its message */
    CHECK_OP_U(c1.tls_closed_old - c0.tls_closed_old, >=, 1);
    CHECK_OP_U(c1.tls_closed_old - c0.tls_closed_old, <=, 2);
    fd = connect_to(sk_listener_port(L_ORIG));
    REQUIRE(fd >= 0);
    CHECK(ping(fd, "after-rotation") == 0);
    sk_conn_info info[8];
    int total = sk_engine_list_connections(E, info, 8);
    for (int i = 0; i < total && i < 8; i++)
        CHECK_EQ_U(info[i].tls_ordinal, 2);
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    return 0;
}

int main(void)
{
    fx_engine_start();
    if (fx_setup_relay() == 0 && setup_tls() == 0) {
        RUN(test_tls_terminate);
        RUN(test_tls_originate);
        RUN(test_tls_optional);
        RUN(test_tls_bad_client);
        RUN(test_tls_close_older);
    }
    sk_listener *ls[] = {L_TLS, L_ORIG, L_OPT};
    for (int i = 0; i < 3; i++)
        if (ls[i]) {
            sk_listener_close(ls[i], 0);
            sk_listener_release(ls[i]);
        }
    int rc = fx_finish("test_tls_io");
    sk_target_release(T_TLS);
    SSL_CTX_free(client_ctx);
    unlink(cert_path);
    unlink(key_path);
    rmdir(tmpdir);
    return rc;
}
