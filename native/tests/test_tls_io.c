/* test_tls_io.c -- TLS on connections (tls_io.c) end to end, so the handshake
 * and record paths also run under the sanitizers: terminating TLS from an
 * OpenSSL client, originating it to a target with IP verification (the
 * engine's own TLS listener), optional TLS on a plain client, a client that
 * does not speak TLS, and closing the flows of a retired config version.
 *
 * The certificate is made here (self-signed, SAN IP:127.0.0.1), so the test
 * needs no files and no openssl command. */
#include "internal.h" /* a config's SSL_CTX, the heap trim counter */
#include "engine_fixture.h"
#include "tls_fixture.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/socket.h>

#define UID_L_TLS 61
#define UID_L_ORIG 62
#define UID_L_OPT 63
#define UID_L_BURST 64
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
    sk_tls_load_result r;
    REQUIRE(fixture_load(cert_path, key_path, cert_path, ordinal, &r) == 0);
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
    return ssl ? fixture_connect(ssl, fd) : NULL;
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

/* Whether the trim counter moved past *(uint64_t *)arg. */
static int trimmed_since(void *arg)
{
    return sk_tls_io_heap_trims() > *(uint64_t *)arg;
}

/* After a burst of handshakes the heap's free pages go back to the system
 * once handshakes stop (tls_io.c), on a thread of its own: a connection
 * open across the trim keeps working. The burst goes to a listener whose
 * address has no route (each flow closes after its handshake), so it takes
 * none of the echo server's connections. */
static int test_tls_heap_trim(void)
{
    REQUIRE(settle() == 0);
    sk_listener *burst = open_listener(UID_L_BURST, 77, tls_slot, 0);
    REQUIRE(burst != NULL);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    int fd = connect_to(sk_listener_port(L_TLS));
    REQUIRE(fd >= 0);
    SSL *ssl = tls_client(fd);
    REQUIRE(ssl != NULL);
    CHECK(tls_ping(ssl, "before-burst") == 0);
    uint64_t t0 = sk_tls_io_heap_trims();
    for (int i = 0; i < 64; i++) { /* spread over the workers, >= 16 each */
        int bfd = connect_to(sk_listener_port(burst));
        REQUIRE(bfd >= 0);
        SSL *b = tls_client(bfd);
        CHECK(b != NULL);
        SSL_free(b);
        close(bfd);
    }
    CHECK(wait_until(trimmed_since, &t0));
    CHECK(tls_ping(ssl, "after-trim") == 0);
    sk_engine_counters_get(E, &c1);
    CHECK_OP_U(c1.tls_handshakes - c0.tls_handshakes, >=, 65);
    SSL_free(ssl);
    close(fd);
    CHECK(wait_until(no_conns_live, NULL));
    sk_listener_close(burst, 0);
    sk_listener_release(burst);
    return 0;
}

/* Heartbeats due during handshakes: with a high timer every 100 us on each
 * worker, a server flight (hundreds of microseconds, more under the
 * sanitizers) comes due mid-handshake, which pauses inside OpenSSL
 * (tls_io.c, SKIFF_TLS_YIELD), runs the timer and resumes. Terminated and
 * originated handshakes (both sides on the workers) all end, the bytes are
 * right, and the timers kept firing. Built without it (TSan), none pause. */
static int test_tls_yield_to_timers(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0, c1;
    sk_engine_counters_get(E, &c0);
    uint64_t ids[2];
    for (int w = 0; w < 2; w++) {
        ids[w] = sk_timer_start(E, w, SK_PRIO_HIGH, 100000, 100000);
        REQUIRE(ids[w] != 0);
    }
    size_t from = evlog_n;
    enum { ROUNDS = 12 };
    for (int i = 0; i < ROUNDS; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "yield-%d", i);
        int fd = connect_to(sk_listener_port(L_TLS)); /* terminated */
        REQUIRE(fd >= 0);
        SSL *ssl = tls_client(fd);
        CHECK(ssl != NULL);
        if (ssl) {
            CHECK(tls_ping(ssl, msg) == 0);
            SSL_free(ssl);
        }
        close(fd);
        fd = connect_to(sk_listener_port(L_ORIG)); /* originated, and terminated again */
        REQUIRE(fd >= 0);
        CHECK(ping(fd, msg) == 0);
        close(fd);
        pump(0); /* keep the rings from filling with timer events */
    }
    for (int w = 0; w < 2; w++)
        CHECK_EQ_I(sk_timer_cancel(E, ids[w]), 0);
    for (int w = 0; w < 2; w++)
        CHECK(wait_event(SK_EV_TIMER_CANCELLED, ids[w], 5000, NULL) >= 0);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters_get(E, &c1);
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 3 * ROUNDS);
    CHECK_EQ_U(c1.tls_failures - c0.tls_failures, 0);
    for (int w = 0; w < 2; w++)
        CHECK_OP_U(count_events(SK_EV_TIMER, ids[w], from), >, 0);
#if SKIFF_TLS_YIELD
    CHECK_OP_U(c1.tls_yields - c0.tls_yields, >, 0);
#else
    CHECK_EQ_U(c1.tls_yields - c0.tls_yields, 0);
#endif
    return 0;
}

/* ---------------------------------------------------- certificate chain */

/* A leaf for cn signed by the CA in ca_cert/ca_key, written as PEM. */
static int issue_leaf(const char *cn, const char *ca_cert, const char *ca_key,
                      const char *cert_out, const char *key_out)
{
    FILE *f = fopen(ca_cert, "r");
    REQUIRE(f != NULL);
    X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    f = fopen(ca_key, "r");
    REQUIRE(f != NULL);
    EVP_PKEY *cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    REQUIRE(ca && cakey && pkey && x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pkey);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    REQUIRE(X509_sign(x, cakey, EVP_sha256()) > 0);
    f = fopen(cert_out, "w");
    REQUIRE(f != NULL);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_out, "w");
    REQUIRE(f != NULL);
    PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(pkey);
    EVP_PKEY_free(cakey);
    return 0;
}

/* The subjects' common names of the chain a client received, "leaf<CA". */
static int chain_seen(SSL_CTX *server, char *out, size_t len)
{
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    SSL *s = SSL_new(server), *c = SSL_new(client_ctx);
    REQUIRE(s && c);
    SSL_set_fd(s, sv[0]);
    SSL_set_accept_state(s);
    SSL_set_fd(c, sv[1]);
    SSL_set_connect_state(c);
    bool sd = false, cd = false;
    for (int i = 0; i < 100 && !(sd && cd); i++) {
        cd = cd || SSL_do_handshake(c) == 1;
        sd = sd || SSL_do_handshake(s) == 1;
    }
    CHECK(sd && cd);
    out[0] = '\0';
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(c);
    for (int i = 0; chain && i < sk_X509_num(chain); i++) {
        char cn[64] = "";
        X509_NAME_get_text_by_NID(X509_get_subject_name(sk_X509_value(chain, i)),
                                  NID_commonName, cn, sizeof cn);
        size_t used = strlen(out);
        snprintf(out + used, len - used, "%s%s", i ? "<" : "", cn);
    }
    SSL_free(s);
    SSL_free(c);
    close(sv[0]);
    close(sv[1]);
    ERR_clear_error();
    return 0;
}

/* Loads cert/key with ca as the trust store and reports the chain sent. */
static int chain_with(const char *cert, const char *key, const char *ca, char *out, size_t len,
                      int *prebuilt)
{
    sk_tls_load_result r;
    REQUIRE(fixture_load(cert, key, ca, 0, &r) == 0);
    STACK_OF(X509) *built = NULL;
    SSL_CTX_get0_chain_certs(r.config->server, &built);
    *prebuilt = built ? sk_X509_num(built) : -1;
    int rc = chain_seen(r.config->server, out, len);
    sk_tls_result_clear(&r);
    return rc;
}

/* Concatenates the files a and b into out. */
static int cat2(const char *a, const char *b, const char *out_path)
{
    FILE *out = fopen(out_path, "w"), *in;
    REQUIRE(out != NULL);
    const char *parts[] = {a, b};
    for (int i = 0; i < 2; i++) {
        in = fopen(parts[i], "r");
        REQUIRE(in != NULL);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0)
            fwrite(buf, 1, n, out);
        fclose(in);
    }
    fclose(out);
    return 0;
}

/* A certFile with the leaf only: the chain sent is completed from the trust
 * store, built once when the config is loaded rather than on every
 * handshake, and without the self-signed root (a peer trusts a root from
 * its own store or not at all): the leaf alone under a root CA, the leaf
 * and its intermediate under an intermediate CA. A store without the
 * issuer sends the leaf alone; an explicit chain in certFile is sent as it
 * is, root included. */
static int test_tls_chain_built_once(void)
{
    char ca2_cert[160], ca2_key[160], leaf_cert[160], leaf_key[160], both[160];
    char mid_cert[160], mid_key[160], leaf3_cert[160], leaf3_key[160], roots[160];
    snprintf(ca2_cert, sizeof ca2_cert, "%s/ca2.pem", tmpdir);
    snprintf(ca2_key, sizeof ca2_key, "%s/ca2.key", tmpdir);
    snprintf(leaf_cert, sizeof leaf_cert, "%s/leaf.pem", tmpdir);
    snprintf(leaf_key, sizeof leaf_key, "%s/leaf.key", tmpdir);
    snprintf(both, sizeof both, "%s/both.pem", tmpdir);
    snprintf(mid_cert, sizeof mid_cert, "%s/mid.pem", tmpdir);
    snprintf(mid_key, sizeof mid_key, "%s/mid.key", tmpdir);
    snprintf(leaf3_cert, sizeof leaf3_cert, "%s/leaf3.pem", tmpdir);
    snprintf(leaf3_key, sizeof leaf3_key, "%s/leaf3.key", tmpdir);
    snprintf(roots, sizeof roots, "%s/roots.pem", tmpdir);
    REQUIRE(make_material("chain-ca", ca2_cert, ca2_key) == 0);
    REQUIRE(issue_leaf("chain-leaf", ca2_cert, ca2_key, leaf_cert, leaf_key) == 0);
    char seen[256];
    int prebuilt = -2;

    REQUIRE(chain_with(leaf_cert, leaf_key, ca2_cert, seen, sizeof seen, &prebuilt) == 0);
    CHECK_MSG(strcmp(seen, "chain-leaf") == 0, "chain sent: %s", seen);
    /* built, empty: in the context already (NULL would mean a build per handshake) */
    CHECK_EQ_I(prebuilt, 0);

    /* root > intermediate > leaf, both CAs in the store: the intermediate
     * goes with the leaf, the root does not */
    REQUIRE(issue_leaf("chain-mid", ca2_cert, ca2_key, mid_cert, mid_key) == 0);
    REQUIRE(issue_leaf("chain-leaf3", mid_cert, mid_key, leaf3_cert, leaf3_key) == 0);
    REQUIRE(cat2(ca2_cert, mid_cert, roots) == 0);
    REQUIRE(chain_with(leaf3_cert, leaf3_key, roots, seen, sizeof seen, &prebuilt) == 0);
    CHECK_MSG(strcmp(seen, "chain-leaf3<chain-mid") == 0, "chain sent: %s", seen);
    CHECK_EQ_I(prebuilt, 1);

    /* the issuer not in the store: the leaf alone, as the handshake-time
     * build sent it */
    REQUIRE(chain_with(leaf_cert, leaf_key, cert_path, seen, sizeof seen, &prebuilt) == 0);
    CHECK_MSG(strcmp(seen, "chain-leaf") == 0, "chain sent: %s", seen);

    /* certFile = leaf + CA: that chain, from the file */
    REQUIRE(cat2(leaf_cert, ca2_cert, both) == 0);
    REQUIRE(chain_with(both, leaf_key, cert_path, seen, sizeof seen, &prebuilt) == 0);
    CHECK_MSG(strcmp(seen, "chain-leaf<chain-ca") == 0, "chain sent: %s", seen);
    CHECK_EQ_I(prebuilt, 1);

    const char *files[] = {ca2_cert, ca2_key,   leaf_cert,  leaf_key,  both,
                           mid_cert, mid_key,   leaf3_cert, leaf3_key, roots};
    for (int i = 0; i < 10; i++)
        unlink(files[i]);
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
        RUN(test_tls_heap_trim);
        RUN(test_tls_yield_to_timers);
        RUN(test_tls_chain_built_once);
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
