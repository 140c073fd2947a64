/* test_tls_load.c -- loading TLS material (tls.c) without an engine: the
 * trust store as an object of its own (sk_tls_store_load), a config built
 * with a given store without reading the CA file, fingerprints that agree
 * between the two paths, and a certificate load that completes while a CA
 * bundle load is blocked on a FIFO on another thread (run under ASan/UBSan
 * and TSan: the store is shared by configs built on different threads).
 *
 * The material is made here (two self-signed certificates), no files. */
#include "internal.h"
#include "testlib.h"
#include "tls_fixture.h"
#include "tls_store.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[64] = "/tmp/skiff-tls-load-XXXXXX";
static char cert_a[128], key_a[128], cert_b[128], key_b[128], bundle[128], fifo[128],
    garbage[128];

static int slurp(const char *path, char *buf, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    *len = fread(buf, 1, cap, f);
    fclose(f);
    return 0;
}

static int setup(void)
{
    REQUIRE(mkdtemp(tmpdir) != NULL);
    snprintf(cert_a, sizeof cert_a, "%s/a.pem", tmpdir);
    snprintf(key_a, sizeof key_a, "%s/a.key", tmpdir);
    snprintf(cert_b, sizeof cert_b, "%s/b.pem", tmpdir);
    snprintf(key_b, sizeof key_b, "%s/b.key", tmpdir);
    snprintf(bundle, sizeof bundle, "%s/bundle.pem", tmpdir);
    snprintf(fifo, sizeof fifo, "%s/fifo.pem", tmpdir);
    snprintf(garbage, sizeof garbage, "%s/garbage.pem", tmpdir);
    REQUIRE(make_material("a", cert_a, key_a) == 0);
    REQUIRE(make_material("b", cert_b, key_b) == 0);
    /* the bundle: both certificates (each is its own CA) */
    char buf[8192];
    size_t n1 = 0, n2 = 0;
    REQUIRE(slurp(cert_a, buf, sizeof buf / 2, &n1) == 0);
    REQUIRE(slurp(cert_b, buf + n1, sizeof buf / 2, &n2) == 0);
    FILE *f = fopen(bundle, "w");
    REQUIRE(f != NULL);
    fwrite(buf, 1, n1 + n2, f);
    fclose(f);
    f = fopen(garbage, "w");
    REQUIRE(f != NULL);
    fputs("not a certificate\n", f);
    fclose(f);
    return 0;
}

static sk_tls_load_params params(const char *cert, const char *key, const char *ca)
{
    sk_tls_load_params p;
    sk_tls_load_params_init(&p);
    p.cert_file = cert;
    p.key_file = key;
    p.ca_file = ca;
    return p;
}

/* Distinct CAs in the config's trust store (an index: tls_store.c). */
static int store_count(const sk_tls_config *c)
{
    X509_STORE *s = SSL_CTX_get_cert_store(c->client);
    return s ? sk_tls_store_index_size(s) : -1;
}

/* A store loaded on its own; a config with it has the fingerprint of a full
 * load of the same bytes, and the store outlives the caller's reference. */
static int test_store_and_given_store(void)
{
    sk_tls_load_params p = params(cert_a, key_a, bundle);
    sk_tls_load_result full;
    sk_tls_load(&p, &full);
    REQUIRE_MSG(full.status == SK_TLS_OK, "%s", full.error);
    CHECK(full.ca_fingerprint[0] != '\0' && strlen(full.ca_fingerprint) == 64);

    sk_tls_store_result sr;
    sk_tls_store_load(&p, &sr);
    REQUIRE_MSG(sr.status == SK_TLS_OK, "%s", sr.error);
    CHECK_EQ_I(sr.certs, 2);
    CHECK_EQ_I(sk_tls_store_certs(sr.store), 2);
    CHECK(!strcmp(sr.fingerprint, full.ca_fingerprint));
    CHECK(!strcmp(sk_tls_store_fingerprint(sr.store), sr.fingerprint));

    /* unchanged bundle: no parse, no store */
    p.unchanged_if = sr.fingerprint;
    sk_tls_store_result same;
    sk_tls_store_load(&p, &same);
    CHECK_EQ_I(same.status, SK_TLS_UNCHANGED);
    CHECK(same.store == NULL);
    sk_tls_store_result_clear(&same);
    p.unchanged_if = NULL;

    /* with the store given, the CA file is not read: a missing path is fine */
    sk_tls_load_params q = params(cert_a, key_a, "/nonexistent/ca.pem");
    q.ca_store = sr.store;
    sk_tls_load_result with;
    sk_tls_load(&q, &with);
    REQUIRE_MSG(with.status == SK_TLS_OK, "%s", with.error);
    CHECK(with.ca_reused);
    CHECK(!strcmp(with.fingerprint, full.fingerprint));
    CHECK(!strcmp(with.ca_fingerprint, sr.fingerprint));
    CHECK(!strcmp(sk_tls_config_fingerprint(with.config), full.fingerprint));
    q.unchanged_if = full.fingerprint;
    sk_tls_load_result unchanged;
    sk_tls_load(&q, &unchanged);
    CHECK_EQ_I(unchanged.status, SK_TLS_UNCHANGED);
    sk_tls_result_clear(&unchanged);

    /* the config keeps the store alive after the caller's reference goes */
    sk_tls_store_result_clear(&sr);
    CHECK_EQ_I(store_count(with.config), 2);
    CHECK(with.config->has_ca);

    /* the key must still match the certificate */
    sk_tls_store_load(&p, &sr);
    REQUIRE(sr.status == SK_TLS_OK);
    sk_tls_load_params bad = params(cert_a, key_b, NULL);
    bad.ca_store = sr.store;
    sk_tls_load_result mismatch;
    sk_tls_load(&bad, &mismatch);
    CHECK_EQ_I(mismatch.status, SK_TLS_ERROR);
    CHECK_STR_CONTAINS(mismatch.error, "does not match certFile");
    sk_tls_result_clear(&mismatch);
    /* a store adds its reference per config and drops it with the config */
    sk_tls_store *extra = sk_tls_store_ref(sr.store);
    sk_tls_store_result_clear(&sr);
    sk_tls_store_free(extra);

    sk_tls_result_clear(&with);
    sk_tls_result_clear(&full);
    return 0;
}

static int test_store_errors(void)
{
    sk_tls_load_params p = params(NULL, NULL, garbage);
    sk_tls_store_result r;
    sk_tls_store_load(&p, &r);
    CHECK_EQ_I(r.status, SK_TLS_ERROR);
    CHECK_STR_CONTAINS(r.error, "no PEM certificate found");
    CHECK(r.store == NULL);
    p.ca_file = "/nonexistent/ca.pem";
    sk_tls_store_load(&p, &r);
    CHECK_EQ_I(r.status, SK_TLS_ERROR);
    CHECK_STR_CONTAINS(r.error, "caCertFile /nonexistent/ca.pem");
    p.ca_file = NULL;
    sk_tls_store_load(&p, &r);
    CHECK_EQ_I(r.status, SK_TLS_ERROR);
    return 0;
}

typedef struct {
    sk_tls_load_params p;
    sk_tls_store_result r;
    _Atomic int done;
} bg_store;

static void *bg_store_main(void *arg)
{
    bg_store *b = arg;
    sk_tls_store_load(&b->p, &b->r);
    atomic_store(&b->done, 1);
    return NULL;
}

/* A CA bundle load blocked on a FIFO does not hold up a certificate load
 * with the last good store on another thread; the new store then builds a
 * config with the current certificate. */
static int test_cert_load_while_bundle_blocked(void)
{
    REQUIRE(mkfifo(fifo, 0600) == 0);
    sk_tls_load_params p = params(NULL, NULL, bundle);
    sk_tls_store_result good;
    sk_tls_store_load(&p, &good);
    REQUIRE(good.status == SK_TLS_OK);

    bg_store bg;
    memset(&bg, 0, sizeof bg);
    bg.p = params(NULL, NULL, fifo);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, bg_store_main, &bg) == 0);
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
    CHECK(!atomic_load(&bg.done)); /* sits in open()/read() of the FIFO */

    /* rotation: certificate b, with the last good store, CA path = the FIFO */
    sk_tls_load_params q = params(cert_b, key_b, fifo);
    q.ca_store = good.store;
    sk_tls_load_result rot;
    sk_tls_load(&q, &rot);
    CHECK_EQ_I(rot.status, SK_TLS_OK);
    CHECK(!atomic_load(&bg.done));

    /* the bundle arrives: only certificate a's now */
    char buf[4096];
    size_t n = 0;
    REQUIRE(slurp(cert_a, buf, sizeof buf, &n) == 0);
    int fd = open(fifo, O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK(write(fd, buf, n) == (ssize_t)n);
    close(fd);
    pthread_join(th, NULL);
    REQUIRE_MSG(bg.r.status == SK_TLS_OK, "%s", bg.r.error);
    CHECK_EQ_I(bg.r.certs, 1);
    CHECK(strcmp(bg.r.fingerprint, good.fingerprint) != 0);

    q.ca_store = bg.r.store;
    q.unchanged_if = rot.fingerprint;
    sk_tls_load_result next;
    sk_tls_load(&q, &next);
    CHECK_EQ_I(next.status, SK_TLS_OK); /* new store: a new fingerprint */
    CHECK(!strcmp(next.ca_fingerprint, bg.r.fingerprint));
    if (next.config)
        CHECK_EQ_I(store_count(next.config), 1);
    if (rot.config)
        CHECK_EQ_I(store_count(rot.config), 2);

    sk_tls_result_clear(&next);
    sk_tls_result_clear(&rot);
    sk_tls_store_result_clear(&bg.r);
    sk_tls_store_result_clear(&good);
    unlink(fifo);
    return 0;
}

int main(void)
{
    if (setup() == 0) {
        RUN(test_store_and_given_store);
        RUN(test_store_errors);
        RUN(test_cert_load_while_bundle_blocked);
    }
    const char *files[] = {cert_a, key_a, cert_b, key_b, bundle, fifo, garbage};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(files[i]);
    rmdir(tmpdir);
    return tl_summary("test_tls_load");
}
