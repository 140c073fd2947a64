/* test_tls_rl.c -- the engine's own TLS 1.3 record layer (tls_rl.c) against
 * real OpenSSL clients.
 *
 * Through the engine (a TLS listener relaying to the echo server): 1 MB of
 * random bytes each way, byte-exact, with records of varied sizes, for each
 * of the three TLS 1.3 suites; a KeyUpdate the client requests in the middle
 * of the transfer (the client must see the server's KeyUpdate, and the data
 * must go on both ways under the new keys); close_notify each way with no
 * unexpected EOF counted; a tampered record closing that connection only;
 * a TLS 1.2 client, which keeps OpenSSL. Without the engine, over a
 * socketpair: the inter-router context (stateful TLS 1.3 tickets) and
 * resumption, whose NewSessionTicket records the write sequence must skip.
 * The key derivation (HKDF-Expand-Label) against RFC 8448's trace and
 * against OpenSSL's own HKDF. */
#include "internal.h"
#include "engine_fixture.h"
#include "tls_fixture.h"

#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>

#define UID_L_TLS 71
#define RL_MAX_CT (16384 + 256) /* RFC 8446's record length limit */

static char tmpdir[64] = "/tmp/skiff-tls-rl-XXXXXX";
static char cert_path[128], key_path[128];
static int tls_slot = -1;
static sk_listener *L_TLS;
static SSL_CTX *client_ctx;
static sk_tls_load_result loaded; /* the same material, for the raw tests */

static int setup_tls(void)
{
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", tmpdir);
    snprintf(key_path, sizeof key_path, "%s/key.pem", tmpdir);
    REQUIRE(make_material("skiff-rl", cert_path, key_path) == 0);
    tls_slot = sk_tls_slot_create(E);
    REQUIRE(tls_slot >= 0);
    sk_tls_load_result r;
    REQUIRE(fixture_load(cert_path, key_path, cert_path, 1, &r) == 0);
    CHECK(sk_tls_publish(E, tls_slot, r.config) != 0);
    r.config = NULL;
    sk_tls_result_clear(&r);
    REQUIRE(fixture_load(cert_path, key_path, cert_path, 1, &loaded) == 0);

    char err[SK_ERRLEN] = "";
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.user_id = UID_L_TLS;
    lo.address_id = 0; /* the echo server */
    lo.tls_slot = tls_slot;
    L_TLS = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_TLS != NULL, "%s", err);
    client_ctx = SSL_CTX_new(TLS_client_method());
    REQUIRE(client_ctx != NULL);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(client_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return 0;
}

/* KeyUpdate messages the client received. */
static _Atomic int key_updates_in;

static void client_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                          SSL *ssl, void *arg)
{
    SK_UNUSED(version);
    SK_UNUSED(ssl);
    SK_UNUSED(arg);
    const uint8_t *b = buf;
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 && b[0] == SSL3_MT_KEY_UPDATE)
        atomic_fetch_add(&key_updates_in, 1);
}

/* A blocking handshake on fd; suites NULL: the defaults. max: 0 or a version. */
static SSL *client_on(int fd, const char *suites, int max)
{
    SSL *ssl = SSL_new(client_ctx);
    if (!ssl)
        return NULL;
    if (suites)
        SSL_set_ciphersuites(ssl, suites);
    if (max)
        SSL_set_max_proto_version(ssl, max);
    SSL_set_msg_callback(ssl, client_msg_cb);
    return fixture_connect(ssl, fd);
}

static sk_engine_counters counters(void)
{
    sk_engine_counters c;
    sk_engine_counters_get(E, &c);
    return c;
}

/* Writes out[LEN] in chunks of random sizes while reading the echo into
 * in[], non-blocking; asks for a KeyUpdate (update_requested) half way when
 * key_update. 0 when every byte came back. */
static int echo_transfer(SSL *ssl, int fd, const uint8_t *out, uint8_t *in, size_t len,
                         bool key_update)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    size_t sent = 0, got = 0, chunk = 0;
    bool updated = false;
    uint64_t deadline = mono_ms() + 30000;
    while (got < len) {
        REQUIRE_MSG(mono_ms() < deadline, "stalled: sent %zu got %zu", sent, got);
        bool progress = false;
        if (sent < len) {
            if (key_update && !updated && sent >= len / 2) {
                REQUIRE(SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
                updated = true;
            }
            if (chunk == 0) {
                uint32_t r;
                RAND_bytes((unsigned char *)&r, sizeof r);
                chunk = 1 + r % 40000; /* 1 byte to two and a half records */
                if (chunk > len - sent)
                    chunk = len - sent;
            }
            int n = SSL_write(ssl, out + sent, (int)chunk);
            if (n > 0) {
                sent += (size_t)n;
                chunk = 0;
                progress = true;
            } else {
                int e = SSL_get_error(ssl, n);
                REQUIRE_MSG(e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ,
                            "SSL_write error %d", e);
            }
        }
        int m = SSL_read(ssl, in + got, (int)(len - got));
        if (m > 0) {
            got += (size_t)m;
            progress = true;
        } else {
            int e = SSL_get_error(ssl, m);
            REQUIRE_MSG(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE,
                        "SSL_read error %d after %zu bytes", e, got);
        }
        if (!progress) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
            poll(&pfd, 1, 50);
        }
    }
    REQUIRE(memcmp(in, out, len) == 0);
    return 0;
}

/* The client's close_notify, then the engine's: a clean end both ways. */
static int close_both(SSL *ssl, int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    set_timeouts(fd, WAIT_MS);
    REQUIRE(SSL_shutdown(ssl) >= 0);
    char b;
    int n = SSL_read(ssl, &b, 1);
    CHECK_EQ_I(n, 0);
    CHECK_EQ_I(SSL_get_error(ssl, n), SSL_ERROR_ZERO_RETURN); /* close_notify read */
    SSL_free(ssl);
    close(fd);
    return 0;
}

enum { MB = 1 << 20 };
static uint8_t big_out[MB], big_in[MB];

static int one_suite(const char *suite, bool key_update)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0 = counters();
    int ku0 = atomic_load(&key_updates_in);
    RAND_bytes(big_out, sizeof big_out);
    memset(big_in, 0, sizeof big_in);
    int fd = connect_to(sk_listener_port(L_TLS));
    REQUIRE(fd >= 0);
    SSL *ssl = client_on(fd, suite, 0);
    REQUIRE(ssl != NULL);
    CHECK_STR_CONTAINS(SSL_get_cipher_name(ssl), suite);
    CHECK_EQ_I(SSL_version(ssl), TLS1_3_VERSION);
    REQUIRE(echo_transfer(ssl, fd, big_out, big_in, sizeof big_out, key_update) == 0);
    /* the server answered the request with its own KeyUpdate (RFC 8446
     * §4.6.3), and the client read the rest under the server's new key */
    CHECK_EQ_I(atomic_load(&key_updates_in) - ku0, (key_update ? 1 : 0));
    sk_conn_info info[4];
    int total = sk_engine_list_connections(E, info, 4);
    CHECK_EQ_I(total, 1);
    if (total == 1)
        CHECK_STR_CONTAINS(info[0].tls_cipher, suite);
    REQUIRE(close_both(ssl, fd) == 0);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters c1 = counters();
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 1);
    CHECK_EQ_U(c1.tls_detached - c0.tls_detached, 1);
    CHECK_EQ_U(c1.tls_unexpected_eof - c0.tls_unexpected_eof, 0);
    sk_flow_stats s;
    sk_listener_stats(L_TLS, &s);
    return 0;
}

static int test_aes128(void) { return one_suite("TLS_AES_128_GCM_SHA256", false); }
static int test_aes256(void) { return one_suite("TLS_AES_256_GCM_SHA384", false); }
static int test_chacha(void) { return one_suite("TLS_CHACHA20_POLY1305_SHA256", false); }
static int test_key_update_aes128(void) { return one_suite("TLS_AES_128_GCM_SHA256", true); }
static int test_key_update_aes256(void) { return one_suite("TLS_AES_256_GCM_SHA384", true); }
static int test_key_update_chacha(void) { return one_suite("TLS_CHACHA20_POLY1305_SHA256", true); }

/* ------------------------------------------------------------ keys */

static void from_hex(const char *hex, uint8_t *out)
{
    for (size_t i = 0; hex[2 * i]; i++) {
        unsigned v = 0;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

/* RFC 8448 §3 (Simple 1-RTT Handshake): the application traffic secrets
 * and the write keys and IVs derived from them (TLS_AES_128_GCM_SHA256). */
static int test_expand_label_rfc8448(void)
{
    static const struct {
        const char *secret, *key, *iv;
    } v[2] = {
        {"a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
         "9f02283b6c9c07efc26bb9f2ac92e356", "cf782b88dd83549aadf1e984"}, /* server */
        {"9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5",
         "17422dda596ed5d9acd890e3c63f5051", "5b78923dee08579033e523d9"}, /* client */
    };
    for (int i = 0; i < 2; i++) {
        uint8_t secret[32], key[16], iv[12], got[16];
        from_hex(v[i].secret, secret);
        from_hex(v[i].key, key);
        from_hex(v[i].iv, iv);
        REQUIRE(sk_tls_rl_expand_label(32, secret, "key", got, 16));
        CHECK(memcmp(got, key, 16) == 0);
        REQUIRE(sk_tls_rl_expand_label(32, secret, "iv", got, 12));
        CHECK(memcmp(got, iv, 12) == 0);
    }
    uint8_t secret[48] = {0}, out[16];
    CHECK(!sk_tls_rl_expand_label(40, secret, "key", out, sizeof out)); /* no such hash */
    return 0;
}

/* HKDF-Expand (mode EXPAND_ONLY) of OpenSSL's EVP_KDF with info built here:
 * what the record layer derived before, the reference. */
static int openssl_expand_label(const char *md, size_t hlen, const uint8_t *secret,
                                const char *label, uint8_t *out, size_t out_len)
{
    uint8_t info[2 + 1 + 255 + 1];
    size_t ll = strlen(label);
    info[0] = (uint8_t)(out_len >> 8);
    info[1] = (uint8_t)out_len;
    info[2] = (uint8_t)(6 + ll);
    memcpy(info + 3, "tls13 ", 6);
    memcpy(info + 9, label, ll);
    info[9 + ll] = 0;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *k = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    REQUIRE(k != NULL);
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, hlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, 10 + ll),
        OSSL_PARAM_construct_end(),
    };
    REQUIRE(EVP_KDF_derive(k, out, out_len, params) == 1);
    EVP_KDF_CTX_free(k);
    EVP_KDF_free(kdf);
    return 0;
}

/* Both hashes, the labels the record layer uses and others, every length
 * it derives and longer ones (several HMAC blocks), random secrets; and
 * from several threads at once (each has its own digest contexts). */
static int expand_label_cross_check(void)
{
    static const char *const labels[] = {"key", "iv", "traffic upd",
                                         "a longer label for two blocks"};
    static const size_t lens[] = {1, 12, 16, 32, 33, 48, 49, 100, 255};
    for (int round = 0; round < 20; round++) {
        for (int h = 0; h < 2; h++) {
            size_t hlen = h ? 48 : 32;
            uint8_t secret[48];
            RAND_bytes(secret, sizeof secret);
            for (size_t l = 0; l < sizeof labels / sizeof *labels; l++) {
                for (size_t n = 0; n < sizeof lens / sizeof *lens; n++) {
                    uint8_t want[255], got[255];
                    REQUIRE(openssl_expand_label(h ? "SHA2-384" : "SHA2-256", hlen, secret,
                                                 labels[l], want, lens[n]) == 0);
                    memset(got, 0, sizeof got);
                    REQUIRE(sk_tls_rl_expand_label(hlen, secret, labels[l], got, lens[n]));
                    CHECK_MSG(memcmp(got, want, lens[n]) == 0, "hash %zu label '%s' length %zu",
                              hlen, labels[l], lens[n]);
                }
            }
        }
    }
    return 0;
}

static void *cross_check_thread(void *arg)
{
    *(int *)arg = expand_label_cross_check();
    return NULL;
}

static int test_expand_label_matches_openssl(void)
{
    pthread_t th[3];
    int rc[3] = {-1, -1, -1};
    for (int i = 0; i < 3; i++)
        REQUIRE(pthread_create(&th[i], NULL, cross_check_thread, &rc[i]) == 0);
    int mine = expand_label_cross_check();
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_I(rc[i], 0);
    }
    CHECK_EQ_I(mine, 0);
    return 0;
}

/* A TLS 1.2 client: the connection keeps OpenSSL and works as before. */
static int test_tls12_not_detached(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0 = counters();
    int fd = connect_to(sk_listener_port(L_TLS));
    REQUIRE(fd >= 0);
    SSL *ssl = client_on(fd, NULL, TLS1_2_VERSION);
    REQUIRE(ssl != NULL);
    CHECK_EQ_I(SSL_version(ssl), TLS1_2_VERSION);
    enum { LEN = 200000 };
    static uint8_t out[LEN], in[LEN];
    RAND_bytes(out, sizeof out);
    REQUIRE(echo_transfer(ssl, fd, out, in, LEN, false) == 0);
    REQUIRE(close_both(ssl, fd) == 0);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters c1 = counters();
    CHECK_EQ_U(c1.tls_handshakes - c0.tls_handshakes, 1);
    CHECK_EQ_U(c1.tls_detached - c0.tls_detached, 0);
    CHECK_EQ_U(c1.tls_unexpected_eof - c0.tls_unexpected_eof, 0);
    return 0;
}

/* One record written by ssl (through a memory BIO), as bytes. */
static size_t record_of(SSL *ssl, const char *msg, uint8_t *rec, size_t cap)
{
    BIO *sock = SSL_get_wbio(ssl);
    BIO_up_ref(sock);
    BIO *mem = BIO_new(BIO_s_mem());
    SSL_set0_wbio(ssl, mem);
    int n = SSL_write(ssl, msg, (int)strlen(msg));
    size_t len = n > 0 ? (size_t)BIO_read(mem, rec, (int)cap) : 0;
    SSL_set0_wbio(ssl, sock); /* frees mem */
    return len;
}

/* A record changed in transit: that connection fails (the tampered bytes
 * never reach the target), another one goes on. */
static int test_tampered_record(void)
{
    REQUIRE(settle() == 0);
    sk_engine_counters c0 = counters();
    int fd = connect_to(sk_listener_port(L_TLS)), fd2 = connect_to(sk_listener_port(L_TLS));
    REQUIRE(fd >= 0 && fd2 >= 0);
    SSL *ssl = client_on(fd, NULL, 0), *ssl2 = client_on(fd2, NULL, 0);
    REQUIRE(ssl && ssl2);
    set_timeouts(fd, WAIT_MS);
    /* a record sent by hand arrives intact */
    uint8_t rec[256];
    size_t len = record_of(ssl, "by-hand", rec, sizeof rec);
    REQUIRE(len == 5 + 7 + 1 + 16);
    REQUIRE(send_all(fd, rec, len) == 0);
    char back[16];
    CHECK_EQ_I(SSL_read(ssl, back, sizeof back), 7);
    CHECK(memcmp(back, "by-hand", 7) == 0);
    /* the next one with one bit of its ciphertext flipped */
    len = record_of(ssl, "tampered", rec, sizeof rec);
    REQUIRE(len == 5 + 8 + 1 + 16);
    rec[7] ^= 0x10;
    uint64_t echoed = atomic_load(&ECHO.bytes);
    REQUIRE(send_all(fd, rec, len) == 0);
    CHECK(recv_eof(fd) == 1); /* the engine closed it */
    SSL_free(ssl);
    close(fd);
    /* the other connection is untouched */
    static uint8_t out[50000], in[50000];
    RAND_bytes(out, sizeof out);
    CHECK(echo_transfer(ssl2, fd2, out, in, sizeof out, false) == 0);
    CHECK_EQ_U(atomic_load(&ECHO.bytes) - echoed, sizeof out); /* "tampered" never arrived */
    REQUIRE(close_both(ssl2, fd2) == 0);
    CHECK(wait_until(no_conns_live, NULL));
    sk_engine_counters c1 = counters();
    CHECK_EQ_U(c1.tls_detached - c0.tls_detached, 2);
    return 0;
}

/* ------------------------------------------------------------ raw pairs */

/* Server ssl of sctx and a client over a socketpair; the handshake, then
 * the server detaches; a few messages each way through the record layer
 * (the client reads the NewSessionTicket records first: the write sequence
 * must have counted them), then close_notify. *sess: the client's session
 * to resume (in), the new one (out). */
static int raw_round(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION **sess, bool *reused)
{
    int fd[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fd) == 0);
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    REQUIRE(s && c);
    SSL_set_fd(s, fd[0]);
    SSL_set_fd(c, fd[1]);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (*sess)
        SSL_set_session(c, *sess);
    bool sd = false, cd = false;
    for (int i = 0; i < 100 && !(sd && cd); i++) {
        cd = cd || SSL_do_handshake(c) == 1;
        sd = sd || SSL_do_handshake(s) == 1;
    }
    REQUIRE(sd && cd);
    *reused = SSL_session_reused(c);
    sk_tls_rl *rl = sk_tls_rl_detach(s);
    REQUIRE(rl != NULL);
    SSL_free(s);
    for (int round = 0; round < 3; round++) {
        char msg[32], back[32];
        int len = snprintf(msg, sizeof msg, "ping-%d", round);
        REQUIRE(SSL_write(c, msg, len) == len);
        ssize_t n = -1;
        for (int i = 0; i < 100 && n == -1; i++)
            n = sk_tls_rl_recv(rl, fd[0], back, sizeof back, false);
        REQUIRE_MSG(n == len, "recv gave %zd", n);
        CHECK(memcmp(back, msg, (size_t)len) == 0);
        msg[1] = 'o';
        REQUIRE(sk_tls_rl_send(rl, fd[0], msg, (size_t)len) == len);
        int m = -1;
        for (int i = 0; i < 100 && m <= 0; i++)
            m = SSL_read(c, back, sizeof back);
        REQUIRE_MSG(m == len, "client read %d (error %d)", m, SSL_get_error(c, m));
        CHECK(memcmp(back, msg, (size_t)len) == 0);
    }
    CHECK(!sk_tls_rl_pending(rl));
    sk_tls_rl_shutdown(rl, fd[0]);
    char b;
    int m = SSL_read(c, &b, 1);
    CHECK_EQ_I(SSL_get_error(c, m), SSL_ERROR_ZERO_RETURN);
    CHECK_EQ_I(sk_tls_rl_send(rl, fd[0], "x", 1), -2); /* nothing after close_notify */
    SSL_shutdown(c);
    CHECK_EQ_I(sk_tls_rl_recv(rl, fd[0], &b, 1, false), 0);
    CHECK(sk_tls_rl_close_notify(rl));
    sk_tls_rl_free(rl);
    SSL_SESSION_free(*sess);
    *sess = SSL_get1_session(c);
    SSL_free(c);
    close(fd[0]);
    close(fd[1]);
    ERR_clear_error();
    return 0;
}

static int resume_on(SSL_CTX *sctx)
{
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    REQUIRE(cctx != NULL);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    SSL_SESSION *sess = NULL;
    bool reused = true;
    REQUIRE(raw_round(sctx, cctx, &sess, &reused) == 0);
    CHECK(!reused);
    REQUIRE(sess != NULL);
    CHECK(SSL_SESSION_is_resumable(sess));
    REQUIRE(raw_round(sctx, cctx, &sess, &reused) == 0);
    CHECK(reused);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    return 0;
}

/* Client listeners' context: one stateless ticket. */
static int test_raw_server_resume(void) { return resume_on(loaded.config->server); }
/* The inter-router context: server session cache, stateful tickets. */
static int test_raw_links_resume(void) { return resume_on(loaded.config->server_links); }

/* A detached server and an OpenSSL client over a socketpair, after the
 * handshake; NULL rl on failure. */
static int raw_open(SSL_CTX *sctx, SSL_CTX *cctx, int fd[2], SSL **c, sk_tls_rl **rl)
{
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fd) == 0);
    SSL *s = SSL_new(sctx);
    *c = SSL_new(cctx);
    REQUIRE(s && *c);
    SSL_set_fd(s, fd[0]);
    SSL_set_fd(*c, fd[1]);
    SSL_set_accept_state(s);
    SSL_set_connect_state(*c);
    bool sd = false, cd = false;
    for (int i = 0; i < 100 && !(sd && cd); i++) {
        cd = cd || SSL_do_handshake(*c) == 1;
        sd = sd || SSL_do_handshake(s) == 1;
    }
    REQUIRE(sd && cd);
    *rl = sk_tls_rl_detach(s);
    SSL_free(s);
    REQUIRE(*rl != NULL);
    return 0;
}

/* raw_open on the client listeners' context with a client that verifies
 * nothing, and what it made, freed together by raw_conn_close. */
typedef struct raw_conn {
    SSL_CTX *cctx;
    int fd[2];
    SSL *c;
    sk_tls_rl *rl;
} raw_conn;

static int raw_conn_open(raw_conn *r)
{
    r->cctx = SSL_CTX_new(TLS_client_method());
    REQUIRE(r->cctx != NULL);
    SSL_CTX_set_verify(r->cctx, SSL_VERIFY_NONE, NULL);
    return raw_open(loaded.config->server, r->cctx, r->fd, &r->c, &r->rl);
}

static void raw_conn_close(raw_conn *r)
{
    sk_tls_rl_free(r->rl);
    SSL_free(r->c);
    close(r->fd[0]);
    close(r->fd[1]);
    SSL_CTX_free(r->cctx);
    ERR_clear_error();
}

/* Small socket buffers: the record layer's sends stop part-way through
 * records. The caller's rule (OpenSSL's): after -1 or a short count, call
 * again with the bytes not yet accepted; every byte arrives once, in order.
 * The other way, reads into small buffers leave plaintext in the record
 * layer (pending, returned by the next reads), and a peek does not consume. */
static int test_raw_partial_io(void)
{
    raw_conn r;
    REQUIRE(raw_conn_open(&r) == 0);
    int *fd = r.fd;
    SSL *c = r.c;
    sk_tls_rl *rl = r.rl;
    enum { LEN = 300000 };
    static uint8_t out[LEN], in[LEN];
    RAND_bytes(out, sizeof out);
    /* socket buffers of part of a record and sends of about one record (a
     * record that does not fit is the last one written, in part), then
     * buffers of a record or two and sends of several batches (some
     * records written in whole, the rest later) */
    static const int bufs[2] = {4096, 40000};
    int blocked[2] = {0, 0}, shorts[2] = {0, 0};
    for (int phase = 0; phase < 2; phase++) {
        setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &bufs[phase], sizeof bufs[phase]);
        setsockopt(fd[1], SOL_SOCKET, SO_RCVBUF, &bufs[phase], sizeof bufs[phase]);
        size_t sent = 0, got = 0, want = 0;
        uint64_t deadline = mono_ms() + 20000;
        while (got < LEN) {
            REQUIRE_MSG(mono_ms() < deadline, "stalled: sent %zu got %zu", sent, got);
            if (sent < LEN) {
                /* from part of a record to several batches; after -1 or a
                 * short count, the bytes not yet accepted again */
                if (want == 0) {
                    want = 1 + (sent * 7919u + got) % (phase == 0 ? 20000u : 200000u);
                    if (want > LEN - sent)
                        want = LEN - sent;
                }
                ssize_t n = sk_tls_rl_send(rl, fd[0], out + sent, want);
                REQUIRE_MSG(n == -1 || n > 0, "send gave %zd", n);
                if (n == -1)
                    blocked[phase]++;
                else if ((size_t)n < want)
                    shorts[phase]++;
                else /* all accepted: nothing of it may wait unwritten */
                    CHECK_EQ_I(sk_tls_rl_send(rl, fd[0], NULL, 0), 0);
                if (n > 0) {
                    sent += (size_t)n;
                    want -= (size_t)n;
                }
            }
            int m = SSL_read(c, in + got, 777); /* small reads: the socket fills */
            if (m > 0)
                got += (size_t)m;
            else
                REQUIRE(SSL_get_error(c, m) == SSL_ERROR_WANT_READ);
        }
        CHECK(memcmp(in, out, LEN) == 0);
        memset(in, 0, sizeof in);
    }
    CHECK_OP_I(blocked[0], >, 0);
    CHECK_OP_I(shorts[1], >, 0);

    /* client to server, read 100 bytes at a time */
    enum { BACK = 50000 };
    REQUIRE(SSL_write(c, out, BACK) == BACK);
    uint8_t p2[2];
    ssize_t pk = -1;
    for (int i = 0; i < 100 && pk == -1; i++)
        pk = sk_tls_rl_recv(rl, fd[0], p2, sizeof p2, true);
    REQUIRE(pk == 2);
    CHECK(p2[0] == out[0] && p2[1] == out[1]);
    size_t got = 0;
    int pend = 0;
    uint64_t deadline = mono_ms() + 20000;
    while (got < BACK) {
        REQUIRE(mono_ms() < deadline);
        ssize_t n = sk_tls_rl_recv(rl, fd[0], in + got, BACK - got < 100 ? BACK - got : 100, false);
        REQUIRE_MSG(n == -1 || n > 0, "recv gave %zd", n);
        if (n > 0)
            got += (size_t)n;
        if (sk_tls_rl_pending(rl))
            pend++;
    }
    CHECK(memcmp(in, out, BACK) == 0); /* the peeked bytes were not consumed */
    CHECK_OP_I(pend, >, 0);
    CHECK(!sk_tls_rl_pending(rl));
    raw_conn_close(&r);
    return 0;
}

/* Records the server must refuse after the handshake, each on a fresh
 * connection: change_cipher_spec, a plaintext alert, a wrong version, an
 * oversized length; and a truncated record at EOF is an end of stream
 * without close_notify. */
static int refused(const uint8_t *rec, size_t len)
{
    raw_conn r;
    REQUIRE(raw_conn_open(&r) == 0);
    REQUIRE(send_all(r.fd[1], rec, len) == 0);
    uint8_t b[64];
    ssize_t n = sk_tls_rl_recv(r.rl, r.fd[0], b, sizeof b, false);
    raw_conn_close(&r);
    return (int)n;
}

static int test_raw_bad_records(void)
{
    static const uint8_t ccs[] = {20, 3, 3, 0, 1, 1};
    static const uint8_t alert[] = {21, 3, 3, 0, 2, 2, 40};
    uint8_t badver[5 + 20] = {23, 3, 1, 0, 20};
    uint8_t huge[5] = {23, 3, 3, (RL_MAX_CT + 1) >> 8, (RL_MAX_CT + 1) & 0xff};
    uint8_t tiny[5 + 16] = {23, 3, 3, 0, 16};
    CHECK_EQ_I(refused(ccs, sizeof ccs), -2);
    CHECK_EQ_I(refused(alert, sizeof alert), -2);
    CHECK_EQ_I(refused(badver, sizeof badver), -2);
    CHECK_EQ_I(refused(huge, sizeof huge), -2);
    CHECK_EQ_I(refused(tiny, sizeof tiny), -2); /* no room for a content type */
    return 0;
}

/* Our own KeyUpdate once a write key sealed its share of records (lowered
 * to 5 here from 2^24): the client reads every byte across the updates. */
static int test_raw_rekey_after_records(void)
{
    raw_conn r;
    REQUIRE(raw_conn_open(&r) == 0);
    int *fd = r.fd;
    SSL *c = r.c;
    sk_tls_rl *rl = r.rl;
    SSL_set_msg_callback(c, client_msg_cb);
    int ku0 = atomic_load(&key_updates_in);
    sk_tls_rl_set_rekey_records(5);
    enum { LEN = 64 * 16384 };
    static uint8_t out[LEN], in[LEN];
    RAND_bytes(out, sizeof out);
    size_t sent = 0, got = 0;
    uint64_t deadline = mono_ms() + 20000;
    while (got < LEN) {
        REQUIRE_MSG(mono_ms() < deadline, "stalled: sent %zu got %zu", sent, got);
        if (sent < LEN) {
            ssize_t n = sk_tls_rl_send(rl, fd[0], out + sent, LEN - sent);
            REQUIRE(n == -1 || n > 0);
            if (n > 0)
                sent += (size_t)n;
        }
        int m = SSL_read(c, in + got, (int)(LEN - got));
        if (m > 0)
            got += (size_t)m;
        else
            REQUIRE(SSL_get_error(c, m) == SSL_ERROR_WANT_READ);
    }
    sk_tls_rl_set_rekey_records(0);
    CHECK(memcmp(in, out, LEN) == 0);
    /* a ticket and 4 records under the first key, then 12 keys of 5
     * records: 12 updates, none early, none late */
    CHECK_EQ_I(atomic_load(&key_updates_in) - ku0, 12);
    /* the other direction is untouched */
    REQUIRE(SSL_write(c, "after", 5) == 5);
    char b[8];
    ssize_t n = -1;
    for (int i = 0; i < 100 && n == -1; i++)
        n = sk_tls_rl_recv(rl, fd[0], b, sizeof b, false);
    CHECK(n == 5 && memcmp(b, "after", 5) == 0);
    raw_conn_close(&r);
    return 0;
}

int main(void)
{
    fx_engine_start();
    RUN(test_expand_label_rfc8448);
    RUN(test_expand_label_matches_openssl);
    if (fx_setup_relay() == 0 && setup_tls() == 0) {
        RUN(test_aes128);
        RUN(test_aes256);
        RUN(test_chacha);
        RUN(test_key_update_aes128);
        RUN(test_key_update_aes256);
        RUN(test_key_update_chacha);
        RUN(test_tls12_not_detached);
        RUN(test_tampered_record);
        RUN(test_raw_server_resume);
        RUN(test_raw_links_resume);
        RUN(test_raw_partial_io);
        RUN(test_raw_bad_records);
        RUN(test_raw_rekey_after_records);
    }
    if (L_TLS) {
        sk_listener_close(L_TLS, 0);
        sk_listener_release(L_TLS);
    }
    int rc = fx_finish("test_tls_rl");
    SSL_CTX_free(client_ctx);
    sk_tls_result_clear(&loaded);
    unlink(cert_path);
    unlink(key_path);
    rmdir(tmpdir);
    return rc;
}
