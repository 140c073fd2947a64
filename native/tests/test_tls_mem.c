/* test_tls_mem.c -- what an idle TLS server connection keeps.
 *
 * Every OpenSSL allocation goes through counting functions here
 * (CRYPTO_set_mem_functions, before OpenSSL allocates anything), each block
 * tagged with the side that made it: the server connection (an SSL from a
 * config loaded by sk_tls_load, as tls_io.c makes one) or the client. The
 * engine's record layer (tls_rl.c) allocates through OpenSSL's allocator
 * too, so it is counted the same way. After a full handshake and one byte
 * each way:
 *  - kept by OpenSSL (a TLS 1.2 connection, or SKIFF_TLS_DETACH 0): no
 *    record buffer (SSL_MODE_RELEASE_BUFFERS: one alone is 16.5 KiB), only
 *    its session state, some 14 KB;
 *  - detached (TLS 1.3, the SSL freed after the handshake): secrets, keys,
 *    IVs and sequence numbers, a few hundred bytes.
 * Freeing the connection gives every byte back. The figures are printed:
 * docs/benchmarks.md quotes them. */
#include "internal.h"
#include "testlib.h"
#include "tls_fixture.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

enum { SIDE_OTHER, SIDE_SERVER, SIDE_CLIENT, SIDES };

static __thread int side;
static _Atomic long live_bytes[SIDES], live_blocks[SIDES];

/* 16 bytes before each block: its size and its side (keeps alignment) */
typedef struct tag {
    size_t size;
    int side;
    int pad;
} tag;

static void *count_malloc(size_t n, const char *file, int line)
{
    SK_UNUSED(file);
    SK_UNUSED(line);
    tag *t = malloc(sizeof(tag) + n);
    if (!t)
        return NULL;
    t->size = n;
    t->side = side;
    atomic_fetch_add(&live_bytes[side], (long)n);
    atomic_fetch_add(&live_blocks[side], 1);
    return t + 1;
}

static void count_free(void *p, const char *file, int line)
{
    SK_UNUSED(file);
    SK_UNUSED(line);
    if (!p)
        return;
    tag *t = (tag *)p - 1;
    atomic_fetch_sub(&live_bytes[t->side], (long)t->size);
    atomic_fetch_sub(&live_blocks[t->side], 1);
    free(t);
}

static void *count_realloc(void *p, size_t n, const char *file, int line)
{
    if (!p)
        return count_malloc(n, file, line);
    if (n == 0) {
        count_free(p, file, line);
        return NULL;
    }
    tag *t = (tag *)p - 1;
    void *q = count_malloc(n, file, line);
    if (!q)
        return NULL;
    memcpy(q, p, t->size < n ? t->size : n);
    count_free(p, file, line);
    return q;
}

static char tmpdir[64] = "/tmp/skiff-tls-mem-XXXXXX";
static char cert_path[128], key_path[128];

typedef struct pair {
    SSL *s, *c;
    sk_tls_rl *rl; /* detached: the server's record layer, s freed */
    int fd[2];
} pair;

/* One step of ssl's work as side who. */
static int as(int who, SSL *ssl, int (*fn)(SSL *))
{
    side = who;
    int rc = fn(ssl);
    side = SIDE_OTHER;
    return rc;
}

static char byte_in;
static int write_byte(SSL *ssl) { return SSL_write(ssl, "m", 1); }
static int read_byte(SSL *ssl) { return SSL_read(ssl, &byte_in, 1); }

/* The server's side of the byte exchange, detached or not. */
static int server_read(pair *p)
{
    if (!p->rl)
        return as(SIDE_SERVER, p->s, read_byte);
    side = SIDE_SERVER;
    ssize_t n = sk_tls_rl_recv(p->rl, p->fd[0], &byte_in, 1, false);
    side = SIDE_OTHER;
    return (int)n;
}

static int server_write(pair *p)
{
    if (!p->rl)
        return as(SIDE_SERVER, p->s, write_byte);
    side = SIDE_SERVER;
    ssize_t n = sk_tls_rl_send(p->rl, p->fd[0], "m", 1);
    side = SIDE_OTHER;
    return (int)n;
}

/* A server connection from sctx and a client from cctx over a socketpair:
 * full handshake, the server detaches from OpenSSL (or drops what it
 * captured for it, as tls_io.c does when it keeps OpenSSL), then one byte
 * each way (the bench's idle connections). */
static int open_pair(SSL_CTX *sctx, SSL_CTX *cctx, pair *p, bool detach)
{
    p->rl = NULL;
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p->fd) == 0);
    side = SIDE_SERVER;
    p->s = SSL_new(sctx);
    REQUIRE(p->s && SSL_set_fd(p->s, p->fd[0]) == 1);
    SSL_set_accept_state(p->s);
    side = SIDE_CLIENT;
    p->c = SSL_new(cctx);
    REQUIRE(p->c && SSL_set_fd(p->c, p->fd[1]) == 1);
    SSL_set_connect_state(p->c);
    side = SIDE_OTHER;
    bool sd = false, cd = false;
    for (int i = 0; i < 100 && !(sd && cd); i++) {
        cd = cd || as(SIDE_CLIENT, p->c, SSL_do_handshake) == 1;
        sd = sd || as(SIDE_SERVER, p->s, SSL_do_handshake) == 1;
    }
    REQUIRE(sd && cd);
    side = SIDE_SERVER;
    if (detach) {
        p->rl = sk_tls_rl_detach(p->s);
        if (p->rl) {
            SSL_free(p->s);
            p->s = NULL;
        }
    } else {
        sk_tls_rl_forget(p->s);
    }
    side = SIDE_OTHER;
    REQUIRE(!detach || p->rl != NULL);
    REQUIRE(as(SIDE_CLIENT, p->c, write_byte) == 1);
    int got = 0;
    for (int i = 0; i < 10 && got != 1; i++)
        got = server_read(p);
    REQUIRE(got == 1);
    REQUIRE(server_write(p) == 1);
    got = 0;
    for (int i = 0; i < 10 && got != 1; i++)
        got = as(SIDE_CLIENT, p->c, read_byte);
    REQUIRE(got == 1);
    /* a read that finds nothing, as the relay's last read before idling */
    CHECK(server_read(p) <= 0);
    ERR_clear_error();
    return 0;
}

static void close_pair(pair *p)
{
    side = SIDE_SERVER;
    SSL_free(p->s);
    sk_tls_rl_free(p->rl);
    side = SIDE_CLIENT;
    SSL_free(p->c);
    side = SIDE_OTHER;
    close(p->fd[0]);
    close(p->fd[1]);
}

enum { CONNS = 50 };

/* Bytes per idle server connection; -1 on failure. */
static long idle_bytes(SSL_CTX *sctx, SSL_CTX *cctx, bool detach)
{
    static pair pairs[CONNS];
    REQUIRE(open_pair(sctx, cctx, &pairs[0], detach) == 0); /* first-use caches */
    long b0 = atomic_load(&live_bytes[SIDE_SERVER]);
    long k0 = atomic_load(&live_blocks[SIDE_SERVER]);
    for (int i = 1; i < CONNS; i++)
        REQUIRE(open_pair(sctx, cctx, &pairs[i], detach) == 0);
    long per_conn = (atomic_load(&live_bytes[SIDE_SERVER]) - b0) / (CONNS - 1);
    long blocks = (atomic_load(&live_blocks[SIDE_SERVER]) - k0) / (CONNS - 1);
    printf("   idle server TLS connection (%s, %s): %ld bytes of heap in %ld blocks\n",
           SSL_get_version(pairs[1].c), detach ? "detached, own record layer" : "OpenSSL",
           per_conn, blocks);
    for (int i = 0; i < CONNS; i++)
        close_pair(&pairs[i]);
    /* every byte a server connection held comes back with it */
    CHECK_OP_I(atomic_load(&live_bytes[SIDE_SERVER]), <=, b0);
    return per_conn;
}

static int test_idle_server_state(void)
{
    sk_tls_load_result r;
    REQUIRE(fixture_load(cert_path, key_path, cert_path, 0, &r) == 0);
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    REQUIRE(cctx != NULL);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);

    /* kept by OpenSSL: the state of a session, not a 16.5 KiB record
     * buffer on top of it */
    long kept = idle_bytes(r.config->server, cctx, false);
    CHECK_OP_I(kept, >, 0);
    CHECK_OP_I(kept, <, 16384);
    /* detached: the SSL object is gone; what is left is our record layer's
     * state (secrets, keys, IVs, sequence numbers: under 512 bytes) */
    long detached = idle_bytes(r.config->server, cctx, true);
    CHECK_OP_I(detached, >, 0);
    CHECK_OP_I(detached, <, 512);
    CHECK_OP_I(detached * 10, <, kept);
    /* a TLS 1.2 client: the connection cannot detach and keeps OpenSSL */
    SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    pair p12;
    REQUIRE(open_pair(r.config->server, cctx, &p12, false) == 0);
    side = SIDE_SERVER;
    CHECK(sk_tls_rl_detach(p12.s) == NULL);
    side = SIDE_OTHER;
    close_pair(&p12);
    SSL_CTX_free(cctx);
    sk_tls_result_clear(&r);
    return 0;
}

int main(void)
{
    /* before anything makes OpenSSL allocate */
    if (!CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free)) {
        fprintf(stderr, "CRYPTO_set_mem_functions refused: OpenSSL allocated already\n");
        return 1;
    }
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", tmpdir);
    snprintf(key_path, sizeof key_path, "%s/key.pem", tmpdir);
    int rc = 1;
    if (make_material("skiff-mem", cert_path, key_path) == 0) {
        RUN(test_idle_server_state);
        rc = tl_summary("test_tls_mem");
    }
    unlink(cert_path);
    unlink(key_path);
    rmdir(tmpdir);
    return rc;
}
