/* test_tls_store.c -- trust stores from the certificate cache (tls_store.c):
 * a certificate parsed once across loads, only a changed one parsed again,
 * the cache emptied when no store holds its certificates, verification
 * through the index with the same results as an X509_STORE filled by
 * X509_STORE_add_cert (trusted, untrusted, intermediate, duplicate, another
 * string encoding of the issuer name, partial chains, an expired twin), the
 * lookup method's references, malformed blocks named by position and line,
 * a newer write taken over by a running load, and concurrent verification
 * on threads (run under ASan/UBSan and TSan). Certificates are made here. */
#include "internal.h"
#include "testlib.h"
#include "tls_store.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char tmpdir[64] = "/tmp/skiff-tls-store-XXXXXX";
static EVP_PKEY *bulk_key; /* signs the many CAs of a bundle */

/* A certificate named cn (ASN.1 string type name_type) signed by issuer
 * (NULL: self-signed with key), valid from nb to na seconds from now. */
static X509 *make_cert(const char *cn, int name_type, EVP_PKEY *key, X509 *issuer,
                       EVP_PKEY *issuer_key, bool ca, long nb, long na, long serial)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), nb);
    X509_gmtime_adj(X509_getm_notAfter(x), na);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "CN", name_type, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_NAME_free(name);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : X509_get_subject_name(x));
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints,
                                              ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    if (ext) {
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (X509_sign(x, issuer ? issuer_key : key, EVP_sha256()) <= 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static char *pem_of(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    char *out = malloc((size_t)n + 1);
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    BIO_free(b);
    return out;
}

/* The PEM of n distinct self-signed CAs "bulk CA <tag> <i>". */
static char **bulk_cas(const char *tag, int n)
{
    char **v = calloc((size_t)n, sizeof *v);
    for (int i = 0; i < n; i++) {
        char cn[64];
        snprintf(cn, sizeof cn, "bulk CA %s %d", tag, i);
        X509 *x = make_cert(cn, MBSTRING_ASC, bulk_key, NULL, NULL, true, -3600, 86400, i + 1);
        v[i] = pem_of(x);
        X509_free(x);
    }
    return v;
}

static void free_pems(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int write_file(const char *path, const char *const *parts, int n)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    for (int i = 0; i < n; i++)
        fputs(parts[i], f);
    fclose(f);
    return 0;
}

static sk_tls_store_result load(const char *path, sk_tls_newer *newer)
{
    sk_tls_load_params p;
    sk_tls_load_params_init(&p);
    p.ca_file = path;
    p.newer = newer;
    sk_tls_store_result r;
    sk_tls_store_load(&p, &r);
    return r;
}

static uint64_t cached(void)
{
    sk_tls_ca_cache_stats s;
    sk_tls_ca_cache_stats_get(&s);
    return s.entries;
}

/* ------------------------------------------------------------ the cache */

static int test_cache_reuse_and_eviction(void)
{
    enum { N = 40 };
    char path[128];
    snprintf(path, sizeof path, "%s/bulk.pem", tmpdir);
    char **a = bulk_cas("a", N), **b = bulk_cas("b", N);
    REQUIRE(write_file(path, (const char *const *)a, N) == 0);
    CHECK_EQ_U(cached(), 0);

    sk_tls_store_result r1 = load(path, NULL);
    REQUIRE_MSG(r1.status == SK_TLS_OK, "%s", r1.error);
    CHECK_EQ_I(r1.certs, N);
    CHECK_EQ_I(r1.parsed, N); /* cold: every certificate parsed */
    CHECK_EQ_U(cached(), N);
    CHECK_EQ_I(sk_tls_store_index_size(r1.store->x509), N);

    /* the same bytes again while the first store lives: nothing parsed */
    sk_tls_store_result r2 = load(path, NULL);
    REQUIRE_MSG(r2.status == SK_TLS_OK, "%s", r2.error);
    CHECK_EQ_I(r2.parsed, 0);
    CHECK(!strcmp(r2.fingerprint, r1.fingerprint));
    CHECK_EQ_U(cached(), N);

    /* one certificate changed: that one is parsed, the rest come cached */
    char *saved = a[N / 2];
    a[N / 2] = b[0];
    REQUIRE(write_file(path, (const char *const *)a, N) == 0);
    a[N / 2] = saved;
    sk_tls_store_result r3 = load(path, NULL);
    REQUIRE_MSG(r3.status == SK_TLS_OK, "%s", r3.error);
    CHECK_EQ_I(r3.parsed, 1);
    CHECK_EQ_I(r3.certs, N);
    CHECK(strcmp(r3.fingerprint, r1.fingerprint) != 0);
    CHECK_EQ_U(cached(), N + 1);

    /* stores dropped: their certificates leave unless another store holds them */
    sk_tls_store_result_clear(&r1);
    sk_tls_store_result_clear(&r2);
    CHECK_EQ_U(cached(), N); /* r3's */
    sk_tls_store_result_clear(&r3);
    CHECK_EQ_U(cached(), 0);

    /* loads of different bundles, one store alive at a time: the cache holds
     * one bundle's certificates, never the sum */
    for (int round = 0; round < 4; round++) {
        REQUIRE(write_file(path, (const char *const *)(round % 2 ? b : a), N) == 0);
        sk_tls_store_result r = load(path, NULL);
        REQUIRE_MSG(r.status == SK_TLS_OK, "%s", r.error);
        CHECK_EQ_I(r.parsed, N);
        CHECK_EQ_U(cached(), N);
        sk_tls_store_result_clear(&r);
    }
    CHECK_EQ_U(cached(), 0);
    free_pems(a, N);
    free_pems(b, N);
    unlink(path);
    return 0;
}

static int test_duplicates_and_text_between(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/dup.pem", tmpdir);
    char **a = bulk_cas("dup", 2);
    const char *parts[] = {"comment before\n", a[0], "Subject: something\n", a[1], a[0],
                           "-----BEGIN PRIVATE KEY-----\nnot decoded\n-----END PRIVATE KEY-----\n"};
    REQUIRE(write_file(path, parts, 6) == 0);
    sk_tls_store_result r = load(path, NULL);
    REQUIRE_MSG(r.status == SK_TLS_OK, "%s", r.error);
    CHECK_EQ_I(r.certs, 3); /* blocks in the bundle */
    CHECK_EQ_I(sk_tls_store_index_size(r.store->x509), 2); /* distinct */
    CHECK_EQ_U(cached(), 2);
    sk_tls_store_result_clear(&r);
    CHECK_EQ_U(cached(), 0);
    free_pems(a, 2);
    unlink(path);
    return 0;
}

static int expect_error(const char *path, const char *const *parts, int n, const char *want)
{
    REQUIRE(write_file(path, parts, n) == 0);
    sk_tls_store_result r = load(path, NULL);
    CHECK_EQ_I(r.status, SK_TLS_ERROR);
    CHECK(r.store == NULL);
    CHECK_STR_CONTAINS(r.error, path);
    CHECK_STR_CONTAINS(r.error, want);
    sk_tls_store_result_clear(&r);
    CHECK_EQ_U(cached(), 0); /* what the failed load parsed is not kept */
    return 0;
}

static int test_malformed_blocks_named(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/bad.pem", tmpdir);
    char **a = bulk_cas("bad", 2);
    int lines0 = 0;
    for (const char *c = a[0]; *c; c++)
        lines0 += *c == '\n';
    char want[64];
    /* bad base64 in the second certificate, whose BEGIN is line lines0 + 1 */
    snprintf(want, sizeof want, "certificate 2 (line %d): bad base64", lines0 + 1);
    const char *bad64[] = {a[0], "-----BEGIN CERTIFICATE-----\nMII*notbase64\n-----END "
                                 "CERTIFICATE-----\n"};
    expect_error(path, bad64, 2, want);
    /* valid base64 of bytes that are no certificate */
    snprintf(want, sizeof want, "certificate 2 (line %d): not an X.509 certificate",
             lines0 + 1);
    const char *notder[] = {a[0], "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END "
                                  "CERTIFICATE-----\n"};
    expect_error(path, notder, 2, want);
    /* cut off: no END line */
    char *cut = strdup(a[1]);
    *strstr(cut, "-----END") = '\0';
    const char *trunc[] = {a[0], a[1], cut};
    snprintf(want, sizeof want, "certificate 3 (line %d): no END line", 2 * lines0 + 1);
    expect_error(path, trunc, 3, want);
    free(cut);
    const char *none[] = {"no certificate here\n"};
    expect_error(path, none, 1, "no PEM certificate found");
    free_pems(a, 2);
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------ newer writes */

static struct {
    const char *path;
    char **parts;
    int n;
    int at;
    sk_tls_newer *newer;
    int fired;
} hook_state;

static void rewrite_hook(int position)
{
    if (position != hook_state.at || hook_state.fired)
        return; /* once: the new bytes pass position `at` again */
    hook_state.fired = 1;
    write_file(hook_state.path, (const char *const *)hook_state.parts, hook_state.n);
    sk_tls_newer_raise(hook_state.newer);
}

static int test_newer_write_taken_over(void)
{
    enum { N = 30, AT = 10 };
    char path[128];
    snprintf(path, sizeof path, "%s/newer.pem", tmpdir);
    char **a = bulk_cas("old", N), **c = bulk_cas("new", 1);
    REQUIRE(write_file(path, (const char *const *)a, N) == 0);
    /* the newer bundle: the same but for its last certificate */
    char **b = calloc(N, sizeof *b);
    for (int i = 0; i < N; i++)
        b[i] = a[i];
    b[N - 1] = c[0];
    sk_tls_newer *newer = sk_tls_newer_new();
    REQUIRE(newer != NULL);
    hook_state.path = path;
    hook_state.parts = b;
    hook_state.n = N;
    hook_state.at = AT;
    hook_state.newer = newer;
    hook_state.fired = 0;
    sk_tls_store_block_hook = rewrite_hook;
    sk_tls_store_result r = load(path, newer);
    sk_tls_store_block_hook = NULL;
    REQUIRE_MSG(r.status == SK_TLS_OK, "%s", r.error);
    CHECK_EQ_I(hook_state.fired, 1);
    CHECK_EQ_I(r.restarts, 1);
    CHECK_EQ_I(r.certs, N);
    /* AT certificates of the old bytes, then the rest of the new ones: none
     * parsed twice (the first AT were kept for the new bytes) */
    CHECK_EQ_I(r.parsed, N);
    sk_tls_store_result direct = load(path, NULL);
    REQUIRE(direct.status == SK_TLS_OK);
    CHECK(!strcmp(r.fingerprint, direct.fingerprint)); /* the newest bytes */
    CHECK(!strcmp(sk_tls_store_fingerprint(r.store), direct.fingerprint));
    CHECK_EQ_I(direct.parsed, 0);
    CHECK_EQ_U(cached(), N); /* the old last certificate is gone */
    sk_tls_store_result_clear(&direct);

    /* raised, but the bytes are the same: the load goes on */
    sk_tls_newer_raise(newer);
    sk_tls_store_result same = load(path, newer);
    REQUIRE(same.status == SK_TLS_OK);
    CHECK_EQ_I(same.restarts, 0);
    CHECK(!strcmp(same.fingerprint, r.fingerprint));
    sk_tls_store_result_clear(&same);
    sk_tls_store_result_clear(&r);
    CHECK_EQ_U(cached(), 0);
    sk_tls_newer_free(newer);
    free(b);
    free_pems(a, N);
    free_pems(c, 1);
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------ stat */

/* Waits past the racy window of path's timestamps (20 ms, or 2 s on a file
 * system with whole-second times). */
static void settle_timestamps(const char *path)
{
    struct stat st;
    bool coarse = stat(path, &st) == 0 && st.st_mtim.tv_nsec == 0;
    struct timespec ts = {coarse ? 2 : 0, (coarse ? 200 : 120) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A file whose stat is the one the store in force was read with is not
 * read at all; a changed or just-written ("racy") one is. */
static int test_unchanged_by_stat(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/stat.pem", tmpdir);
    char **a = bulk_cas("stat", 3);
    REQUIRE(write_file(path, (const char *const *)a, 2) == 0);
    settle_timestamps(path);
    sk_tls_store_result first = load(path, NULL);
    REQUIRE_MSG(first.status == SK_TLS_OK, "%s", first.error);

    sk_tls_load_params p;
    sk_tls_load_params_init(&p);
    p.ca_file = path;
    p.in_force = first.store;
    p.unchanged_if = first.fingerprint;
    sk_tls_store_result r;
    sk_tls_store_load(&p, &r);
    CHECK_EQ_I(r.status, SK_TLS_UNCHANGED);
    CHECK_EQ_I(r.reads, 0); /* stat said unchanged: not read */
    CHECK(!strcmp(r.fingerprint, first.fingerprint));
    sk_tls_store_result_clear(&r);

    /* a newer-write signal with the bundle unchanged: no re-read either */
    sk_tls_newer *newer = sk_tls_newer_new();
    sk_tls_newer_raise(newer);
    sk_tls_store_result again = load(path, newer);
    REQUIRE(again.status == SK_TLS_OK);
    CHECK_EQ_I(again.reads, 2);
    CHECK_EQ_I(again.restarts, 0);
    sk_tls_store_result_clear(&again);
    sk_tls_newer_free(newer);

    /* rewritten: read, and a new store; its mtime set ahead of the clock,
     * as a write in the very tick of a read would leave it */
    REQUIRE(write_file(path, (const char *const *)a + 1, 2) == 0);
    struct timespec times[2] = {{0, UTIME_OMIT}, {0, 0}};
    clock_gettime(CLOCK_REALTIME, &times[1]);
    times[1].tv_sec += 10;
    REQUIRE(utimensat(AT_FDCWD, path, times, 0) == 0);
    sk_tls_store_load(&p, &r);
    CHECK_EQ_I(r.status, SK_TLS_OK);
    CHECK(r.reads >= 2);
    CHECK(strcmp(r.fingerprint, first.fingerprint) != 0);

    /* that store's stat is racy (not older than its read), so the next
     * check reads the file (and finds the same bytes) */
    p.in_force = r.store;
    p.unchanged_if = r.fingerprint;
    sk_tls_store_result racy;
    sk_tls_store_load(&p, &racy);
    CHECK_EQ_I(racy.status, SK_TLS_UNCHANGED);
    CHECK(racy.reads >= 2);
    sk_tls_store_result_clear(&racy);
    sk_tls_store_result_clear(&r);
    sk_tls_store_result_clear(&first);
    free_pems(a, 3);
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------ priority */

static struct {
    int policy[64];
    int nice[64];
} prio_seen;

static void prio_hook(int position)
{
    if (position < 64) {
        prio_seen.policy[position] = sched_getscheduler(0);
        prio_seen.nice[position] = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
    }
}

static bool idle_at(int position)
{
    return prio_seen.policy[position] == SCHED_IDLE || prio_seen.nice[position] == 19;
}

/* A store load runs at nice 10 while it finds certificates in the cache and
 * drops to SCHED_IDLE once it has parsed SK_TLS_PARSE_AT_NICE of them. */
static int test_priority_drops_when_parsing_much(void)
{
    enum { N = SK_TLS_PARSE_AT_NICE + 8 };
    char path[128];
    snprintf(path, sizeof path, "%s/prio.pem", tmpdir);
    char **a = bulk_cas("prio", N);
    REQUIRE(write_file(path, (const char *const *)a, N) == 0);
    memset(&prio_seen, 0, sizeof prio_seen);
    sk_tls_store_block_hook = prio_hook;
    sk_tls_store_result cold = load(path, NULL);
    REQUIRE_MSG(cold.status == SK_TLS_OK, "%s", cold.error);
    CHECK_EQ_I(prio_seen.policy[1], SCHED_OTHER);
    CHECK(prio_seen.nice[1] >= 10 && prio_seen.nice[1] < 19);
    CHECK(!idle_at(SK_TLS_PARSE_AT_NICE - 1));
    CHECK(idle_at(SK_TLS_PARSE_AT_NICE));
    CHECK(idle_at(N));
    /* the same certificates again: all cached, nice 10 to the end */
    memset(&prio_seen, 0, sizeof prio_seen);
    sk_tls_store_result warm = load(path, NULL);
    sk_tls_store_block_hook = NULL;
    REQUIRE(warm.status == SK_TLS_OK);
    CHECK_EQ_I(warm.parsed, 0);
    CHECK(prio_seen.nice[N] >= 10 && prio_seen.nice[N] < 19);
    CHECK(!idle_at(N));
    /* the caller's own thread is never lowered */
    CHECK_EQ_I(sched_getscheduler(0), SCHED_OTHER);
    sk_tls_store_result_clear(&cold);
    sk_tls_store_result_clear(&warm);
    free_pems(a, N);
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------ verification */

static X509 *root, *inter, *leaf, *other_root, *other_leaf, *utf8_root, *printable_leaf,
    *expired_twin, *valid_twin, *twin_leaf;
static EVP_PKEY *root_key, *inter_key, *leaf_key, *other_key, *twin_key;

static int make_pki(void)
{
    root_key = EVP_EC_gen("P-256");
    inter_key = EVP_EC_gen("P-256");
    leaf_key = EVP_EC_gen("P-256");
    other_key = EVP_EC_gen("P-256");
    twin_key = EVP_EC_gen("P-256");
    REQUIRE(root_key && inter_key && leaf_key && other_key && twin_key);
    root = make_cert("Store Root", MBSTRING_ASC, root_key, NULL, NULL, true, -3600, 86400, 1);
    inter = make_cert("Store Intermediate", MBSTRING_ASC, inter_key, root, root_key, true, -3600,
                      86400, 2);
    leaf = make_cert("store leaf", MBSTRING_ASC, leaf_key, inter, inter_key, false, -3600, 86400,
                     3);
    other_root = make_cert("Other Root", MBSTRING_ASC, other_key, NULL, NULL, true, -3600, 86400,
                           4);
    other_leaf = make_cert("other leaf", MBSTRING_ASC, leaf_key, other_root, other_key, false,
                           -3600, 86400, 5);
    /* the root's name as a UTF8String; the leaf names its issuer with a
     * PrintableString of the same text: canonically equal, not bytewise */
    utf8_root = make_cert("Encoded Root", V_ASN1_UTF8STRING, root_key, NULL, NULL, true, -3600,
                          86400, 6);
    X509 *printable_issuer = make_cert("Encoded Root", V_ASN1_PRINTABLESTRING, root_key, NULL,
                                       NULL, true, -3600, 86400, 7);
    printable_leaf = make_cert("encoded leaf", MBSTRING_ASC, leaf_key, printable_issuer, root_key,
                               false, -3600, 86400, 8);
    X509_free(printable_issuer);
    /* two CAs of one name and key, one expired: the valid one is chosen */
    expired_twin = make_cert("Twin Root", MBSTRING_ASC, twin_key, NULL, NULL, true, -7200, -3600,
                             9);
    valid_twin = make_cert("Twin Root", MBSTRING_ASC, twin_key, NULL, NULL, true, -3600, 86400,
                           10);
    twin_leaf = make_cert("twin leaf", MBSTRING_ASC, leaf_key, valid_twin, twin_key, false, -3600,
                          86400, 11);
    REQUIRE(root && inter && leaf && other_root && other_leaf && utf8_root && printable_leaf &&
            expired_twin && valid_twin && twin_leaf);
    REQUIRE(X509_NAME_cmp(X509_get_subject_name(utf8_root), X509_get_issuer_name(printable_leaf)) ==
            0);
    return 0;
}

static void free_pki(void)
{
    X509 *certs[] = {root,      inter,          leaf,         other_root, other_leaf,
                     utf8_root, printable_leaf, expired_twin, valid_twin, twin_leaf};
    for (size_t i = 0; i < sizeof certs / sizeof certs[0]; i++)
        X509_free(certs[i]);
    EVP_PKEY *keys[] = {root_key, inter_key, leaf_key, other_key, twin_key};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        EVP_PKEY_free(keys[i]);
}

/* The verification error (X509_V_OK when trusted) of x with untrusted chain. */
static int verify(X509_STORE *st, X509 *x, X509 *chain1, unsigned long flags)
{
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (chain1)
        sk_X509_push(chain, chain1);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int err = -1;
    if (ctx && X509_STORE_CTX_init(ctx, st, x, chain) == 1) {
        if (flags)
            X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(ctx), flags);
        X509_verify_cert(ctx);
        err = X509_STORE_CTX_get_error(ctx);
    }
    X509_STORE_CTX_free(ctx);
    sk_X509_free(chain);
    ERR_clear_error();
    return err;
}

/* Our store of the given certificates, from PEM, and the reference store
 * OpenSSL fills itself (X509_STORE_add_cert, as before the index). */
static X509_STORE *ours(X509 *const *v, int n)
{
    char *pem[8];
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        pem[i] = pem_of(v[i]);
        total += strlen(pem[i]);
    }
    char *all = malloc(total + 1);
    all[0] = '\0';
    for (int i = 0; i < n; i++) {
        strcat(all, pem[i]);
        free(pem[i]);
    }
    char err[512] = "";
    int certs = 0;
    X509_STORE *st = sk_tls_store_build((const unsigned char *)all, total, "test", &certs, err,
                                        sizeof err);
    if (!st)
        fprintf(stderr, "store: %s\n", err);
    free(all);
    return st;
}

static X509_STORE *reference(X509 *const *v, int n)
{
    X509_STORE *st = X509_STORE_new();
    for (int i = 0; i < n; i++)
        X509_STORE_add_cert(st, v[i]);
    return st;
}

typedef struct {
    const char *what;
    X509 *bundle[4];
    int n;
    X509 *subject, *chain;
    unsigned long flags;
    int expect; /* X509_V_OK or an error */
} verify_case;

static int test_verification_as_before(void)
{
    REQUIRE(make_pki() == 0);
    const verify_case cases[] = {
        {"root trusted, intermediate sent", {root}, 1, leaf, inter, 0, X509_V_OK},
        {"intermediate in the bundle", {root, inter}, 2, leaf, NULL, 0, X509_V_OK},
        {"intermediate missing", {root}, 1, leaf, NULL, 0,
         X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY},
        {"another CA's leaf", {root, inter}, 2, other_leaf, NULL, 0,
         X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY},
        {"a self-signed CA not in the bundle", {root}, 1, other_root, NULL, 0,
         X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT},
        {"duplicates", {root, inter, root, inter}, 4, leaf, NULL, 0, X509_V_OK},
        {"issuer in another string encoding", {utf8_root}, 1, printable_leaf, NULL, 0,
         X509_V_OK},
        {"expired twin first", {expired_twin, valid_twin}, 2, twin_leaf, NULL, 0, X509_V_OK},
        {"only the expired twin", {expired_twin}, 1, twin_leaf, NULL, 0,
         X509_V_ERR_CERT_HAS_EXPIRED},
        {"intermediate only, no partial chain", {inter}, 1, leaf, NULL, 0,
         X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT},
        {"intermediate only, partial chain", {inter}, 1, leaf, NULL, X509_V_FLAG_PARTIAL_CHAIN,
         X509_V_OK},
        {"the leaf itself, partial chain", {leaf}, 1, leaf, NULL, X509_V_FLAG_PARTIAL_CHAIN,
         X509_V_OK},
        {"expired twin, time checks off", {expired_twin}, 1, twin_leaf, NULL,
         X509_V_FLAG_NO_CHECK_TIME, X509_V_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const verify_case *c = &cases[i];
        X509_STORE *a = ours(c->bundle, c->n), *b = reference(c->bundle, c->n);
        REQUIRE(a && b);
        int got = verify(a, c->subject, c->chain, c->flags);
        int was = verify(b, c->subject, c->chain, c->flags);
        CHECK_MSG(got == was, "%s: index %d (%s), add_cert %d (%s)", c->what, got,
                  X509_verify_cert_error_string(got), was, X509_verify_cert_error_string(was));
        CHECK_MSG(got == c->expect, "%s: %d (%s), expected %d", c->what, got,
                  X509_verify_cert_error_string(got), c->expect);
        X509_STORE_free(a);
        X509_STORE_free(b);
    }
    /* a certificate added to the store the usual way is found too */
    X509 *v[] = {root};
    X509_STORE *st = ours(v, 1);
    REQUIRE(st != NULL);
    CHECK(verify(st, other_leaf, NULL, 0) != X509_V_OK);
    REQUIRE(X509_STORE_add_cert(st, other_root) == 1);
    CHECK_EQ_I(verify(st, other_leaf, NULL, 0), X509_V_OK);
    CHECK_EQ_I(verify(st, leaf, inter, 0), X509_V_OK);
    X509_STORE_free(st);
    CHECK_EQ_U(cached(), 0);
    return 0;
}

/* The lookup method answers X509_STORE_CTX_get_by_subject with a reference
 * of the caller's (ASan's leak check and double-free detection judge). */
static int test_lookup_method(void)
{
    X509 *v[] = {root, inter};
    X509_STORE *st = ours(v, 2);
    REQUIRE(st != NULL);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    REQUIRE(ctx && X509_STORE_CTX_init(ctx, st, leaf, NULL) == 1);
    for (int i = 0; i < 3; i++) {
        X509_OBJECT *o =
            X509_STORE_CTX_get_obj_by_subject(ctx, X509_LU_X509, X509_get_subject_name(inter));
        REQUIRE(o != NULL);
        CHECK(X509_cmp(X509_OBJECT_get0_X509(o), inter) == 0);
        X509_OBJECT_free(o);
    }
    CHECK(X509_STORE_CTX_get_obj_by_subject(ctx, X509_LU_X509,
                                            X509_get_subject_name(other_root)) == NULL);
    STACK_OF(X509) *all = X509_STORE_CTX_get1_certs(ctx, X509_get_subject_name(root));
    /* OpenSSL's own get1_certs only sees the store's object cache (empty);
     * verification uses the store's lookup_certs, tested above */
    sk_X509_pop_free(all, X509_free);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    ERR_clear_error();
    return 0;
}

typedef struct {
    X509_STORE *st;
    int bad;
} verify_job;

static void *verify_main(void *arg)
{
    verify_job *j = arg;
    for (int i = 0; i < 200; i++) {
        if (verify(j->st, leaf, inter, 0) != X509_V_OK)
            j->bad++;
        if (verify(j->st, other_leaf, NULL, 0) == X509_V_OK)
            j->bad++;
    }
    return NULL;
}

/* Handshakes verify on several workers at once against one store. */
static int test_concurrent_verification(void)
{
    X509 *v[] = {root, other_root};
    X509_STORE *st = ours(v, 1);
    REQUIRE(st != NULL);
    enum { T = 4 };
    pthread_t th[T];
    verify_job jobs[T];
    for (int i = 0; i < T; i++) {
        jobs[i] = (verify_job){st, 0};
        REQUIRE(pthread_create(&th[i], NULL, verify_main, &jobs[i]) == 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_I(jobs[i].bad, 0);
    }
    X509_STORE_free(st);
    return 0;
}

int main(void)
{
    REQUIRE(mkdtemp(tmpdir) != NULL);
    bulk_key = EVP_EC_gen("P-256");
    REQUIRE(bulk_key != NULL);
    RUN(test_cache_reuse_and_eviction);
    RUN(test_duplicates_and_text_between);
    RUN(test_malformed_blocks_named);
    RUN(test_newer_write_taken_over);
    RUN(test_unchanged_by_stat);
    RUN(test_priority_drops_when_parsing_much);
    RUN(test_verification_as_before);
    RUN(test_lookup_method);
    RUN(test_concurrent_verification);
    free_pki();
    EVP_PKEY_free(bulk_key);
    rmdir(tmpdir);
    return tl_summary("test_tls_store");
}
