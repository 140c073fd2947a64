/* tls_io.c -- TLS on a connection: attaching a pinned config, the handshake
 * phase, record I/O, and the ready list.
 *
 * Loading TLS material is tls.c's (a loader thread); everything here runs on
 * an I/O worker. A connection pins the slot's config version it started with
 * (sk_tls_close_older later closes those on a retired version). The handshake
 * is a phase of its own (on_io and time-out) between accept or connect and
 * the relay. OpenSSL may need the other readiness than the data does
 * (tls_rd_wants_out, tls_wr_wants_in) and may hold decrypted bytes that wake
 * no epoll: those connections go on the worker's ready list, read at the end
 * of the batch. Plain I/O stays in conn.c and never calls in here.
 *
 * A server connection whose TLS 1.3 handshake ends cleanly leaves OpenSSL
 * (tls_detach): its SSL is freed and tls_rl.c carries its records; every
 * function below serves both kinds (c->ssl or c->rl). */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <openssl/async.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define SK_HANDSHAKE_TIMEOUT_MS 10000

/* ------------------------------------------------------------ yielding */

/* A TLS 1.3 server flight is one SSL_do_handshake call: the ClientHello's
 * key share, our key pair and the shared secret, the certificate message,
 * the signature and Finished, some 300-500 us of a worker's CPU with
 * OpenSSL 3.0, and the accept that reads a ClientHello already there runs it
 * too. Heartbeats due meanwhile used to wait for the whole of it. With
 * SSL_MODE_ASYNC the handshake runs as an OpenSSL async job (its own stack);
 * OpenSSL calls our message callback at every record and handshake message
 * and the key log callback at every secret, and there sk_tls_yield_point
 * pauses the job when a high timer of the worker is due. SSL_do_handshake
 * then returns SSL_ERROR_WANT_ASYNC, tls_handshake runs the due timers
 * (sk_worker_high_check) and resumes the job where it stopped. Nothing is
 * paused when no heartbeat is due: the check is one clock read. Only the
 * handshake runs in a job; the mode is cleared when it ends. OpenSSL's own
 * providers never pause a job; an ENGINE that does (hardware offload
 * configured in openssl.cnf) would make tls_handshake resume it at once,
 * again and again, until its work is done: not supported. */

#if SKIFF_TLS_YIELD
static pthread_once_t yield_once = PTHREAD_ONCE_INIT;
static bool yield_capable;

static void yield_init(void)
{
    yield_capable = ASYNC_is_capable() == 1;
}
#endif

void sk_tls_yield_point(const SSL *ssl)
{
#if SKIFF_TLS_YIELD
    if (ASYNC_get_current_job() == NULL)
        return; /* not in a handshake's job (records after it, a test's SSL) */
    sk_conn *c = SSL_get_app_data(ssl);
    if (!c || c->tls_no_yield || !c->worker)
        return;
    /* not due: sampled there as at an in-batch check, so that a timer's
     * dispatch CPU counts from a point of this handshake */
    if (sk_worker_high_due(c->worker))
        ASYNC_pause_job(); /* back in tls_handshake, which runs the timer */
#else
    SK_UNUSED(ssl);
#endif
}

#if SKIFF_TLS_YIELD
/* A client handshake's message callback: only the pause points. */
static void yield_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                         SSL *ssl, void *arg)
{
    SK_UNUSED(write_p);
    SK_UNUSED(version);
    SK_UNUSED(content_type);
    SK_UNUSED(buf);
    SK_UNUSED(len);
    SK_UNUSED(arg);
    sk_tls_yield_point(ssl);
}

/* Two more points on a server, both before our key share is made: the
 * ClientHello callback (before its extensions are parsed, the client's key
 * share decoded) and the certificate callback (after, before the
 * ServerHello is built). */
static int yield_client_hello_cb(SSL *ssl, int *alert, void *arg)
{
    SK_UNUSED(alert);
    SK_UNUSED(arg);
    sk_tls_yield_point(ssl);
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int yield_cert_cb(SSL *ssl, void *arg)
{
    SK_UNUSED(arg);
    sk_tls_yield_point(ssl);
    return 1;
}

#endif

void sk_tls_yield_install(SSL_CTX *ctx)
{
#if SKIFF_TLS_YIELD
    SSL_CTX_set_client_hello_cb(ctx, yield_client_hello_cb, NULL);
    SSL_CTX_set_cert_cb(ctx, yield_cert_cb, NULL);
#else
    SK_UNUSED(ctx);
#endif
}

static void yield_enable(SSL *ssl, bool server)
{
#if SKIFF_TLS_YIELD
    pthread_once(&yield_once, yield_init);
    if (!yield_capable)
        return;
    SSL_set_mode(ssl, SSL_MODE_ASYNC);
    if (!server) /* the server contexts' message callback is tls_rl.c's */
        SSL_set_msg_callback(ssl, yield_msg_cb);
#else
    SK_UNUSED(ssl);
    SK_UNUSED(server);
#endif
}

/* The handshake ended (or is given up): records run outside any job. */
static void yield_disable(SSL *ssl)
{
    SSL_clear_mode(ssl, SSL_MODE_ASYNC);
    if (!SSL_is_server(ssl)) /* a client's callback is yield_msg_cb alone */
        SSL_set_msg_callback(ssl, NULL);
}

/* ------------------------------------------------------------ attach */

/* cached: a server takes the context with the session cache (server_links) */
static bool tls_attach(sk_worker *w, sk_conn *c, int slot, bool server, bool cached)
{
    sk_tls_config *cfg = sk_tls_current(w, slot);
    SSL_CTX *ctx = cfg ? (server ? (cached ? cfg->server_links : cfg->server) : cfg->client) : NULL;
    if (!ctx)
        return false; /* never loaded: refuse rather than fall back to plaintext */
    SSL *ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, c->fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return false;
    }
    sk_snap_ref(&cfg->snap);
    pthread_mutex_lock(&w->conn_lock);
    c->tls = cfg;
    pthread_mutex_unlock(&w->conn_lock);
    c->ssl = ssl;
    c->tls_slot = slot;
    SSL_set_app_data(ssl, c);
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    yield_enable(ssl, server);
    return true;
}

bool sk_tls_io_attach_server(sk_worker *w, sk_conn *c, const sk_listener *l)
{
    /* the inter-router listeners' context has the bounded session cache */
    bool cache = l->opts.data_ok || l->opts.tls_resumption == SK_TLS_RESUME_CACHE;
    if (!tls_attach(w, c, l->opts.tls_slot, true, cache))
        return false;
    if (l->opts.tls_resumption == SK_TLS_RESUME_OFF && !l->opts.data_ok)
        SSL_set_num_tickets(c->ssl, 0);
    if (l->opts.authenticate_peer)
        SSL_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    c->tls_sniff = l->opts.tls_optional != 0;
    return true;
}

bool sk_tls_io_attach_client(sk_worker *w, sk_conn *s, const sk_route_target *rt)
{
    if (!tls_attach(w, s, rt->tls_slot, false, false))
        return false;
    if (s->dc)
        sk_dc_tls_resume(w, s); /* a data connection: resume the peer's last session */
    if (!rt->host_is_ip)
        SSL_set_tlsext_host_name(s->ssl, rt->host);
    if (!s->tls->has_ca)
        return true; /* no trust store: the peer is not verified */
    SSL_set_verify(s->ssl, SSL_VERIFY_PEER, NULL);
    if (!rt->verify_host)
        return true;
    const char *h = rt->host[0] ? rt->host : NULL;
    if (!h || rt->host_is_ip) {
        char ip[300];
        snprintf(ip, sizeof ip, "%s", h ? h : rt->label);
        if (!h) /* label is ip:port or [ip]:port */
            *strrchr(ip, ':') = '\0';
        char *v6 = ip[0] == '[' ? ip + 1 : ip;
        char *end = strchr(v6, ']');
        if (end)
            *end = '\0';
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), v6);
    } else {
        SSL_set1_host(s->ssl, h);
    }
    return true;
}

int sk_tls_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    sk_conn *c = SSL_get_app_data(ssl);
    return c && c->dc ? sk_dc_tls_session(c, sess) : 0;
}

void sk_tls_info_cb(const SSL *ssl, int where, int ret)
{
    if ((where & SSL_CB_READ_ALERT) && (ret & 0xff) == SSL3_AD_CLOSE_NOTIFY) {
        sk_conn *c = SSL_get_app_data(ssl);
        if (c)
            c->tls_close_notify = true;
    }
}

/* ------------------------------------------------------------ handshake */

static void tls_record_peer(sk_worker *w, sk_conn *c)
{
    const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
    pthread_mutex_lock(&w->conn_lock);
    c->tls_proto = SSL_get_version(c->ssl);
    c->tls_cipher = cipher ? SSL_CIPHER_get_name(cipher) : NULL;
    pthread_mutex_unlock(&w->conn_lock);
    X509 *pc = SSL_get0_peer_certificate(c->ssl);
    if (!pc)
        return;
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(pc), buf, sizeof buf);
    char *subject = strdup(buf);
    pthread_mutex_lock(&w->conn_lock);
    c->peer_subject = subject;
    pthread_mutex_unlock(&w->conn_lock);
}

/* ------------------------------------------------------------ heap trim */

/* A full handshake allocates and frees some 700 blocks inside OpenSSL (tens
 * of KiB at its peak), between the few hundred bytes each connection keeps.
 * After a burst the allocator keeps the freed pages, scattered between the
 * kept blocks, and the process's resident memory stays at the burst's peak.
 * Once no handshake has ended on a worker for SK_TLS_TRIM_QUIET_MS after at
 * least SK_TLS_TRIM_MIN of them, the free pages go back to the system
 * (malloc_trim: every arena), on a short-lived thread so that no worker
 * runs it (a trim takes milliseconds); one at a time in the process, which
 * is what malloc_trim covers. The thread keeps the ordinary priority: it
 * holds each arena's lock in turn, and preempted at a low priority it would
 * keep a worker's malloc waiting. A steady stream of handshakes never leaves
 * that quiet, so a storm pays nothing. */
#define SK_TLS_TRIM_QUIET_MS 250
#define SK_TLS_TRIM_MIN 16

static _Atomic int heap_trimming;
static _Atomic uint64_t heap_trims;

uint64_t sk_tls_io_heap_trims(void)
{
    return atomic_load(&heap_trims);
}

static void *heap_trim_main(void *arg)
{
    SK_UNUSED(arg);
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    atomic_fetch_add(&heap_trims, 1);
    atomic_store(&heap_trimming, 0);
    return NULL;
}

static void trim_due(sk_worker *w, sk_timer *t, uint64_t now)
{
    uint64_t quiet = SK_TLS_TRIM_QUIET_MS * 1000000ull;
    if (now - w->tls_hs_last_ns < quiet) { /* still busy: wait for the quiet */
        sk_worker_schedule(w, SK_PRIO_NORMAL, t, w->tls_hs_last_ns + quiet);
        return;
    }
    w->tls_hs_untrimmed = 0;
    int idle = 0;
    if (!atomic_compare_exchange_strong(&heap_trimming, &idle, 1))
        return; /* a trim of every arena is running right now */
    pthread_attr_t attr;
    pthread_t th;
    bool started = false;
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&th, &attr, heap_trim_main, NULL) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started)
        atomic_store(&heap_trimming, 0); /* no thread: the next burst tries again */
}

static void handshake_ended(sk_worker *w)
{
    if (!w->tls_trim_init) {
        sk_timer_init(&w->tls_trim, trim_due);
        w->tls_trim_init = true;
    }
    w->tls_hs_last_ns = sk_now_ns();
    if (++w->tls_hs_untrimmed >= SK_TLS_TRIM_MIN && !sk_timer_pending(&w->tls_trim))
        sk_worker_schedule(w, SK_PRIO_NORMAL, &w->tls_trim,
                           w->tls_hs_last_ns + SK_TLS_TRIM_QUIET_MS * 1000000ull);
}

/* A server connection whose handshake just ended: from now on our record
 * layer (tls_rl.c) carries its records when it can, and the SSL object goes
 * (some 14 KB of OpenSSL state). Kept: the pinned config, the protocol and
 * cipher names (static strings of OpenSSL) and the peer's subject. Client
 * sides keep OpenSSL: they take session tickets and resume. */
static void tls_detach(sk_worker *w, sk_conn *c)
{
#if SKIFF_TLS_DETACH
    sk_tls_rl *rl = sk_tls_rl_detach(c->ssl);
    if (!rl)
        return; /* OpenSSL keeps it, as before */
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->rl = rl;
    SK_ADD(&w->engine->tls_detached, 1);
#else
    SK_UNUSED(w);
    sk_tls_rl_forget(c->ssl);
#endif
}

static void tls_failed(sk_worker *w, sk_conn *c)
{
    SK_ADD(&w->engine->tls_failures, 1);
    handshake_ended(w);
    if (c->app_out) {
        sk_app_dial_tls_failed(w, c); /* reads the verify result; clears errors */
        return;
    }
    ERR_clear_error();
    if (c->is_client)
        sk_conn_close(w, c, true);
    else
        sk_connect_failed(w, c, EPROTO); /* try another target */
}

static void handshake_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *c = SK_CONTAINER_OF(t, sk_conn, tmo);
    if (c->state == SK_C_HANDSHAKE)
        tls_failed(w, c);
}

static void tls_handshake(sk_worker *w, sk_conn *c)
{
    if (c->tls_sniff) {
        /* optional TLS: a TLS client starts with a handshake record (0x16) */
        unsigned char first;
        ssize_t n = recv(c->fd, &first, 1, MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            sk_conn_set_interest(w, c, EPOLLIN);
            return;
        }
        c->tls_sniff = false;
        if (n == 1 && first != 0x16) {
            sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
            SSL_free(c->ssl);
            c->ssl = NULL;
            pthread_mutex_lock(&w->conn_lock);
            sk_tls_config *cfg = c->tls;
            c->tls = NULL;
            pthread_mutex_unlock(&w->conn_lock);
            sk_snap_release(&cfg->snap);
            sk_conn_open_client(w, c);
            return;
        }
    }
    int rc, err;
    for (;;) {
        ERR_clear_error();
        rc = SSL_do_handshake(c->ssl);
        err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, rc);
        if (err != SSL_ERROR_WANT_ASYNC)
            break;
        /* paused at sk_tls_yield_point: a heartbeat is due */
        SK_ADD(&w->engine->tls_yields, 1);
        sk_worker_high_check(w);
        if (c->state != SK_C_HANDSHAKE || !c->ssl)
            return; /* a timer closed it (sk_tls_io_close ended the job) */
    }
    if (rc == 1) {
        sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
        yield_disable(c->ssl);
        c->tls_done = true;
        c->tls_want = 0;
        SK_ADD(&w->engine->tls_handshakes, 1);
        if (SSL_session_reused(c->ssl))
            SK_ADD(&w->engine->tls_resumed, 1);
        handshake_ended(w);
        tls_record_peer(w, c);
        if (SSL_is_server(c->ssl))
            tls_detach(w, c);
        if (c->app_out) {
            sk_app_dial_tls_done(w, c);
        } else if (c->is_client) {
            sk_conn_open_client(w, c);
        } else {
            sk_conn_enter(c, SK_C_OPEN, sk_relay_io);
            sk_connect_established(w, c);
        }
        return;
    }
    switch (err) {
    case SSL_ERROR_WANT_READ:
        c->tls_want = EPOLLIN;
        sk_conn_set_interest(w, c, EPOLLIN);
        return;
    case SSL_ERROR_WANT_WRITE:
        c->tls_want = EPOLLOUT;
        sk_conn_set_interest(w, c, EPOLLOUT);
        return;
    default:
        tls_failed(w, c);
    }
}

/* on_io during the handshake. */
static void handshake_io(sk_worker *w, sk_handle *h, uint32_t events)
{
    SK_UNUSED(events);
    tls_handshake(w, SK_CONTAINER_OF(h, sk_conn, h));
}

void sk_tls_io_handshake_start(sk_worker *w, sk_conn *c)
{
    sk_conn_enter(c, SK_C_HANDSHAKE, handshake_io);
    uint64_t ms = (uint64_t)w->engine->opts.connect_timeout_ms;
    if (ms < SK_HANDSHAKE_TIMEOUT_MS)
        ms = SK_HANDSHAKE_TIMEOUT_MS;
    c->tmo.cb = handshake_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo, sk_now_ns() + ms * 1000000u);
    tls_handshake(w, c);
}

/* ------------------------------------------------------------ records */

ssize_t sk_tls_io_recv(sk_worker *w, sk_conn *c, void *buf, size_t len)
{
    if (c->rl) {
        ssize_t n = sk_tls_rl_recv(c->rl, c->fd, buf, len, false);
        if (n == 0) {
            c->tls_close_notify = sk_tls_rl_close_notify(c->rl);
            if (!c->tls_close_notify)
                SK_ADD(&w->engine->tls_unexpected_eof, 1);
        }
        return n;
    }
    size_t got = 0;
    c->tls_rd_wants_out = false;
    ERR_clear_error();
    int rc = SSL_read_ex(c->ssl, buf, len, &got);
    if (rc == 1)
        return (ssize_t)got;
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->tls_rd_wants_out = true;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        /* with SSL_OP_IGNORE_UNEXPECTED_EOF a bare TCP close lands here too,
         * looking like close_notify: only the alert callback tells them apart */
        if (!c->tls_close_notify)
            SK_ADD(&w->engine->tls_unexpected_eof, 1);
        return 0;
    default:
        ERR_clear_error();
        return -2;
    }
}

ssize_t sk_tls_io_send(sk_conn *c, const void *buf, size_t len)
{
    if (c->rl)
        return sk_tls_rl_send(c->rl, c->fd, buf, len);
    size_t put = 0;
    c->tls_wr_wants_in = false;
    ERR_clear_error();
    int rc = SSL_write_ex(c->ssl, buf, len, &put);
    if (rc == 1)
        return (ssize_t)put;
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_WRITE:
        return -1;
    case SSL_ERROR_WANT_READ:
        c->tls_wr_wants_in = true;
        return -1;
    default:
        ERR_clear_error();
        return -2;
    }
}

bool sk_tls_io_pending(const sk_conn *c)
{
    if (c->rl)
        return sk_tls_rl_pending(c->rl);
    return c->ssl && SSL_pending(c->ssl) > 0;
}

uint32_t sk_tls_io_interest(sk_worker *w, sk_conn *c, uint32_t ev, bool may_read)
{
    if (c->tls_rd_wants_out)
        ev |= EPOLLOUT;
    if (c->tls_wr_wants_in)
        ev |= EPOLLIN;
    /* decrypted bytes inside the TLS layer wake no epoll: queue another read */
    if ((ev & EPOLLIN) && may_read && sk_tls_io_pending(c))
        sk_ready_push(w, c);
    return ev;
}

ssize_t sk_tls_io_peek(sk_conn *c, void *buf, size_t len, uint32_t *want)
{
    *want = EPOLLIN;
    if (c->rl)
        return sk_tls_rl_recv(c->rl, c->fd, buf, len, true);
    ERR_clear_error();
    int r = SSL_peek(c->ssl, buf, (int)len);
    if (r > 0)
        return r;
    int se = SSL_get_error(c->ssl, r);
    ERR_clear_error();
    if (se == SSL_ERROR_WANT_READ || se == SSL_ERROR_WANT_WRITE) {
        *want = se == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
        return -1;
    }
    return se == SSL_ERROR_ZERO_RETURN ? 0 : -2;
}

void sk_tls_io_shutdown(sk_conn *c)
{
    if (c->rl) {
        sk_tls_rl_shutdown(c->rl, c->fd);
        return;
    }
    SSL_shutdown(c->ssl);
    ERR_clear_error();
}

void sk_tls_io_close(sk_worker *w, sk_conn *c, bool abortive)
{
    SK_UNUSED(w);
    if (c->rl) {
        if (!abortive && c->tls_done && !c->wr_shut)
            sk_tls_rl_shutdown(c->rl, c->fd); /* best effort close_notify: never waits */
        sk_tls_rl_free(c->rl);
        c->rl = NULL;
        return;
    }
    if (c->ssl && SSL_waiting_for_async(c->ssl)) {
        /* closed while its handshake is paused (by a high timer run at the
         * pause; none closes a connection in its handshake today, so this
         * is a guard): the job holds its own stack and state, which only
         * ending it gives back */
        c->tls_no_yield = true;
        while (SSL_get_error(c->ssl, SSL_do_handshake(c->ssl)) == SSL_ERROR_WANT_ASYNC)
            ;
    }
    if (!abortive && c->tls_done && !c->wr_shut)
        SSL_shutdown(c->ssl); /* best effort close_notify: never waits */
    SSL_free(c->ssl);
    c->ssl = NULL;
    ERR_clear_error();
}

/* ------------------------------------------------------------ ready list */

void sk_ready_push(sk_worker *w, sk_conn *c)
{
    if (c->in_ready)
        return;
    c->in_ready = true;
    c->ready_next = w->ready;
    w->ready = c;
}

void sk_ready_remove(sk_worker *w, sk_conn *c)
{
    for (sk_conn **pp = &w->ready; *pp; pp = &(*pp)->ready_next)
        if (*pp == c) {
            *pp = c->ready_next;
            break;
        }
    c->in_ready = false;
}

void sk_worker_run_ready(sk_worker *w)
{
    sk_conn *list = w->ready;
    w->ready = NULL;
    while (list) {
        sk_conn *c = list;
        list = c->ready_next;
        c->in_ready = false;
        sk_worker_high_check(w);
        if (c->state != SK_C_OPEN)
            continue;
        if (c->app) {
            if (!c->rd_eof)
                sk_app_conn_readable(w, c);
        } else if (c->peer) {
            /* a bulk turn next: what arrived meanwhile for short flows first */
            if (sk_relay_bulk_handle(w, &c->h)) {
                sk_worker_serve_between(w);
                if (c->state != SK_C_OPEN)
                    continue;
            }
            sk_relay_resume(w, c);
        }
    }
}

/* ------------------------------------------------------------ rotation */

static bool tls_older(const sk_conn *c, const void *a, uint64_t ordinal)
{
    return c->tls && c->tls_slot == *(const int *)a && c->tls->ordinal < ordinal;
}

void sk_worker_close_tls_older(sk_worker *w, int slot, uint64_t ordinal)
{
    size_t n = sk_conn_close_matching(w, tls_older, &slot, ordinal);
    SK_ADD(&w->engine->tls_closed_old, n);
}
