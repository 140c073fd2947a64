/* test_tls_mem.c -- what an idle TLS connection keeps inside OpenSSL.
 *
 * Every OpenSSL allocation goes through counting functions here
 * (CRYPTO_set_mem_functions, before OpenSSL allocates anything), each block
 * tagged with the side that made it: the server connection (an SSL from a
 * config loaded by sk_tls_load, as tls_io.c makes one) or the client. After
 * a full handshake and one byte each way, the server side must hold no
 * record buffer (SSL_MODE_RELEASE_BUFFERS: one alone is 16.5 KiB), only its
 * session state; freeing the connection gives every byte back. The figure
 * is printed: docs/benchmarks.md quotes it. */
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

/* A server connection from sctx and a client from cctx over a socketpair:
 * full handshake, then one byte each way (the bench's idle connections). */
static int open_pair(SSL_CTX *sctx, SSL_CTX *cctx, pair *p)
{
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
    REQUIRE(as(SIDE_CLIENT, p->c, write_byte) == 1);
    int got = 0;
    for (int i = 0; i < 10 && got != 1; i++)
        got = as(SIDE_SERVER, p->s, read_byte);
    REQUIRE(got == 1);
    REQUIRE(as(SIDE_SERVER, p->s, write_byte) == 1);
    got = 0;
    for (int i = 0; i < 10 && got != 1; i++)
        got = as(SIDE_CLIENT, p->c, read_byte);
    REQUIRE(got == 1);
    /* a read that finds nothing, as the relay's last read before idling */
    CHECK(as(SIDE_SERVER, p->s, read_byte) <= 0);
    ERR_clear_error();
    return 0;
}

static void close_pair(pair *p)
{
    side = SIDE_SERVER;
    SSL_free(p->s);
    side = SIDE_CLIENT;
    SSL_free(p->c);
    side = SIDE_OTHER;
    close(p->fd[0]);
    close(p->fd[1]);
}

enum { CONNS = 50 };

static int test_idle_server_state(void)
{
    sk_tls_load_params lp;
    sk_tls_load_params_init(&lp);
    lp.cert_file = cert_path;
    lp.key_file = key_path;
    lp.ca_file = cert_path;
    sk_tls_load_result r;
    memset(&r, 0, sizeof r);
    sk_tls_load(&lp, &r);
    REQUIRE_MSG(r.status == SK_TLS_OK, "sk_tls_load: %s", r.error);
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    REQUIRE(cctx != NULL);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);

    static pair pairs[CONNS];
    REQUIRE(open_pair(r.config->server, cctx, &pairs[0]) == 0); /* first-use caches */
    long b0 = atomic_load(&live_bytes[SIDE_SERVER]);
    long k0 = atomic_load(&live_blocks[SIDE_SERVER]);
    for (int i = 1; i < CONNS; i++)
        REQUIRE(open_pair(r.config->server, cctx, &pairs[i]) == 0);
    long per_conn = (atomic_load(&live_bytes[SIDE_SERVER]) - b0) / (CONNS - 1);
    long blocks = (atomic_load(&live_blocks[SIDE_SERVER]) - k0) / (CONNS - 1);
    printf("   idle server TLS connection (%s): %ld bytes of OpenSSL heap in %ld blocks\n",
           SSL_get_version(pairs[1].s), per_conn, blocks);
    /* the state of a session, not a 16.5 KiB record buffer on top of it */
    CHECK_OP_I(per_conn, >, 0);
    CHECK_OP_I(per_conn, <, 16384);

    for (int i = 0; i < CONNS; i++)
        close_pair(&pairs[i]);
    /* every byte a server connection held comes back with it */
    CHECK_OP_I(atomic_load(&live_bytes[SIDE_SERVER]), <=, b0);
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
