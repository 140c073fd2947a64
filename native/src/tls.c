/* tls.c -- loading TLS material into immutable, versioned configs.
 *
 * sk_tls_load runs on a loader thread: it reads the profile's files as one
 * set (through a Kubernetes "..data" symlink resolved once per read), re-reads
 * until two consecutive reads hash equal, and checks everything that decides
 * publication with this library's OpenSSL on the very bytes it hashed: PEM
 * parses, the password decrypts the key, the key matches the certificate.
 * Only then does it build the server and client SSL_CTX of the config.
 * Using a config on a connection (handshake, records) is tls_io.c's.
 *
 * A load can take a second or more (a bundle of thousands of new CAs): what
 * is that expensive runs on a thread at SCHED_IDLE (or nice 19), so it never
 * takes CPU from a worker or the control loop; a certificate and key load
 * with a given trust store (the bundle not read, sk_tls_store_load parses it
 * apart: tls_store.c, through a certificate cache) is cheap and runs at
 * nice 10, so it is not starved either, and so does a trust store load until
 * it has parsed a few dozen certificates (see run_low). The priority is set
 * in C, on a thread that never holds the GIL: a loader preempted while
 * holding the GIL made the control loop wait. */
#include "internal.h"
#include "tls_store.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SK_TLS_MAX_FILE (64u << 20)
/* inter-router listeners' server session cache: entries, lifetime */
#define SK_TLS_LINK_SESSIONS 1024
#define SK_TLS_LINK_SESSION_S 300

#ifndef SKIFF_TLS_TICKETS
#define SKIFF_TLS_TICKETS 1
#endif

typedef struct blob {
    unsigned char *data;
    size_t len;
    bool fifo;
} blob;

static void blob_free(blob *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

void sk_tls_load_params_init(sk_tls_load_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_reads = 5;
    p->retry_delay_ms = 5;
}

static void tls_config_destroy(sk_snap *s)
{
    sk_tls_config *c = (sk_tls_config *)s;
    SSL_CTX_free(c->server);
    SSL_CTX_free(c->server_links);
    SSL_CTX_free(c->client);
    X509_STORE_free(c->store);
    free(c);
}

void sk_tls_config_free(sk_tls_config *c)
{
    if (c)
        sk_snap_release(&c->snap);
}

sk_tls_config *sk_tls_config_ref(sk_tls_config *c)
{
    if (c)
        sk_snap_ref(&c->snap);
    return c;
}

const char *sk_tls_config_fingerprint(const sk_tls_config *c)
{
    return c->fingerprint;
}

void sk_tls_result_clear(sk_tls_load_result *r)
{
    sk_tls_config_free(r->config);
    r->config = NULL;
    OPENSSL_free(r->leaf_der);
    r->leaf_der = NULL;
    r->leaf_der_len = 0;
}

/* The OpenSSL reason of the last error, or a fallback. */
static const char *ssl_reason(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

/* "dir/..data/name" when dir holds a ..data symlink (Kubernetes secrets):
 * target is the directory ..data pointed to when the set was resolved. */
static void resolve_in(const char *path, const char *data_target, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", path);
    if (!data_target)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    char *dir = dirname(tmp);
    char tmp2[4096];
    snprintf(tmp2, sizeof tmp2, "%s", path);
    char *base = basename(tmp2);
    char candidate[8192];
    if (data_target[0] == '/')
        snprintf(candidate, sizeof candidate, "%s/%s", data_target, base);
    else
        snprintf(candidate, sizeof candidate, "%s/%s/%s", dir, data_target, base);
    if (access(candidate, F_OK) == 0)
        snprintf(out, outlen, "%s", candidate);
}

/* Where the "..data" link beside path points now, or NULL. */
static bool data_link(const char *path, char *target, size_t len)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    char link[4200];
    snprintf(link, sizeof link, "%s/..data", dirname(tmp));
    struct stat st;
    if (lstat(link, &st) != 0 || !S_ISLNK(st.st_mode))
        return false;
    ssize_t n = readlink(link, target, len - 1);
    if (n <= 0)
        return false;
    target[n] = '\0';
    return true;
}

/* With no_fifo a FIFO is refused (opened without blocking, not read). */
static int read_file(const char *path, const char *what, bool no_fifo, blob *out, char *err,
                     size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | (no_fifo ? O_NONBLOCK : 0));
    if (fd < 0) {
        sk_set_err(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        sk_set_err(err, errlen, "%s %s: %s", what, path, strerror(errno));
        close(fd);
        return -1;
    }
    out->fifo = S_ISFIFO(st.st_mode);
    if (no_fifo && !S_ISREG(st.st_mode)) {
        sk_set_err(err, errlen, "%s %s: not a regular file", what, path);
        close(fd);
        return -1;
    }
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, len = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            sk_set_err(err, errlen, "%s %s: out of memory", what, path);
            close(fd);
            return -1;
        }
        if (len == cap) {
            if (cap >= SK_TLS_MAX_FILE) {
                sk_set_err(err, errlen, "%s %s: larger than %u bytes", what, path,
                           SK_TLS_MAX_FILE);
                free(buf);
                close(fd);
                return -1;
            }
            unsigned char *nb = realloc(buf, cap * 2);
            if (!nb)
                free(buf);
            buf = nb;
            cap *= 2;
            continue;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            sk_set_err(err, errlen, "%s %s: %s", what, path, strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    out->data = buf;
    out->len = len;
    return 0;
}

enum { F_CERT, F_KEY, F_CA, F_N };
static const char *const FILE_WHAT[F_N] = {"certFile", "privateKeyFile", "caCertFile"};
#define READ_ALL ((1u << F_CERT) | (1u << F_KEY) | (1u << F_CA))
#define READ_CERT_KEY ((1u << F_CERT) | (1u << F_KEY))
#define READ_CA (1u << F_CA)

typedef struct material {
    blob f[F_N];
    unsigned char hash[32];    /* the config's fingerprint: every file and setting */
    unsigned char ca_hash[32]; /* the CA bundle's content hash (a store's identity) */
    bool has_ca;
} material;

static void material_free(material *m)
{
    for (int i = 0; i < F_N; i++)
        blob_free(&m->f[i]);
}

static void hash_blob(EVP_MD_CTX *md, const char *tag, const blob *b)
{
    uint64_t len = b->data ? b->len : UINT64_MAX;
    EVP_DigestUpdate(md, tag, strlen(tag) + 1);
    EVP_DigestUpdate(md, &len, sizeof len);
    if (b->data)
        EVP_DigestUpdate(md, b->data, b->len);
}

static void hash_str(EVP_MD_CTX *md, const char *tag, const char *s)
{
    EVP_DigestUpdate(md, tag, strlen(tag) + 1);
    if (s)
        EVP_DigestUpdate(md, s, strlen(s) + 1);
    else
        EVP_DigestUpdate(md, "", 1);
}

/* One read of the files in mask. The fingerprint covers the CA bundle through
 * its content hash, so a config built with a given store (the CA file not
 * read) has the fingerprint a full load of the same bytes has. */
static int read_set(const sk_tls_load_params *p, unsigned mask, const sk_tls_store *given,
                    bool no_fifo, material *m, char *err, size_t errlen)
{
    const char *paths[F_N] = {p->cert_file, p->key_file, p->ca_file};
    char target[4096];
    memset(m, 0, sizeof *m);
    for (int i = 0; i < F_N; i++) {
        if (!(mask & (1u << i)) || !paths[i] || !*paths[i])
            continue;
        /* resolved per file but from one reading of each directory's link */
        bool linked = data_link(paths[i], target, sizeof target);
        char real[8192];
        resolve_in(paths[i], linked ? target : NULL, real, sizeof real);
        if (read_file(real, FILE_WHAT[i], no_fifo, &m->f[i], err, errlen) != 0) {
            material_free(m);
            return -1;
        }
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    if (given) {
        memcpy(m->ca_hash, given->hash, 32);
        m->has_ca = true;
    } else if (m->f[F_CA].data) {
        EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        hash_blob(md, "ca", &m->f[F_CA]);
        EVP_DigestFinal_ex(md, m->ca_hash, &n);
        m->has_ca = true;
    }
    unsigned char has_ca = m->has_ca;
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    hash_blob(md, "cert", &m->f[F_CERT]);
    hash_blob(md, "key", &m->f[F_KEY]);
    EVP_DigestUpdate(md, "ca", 3);
    EVP_DigestUpdate(md, &has_ca, 1);
    if (has_ca)
        EVP_DigestUpdate(md, m->ca_hash, 32);
    hash_str(md, "password", p->password);
    hash_str(md, "ciphers", p->ciphers);
    hash_str(md, "protocols", p->protocols);
    EVP_DigestUpdate(md, &p->ordinal, sizeof p->ordinal);
    EVP_DigestFinal_ex(md, m->hash, &n);
    EVP_MD_CTX_free(md);
    return 0;
}

/* Reads the files in mask until two consecutive reads agree (a FIFO: once).
 * On success m holds the set; *reads counts the reads made. */
static int read_stable_ex(const sk_tls_load_params *p, unsigned mask, const sk_tls_store *given,
                          bool no_fifo, material *m, int *reads, char *err, size_t errlen)
{
    material prev;
    bool have_prev = false;
    int max_reads = p->max_reads > 1 ? p->max_reads : 2;
    for (*reads = 1; *reads <= max_reads; (*reads)++) {
        if (read_set(p, mask, given, no_fifo, m, err, errlen) != 0) {
            if (have_prev)
                material_free(&prev);
            return -1;
        }
        bool fifo = m->f[F_CERT].fifo || m->f[F_KEY].fifo || m->f[F_CA].fifo;
        bool same = have_prev && !memcmp(prev.hash, m->hash, 32) &&
                    prev.has_ca == m->has_ca && !memcmp(prev.ca_hash, m->ca_hash, 32);
        if (have_prev)
            material_free(&prev);
        if (fifo || same)
            return 0; /* a FIFO cannot be re-read: one read is the set */
        prev = *m;
        have_prev = true;
        if (p->retry_delay_ms > 0 && *reads > 1) {
            struct timespec ts = {0, (long)p->retry_delay_ms * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    *reads = max_reads;
    material_free(&prev);
    sk_set_err(err, errlen, "files kept changing over %d reads; will retry", max_reads);
    return -1;
}

static int read_stable(const sk_tls_load_params *p, unsigned mask, const sk_tls_store *given,
                       material *m, int *reads, char *err, size_t errlen)
{
    return read_stable_ex(p, mask, given, false, m, reads, err, errlen);
}

void sk_tls_file_sig_take(const char *path, sk_tls_file_sig *sig)
{
    memset(sig, 0, sizeof *sig);
    clock_gettime(CLOCK_REALTIME, &sig->taken);
    bool linked = data_link(path, sig->data_target, sizeof sig->data_target);
    char real[8192];
    resolve_in(path, linked ? sig->data_target : NULL, real, sizeof real);
    struct stat st;
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    sig->valid = true;
    sig->dev = st.st_dev;
    sig->ino = st.st_ino;
    sig->size = st.st_size;
    sig->mtime = st.st_mtim;
    sig->ctime = st.st_ctim;
}

/* A file timestamp closer than this to the signature's own time may hide a
 * second write in the same tick. Sub-second timestamps advance with the
 * kernel's coarse clock (a jiffy, <= 10 ms): 20 ms. Whole seconds (ext3, old
 * inodes, FAT's two): 2 s. */
#define SK_TLS_RACY_NS 20000000LL
#define SK_TLS_RACY_COARSE_NS 2000000000LL

static bool older_than(struct timespec t, struct timespec ref, bool coarse)
{
    long long a = (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
    long long b = (long long)ref.tv_sec * 1000000000LL + ref.tv_nsec;
    return a < b - (coarse ? SK_TLS_RACY_COARSE_NS : SK_TLS_RACY_NS);
}

bool sk_tls_file_unchanged(const sk_tls_file_sig *then, const sk_tls_file_sig *now)
{
    return then->valid && now->valid && then->dev == now->dev && then->ino == now->ino &&
           then->size == now->size && then->mtime.tv_sec == now->mtime.tv_sec &&
           then->mtime.tv_nsec == now->mtime.tv_nsec && then->ctime.tv_sec == now->ctime.tv_sec &&
           then->ctime.tv_nsec == now->ctime.tv_nsec &&
           !strcmp(then->data_target, now->data_target) &&
           older_than(then->mtime, then->taken, !then->mtime.tv_nsec) &&
           older_than(then->ctime, then->taken, !then->ctime.tv_nsec);
}

int sk_tls_read_bundle(const sk_tls_load_params *p, bool no_fifo, unsigned char **data,
                       size_t *len, unsigned char hash[32], bool *fifo, sk_tls_file_sig *sig,
                       int *reads, char *err, size_t errlen)
{
    sk_tls_file_sig_take(p->ca_file, sig); /* before the read: a write after it shows */
    material m;
    if (read_stable_ex(p, READ_CA, NULL, no_fifo, &m, reads, err, errlen) != 0)
        return -1;
    *fifo = m.f[F_CA].fifo;
    *data = m.f[F_CA].data;
    *len = m.f[F_CA].len;
    memcpy(hash, m.ca_hash, 32);
    m.f[F_CA].data = NULL; /* the caller's */
    material_free(&m);
    return 0;
}

static int password_cb(char *buf, int size, int rwflag, void *u)
{
    SK_UNUSED(rwflag);
    const char *pw = u;
    if (!pw)
        return -1; /* encrypted key and no password: fail instead of prompting */
    int n = (int)strlen(pw);
    if (n > size)
        n = size;
    memcpy(buf, pw, (size_t)n);
    return n;
}

static int parse_protocols(const char *s, int *min, int *max, char *err, size_t errlen)
{
    *min = TLS1_2_VERSION;
    *max = TLS1_3_VERSION;
    if (!s || !*s)
        return 0;
    int lo = 0, hi = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, " ,", &save); tok;
         tok = strtok_r(NULL, " ,", &save)) {
        int v;
        if (!strcmp(tok, "TLSv1"))
            v = TLS1_VERSION;
        else if (!strcmp(tok, "TLSv1.1"))
            v = TLS1_1_VERSION;
        else if (!strcmp(tok, "TLSv1.2"))
            v = TLS1_2_VERSION;
        else if (!strcmp(tok, "TLSv1.3"))
            v = TLS1_3_VERSION;
        else {
            sk_set_err(err, errlen,
                       "protocols: unknown protocol '%s' (expected TLSv1, TLSv1.1, TLSv1.2, "
                       "TLSv1.3)",
                       tok);
            return -1;
        }
        if (!lo || v < lo)
            lo = v;
        if (v > hi)
            hi = v;
    }
    if (lo) {
        *min = lo;
        *max = hi;
    }
    return 0;
}

static SSL_CTX *make_ctx(const SSL_METHOD *method, const sk_tls_load_params *p, X509 *leaf,
                         STACK_OF(X509) *chain, EVP_PKEY *key, X509_STORE *store, char *err,
                         size_t errlen)
{
    int min, max;
    if (parse_protocols(p->protocols, &min, &max, err, errlen) != 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx) {
        sk_set_err(err, errlen, "SSL_CTX_new: %s", ssl_reason("failed"));
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* RELEASE_BUFFERS: an idle TLS connection holds no record buffers */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* resumption uses stateless tickets: no shared session cache, whose
     * inserts and evictions take a lock on every handshake */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* one TLS 1.3 ticket (OpenSSL sends two): each costs an encode, an
     * encryption and a record on every handshake, and one resumes */
    SSL_CTX_set_num_tickets(ctx, SKIFF_TLS_TICKETS);
    SSL_CTX_set_info_callback(ctx, sk_tls_info_cb);
    if (method == TLS_server_method())
        sk_tls_yield_install(ctx);
    /* no 0-RTT (OpenSSL's default, spelt out): tickets allow no early data,
     * so early data a client sends anyway is rejected and skipped inside the
     * handshake; a detached connection (tls_rl.c) starts after it */
    SSL_CTX_set_max_early_data(ctx, 0);
    SSL_CTX_set_min_proto_version(ctx, min);
    SSL_CTX_set_max_proto_version(ctx, max);
    if (p->ciphers && *p->ciphers) {
        /* one attribute for both lists, as the Skupper router has it */
        ERR_clear_error();
        int ok12 = SSL_CTX_set_cipher_list(ctx, p->ciphers);
        ERR_clear_error();
        int ok13 = SSL_CTX_set_ciphersuites(ctx, p->ciphers);
        ERR_clear_error();
        if (!ok12 && !ok13) {
            sk_set_err(err, errlen, "ciphers '%s': no cipher in the list is known", p->ciphers);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (leaf) {
        if (SSL_CTX_use_certificate(ctx, leaf) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            sk_set_err(err, errlen, "certFile %s: unusable with privateKeyFile %s: %s",
                       p->cert_file, p->key_file, ssl_reason("rejected"));
            SSL_CTX_free(ctx);
            return NULL;
        }
        for (int i = 0; chain && i < sk_X509_num(chain); i++)
            SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i));
    }
    if (store)
        SSL_CTX_set1_cert_store(ctx, store);
    if (leaf && store && sk_X509_num(chain) <= 0) {
        /* Without chain certificates OpenSSL builds the chain it sends from
         * the trust store on every handshake: an X509_verify_cert, with a
         * signature check, per connection. Build it once here (errors
         * ignored, as the per-handshake build ignores them); if even that
         * fails, the per-handshake build stays as it was. Without the
         * self-signed root: the per-handshake build sent it, but a peer
         * cannot use it (a root is trusted from its own store or not at
         * all; RFC 8446 4.4.2 lets it be omitted), and it cost every
         * client the bytes and the parsing of one more certificate (~200 us
         * of a Python client's handshake here). Intermediates stay. */
        ERR_clear_error();
        (void)SSL_CTX_build_cert_chain(ctx, SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR |
                                                SSL_BUILD_CHAIN_FLAG_CLEAR_ERROR |
                                                SSL_BUILD_CHAIN_FLAG_NO_ROOT);
        ERR_clear_error();
    }
    static const unsigned char sid[] = "skiff";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    return ctx;
}

/* A trust store of the bundle's certificates (tls_store.c: cached, indexed). */
static X509_STORE *parse_store(const blob *b, const char *path, int *certs, char *err,
                               size_t errlen)
{
    return sk_tls_store_build(b->data, b->len, path, certs, err, errlen);
}

static void add_warning(sk_tls_load_result *r, const char *fmt, const char *arg)
{
    size_t used = strlen(r->warnings);
    if (used && used < sizeof r->warnings - 2) {
        r->warnings[used++] = ';';
        r->warnings[used++] = ' ';
        r->warnings[used] = '\0';
    }
    snprintf(r->warnings + used, sizeof r->warnings - used, fmt, arg);
}

static void hex(const unsigned char *h, char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/* Each load runs on a short-lived thread of its own at a low priority:
 * lowering the caller instead would need raising it back afterwards, which an
 * unprivileged process may not do (RLIMIT_NICE), leaving a Python thread
 * that later holds the GIL at SCHED_IDLE. A thread per load costs tens of
 * microseconds against loads of milliseconds to seconds.
 *
 * A full load that parses a CA bundle (sk_tls_load without a given store)
 * runs at SCHED_IDLE (nice 19 as fallback): a bundle of thousands of new CAs
 * is a second of CPU. A certificate and key load with a given store (or no
 * CA file) is a millisecond of CPU and runs at nice 10: at SCHED_IDLE on
 * busy cores it waited up to 0.7 s for an idle moment, and new material must
 * be on the wire within 200 ms of its write (issue 13). A trust store load
 * (sk_tls_store_load) starts at nice 10 too, since a rewrite finds nearly
 * every certificate in the cache (tens of milliseconds for 4,000 CAs), and
 * drops to SCHED_IDLE once it has parsed SK_TLS_PARSE_AT_NICE certificates
 * (sk_tls_load_thread_idle): a bundle of new CAs still takes only idle CPU. */
typedef struct {
    void (*fn)(void *);
    void *arg;
    bool idle;
} load_job;

static _Thread_local bool load_thread; /* this thread is a load's own (load_main) */

static void lower_to_idle(void)
{
    struct sched_param idle = {.sched_priority = 0};
    if (sched_setscheduler(0, SCHED_IDLE, &idle) != 0) /* 0: this thread */
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
}

void sk_tls_load_thread_idle(void)
{
    if (load_thread) { /* never the caller's thread (run_low's fallback) */
        load_thread = false;
        lower_to_idle();
    }
}

static void *load_main(void *arg)
{
    load_job *job = arg;
    if (!job->idle) {
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
        load_thread = true;
    } else {
        lower_to_idle();
    }
    job->fn(job->arg);
    return NULL;
}

static void run_low(bool idle, void (*fn)(void *), void *arg)
{
    load_job job = {fn, arg, idle};
    pthread_t th;
    if (pthread_create(&th, NULL, load_main, &job) != 0) {
        fn(arg); /* no thread to be had: load here, at our priority */
        return;
    }
    pthread_join(th, NULL);
}

typedef struct {
    const sk_tls_load_params *p;
    sk_tls_load_result *r;
} config_job;

typedef struct {
    const sk_tls_load_params *p;
    sk_tls_store_result *r;
} store_job;

static void tls_load(const sk_tls_load_params *p, sk_tls_load_result *r);

static void config_job_run(void *arg)
{
    config_job *j = arg;
    tls_load(j->p, j->r);
}

static void store_job_run(void *arg)
{
    store_job *j = arg;
    sk_tls_store_load_now(j->p, j->r);
}

void sk_tls_load(const sk_tls_load_params *p, sk_tls_load_result *r)
{
    config_job j = {p, r};
    run_low(!p->ca_store && p->ca_file && *p->ca_file, config_job_run, &j);
}

void sk_tls_store_load(const sk_tls_load_params *p, sk_tls_store_result *r)
{
    store_job j = {p, r};
    run_low(false, store_job_run, &j); /* drops to SCHED_IDLE when it parses much */
}

/* ------------------------------------------------------------ trust stores */

/* Trust stores, the certificate cache and sk_tls_store_*: tls_store.c. */

/* ------------------------------------------------------------ configs */

static void tls_load(const sk_tls_load_params *p, sk_tls_load_result *r)
{
    memset(r, 0, sizeof *r);
    r->status = SK_TLS_ERROR;
    char *err = r->error;
    size_t errlen = sizeof r->error;
    if ((p->cert_file && *p->cert_file) != (p->key_file && *p->key_file)) {
        sk_set_err(err, errlen, "certFile and privateKeyFile must be given together");
        return;
    }

    /* read the set until two consecutive reads agree; with a given trust
     * store the CA file is not read at all (it may be slow to come) */
    const sk_tls_store *given = p->ca_store;
    material m;
    if (read_stable(p, given ? READ_CERT_KEY : READ_ALL, given, &m, &r->reads, err, errlen) != 0)
        return;
    hex(m.hash, r->fingerprint);
    if (m.has_ca)
        hex(m.ca_hash, r->ca_fingerprint);
    if (p->unchanged_if && !strcmp(p->unchanged_if, r->fingerprint)) {
        material_free(&m);
        r->status = SK_TLS_UNCHANGED;
        return;
    }

    X509 *leaf = NULL;
    STACK_OF(X509) *chain = NULL;
    EVP_PKEY *key = NULL;
    X509_STORE *store = NULL;
    sk_tls_config *cfg = NULL;
    ERR_clear_error();

    if (m.f[F_CERT].data) {
        BIO *b = BIO_new_mem_buf(m.f[F_CERT].data, (int)m.f[F_CERT].len);
        leaf = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (!leaf) {
            sk_set_err(err, errlen, "certFile %s: no PEM certificate found (%s)", p->cert_file,
                       ssl_reason("not PEM"));
            BIO_free(b);
            goto out;
        }
        chain = sk_X509_new_null();
        X509 *x;
        while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
            sk_X509_push(chain, x);
        ERR_clear_error();
        BIO_free(b);

        b = BIO_new_mem_buf(m.f[F_KEY].data, (int)m.f[F_KEY].len);
        key = PEM_read_bio_PrivateKey(b, NULL, password_cb, (void *)p->password);
        BIO_free(b);
        if (!key) {
            bool encrypted = memmem(m.f[F_KEY].data, m.f[F_KEY].len, "ENCRYPTED", 9) != NULL;
            if (encrypted)
                sk_set_err(err, errlen, "privateKeyFile %s: cannot decrypt the key: %s",
                           p->key_file, p->password ? "wrong password" : "no password given");
            else
                sk_set_err(err, errlen, "privateKeyFile %s: no PEM private key found (%s)",
                           p->key_file, ssl_reason("not PEM"));
            goto out;
        }
        if (X509_check_private_key(leaf, key) != 1) {
            sk_set_err(err, errlen, "privateKeyFile %s does not match certFile %s", p->key_file,
                       p->cert_file);
            goto out;
        }
        const ASN1_TIME *na = X509_get0_notAfter(leaf), *nb = X509_get0_notBefore(leaf);
        if (X509_cmp_current_time(na) < 0) {
            r->expired = 1;
            add_warning(r, "certFile %s: certificate has expired", p->cert_file);
        }
        if (X509_cmp_current_time(nb) > 0) {
            r->not_yet_valid = 1;
            add_warning(r, "certFile %s: certificate is not valid yet", p->cert_file);
        }
        struct tm tm;
        if (ASN1_TIME_to_tm(na, &tm) == 1)
            r->not_after = (int64_t)timegm(&tm);
        int len = i2d_X509(leaf, &r->leaf_der);
        r->leaf_der_len = len > 0 ? (size_t)len : 0;
    }

    if (given) {
        store = given->x509; /* the caller's (last good) store */
        X509_STORE_up_ref(store);
        r->ca_reused = 1;
    } else if (m.f[F_CA].data) {
        const sk_tls_config *old = p->previous;
        if (old && old->store && old->has_ca && !memcmp(old->ca_hash, m.ca_hash, 32)) {
            store = old->store; /* unchanged bundle: skip parsing it again */
            X509_STORE_up_ref(store);
            r->ca_reused = 1;
        } else if (!(store = parse_store(&m.f[F_CA], p->ca_file, NULL, err, errlen))) {
            goto out;
        }
    }
    if (store) {
        if (leaf) {
            X509_STORE_CTX *vctx = X509_STORE_CTX_new();
            if (vctx && X509_STORE_CTX_init(vctx, store, leaf, chain) == 1 &&
                X509_verify_cert(vctx) != 1) {
                int code = X509_STORE_CTX_get_error(vctx);
                if (code != X509_V_ERR_CERT_HAS_EXPIRED && code != X509_V_ERR_CERT_NOT_YET_VALID) {
                    r->untrusted = 1;
                    add_warning(r, "certFile does not chain to caCertFile: %s",
                                X509_verify_cert_error_string(code));
                }
            }
            X509_STORE_CTX_free(vctx);
            ERR_clear_error();
        }
    }

    cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        sk_set_err(err, errlen, "out of memory");
        goto out;
    }
    sk_snap_init_off_worker(&cfg->snap, tls_config_destroy);
    cfg->ordinal = p->ordinal;
    memcpy(cfg->fingerprint, r->fingerprint, sizeof cfg->fingerprint);
    memcpy(cfg->ca_hash, m.ca_hash, 32);
    cfg->has_ca = store != NULL;
    cfg->store = store;
    store = NULL;
    if (leaf && !(cfg->server = make_ctx(TLS_server_method(), p, leaf, chain, key, cfg->store,
                                         err, errlen)))
        goto out;
#if SKIFF_TLS_DETACH
    /* server connections leave OpenSSL after the handshake (tls_rl.c) */
    if (cfg->server)
        (void)sk_tls_rl_install(cfg->server);
#endif
    /* Inter-router listeners: the routers' data connections resume their
     * sessions on every refill (sk_dc_tls_resume). A ticket carries the
     * session with the client's certificate, which the server decrypts and
     * decodes again on every resumption and encodes again into every new
     * ticket; a server cache keeps the session as an object instead (about
     * 45 % less acceptor CPU per flow measured on a TLS chain). Bounded:
     * the clients keep one session per worker and peer, so the live set is
     * small; older entries are evicted. Client-facing listeners keep
     * stateless tickets (no memory held after a connection closes). */
    if (leaf) {
        if (!(cfg->server_links = make_ctx(TLS_server_method(), p, leaf, chain, key, cfg->store,
                                           err, errlen)))
            goto out;
        SSL_CTX_set_session_cache_mode(cfg->server_links, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(cfg->server_links, SK_TLS_LINK_SESSIONS);
        SSL_CTX_set_timeout(cfg->server_links, SK_TLS_LINK_SESSION_S);
        SSL_CTX_set_options(cfg->server_links, SSL_OP_NO_TICKET); /* TLS 1.3: stateful tickets */
#if SKIFF_TLS_DETACH
        (void)sk_tls_rl_install(cfg->server_links);
#endif
    }
    if (!(cfg->client =
              make_ctx(TLS_client_method(), p, leaf, chain, key, cfg->store, err, errlen)))
        goto out;
    /* Sessions the servers send reach sk_tls_new_session_cb, which keeps
     * those of data connections per peer, worker and config version: the
     * next data connection to that router resumes instead of a full
     * handshake (no certificate signed or verified). Nothing is cached
     * inside OpenSSL. */
    SSL_CTX_set_session_cache_mode(cfg->client,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(cfg->client, sk_tls_new_session_cb);
    r->config = cfg;
    cfg = NULL;
    r->status = SK_TLS_OK;

out:
    if (cfg)
        sk_snap_release(&cfg->snap);
    X509_STORE_free(store);
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    material_free(&m);
    ERR_clear_error();
    if (r->status == SK_TLS_ERROR) {
        OPENSSL_free(r->leaf_der);
        r->leaf_der = NULL;
        r->leaf_der_len = 0;
    }
}

/* ------------------------------------------------------------ slots */

int sk_tls_slot_create(sk_engine *e)
{
    int slot = (int)SK_ADD(&e->tls_nslots, 1);
    if (slot >= SK_TLS_SLOTS) {
        SK_SUB(&e->tls_nslots, 1);
        return -1;
    }
    return slot;
}

uint64_t sk_tls_publish(sk_engine *e, int slot, sk_tls_config *cfg)
{
    if (slot < 0 || slot >= (int)SK_LOAD(&e->tls_nslots) || !cfg)
        return 0;
    return sk_slot_publish(&e->tls[slot], &cfg->snap);
}

int sk_tls_close_older(sk_engine *e, int slot, uint64_t oldest_valid)
{
    if (slot < 0 || slot >= (int)SK_LOAD(&e->tls_nslots))
        return -1;
    if (atomic_load(&e->stopping))
        return 0;
    for (int i = 0; i < e->nworkers; i++) {
        sk_msg *m = calloc(1, sizeof *m);
        if (!m)
            return -1;
        m->kind = SK_MSG_TLS_CLOSE_OLDER;
        m->u.older.slot = slot;
        m->u.older.ordinal = oldest_valid;
        sk_worker_post(&e->workers[i], m);
    }
    return 0;
}

/* Worker side: the current config of a slot, from the worker's cache. */
sk_tls_config *sk_tls_current(sk_worker *w, int slot)
{
    if (slot < 0 || slot >= SK_TLS_SLOTS)
        return NULL;
    return (sk_tls_config *)sk_slot_cached(&w->engine->tls[slot], &w->tls_cache[slot]);
}
