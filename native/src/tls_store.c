/* tls_store.c -- trust stores built from a certificate cache and an index.
 *
 * A CA bundle of thousands of certificates used to cost seconds per load:
 * PEM and DER parsing of every certificate, then X509_STORE_add_cert of each
 * (OpenSSL 3 keeps the store's object stack sorted and searches it on every
 * add). Both are gone from a rewrite:
 *
 * - The bundle is split into its PEM blocks here (a line scan and a base64
 *   decode), and each block's DER is hashed (SHA-256). A process-wide cache
 *   maps that hash to the parsed X509: a block seen by an earlier load is not
 *   parsed again. Entries are counted by the stores (and running loads) that
 *   hold them and dropped with the last one, so the cache holds what live
 *   stores use and nothing more. A rewrite that changes one certificate of
 *   4,000 parses one.
 *
 * - A store is an immutable index of its certificates sorted by subject
 *   name in X509_NAME_cmp's order (OpenSSL's comparison of the canonical
 *   encodings, the one its own store sorts by: a name in another string
 *   type compares equal), attached to an otherwise empty X509_STORE.
 *   Verification finds issuers through the store's get_issuer and
 *   lookup_certs callbacks, which binary-search the certificates of that
 *   name and pick among them exactly as X509_STORE_CTX_get1_issuer
 *   and X509_STORE_CTX_get1_certs pick among a store's objects: the first
 *   one check_issued accepts that is valid at the verification time, else
 *   the accepted one that expires last (what the index lacks is looked for
 *   the default way, so a certificate added to the store by other means
 *   would still be found). An X509_LOOKUP_METHOD
 *   (get_by_subject) over the same index serves any other caller of
 *   X509_STORE_CTX_get_by_subject. Building a store is a sort: milliseconds.
 *   Handshakes on several workers read the index with no lock (it never
 *   changes after it is built, and publication orders the build before any
 *   use); the certificates are shared read-only, their extensions cached at
 *   parse time on the loader.
 *
 * Every load runs on a loader thread (tls.c's run_low), at nice 10 until it
 * has parsed SK_TLS_PARSE_AT_NICE certificates, then at SCHED_IDLE; a worker only reads
 * indexes and, when it drops the last reference to a config, releases its
 * store's hold on the cache (a short lock per certificate batch). */
#include "tls_store.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void (*sk_tls_store_block_hook)(int position);

static void hex32(const unsigned char *h, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[64] = '\0';
}

/* ------------------------------------------------------------ the cache */

typedef struct ca_cert {
    unsigned char digest[32]; /* SHA-256 of the DER */
    X509 *x509;               /* parsed once; read-only from then on */
    size_t users;             /* holds by stores and running loads (cache_lock) */
    struct ca_cert *next;     /* bucket chain */
} ca_cert;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static ca_cert **cache_tab; /* cache_cap buckets, a power of two */
static size_t cache_cap, cache_count;
static _Atomic uint64_t cache_parsed, cache_reused;

void sk_tls_ca_cache_stats_get(sk_tls_ca_cache_stats *out)
{
    pthread_mutex_lock(&cache_lock);
    out->entries = cache_count;
    pthread_mutex_unlock(&cache_lock);
    out->parsed = atomic_load(&cache_parsed);
    out->reused = atomic_load(&cache_reused);
}

static size_t bucket(const unsigned char d[32], size_t cap)
{
    uint64_t h;
    memcpy(&h, d, sizeof h); /* a SHA-256: any 8 bytes are uniform */
    return (size_t)h & (cap - 1);
}

static ca_cert *cache_find(const unsigned char d[32])
{
    if (!cache_cap)
        return NULL;
    for (ca_cert *c = cache_tab[bucket(d, cache_cap)]; c; c = c->next)
        if (!memcmp(c->digest, d, 32))
            return c;
    return NULL;
}

/* Under cache_lock. Keeps the old table when memory is short (longer chains). */
static void cache_grow(void)
{
    size_t cap = cache_cap ? cache_cap * 2 : 1024;
    ca_cert **tab = calloc(cap, sizeof *tab);
    if (!tab)
        return;
    for (size_t i = 0; i < cache_cap; i++) {
        for (ca_cert *c = cache_tab[i], *next; c; c = next) {
            next = c->next;
            size_t b = bucket(c->digest, cap);
            c->next = tab[b];
            tab[b] = c;
        }
    }
    free(cache_tab);
    cache_tab = tab;
    cache_cap = cap;
}

/* The cached certificate of digest d with one more hold, or NULL. */
static ca_cert *cache_hold(const unsigned char d[32])
{
    pthread_mutex_lock(&cache_lock);
    ca_cert *c = cache_find(d);
    if (c)
        c->users++;
    pthread_mutex_unlock(&cache_lock);
    return c;
}

static void ca_cert_free(ca_cert *c)
{
    X509_free(c->x509);
    free(c);
}

/* Inserts fresh (users 1) or, when another load cached the same DER
 * meanwhile, holds that one and frees fresh. Returns the cached entry, or
 * NULL (fresh freed) when there is no memory for a table. */
static ca_cert *cache_add(ca_cert *fresh)
{
    pthread_mutex_lock(&cache_lock);
    ca_cert *c = cache_find(fresh->digest);
    if (c) {
        c->users++;
        pthread_mutex_unlock(&cache_lock);
        ca_cert_free(fresh);
        return c;
    }
    if (cache_count >= cache_cap)
        cache_grow();
    if (!cache_cap) {
        pthread_mutex_unlock(&cache_lock);
        ca_cert_free(fresh);
        return NULL;
    }
    size_t b = bucket(fresh->digest, cache_cap);
    fresh->users = 1;
    fresh->next = cache_tab[b];
    cache_tab[b] = fresh;
    cache_count++;
    pthread_mutex_unlock(&cache_lock);
    return fresh;
}

/* Drops one hold of each of v[0..n); certificates no one holds any more
 * leave the cache and are freed (outside the lock). */
static void cache_drop(ca_cert *const *v, size_t n)
{
    ca_cert *dead = NULL;
    pthread_mutex_lock(&cache_lock);
    for (size_t i = 0; i < n; i++) {
        ca_cert *c = v[i];
        if (--c->users)
            continue;
        ca_cert **pp = &cache_tab[bucket(c->digest, cache_cap)];
        while (*pp != c)
            pp = &(*pp)->next;
        *pp = c->next;
        cache_count--;
        c->next = dead;
        dead = c;
    }
    if (!cache_count) { /* nothing cached: no table either */
        free(cache_tab);
        cache_tab = NULL;
        cache_cap = 0;
    }
    pthread_mutex_unlock(&cache_lock);
    while (dead) {
        ca_cert *next = dead->next;
        ca_cert_free(dead);
        dead = next;
    }
}

/* Certificates held by a load, in bundle order (duplicates included). */
typedef struct {
    ca_cert **v;
    size_t n, cap;
} cert_list;

static int list_push(cert_list *l, ca_cert *c)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        ca_cert **v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = c;
    return 0;
}

static void list_drop(cert_list *l)
{
    if (l->n)
        cache_drop(l->v, l->n);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------ PEM blocks */

/* Base64 digit values; B64_SPACE for whitespace, B64_PAD for '=', B64_BAD
 * for anything else (a table: the bundle's megabytes go through here). */
enum { B64_BAD = -1, B64_SPACE = -2, B64_PAD = -3 };
static signed char b64_table[256];
static pthread_once_t b64_once = PTHREAD_ONCE_INIT;

static void b64_init(void)
{
    memset(b64_table, B64_BAD, sizeof b64_table);
    const char *digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; i++)
        b64_table[(unsigned char)digits[i]] = (signed char)i;
    b64_table[' '] = b64_table['\t'] = b64_table['\r'] = b64_table['\n'] = B64_SPACE;
    b64_table['='] = B64_PAD;
}

/* Decodes base64 text (whitespace ignored, '=' padding only at the end)
 * into out (room for n * 3 / 4 + 3 bytes). -1 on anything else. */
static long b64_decode(const unsigned char *s, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_table[s[i]];
        if (v >= 0 && !pad) {
            acc = (acc << 6) | (uint32_t)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                out[o++] = (unsigned char)(acc >> bits);
                acc &= (1u << bits) - 1;
            }
        } else if (v == B64_SPACE) {
            continue;
        } else if (v != B64_PAD || ++pad > 2) {
            return -1; /* not base64, a digit after padding, or 3 '=' */
        }
    }
    if (o == 0 || bits >= 6)
        return -1;
    return (long)o;
}

/* A bundle being parsed; it resumes where it stopped (a newer write). */
typedef struct {
    const unsigned char *data;
    size_t len, pos;
    int line;    /* lines consumed */
    int count;   /* certificate blocks handled */
    int parsed;  /* of those, parsed here (not found in the cache) */
    EVP_MD *sha256;
    EVP_MD_CTX *md;
    unsigned char *der;
    size_t der_cap;
} bundle_parser;

static void parser_reset(bundle_parser *bp, const unsigned char *data, size_t len)
{
    bp->data = data;
    bp->len = len;
    bp->pos = 0;
    bp->line = 0;
    bp->count = 0;
}

/* The next line: start and length without trailing whitespace. */
static bool next_line(bundle_parser *bp, const unsigned char **start, size_t *len)
{
    if (bp->pos >= bp->len)
        return false;
    const unsigned char *s = bp->data + bp->pos;
    const unsigned char *nl = memchr(s, '\n', bp->len - bp->pos);
    size_t n = nl ? (size_t)(nl - s) : bp->len - bp->pos;
    bp->pos += n + (nl ? 1 : 0);
    bp->line++;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        n--;
    *start = s;
    *len = n;
    return true;
}

/* What PEM_read_bio_X509 reads: "CERTIFICATE" and the old "X509
 * CERTIFICATE"; other blocks (keys, TRUSTED CERTIFICATE, ...) are skipped. */
static bool cert_label(const unsigned char *name, size_t n)
{
    return (n == 11 && !memcmp(name, "CERTIFICATE", 11)) ||
           (n == 16 && !memcmp(name, "X509 CERTIFICATE", 16));
}

/* The next certificate block: body and the line of its BEGIN. 1 found, 0 no
 * more, -1 malformed (why says how). */
static int next_block(bundle_parser *bp, const unsigned char **body, size_t *body_len,
                      int *begin_line, char *why, size_t whylen)
{
    const unsigned char *s;
    size_t n;
    while (next_line(bp, &s, &n)) {
        if (n < 16 || memcmp(s, "-----BEGIN ", 11) || memcmp(s + n - 5, "-----", 5))
            continue;
        const unsigned char *name = s + 11;
        size_t name_len = n - 16;
        bool cert = cert_label(name, name_len);
        *begin_line = bp->line;
        size_t body_start = bp->pos, body_end = bp->pos;
        bool ended = false;
        while (next_line(bp, &s, &n)) {
            if (n >= 9 && !memcmp(s, "-----END ", 9)) {
                if (cert && (n != name_len + 14 || memcmp(s + 9, name, name_len) ||
                             memcmp(s + n - 5, "-----", 5))) {
                    snprintf(why, whylen, "END line %d does not match its BEGIN", bp->line);
                    return -1;
                }
                ended = true;
                break;
            }
            body_end = bp->pos;
        }
        if (!cert)
            continue;
        if (!ended) {
            snprintf(why, whylen, "no END line");
            return -1;
        }
        *body = bp->data + body_start;
        *body_len = body_end - body_start;
        return 1;
    }
    return 0;
}

/* One certificate block: held from the cache or parsed into it. */
static ca_cert *block_cert(bundle_parser *bp, const unsigned char *body, size_t body_len,
                           char *why, size_t whylen)
{
    size_t need = body_len / 4 * 3 + 3;
    if (need > bp->der_cap) {
        unsigned char *der = realloc(bp->der, need);
        if (!der) {
            snprintf(why, whylen, "out of memory");
            return NULL;
        }
        bp->der = der;
        bp->der_cap = need;
    }
    long der_len = b64_decode(body, body_len, bp->der);
    if (der_len < 0) {
        snprintf(why, whylen, "bad base64");
        return NULL;
    }
    unsigned char digest[32];
    unsigned int dlen = 0;
    if (!EVP_DigestInit_ex(bp->md, bp->sha256, NULL) ||
        !EVP_DigestUpdate(bp->md, bp->der, (size_t)der_len) ||
        !EVP_DigestFinal_ex(bp->md, digest, &dlen)) {
        snprintf(why, whylen, "SHA-256 failed");
        return NULL;
    }
    ca_cert *c = cache_hold(digest);
    if (c) {
        atomic_fetch_add(&cache_reused, 1);
        return c;
    }
    const unsigned char *p = bp->der;
    X509 *x = d2i_X509(NULL, &p, der_len);
    if (!x) {
        unsigned long e = ERR_peek_last_error();
        const char *r = e ? ERR_reason_error_string(e) : NULL;
        snprintf(why, whylen, "not an X.509 certificate (%s)", r ? r : "DER");
        ERR_clear_error();
        return NULL;
    }
    /* extensions decoded and cached here, on the loader: verification on
     * the workers then only reads them */
    (void)X509_check_purpose(x, -1, 0);
    ERR_clear_error();
    c = calloc(1, sizeof *c);
    if (!c) {
        X509_free(x);
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    memcpy(c->digest, digest, 32);
    c->x509 = x;
    atomic_fetch_add(&cache_parsed, 1);
    if (++bp->parsed == SK_TLS_PARSE_AT_NICE)
        sk_tls_load_thread_idle(); /* a bundle of new CAs: idle CPU only from here */
    c = cache_add(c);
    if (!c)
        snprintf(why, whylen, "out of memory");
    return c;
}

static int parser_init(bundle_parser *bp, const unsigned char *data, size_t len)
{
    pthread_once(&b64_once, b64_init);
    memset(bp, 0, sizeof *bp);
    parser_reset(bp, data, len);
    bp->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    bp->md = EVP_MD_CTX_new();
    return bp->sha256 && bp->md ? 0 : -1;
}

static void parser_done(bundle_parser *bp)
{
    EVP_MD_free(bp->sha256);
    EVP_MD_CTX_free(bp->md);
    free(bp->der);
}

static bool newer_take(sk_tls_newer *n);

/* Handles blocks from where bp stopped, holding each in held. 0: the end
 * (no certificate at all is an error), 1: newer was raised (bp stops before
 * the next block), -1: error (err names the file, the certificate's position
 * and its line). */
static int parser_run(bundle_parser *bp, const char *path, cert_list *held, sk_tls_newer *newer,
                      char *err, size_t errlen)
{
    char why[160];
    for (;;) {
        if (newer_take(newer))
            return 1;
        const unsigned char *body;
        size_t body_len;
        int line = 0;
        int rc = next_block(bp, &body, &body_len, &line, why, sizeof why);
        if (rc == 0)
            break;
        int position = bp->count + 1;
        ca_cert *c = rc < 0 ? NULL : block_cert(bp, body, body_len, why, sizeof why);
        if (c && list_push(held, c) != 0) {
            cache_drop(&c, 1);
            c = NULL;
            snprintf(why, sizeof why, "out of memory");
        }
        if (!c) {
            sk_set_err(err, errlen, "caCertFile %s: certificate %d (line %d): %s", path, position,
                       line, why);
            return -1;
        }
        bp->count = position;
        if (sk_tls_store_block_hook)
            sk_tls_store_block_hook(position);
    }
    if (!bp->count) {
        sk_set_err(err, errlen, "caCertFile %s: no PEM certificate found", path);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ the index */

typedef struct {
    const X509_NAME *subject; /* the certificate's */
    size_t pos;               /* first position in the bundle */
    ca_cert *cert;
} ix_slot;

typedef struct ca_index {
    size_t n;
    ix_slot *slot; /* sorted by (subject, pos); one hold on the cache per slot */
} ca_index;

static int ix_idx = -1; /* X509_STORE ex_data index of the ca_index */
static X509_LOOKUP_METHOD *ix_method;
static pthread_once_t ix_once = PTHREAD_ONCE_INIT;

static void index_free(ca_index *ix)
{
    if (!ix)
        return;
    ca_cert **v = malloc(ix->n * sizeof *v + 1);
    if (v) {
        for (size_t i = 0; i < ix->n; i++)
            v[i] = ix->slot[i].cert;
        cache_drop(v, ix->n);
        free(v);
    } else {
        for (size_t i = 0; i < ix->n; i++)
            cache_drop(&ix->slot[i].cert, 1);
    }
    free(ix->slot);
    free(ix);
}

static int by_cert_pos(const void *a, const void *b)
{
    const ix_slot *x = a, *y = b;
    if (x->cert != y->cert)
        return (uintptr_t)x->cert < (uintptr_t)y->cert ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int by_name_pos(const void *a, const void *b)
{
    const ix_slot *x = a, *y = b;
    int c = X509_NAME_cmp(x->subject, y->subject);
    if (c)
        return c < 0 ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* An index of held's certificates; it takes over held's holds (held is
 * empty afterwards, also on failure). */
static ca_index *index_build(cert_list *held)
{
    ca_index *ix = calloc(1, sizeof *ix);
    ix_slot *slot = malloc((held->n ? held->n : 1) * sizeof *slot);
    if (!ix || !slot) {
        free(ix);
        free(slot);
        list_drop(held);
        return NULL;
    }
    for (size_t i = 0; i < held->n; i++)
        slot[i] = (ix_slot){X509_get_subject_name(held->v[i]->x509), i, held->v[i]};
    /* the same certificate twice in the bundle: one slot, one hold */
    qsort(slot, held->n, sizeof *slot, by_cert_pos);
    size_t n = 0, dups = 0;
    for (size_t i = 0; i < held->n; i++) {
        if (n && slot[n - 1].cert == slot[i].cert)
            held->v[dups++] = slot[i].cert; /* reuses held's array for the extra holds */
        else
            slot[n++] = slot[i];
    }
    if (dups)
        cache_drop(held->v, dups);
    qsort(slot, n, sizeof *slot, by_name_pos);
    ix->n = n;
    ix->slot = slot;
    free(held->v);
    memset(held, 0, sizeof *held);
    return ix;
}

static const ca_index *index_of(X509_STORE *s)
{
    return s && ix_idx >= 0 ? X509_STORE_get_ex_data(s, ix_idx) : NULL;
}

/* The slots whose subject is nm (canonically): [*lo, *hi), in bundle order.
 * A binary search with X509_NAME_cmp: no lock, no allocation. */
static void ix_range(const ca_index *ix, const X509_NAME *nm, size_t *lo, size_t *hi)
{
    size_t a = 0, b = ix->n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (X509_NAME_cmp(ix->slot[m].subject, nm) < 0)
            a = m + 1;
        else
            b = m;
    }
    size_t e = a;
    while (e < ix->n && X509_NAME_cmp(ix->slot[e].subject, nm) == 0)
        e++;
    *lo = a;
    *hi = e;
}

/* Whether x is valid at the verification's time (as OpenSSL's own issuer
 * search decides, without reporting anything). */
static bool valid_now(X509_STORE_CTX *ctx, X509 *x)
{
    X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(ctx);
    unsigned long flags = X509_VERIFY_PARAM_get_flags(vp);
    time_t t, *pt = NULL;
    if (flags & X509_V_FLAG_USE_CHECK_TIME) {
        t = X509_VERIFY_PARAM_get_time(vp);
        pt = &t;
    } else if (flags & X509_V_FLAG_NO_CHECK_TIME) {
        return true;
    }
    return X509_cmp_time(X509_get0_notBefore(x), pt) < 0 &&
           X509_cmp_time(X509_get0_notAfter(x), pt) > 0;
}

/* X509_STORE's get_issuer: among the certificates named as x's issuer, the
 * first check_issued accepts that is valid now, else the accepted one that
 * expires last. 1 found (a reference is the caller's), 0 none, -1 error. */
static int ix_get1_issuer(X509 **issuer, X509_STORE_CTX *ctx, X509 *x)
{
    *issuer = NULL;
    const ca_index *ix = index_of(X509_STORE_CTX_get0_store(ctx));
    if (!ix)
        return 0;
    X509_STORE_CTX_check_issued_fn check = X509_STORE_CTX_get_check_issued(ctx);
    const X509_NAME *xn = X509_get_issuer_name(x);
    size_t lo, hi;
    ix_range(ix, xn, &lo, &hi);
    X509 *best = NULL;
    int ret = 0;
    for (size_t i = lo; i < hi; i++) {
        X509 *c = ix->slot[i].cert->x509;
        if (!check(ctx, x, c))
            continue;
        ret = 1;
        if (valid_now(ctx, c)) {
            best = c;
            break;
        }
        if (!best || ASN1_TIME_compare(X509_get0_notAfter(c), X509_get0_notAfter(best)) > 0)
            best = c;
    }
    if (best && !X509_up_ref(best))
        return -1;
    *issuer = best;
    if (!ret) /* anything added to the store by other means (none today) */
        return X509_STORE_CTX_get1_issuer(issuer, ctx, x);
    return ret;
}

/* X509_STORE's lookup_certs: every certificate of that subject (references
 * the caller's), or NULL when there is none. */
static STACK_OF(X509) *ix_lookup_certs(X509_STORE_CTX *ctx, const X509_NAME *nm)
{
    const ca_index *ix = index_of(X509_STORE_CTX_get0_store(ctx));
    if (!ix)
        return NULL;
    size_t lo, hi;
    ix_range(ix, nm, &lo, &hi);
    STACK_OF(X509) *sk = NULL;
    for (size_t i = lo; i < hi; i++) {
        if ((!sk && !(sk = sk_X509_new_null())) ||
            !X509_add_cert(sk, ix->slot[i].cert->x509, X509_ADD_FLAG_UP_REF)) {
            sk_X509_pop_free(sk, X509_free);
            return NULL;
        }
    }
    return sk ? sk : X509_STORE_CTX_get1_certs(ctx, nm); /* as in get_issuer */
}

/* The lookup method: the first certificate of that subject. Like OpenSSL's
 * own lookups it lends the certificate (the index keeps it alive);
 * X509_STORE_CTX_get_by_subject takes the caller's reference itself. */
static int ix_by_subject(X509_LOOKUP *lu, X509_LOOKUP_TYPE type, const X509_NAME *name,
                         X509_OBJECT *ret)
{
    if (type != X509_LU_X509)
        return 0;
    const ca_index *ix = index_of(X509_LOOKUP_get_store(lu));
    if (!ix)
        return 0;
    size_t lo, hi;
    ix_range(ix, name, &lo, &hi);
    if (lo == hi)
        return 0;
    X509 *c = ix->slot[lo].cert->x509;
    if (!X509_OBJECT_set1_X509(ret, c))
        return 0;
    X509_free(c); /* lent, not given: see above */
    return 1;
}

static void ix_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                       void *argp)
{
    SK_UNUSED(parent);
    SK_UNUSED(ad);
    SK_UNUSED(idx);
    SK_UNUSED(argl);
    SK_UNUSED(argp);
    index_free(ptr);
}

static void ix_init(void)
{
    ix_idx = X509_STORE_get_ex_new_index(0, NULL, NULL, NULL, ix_ex_free);
    ix_method = X509_LOOKUP_meth_new("skiff trust index");
    if (ix_method)
        X509_LOOKUP_meth_set_get_by_subject(ix_method, ix_by_subject);
}

int sk_tls_store_index_size(X509_STORE *s)
{
    const ca_index *ix = index_of(s);
    return ix ? (int)ix->n : -1;
}

/* An X509_STORE over held's certificates (held is consumed). */
static X509_STORE *store_from(cert_list *held, char *err, size_t errlen)
{
    pthread_once(&ix_once, ix_init);
    ca_index *ix = index_build(held);
    X509_STORE *st = ix && ix_idx >= 0 && ix_method ? X509_STORE_new() : NULL;
    if (!st || !X509_STORE_set_ex_data(st, ix_idx, ix)) {
        X509_STORE_free(st);
        index_free(ix);
        sk_set_err(err, errlen, "trust store: out of memory");
        return NULL;
    }
    /* from here the store owns the index (ix_ex_free) */
    X509_STORE_set_get_issuer(st, ix_get1_issuer);
    X509_STORE_set_lookup_certs(st, ix_lookup_certs);
    if (!X509_STORE_add_lookup(st, ix_method)) {
        X509_STORE_free(st);
        sk_set_err(err, errlen, "trust store: out of memory");
        return NULL;
    }
    ERR_clear_error();
    return st;
}

X509_STORE *sk_tls_store_build(const unsigned char *data, size_t len, const char *path,
                               int *certs, char *err, size_t errlen)
{
    bundle_parser bp;
    cert_list held = {0};
    X509_STORE *st = NULL;
    if (parser_init(&bp, data, len) != 0)
        sk_set_err(err, errlen, "caCertFile %s: SHA-256 unavailable", path);
    else if (parser_run(&bp, path, &held, NULL, err, errlen) == 0)
        st = store_from(&held, err, errlen);
    if (certs)
        *certs = bp.count;
    list_drop(&held);
    parser_done(&bp);
    return st;
}

/* ------------------------------------------------------------ newer writes */

struct sk_tls_newer {
    _Atomic int raised;
};

sk_tls_newer *sk_tls_newer_new(void)
{
    return calloc(1, sizeof(sk_tls_newer));
}

void sk_tls_newer_raise(sk_tls_newer *n)
{
    if (n)
        atomic_store(&n->raised, 1);
}

void sk_tls_newer_free(sk_tls_newer *n)
{
    free(n);
}

static bool newer_take(sk_tls_newer *n)
{
    return n && atomic_load_explicit(&n->raised, memory_order_relaxed) &&
           atomic_exchange(&n->raised, 0);
}

/* ------------------------------------------------------------ trust stores */

sk_tls_store *sk_tls_store_ref(sk_tls_store *s)
{
    if (s)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

void sk_tls_store_free(sk_tls_store *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
        X509_STORE_free(s->x509);
        free(s);
    }
}

const char *sk_tls_store_fingerprint(const sk_tls_store *s)
{
    return s->fingerprint;
}

int sk_tls_store_certs(const sk_tls_store *s)
{
    return s->certs;
}

void sk_tls_store_result_clear(sk_tls_store_result *r)
{
    sk_tls_store_free(r->store);
    r->store = NULL;
}

/* Reads the bundle, then handles its blocks; when p->newer is raised it
 * re-reads the file and, if the bytes changed, goes on with the new ones
 * from their start, keeping the certificates parsed so far held (carry) so
 * the new bytes find them cached. Never a FIFO re-read: it could block. */
void sk_tls_store_load_now(const sk_tls_load_params *p, sk_tls_store_result *r)
{
    memset(r, 0, sizeof *r);
    r->status = SK_TLS_ERROR;
    if (!p->ca_file || !*p->ca_file) {
        sk_set_err(r->error, sizeof r->error, "caCertFile: not given");
        return;
    }
    unsigned char *data = NULL, hash[32];
    size_t len = 0;
    bool fifo = false;
    sk_tls_file_sig sig, now;
    if (p->in_force && p->unchanged_if && !strcmp(p->unchanged_if, p->in_force->fingerprint)) {
        /* the file as the store in force read it: nothing to read */
        sk_tls_file_sig_take(p->ca_file, &now);
        if (sk_tls_file_unchanged(&p->in_force->sig, &now)) {
            memcpy(r->fingerprint, p->in_force->fingerprint, sizeof r->fingerprint);
            r->certs = p->in_force->certs;
            r->status = SK_TLS_UNCHANGED;
            return;
        }
    }
    if (sk_tls_read_bundle(p, false, &data, &len, hash, &fifo, &sig, &r->reads, r->error,
                           sizeof r->error) != 0)
        return;
    hex32(hash, r->fingerprint);
    if (p->unchanged_if && !strcmp(p->unchanged_if, r->fingerprint)) {
        r->status = SK_TLS_UNCHANGED;
        free(data);
        return;
    }
    sk_tls_newer *newer = fifo ? NULL : p->newer;
    bundle_parser bp;
    cert_list held = {0}, carry = {0};
    if (parser_init(&bp, data, len) != 0) {
        sk_set_err(r->error, sizeof r->error, "caCertFile %s: SHA-256 unavailable", p->ca_file);
        goto out;
    }
    for (;;) {
        int rc = parser_run(&bp, p->ca_file, &held, newer, r->error, sizeof r->error);
        if (rc < 0)
            goto out;
        if (rc == 0 && !newer_take(newer))
            break;
        /* a newer write may be pending (or another file of the directory
         * changed): stat says whether the bundle did, else the bytes now */
        sk_tls_file_sig_take(p->ca_file, &now);
        if (sk_tls_file_unchanged(&sig, &now))
            continue;
        unsigned char *nd = NULL, nh[32];
        size_t nl = 0;
        bool nf = false;
        int reads = 0;
        char ignored[512];
        if (sk_tls_read_bundle(p, true, &nd, &nl, nh, &nf, &now, &reads, ignored,
                               sizeof ignored) != 0)
            continue; /* unreadable now: finish these bytes (the next load reports it) */
        r->reads += reads;
        sig = now;
        if (!memcmp(nh, hash, 32)) {
            free(nd);
            continue; /* the same bytes: go on */
        }
        list_drop(&carry);
        carry = held;
        memset(&held, 0, sizeof held);
        free(data);
        data = nd;
        len = nl;
        memcpy(hash, nh, 32);
        hex32(hash, r->fingerprint);
        r->restarts++;
        if (p->unchanged_if && !strcmp(p->unchanged_if, r->fingerprint)) {
            r->status = SK_TLS_UNCHANGED; /* back to the bytes in force */
            goto out;
        }
        parser_reset(&bp, data, len);
    }
    list_drop(&carry);
    r->certs = bp.count;
    r->parsed = bp.parsed;
    X509_STORE *x = store_from(&held, r->error, sizeof r->error);
    if (!x)
        goto out;
    sk_tls_store *s = calloc(1, sizeof *s);
    if (!s) {
        X509_STORE_free(x);
        sk_set_err(r->error, sizeof r->error, "out of memory");
        goto out;
    }
    atomic_init(&s->refs, 1);
    s->x509 = x;
    s->certs = bp.count;
    s->sig = sig;
    memcpy(s->hash, hash, 32);
    memcpy(s->fingerprint, r->fingerprint, sizeof s->fingerprint);
    r->store = s;
    r->status = SK_TLS_OK;
out:
    r->parsed = bp.parsed;
    list_drop(&held);
    list_drop(&carry);
    parser_done(&bp);
    free(data);
}
