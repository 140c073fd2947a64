/* tls_rl.c -- our own TLS 1.3 record layer, used after the handshake on
 * server-side connections so that the SSL object can be freed ("detach").
 *
 * During a server handshake (contexts set up by sk_tls_rl_install) two
 * OpenSSL callbacks fill a small capture kept in the SSL's ex_data: the key
 * log callback hands over the application traffic secrets (kept in binary,
 * never logged), and the message callback counts the bytes of every record
 * written and the records written after the server's Finished (those went
 * out under the server application key: the NewSessionTickets). When the
 * handshake is done and OpenSSL holds nothing (no decrypted bytes, no unread
 * record bytes: no read-ahead, so it read exactly the handshake's records;
 * every record it made was written to the socket), sk_tls_rl_detach derives
 * keys and IVs (RFC 8446 §7.1, §7.3) and the caller frees the SSL.
 *
 * Records (RFC 8446 §5): AEAD with nonce = IV ^ sequence, the 5-byte header
 * as additional data, inner plaintext = content || type || zeros. Idle, a
 * connection keeps only secrets, keys, IVs and sequence numbers: the read
 * buffer (ciphertext read ahead, decrypted in place) and the write buffer
 * (ciphertext not yet written) exist while bytes are in flight, and the
 * cipher contexts are per thread (one per suite and direction), keyed again
 * when the key they hold is not the connection's and reset when the
 * connection whose key they hold is freed. Keys and IVs are derived with
 * HMAC on per-thread digest contexts of digests fetched once (no lookup by
 * name per derivation).
 *
 * Our side starts a KeyUpdate itself after 2^24 records under one write
 * key (AES-GCM's usage limit), besides answering the peer's requests.
 *
 * All memory is OpenSSL's allocator (test_tls_mem counts it), cleansed when
 * it held keys or plaintext. */
#include "internal.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

#define RL_HDR 5
#define RL_TAG 16
#define RL_MAX_PT 16384u                   /* plaintext per record (2^14) */
#define RL_MAX_CT (RL_MAX_PT + 256u)       /* record length limit (2^14 + 256) */
#define RL_RBUF (2u * (RL_HDR + RL_MAX_CT)) /* read buffer: two records */
#define RL_WBATCH 4u                       /* records per send(2) at most */
#define RL_MAX_SECRET 48
#define RL_IV 12

enum { SUITE_AES128, SUITE_AES256, SUITE_CHACHA, SUITES };

/* The suites' hashes: SHA-256 and SHA-384, their output and block sizes. */
enum { HASH_SHA256, HASH_SHA384, HASHES };
static const uint8_t hash_lens[HASHES] = {32, 48};
static const uint8_t hash_blocks[HASHES] = {64, 128};

/* What one suite uses: fetched once for the process. */
typedef struct rl_suite {
    EVP_CIPHER *cipher;
    uint8_t hash; /* HASH_* */
    uint8_t klen, hlen;
} rl_suite;

static pthread_once_t rl_once = PTHREAD_ONCE_INIT;
static bool rl_ready;
static int rl_idx = -1;
static rl_suite suites[SUITES];
static EVP_MD *mds[HASHES];
static pthread_key_t rl_tkey;
/* Every key a record layer installs gets a new id: a thread's cipher
 * context keyed for one id is used again without keying (ids are never
 * reused, unlike addresses). */
static _Atomic uint64_t rl_key_ids;
/* Records written under one key before we update it ourselves: AES-GCM's
 * limit is 2^24.5 full-size records per key (RFC 8446 §5.5); the same for
 * every suite. Tests lower it (sk_tls_rl_set_rekey_records). */
#define RL_REKEY_RECORDS (1ull << 24)
static _Atomic uint64_t rekey_records = RL_REKEY_RECORDS;

void sk_tls_rl_set_rekey_records(uint64_t n)
{
    atomic_store_explicit(&rekey_records, n ? n : RL_REKEY_RECORDS, memory_order_relaxed);
}

/* A thread's cipher contexts: per suite, one to decrypt and one to encrypt,
 * and the key id each is keyed with (0: none); and its digest contexts, one
 * per hash, for deriving keys. */
typedef struct rl_thread {
    EVP_CIPHER_CTX *ctx[SUITES][2];
    uint64_t key_id[SUITES][2];
    EVP_MD_CTX *md[HASHES];
} rl_thread;

/* During the handshake: what the callbacks saw. */
typedef struct rl_capture {
    uint8_t csec[RL_MAX_SECRET], ssec[RL_MAX_SECRET];
    uint8_t clen, slen;
    bool fin;            /* the server's Finished was written */
    uint32_t after_fin;  /* records written since */
    uint64_t written;    /* bytes of every record made */
} rl_capture;

struct sk_tls_rl {
    uint8_t suite;
    bool ku_owed;      /* our KeyUpdate goes before the next application data */
    bool eof;          /* close_notify or end of stream read */
    bool close_notify; /* ... and it was close_notify */
    bool failed;       /* a fatal error: every later call fails */
    bool wclosed;      /* our close_notify went out */
    uint32_t wpt;      /* plaintext bytes of the records waiting in wbuf */
    uint64_t rseq, wseq;
    uint64_t rkid, wkid; /* ids of the read and write keys */
    uint8_t rsec[RL_MAX_SECRET], wsec[RL_MAX_SECRET];
    uint8_t rkey[32], wkey[32];
    uint8_t riv[RL_IV], wiv[RL_IV];
    uint8_t *rbuf;        /* RL_RBUF bytes while any is in flight */
    uint32_t rpos, rend;  /* ciphertext not yet decrypted */
    uint32_t ppos, pend;  /* decrypted plaintext not yet returned */
    uint8_t *wbuf;        /* ciphertext not yet written */
    uint32_t wpos, wend, wcap;
};

/* ------------------------------------------------------------ setup */

static void tkey_free(void *p)
{
    rl_thread *t = p;
    for (int i = 0; i < SUITES; i++)
        for (int d = 0; d < 2; d++)
            EVP_CIPHER_CTX_free(t->ctx[i][d]);
    for (int h = 0; h < HASHES; h++)
        EVP_MD_CTX_free(t->md[h]);
    OPENSSL_free(t);
}

/* This thread's contexts, made on first use. */
static rl_thread *thread_state(void)
{
    rl_thread *t = pthread_getspecific(rl_tkey);
    if (!t) {
        t = OPENSSL_zalloc(sizeof *t);
        if (!t || pthread_setspecific(rl_tkey, t) != 0) {
            OPENSSL_free(t);
            return NULL;
        }
    }
    return t;
}

static uint64_t new_key_id(void)
{
    return atomic_fetch_add_explicit(&rl_key_ids, 1, memory_order_relaxed) + 1;
}

static void capture_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    SK_UNUSED(parent);
    SK_UNUSED(ad);
    SK_UNUSED(idx);
    SK_UNUSED(argl);
    SK_UNUSED(argp);
    OPENSSL_clear_free(ptr, sizeof(rl_capture));
}

static void rl_init(void)
{
    static const char *const names[SUITES] = {"AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"};
    mds[HASH_SHA256] = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    mds[HASH_SHA384] = EVP_MD_fetch(NULL, "SHA2-384", NULL);
    bool ok = mds[HASH_SHA256] && mds[HASH_SHA384];
    for (int h = 0; ok && h < HASHES; h++)
        ok = EVP_MD_get_size(mds[h]) == hash_lens[h] &&
             EVP_MD_get_block_size(mds[h]) == hash_blocks[h];
    for (int i = 0; i < SUITES; i++) {
        suites[i].cipher = EVP_CIPHER_fetch(NULL, names[i], NULL);
        suites[i].hash = i == SUITE_AES256 ? HASH_SHA384 : HASH_SHA256;
        suites[i].klen = i == SUITE_AES128 ? 16 : 32;
        suites[i].hlen = hash_lens[suites[i].hash];
        ok = ok && suites[i].cipher && EVP_CIPHER_get_key_length(suites[i].cipher) == suites[i].klen &&
             EVP_CIPHER_get_iv_length(suites[i].cipher) == RL_IV;
    }
    rl_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, capture_free);
    ok = ok && rl_idx >= 0 && pthread_key_create(&rl_tkey, tkey_free) == 0;
    ERR_clear_error();
    rl_ready = ok;
}

static rl_capture *capture_of(const SSL *ssl, bool create)
{
    rl_capture *cap = SSL_get_ex_data(ssl, rl_idx);
    if (cap || !create)
        return cap;
    cap = OPENSSL_zalloc(sizeof *cap);
    if (cap && !SSL_set_ex_data((SSL *)ssl, rl_idx, cap)) {
        OPENSSL_free(cap);
        cap = NULL;
    }
    return cap;
}

static int hexval(char h)
{
    if (h >= '0' && h <= '9')
        return h - '0';
    if (h >= 'a' && h <= 'f')
        return h - 'a' + 10;
    if (h >= 'A' && h <= 'F')
        return h - 'A' + 10;
    return -1;
}

/* "<LABEL> <client random hex> <secret hex>": keeps the two application
 * traffic secrets. The line is never copied or printed anywhere. */
static void keylog_cb(const SSL *ssl, const char *line)
{
    static const char cl[] = "CLIENT_TRAFFIC_SECRET_0 ", sl[] = "SERVER_TRAFFIC_SECRET_0 ";
    bool client = strncmp(line, cl, sizeof cl - 1) == 0;
    if (!client && strncmp(line, sl, sizeof sl - 1) != 0) {
        sk_tls_yield_point(ssl); /* a secret was derived: a heartbeat may go first */
        return;
    }
    const char *p = strchr(line + sizeof cl - 1, ' ');
    rl_capture *cap = p ? capture_of(ssl, true) : NULL;
    if (!cap)
        return;
    p++;
    size_t hex = strlen(p);
    uint8_t *out = client ? cap->csec : cap->ssec;
    uint8_t *len = client ? &cap->clen : &cap->slen;
    *len = 0;
    if (hex % 2 || hex / 2 > RL_MAX_SECRET)
        return;
    for (size_t i = 0; i < hex / 2; i++) {
        int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = (uint8_t)(hex / 2);
}

/* Counts what the server writes: every record's bytes, and the records made
 * after its Finished message (the header of a message's record comes before
 * the message's own callback, so the Finished's record is not among them). */
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg)
{
    SK_UNUSED(version);
    SK_UNUSED(arg);
    sk_tls_yield_point(ssl); /* a step of the handshake ended: a heartbeat may go first */
    if (!write_p)
        return;
    const uint8_t *b = buf;
    if (content_type == SSL3_RT_HEADER && len == RL_HDR) {
        rl_capture *cap = capture_of(ssl, true);
        if (!cap)
            return;
        cap->written += RL_HDR + ((size_t)b[3] << 8 | b[4]);
        if (cap->fin)
            cap->after_fin++;
    } else if (content_type == SSL3_RT_HANDSHAKE && len >= 1 && b[0] == SSL3_MT_FINISHED) {
        rl_capture *cap = capture_of(ssl, true);
        if (cap)
            cap->fin = true;
    }
}

bool sk_tls_rl_install(SSL_CTX *ctx)
{
    pthread_once(&rl_once, rl_init);
    if (!rl_ready)
        return false;
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    SSL_CTX_set_msg_callback(ctx, msg_cb);
    return true;
}

void sk_tls_rl_forget(SSL *ssl)
{
    if (!rl_ready)
        return;
    SSL_set_msg_callback(ssl, NULL);
    rl_capture *cap = SSL_get_ex_data(ssl, rl_idx);
    if (cap) {
        SSL_set_ex_data(ssl, rl_idx, NULL);
        OPENSSL_clear_free(cap, sizeof *cap);
    }
}

/* ------------------------------------------------------------ keys */

/* HMAC(key, a | b) (RFC 2104) with hash h on digest context c; key is the
 * hash's length, shorter than its block, so it is only padded. */
static bool hmac(EVP_MD_CTX *c, int h, const uint8_t *key, const uint8_t *a, size_t alen,
                 const uint8_t *b, size_t blen, uint8_t *out)
{
    size_t hlen = hash_lens[h], block = hash_blocks[h];
    uint8_t pad[128], inner[RL_MAX_SECRET];
    for (size_t i = 0; i < block; i++)
        pad[i] = (uint8_t)((i < hlen ? key[i] : 0) ^ 0x36);
    bool ok = EVP_DigestInit_ex2(c, mds[h], NULL) == 1 && EVP_DigestUpdate(c, pad, block) == 1 &&
              EVP_DigestUpdate(c, a, alen) == 1 && EVP_DigestUpdate(c, b, blen) == 1 &&
              EVP_DigestFinal_ex(c, inner, NULL) == 1;
    for (size_t i = 0; i < block; i++)
        pad[i] ^= 0x36 ^ 0x5c;
    ok = ok && EVP_DigestInit_ex2(c, mds[h], NULL) == 1 && EVP_DigestUpdate(c, pad, block) == 1 &&
         EVP_DigestUpdate(c, inner, hlen) == 1 && EVP_DigestFinal_ex(c, out, NULL) == 1;
    OPENSSL_cleanse(pad, sizeof pad);
    OPENSSL_cleanse(inner, sizeof inner);
    return ok;
}

/* HKDF-Expand-Label(secret, label, "", out_len) of RFC 8446 §7.1 with hash
 * h, secret being that hash's length: HKDF-Expand (RFC 5869 §2.3), T(i) =
 * HMAC(secret, T(i-1) | info | i). The digest was fetched once (rl_init)
 * and the context is this thread's: no lookup by name per call (EVP_KDF's
 * HKDF took the digest by name on every derivation, most of its 2-2.5 us
 * on OpenSSL 3.0). The context is initialised again at the end so that it
 * does not keep the last hash state. */
static bool expand_label(int h, const uint8_t *secret, const char *label, uint8_t *out,
                         size_t out_len)
{
    size_t hlen = hash_lens[h], ll = strlen(label);
    if (ll > 255 - 6 || out_len > 255 * hlen)
        return false;
    rl_thread *t = thread_state();
    if (!t || (!t->md[h] && !(t->md[h] = EVP_MD_CTX_new())))
        return false;
    uint8_t info[2 + 1 + 255 + 1 + 1]; /* HkdfLabel, then the counter i */
    size_t n = 10 + ll;
    info[0] = (uint8_t)(out_len >> 8);
    info[1] = (uint8_t)out_len;
    info[2] = (uint8_t)(6 + ll);
    memcpy(info + 3, "tls13 ", 6);
    memcpy(info + 9, label, ll);
    info[9 + ll] = 0; /* empty context */
    uint8_t block[RL_MAX_SECRET]; /* T(i) */
    size_t done = 0;
    bool ok = true;
    for (int i = 1; ok && done < out_len; i++) {
        info[n] = (uint8_t)i;
        ok = hmac(t->md[h], h, secret, block, i == 1 ? 0 : hlen, info, n + 1, block);
        size_t take = out_len - done < hlen ? out_len - done : hlen;
        if (ok)
            memcpy(out + done, block, take);
        done += take;
    }
    OPENSSL_cleanse(block, sizeof block);
    if (EVP_DigestInit_ex2(t->md[h], mds[h], NULL) != 1) {
        EVP_MD_CTX_free(t->md[h]); /* made again on the next call */
        t->md[h] = NULL;
    }
    return ok;
}

bool sk_tls_rl_expand_label(size_t hash_len, const uint8_t *secret, const char *label,
                            uint8_t *out, size_t out_len)
{
    pthread_once(&rl_once, rl_init);
    if (!rl_ready || (hash_len != hash_lens[HASH_SHA256] && hash_len != hash_lens[HASH_SHA384]))
        return false;
    bool ok = expand_label(hash_len == hash_lens[HASH_SHA256] ? HASH_SHA256 : HASH_SHA384, secret,
                           label, out, out_len);
    ERR_clear_error();
    return ok;
}

static bool traffic_keys(const rl_suite *s, const uint8_t *secret, uint8_t *key, uint8_t *iv)
{
    return expand_label(s->hash, secret, "key", key, s->klen) &&
           expand_label(s->hash, secret, "iv", iv, RL_IV);
}

/* secret = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length), then
 * its key and IV (RFC 8446 §7.2). */
static bool update_secret(const rl_suite *s, uint8_t *secret, uint8_t *key, uint8_t *iv)
{
    uint8_t next[RL_MAX_SECRET];
    bool ok = expand_label(s->hash, secret, "traffic upd", next, s->hlen);
    if (ok) {
        memcpy(secret, next, s->hlen);
        ok = traffic_keys(s, secret, key, iv);
    }
    OPENSSL_cleanse(next, sizeof next);
    return ok;
}

sk_tls_rl *sk_tls_rl_detach(SSL *ssl)
{
    if (!rl_ready)
        return NULL;
    rl_capture *cap = SSL_get_ex_data(ssl, rl_idx);
    sk_tls_rl *rl = NULL;
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    int suite = -1;
    switch (cipher ? SSL_CIPHER_get_protocol_id(cipher) : 0) {
    case 0x1301:
        suite = SUITE_AES128;
        break;
    case 0x1302:
        suite = SUITE_AES256;
        break;
    case 0x1303:
        suite = SUITE_CHACHA;
        break;
    }
    const rl_suite *s = suite >= 0 ? &suites[suite] : NULL;
    BIO *wbio = SSL_get_wbio(ssl);
    if (!cap || !s || SSL_version(ssl) != TLS1_3_VERSION || !SSL_is_init_finished(ssl) ||
        SSL_pending(ssl) != 0 || SSL_has_pending(ssl) || cap->clen != s->hlen ||
        cap->slen != s->hlen || !cap->fin || !wbio || BIO_number_written(wbio) != cap->written ||
        (SSL_get_shutdown(ssl) & (SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)))
        goto out;
    rl = OPENSSL_zalloc(sizeof *rl);
    if (!rl)
        goto out;
    rl->suite = (uint8_t)suite;
    memcpy(rl->rsec, cap->csec, s->hlen);
    memcpy(rl->wsec, cap->ssec, s->hlen);
    rl->wseq = cap->after_fin;
    rl->rkid = new_key_id();
    rl->wkid = new_key_id();
    if (!traffic_keys(s, rl->rsec, rl->rkey, rl->riv) ||
        !traffic_keys(s, rl->wsec, rl->wkey, rl->wiv)) {
        sk_tls_rl_free(rl);
        rl = NULL;
        goto out;
    }
    /* SSL_free removes the session of a connection that did not shut down
     * from a server session cache (a "bad" session): the inter-router
     * context's stateful tickets would never resume. Marked (nothing is
     * sent), freeing keeps it. */
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN);
out:
    ERR_clear_error();
    sk_tls_rl_forget(ssl);
    return rl;
}

/* The cipher contexts of this thread that hold one of rl's keys forget it
 * (their provider state is cleansed and freed; the next use keys them from
 * scratch), so a closed connection's keys do not stay in memory until
 * another connection of its suite uses the context. rl is freed by the
 * thread that used it (its worker), or its keys are in no context here. */
static void forget_keys(const sk_tls_rl *rl)
{
    rl_thread *t = pthread_getspecific(rl_tkey);
    if (!t)
        return;
    for (int d = 0; d < 2; d++) {
        uint64_t *kid = &t->key_id[rl->suite][d];
        if (*kid != 0 && *kid == (d ? rl->wkid : rl->rkid)) {
            EVP_CIPHER_CTX_reset(t->ctx[rl->suite][d]);
            *kid = 0;
        }
    }
}

void sk_tls_rl_free(sk_tls_rl *rl)
{
    if (!rl)
        return;
    forget_keys(rl);
    OPENSSL_free(rl->rbuf);
    OPENSSL_free(rl->wbuf);
    OPENSSL_clear_free(rl, sizeof *rl);
}

/* ------------------------------------------------------------ AEAD */

/* This thread's cipher context for rl's suite and direction, keyed with
 * rl's current key of that direction (keying takes 0.2-0.7 us: skipped
 * when the context still holds that key). */
static EVP_CIPHER_CTX *burst_ctx(const sk_tls_rl *rl, int enc)
{
    rl_thread *t = thread_state();
    if (!t)
        return NULL;
    EVP_CIPHER_CTX **c = &t->ctx[rl->suite][enc];
    uint64_t *kid = &t->key_id[rl->suite][enc], want = enc ? rl->wkid : rl->rkid;
    if (!*c && !(*c = EVP_CIPHER_CTX_new()))
        return NULL;
    if (*kid == want)
        return *c;
    *kid = 0;
    if (EVP_CipherInit_ex2(*c, suites[rl->suite].cipher, enc ? rl->wkey : rl->rkey, NULL, enc,
                           NULL) != 1)
        return NULL;
    *kid = want;
    return *c;
}

static void nonce(uint8_t *out, const uint8_t *iv, uint64_t seq)
{
    memcpy(out, iv, RL_IV);
    for (int i = 0; i < 8; i++)
        out[RL_IV - 1 - i] ^= (uint8_t)(seq >> (8 * i));
}

/* Seals inner (n bytes, the type byte included) at out + RL_HDR in place
 * and writes the header at out. */
static bool seal(EVP_CIPHER_CTX *ctx, const uint8_t *iv, uint64_t seq, uint8_t *out, size_t n)
{
    size_t len = n + RL_TAG;
    out[0] = SSL3_RT_APPLICATION_DATA;
    out[1] = 0x03;
    out[2] = 0x03;
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
    uint8_t iv_n[RL_IV];
    nonce(iv_n, iv, seq);
    int l = 0;
    return EVP_CipherInit_ex2(ctx, NULL, NULL, iv_n, 1, NULL) == 1 &&
           EVP_CipherUpdate(ctx, NULL, &l, out, RL_HDR) == 1 &&
           EVP_CipherUpdate(ctx, out + RL_HDR, &l, out + RL_HDR, (int)n) == 1 &&
           EVP_CipherFinal_ex(ctx, out + RL_HDR + n, &l) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, RL_TAG, out + RL_HDR + n) == 1;
}

/* Opens the record at rec (header, len bytes of body) in place: true when
 * the tag verified. */
static bool open_rec(EVP_CIPHER_CTX *ctx, const uint8_t *iv, uint64_t seq, uint8_t *rec,
                     size_t len)
{
    uint8_t iv_n[RL_IV];
    nonce(iv_n, iv, seq);
    int l = 0;
    size_t n = len - RL_TAG;
    return EVP_CipherInit_ex2(ctx, NULL, NULL, iv_n, 0, NULL) == 1 &&
           EVP_CipherUpdate(ctx, NULL, &l, rec, RL_HDR) == 1 &&
           EVP_CipherUpdate(ctx, rec + RL_HDR, &l, rec + RL_HDR, (int)n) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, RL_TAG, rec + RL_HDR + n) == 1 &&
           EVP_CipherFinal_ex(ctx, rec + RL_HDR + n, &l) == 1;
}

/* ------------------------------------------------------------ reading */

static void rbuf_release(sk_tls_rl *rl)
{
    if (rl->rbuf && rl->ppos == rl->pend && rl->rpos == rl->rend) {
        OPENSSL_free(rl->rbuf); /* not cleansed, as OpenSSL's record buffers */
        rl->rbuf = NULL;
        rl->rpos = rl->rend = rl->ppos = rl->pend = 0;
    }
}

/* A whole record waits in the read buffer. */
static bool record_buffered(const sk_tls_rl *rl)
{
    if (rl->rend - rl->rpos < RL_HDR)
        return false;
    const uint8_t *h = rl->rbuf + rl->rpos;
    return rl->rend - rl->rpos >= RL_HDR + ((uint32_t)h[3] << 8 | h[4]);
}

/* Decrypts and handles the next record of the buffer: 1 done (application
 * bytes at ppos..pend, maybe none), 0 the record is not complete, -2 fatal. */
static int next_record(sk_tls_rl *rl, EVP_CIPHER_CTX **ctx)
{
    uint32_t avail = rl->rend - rl->rpos;
    if (avail < RL_HDR)
        return 0;
    uint8_t *rec = rl->rbuf + rl->rpos;
    uint32_t len = (uint32_t)rec[3] << 8 | rec[4];
    /* after the handshake every record is protected: outer type 23 */
    if (rec[0] != SSL3_RT_APPLICATION_DATA || rec[1] != 0x03 || rec[2] != 0x03 || len > RL_MAX_CT ||
        len < RL_TAG + 1)
        return -2;
    if (avail < RL_HDR + len)
        return 0;
    if (rl->rseq == UINT64_MAX)
        return -2; /* never wraps */
    if (!*ctx && !(*ctx = burst_ctx(rl, 0)))
        return -2;
    if (!open_rec(*ctx, rl->riv, rl->rseq, rec, len))
        return -2; /* bad tag: nothing of it is returned */
    rl->rseq++;
    uint32_t n = len - RL_TAG;
    uint8_t *pt = rec + RL_HDR;
    while (n > 0 && pt[n - 1] == 0)
        n--;
    if (n == 0)
        return -2; /* no content type */
    uint8_t type = pt[--n];
    if (n > RL_MAX_PT)
        return -2;
    rl->rpos += RL_HDR + len;
    switch (type) {
    case SSL3_RT_APPLICATION_DATA:
        rl->ppos = (uint32_t)(pt - rl->rbuf);
        rl->pend = rl->ppos + n;
        return 1;
    case SSL3_RT_ALERT:
        if (n == 2 && pt[1] == SSL3_AD_CLOSE_NOTIFY) {
            rl->eof = rl->close_notify = true;
            return 1;
        }
        return -2;
    case SSL3_RT_HANDSHAKE: {
        /* only KeyUpdate, alone in its record (the key changes after it) */
        if (n != 5 || pt[0] != SSL3_MT_KEY_UPDATE || pt[1] || pt[2] || pt[3] != 1 || pt[4] > 1)
            return -2;
        const rl_suite *s = &suites[rl->suite];
        if (!update_secret(s, rl->rsec, rl->rkey, rl->riv))
            return -2;
        rl->rseq = 0;
        rl->rkid = new_key_id();
        *ctx = NULL; /* rekey for the next record */
        if (pt[4] == SSL_KEY_UPDATE_REQUESTED)
            rl->ku_owed = true;
        return 1;
    }
    default:
        return -2;
    }
}

/* Reads what the socket has into the read buffer: >0, 0 EOF, -1, -2. */
static ssize_t fill(sk_tls_rl *rl, int fd)
{
    if (!rl->rbuf) {
        if (!(rl->rbuf = OPENSSL_malloc(RL_RBUF)))
            return -2;
        rl->rpos = rl->rend = rl->ppos = rl->pend = 0;
    }
    if (rl->ppos == rl->pend && rl->rpos > 0 && RL_RBUF - rl->rend < RL_HDR + RL_MAX_CT) {
        memmove(rl->rbuf, rl->rbuf + rl->rpos, rl->rend - rl->rpos);
        rl->rend -= rl->rpos;
        rl->rpos = rl->ppos = rl->pend = 0;
    }
    if (rl->rend == RL_RBUF)
        return -2; /* cannot happen: a record fits after the move */
    ssize_t n = recv(fd, rl->rbuf + rl->rend, RL_RBUF - rl->rend, 0);
    if (n > 0) {
        rl->rend += (uint32_t)n;
        return n;
    }
    if (n == 0)
        return 0;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -2;
}

ssize_t sk_tls_rl_recv(sk_tls_rl *rl, int fd, void *buf, size_t len, bool peek)
{
    if (rl->failed)
        return -2;
    size_t got = 0;
    EVP_CIPHER_CTX *ctx = NULL;
    bool blocked = false;
    while (got < len) {
        if (rl->ppos < rl->pend) {
            size_t n = rl->pend - rl->ppos;
            if (n > len - got)
                n = len - got;
            memcpy((uint8_t *)buf + got, rl->rbuf + rl->ppos, n);
            got += n;
            if (peek)
                break;
            rl->ppos += (uint32_t)n;
            continue;
        }
        if (rl->eof || blocked)
            break;
        int r = next_record(rl, &ctx);
        if (r < 0) {
            rl->failed = true;
            break;
        }
        if (r > 0)
            continue;
        if (got > 0)
            break; /* bytes to return: the socket is read on the next call
                    * (a read here would mostly find nothing, EAGAIN) */
        ssize_t f = fill(rl, fd);
        if (f == 0) {
            rl->eof = true; /* end of stream without close_notify */
        } else if (f == -1) {
            blocked = true;
        } else if (f < 0) {
            rl->failed = true;
            break;
        }
    }
    rbuf_release(rl);
    if (got > 0)
        return (ssize_t)got;
    if (rl->failed)
        return -2;
    if (rl->eof)
        return 0;
    return -1;
}

bool sk_tls_rl_pending(const sk_tls_rl *rl)
{
    return rl->ppos < rl->pend || record_buffered(rl) || rl->eof || rl->failed;
}

bool sk_tls_rl_close_notify(const sk_tls_rl *rl)
{
    return rl->close_notify;
}

/* ------------------------------------------------------------ writing */

/* Writes wbuf: 1 all of it, 0 some remains, -2 error. */
static int wflush(sk_tls_rl *rl, int fd)
{
    while (rl->wpos < rl->wend) {
        ssize_t n = send(fd, rl->wbuf + rl->wpos, rl->wend - rl->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            rl->wpos += (uint32_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return 0;
        return -2;
    }
    OPENSSL_free(rl->wbuf); /* ciphertext only: sealed in place */
    rl->wbuf = NULL;
    rl->wpos = rl->wend = rl->wcap = 0;
    return 1;
}

/* Room for `more` bytes at the end of wbuf. */
static bool wreserve(sk_tls_rl *rl, size_t more)
{
    if (rl->wcap - rl->wend >= more)
        return true;
    size_t cap = rl->wend - rl->wpos + more;
    uint8_t *b = OPENSSL_malloc(cap);
    if (!b)
        return false;
    if (rl->wbuf) {
        memcpy(b, rl->wbuf + rl->wpos, rl->wend - rl->wpos);
        OPENSSL_free(rl->wbuf);
    }
    rl->wend -= rl->wpos;
    rl->wpos = 0;
    rl->wbuf = b;
    rl->wcap = (uint32_t)cap;
    return true;
}

/* Appends one record of inner type `type` with content data (n bytes). */
static bool append_record(sk_tls_rl *rl, EVP_CIPHER_CTX **ctx, uint8_t type, const void *data,
                          size_t n)
{
    if (rl->wseq == UINT64_MAX)
        return false; /* never wraps: the connection closes instead */
    if (!*ctx && !(*ctx = burst_ctx(rl, 1)))
        return false;
    if (!wreserve(rl, RL_HDR + n + 1 + RL_TAG))
        return false;
    uint8_t *out = rl->wbuf + rl->wend;
    memcpy(out + RL_HDR, data, n);
    out[RL_HDR + n] = type;
    if (!seal(*ctx, rl->wiv, rl->wseq, out, n + 1))
        return false;
    rl->wseq++;
    rl->wend += (uint32_t)(RL_HDR + n + 1 + RL_TAG);
    return true;
}

/* Our KeyUpdate (update_not_requested), then the new write key. */
static bool append_key_update(sk_tls_rl *rl, EVP_CIPHER_CTX **ctx)
{
    static const uint8_t ku[5] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, SSL_KEY_UPDATE_NOT_REQUESTED};
    if (!append_record(rl, ctx, SSL3_RT_HANDSHAKE, ku, sizeof ku))
        return false;
    if (!update_secret(&suites[rl->suite], rl->wsec, rl->wkey, rl->wiv))
        return false;
    rl->wseq = 0;
    rl->wkid = new_key_id();
    *ctx = NULL;
    rl->ku_owed = false;
    return true;
}

ssize_t sk_tls_rl_send(sk_tls_rl *rl, int fd, const void *buf, size_t len)
{
    if (rl->failed || rl->wclosed)
        return -2;
    if (rl->wpos < rl->wend) {
        /* records of an earlier call wait: the caller retries with the
         * same bytes (OpenSSL's rule); when they are out, they count */
        int f = wflush(rl, fd);
        if (f < 0)
            goto fail;
        if (f == 0)
            return -1;
        size_t done = rl->wpt;
        rl->wpt = 0;
        if (done > len)
            goto fail;
        if (done > 0)
            return (ssize_t)done;
    }
    if (len == 0)
        return 0;
    EVP_CIPHER_CTX *ctx = NULL;
    size_t total = 0;
    while (total < len) {
        /* our KeyUpdate first when the peer asked for one, or when this key
         * wrote its share of records (AES-GCM's limit, RFC 8446 §5.5) */
        uint64_t limit = atomic_load_explicit(&rekey_records, memory_order_relaxed);
        if (rl->wseq >= limit)
            rl->ku_owed = true;
        if (rl->ku_owed) {
            if (!append_key_update(rl, &ctx))
                goto fail;
            int f = wflush(rl, fd);
            if (f < 0)
                goto fail;
            if (f == 0) /* wpt 0: the retry writes it, then the data */
                return total > 0 ? (ssize_t)total : -1;
        }
        /* a batch of records, one send(2) */
        size_t left = len - total, nrec = (left + RL_MAX_PT - 1) / RL_MAX_PT;
        size_t most = limit - rl->wseq < RL_WBATCH ? (size_t)(limit - rl->wseq) : RL_WBATCH;
        if (nrec > most) { /* no more than the key may still seal */
            nrec = most;
            left = most * RL_MAX_PT;
        }
        if (!wreserve(rl, left + nrec * (RL_HDR + 1 + RL_TAG)))
            goto fail;
        for (size_t off = 0; off < left; off += RL_MAX_PT) {
            size_t n = left - off < RL_MAX_PT ? left - off : RL_MAX_PT;
            if (!append_record(rl, &ctx, SSL3_RT_APPLICATION_DATA,
                               (const uint8_t *)buf + total + off, n))
                goto fail;
        }
        int f = wflush(rl, fd);
        if (f < 0)
            goto fail;
        if (f == 1) {
            total += left;
            continue;
        }
        /* the records written in full count now; the others wait in wbuf
         * for the caller's retry with the same bytes */
        size_t full = 0;
        for (uint32_t at = 0;;) {
            uint32_t rlen = RL_HDR + ((uint32_t)rl->wbuf[at + 3] << 8 | rl->wbuf[at + 4]);
            if (at + rlen > rl->wpos)
                break;
            full += rlen - RL_HDR - 1 - RL_TAG;
            at += rlen;
        }
        total += full;
        rl->wpt = (uint32_t)(left - full);
        break;
    }
    return total > 0 ? (ssize_t)total : -1;
fail:
    rl->failed = true;
    return -2;
}

void sk_tls_rl_shutdown(sk_tls_rl *rl, int fd)
{
    if (rl->failed || rl->wclosed)
        return;
    static const uint8_t alert[2] = {SSL3_AL_WARNING, SSL3_AD_CLOSE_NOTIFY};
    EVP_CIPHER_CTX *ctx = NULL;
    rl->wclosed = true;
    if (append_record(rl, &ctx, SSL3_RT_ALERT, alert, sizeof alert))
        (void)wflush(rl, fd); /* best effort: never waits */
}
