/* relay.c -- connections: accept, target choice, outbound connect with
 * retry, and the byte relay between the two sides of a flow.
 *
 * Runs on an I/O worker: nothing here may block. Each readable event reads
 * at most one buffer's worth; each buffer is bounded (relay_buffer_bytes), and
 * a side stops being read while its partner's buffer is full. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define SK_MAX_TRIES 8

void sk_format_addr(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        port = ntohs(s->sin_port);
        snprintf(out, outlen, "%s:%d", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        port = ntohs(s->sin6_port);
        snprintf(out, outlen, "[%s]:%d", ip, port);
    } else {
        snprintf(out, outlen, "?");
    }
}

static void connect_timeout(sk_worker *w, sk_timer *t, uint64_t now);

static void link_conn(sk_worker *w, sk_conn *c)
{
    pthread_mutex_lock(&w->conn_lock);
    c->prev = NULL;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    pthread_mutex_unlock(&w->conn_lock);
    SK_BUMP(&w->nconns, 1);
}

/* Caller holds conn_lock. */
static void unlink_locked(sk_worker *w, sk_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

sk_conn *sk_conn_new(sk_worker *w, int fd, sk_listener *l, const struct sockaddr *peer)
{
    sk_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->h.kind = SK_H_CONN;
    c->worker = w;
    c->fd = fd;
    if (l) {
        /* set before the connection is linked: listings read these */
        sk_listener_ref(l);
        c->listener = l;
        c->is_client = true;
    }
    if (peer)
        sk_format_addr(peer, c->label, sizeof c->label);
    c->id = sk_engine_next_id(w->engine);
    c->opened_ns = sk_now_ns();
    sk_timer_init(&c->tmo, connect_timeout);
    SK_ADD(&w->engine->conns_live, 1);
    link_conn(w, c);
    return c;
}

void sk_conn_free(sk_worker *w, sk_conn *c)
{
    SK_SUB(&w->engine->conns_live, 1);
    sk_listener_release(c->listener);
    sk_target_release(c->target);
    if (c->tls)
        sk_snap_release(&c->tls->snap);
    free(c->peer_subject);
    free(c);
}

void sk_conn_set_interest(sk_worker *w, sk_conn *c, uint32_t ev)
{
    if (c->state == SK_C_CLOSED)
        return;
    if (ev == 0) {
        /* level-triggered HUP/ERR would fire with an empty mask: leave the set */
        if (c->registered) {
            epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
            c->registered = false;
        }
        c->events = 0;
        return;
    }
    if (c->registered && ev == c->events)
        return;
    int op = c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (sk_worker_epoll(w, op, c->fd, ev, &c->h) != 0) {
        sk_conn_close(w, c, true);
        return;
    }
    c->registered = true;
    c->events = ev;
}

static void set_sockopts(sk_engine *e, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (e->opts.keepalive)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
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

static void ready_remove(sk_worker *w, sk_conn *c)
{
    for (sk_conn **pp = &w->ready; *pp; pp = &(*pp)->ready_next)
        if (*pp == c) {
            *pp = c->ready_next;
            break;
        }
    c->in_ready = false;
}

/* ------------------------------------------------------------ closing */

static void close_one(sk_worker *w, sk_conn *c, bool abortive)
{
    if (c->state == SK_C_CLOSED)
        return;
    bool was_open = c->state == SK_C_OPEN;
    c->state = SK_C_CLOSED;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    if (c->in_ready)
        ready_remove(w, c);
    if (c->ssl) {
        if (!abortive && c->tls_done && !c->wr_shut)
            SSL_shutdown(c->ssl); /* best effort close_notify: never waits */
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (abortive) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd); /* leaves the epoll set too */
    c->fd = -1;
    c->registered = false;
    sk_buf_put(w, c->out);
    c->out = NULL;
    if (c->app)
        sk_app_conn_closed(w, c, 0);
    /* the references themselves go in sk_conn_free, after the connection is
     * unlinked: a concurrent listing may still read them until then */
    if (c->listener) {
        SK_ADD(&c->listener->closed, 1);
        SK_SUB(&c->listener->active, 1);
    }
    if (c->target) {
        if (was_open)
            SK_ADD(&c->target->closed, 1);
        SK_SUB(&c->target->open, 1);
    }
}

static void retire(sk_worker *w, sk_conn *c)
{
    c->next = w->graveyard; /* freed after this batch of events */
    w->graveyard = c;
    SK_BUMP(&w->nconns, (uint64_t)-1);
}

void sk_conn_close(sk_worker *w, sk_conn *c, bool abortive)
{
    if (c->state == SK_C_CLOSED)
        return;
    sk_conn *p = c->peer;
    close_one(w, c, abortive);
    if (p)
        close_one(w, p, abortive);
    /* unlink both in one step: a lister never sees one side of a pair without
     * the other */
    pthread_mutex_lock(&w->conn_lock);
    unlink_locked(w, c);
    if (p)
        unlink_locked(w, p);
    c->peer = NULL;
    if (p)
        p->peer = NULL;
    pthread_mutex_unlock(&w->conn_lock);
    retire(w, c);
    if (p)
        retire(w, p);
}

typedef bool (*conn_pred)(const sk_conn *c, const void *a, uint64_t b);

/* Closes every connection matching pred (with its partner). Collects first:
 * closing a flow unlinks both of its connections; closed connections stay
 * allocated until the end of the batch. Returns how many matched. */
static size_t close_matching(sk_worker *w, conn_pred pred, const void *a, uint64_t b)
{
    size_t n = 0, cap = 0;
    sk_conn **hit = NULL;
    for (sk_conn *c = w->conns; c; c = c->next) {
        if (!pred(c, a, b))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            sk_conn **v = realloc(hit, ncap * sizeof *v);
            if (!v)
                break; /* out of memory: close what was collected */
            hit = v;
            cap = ncap;
        }
        hit[n++] = c;
    }
    for (size_t i = 0; i < n; i++)
        sk_conn_close(w, hit[i], false);
    free(hit);
    return n;
}

static bool of_listener(const sk_conn *c, const void *a, uint64_t b)
{
    SK_UNUSED(b);
    return a && c->listener == a;
}

static bool of_target(const sk_conn *c, const void *a, uint64_t b)
{
    SK_UNUSED(b);
    return a && c->target == a;
}

void sk_worker_close_flows(sk_worker *w, const sk_listener *l, const sk_target *t)
{
    if (l)
        close_matching(w, of_listener, l, 0);
    if (t)
        close_matching(w, of_target, t, 0);
}

static bool tls_older(const sk_conn *c, const void *a, uint64_t ordinal)
{
    return c->tls && c->tls_slot == *(const int *)a && c->tls->ordinal < ordinal;
}

void sk_worker_close_tls_older(sk_worker *w, int slot, uint64_t ordinal)
{
    size_t n = close_matching(w, tls_older, &slot, ordinal);
    SK_ADD(&w->engine->tls_closed_old, n);
}

/* ------------------------------------------------------------ targets */

static void target_failed(sk_worker *w, sk_target *t, int err)
{
    sk_engine *e = w->engine;
    SK_ADD(&t->failed, 1);
    SK_ADD(&e->connects_failed, 1);
    uint32_t step = SK_LOAD(&t->backoff_step);
    if (step < 16)
        step++;
    SK_STORE(&t->backoff_step, step);
    uint64_t ms = (uint64_t)e->opts.backoff_initial_ms << (step - 1);
    if (ms > (uint64_t)e->opts.backoff_max_ms)
        ms = (uint64_t)e->opts.backoff_max_ms;
    SK_STORE(&t->down_until, sk_now_ns() + ms * 1000000u);
    if (atomic_exchange(&t->down, 1) == 0)
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_TARGET_DOWN, t->user_id, err, (int64_t)ms);
}

static void target_up(sk_worker *w, sk_target *t)
{
    if (SK_LOAD(&t->backoff_step) == 0)
        return;
    SK_STORE(&t->backoff_step, 0);
    SK_STORE(&t->down_until, 0);
    if (atomic_exchange(&t->down, 0) == 1)
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_TARGET_UP, t->user_id, 0, 0);
}

static bool tried(const sk_conn *client, const sk_target *t)
{
    for (uint32_t i = 0; i < client->attempts && i < SK_MAX_TRIES; i++)
        if (client->tried[i] == t)
            return true;
    return false;
}

/* Fewest open flows among targets that are up, ties round-robin; when every
 * untried target is down, probe the one whose back-off ends first. */
static const sk_route_target *pick_target(sk_worker *w, const sk_route_entry *en,
                                          const sk_conn *client)
{
    if (!en || en->n == 0)
        return NULL;
    uint64_t now = sk_now_ns();
    uint32_t start = w->rr++;
    const sk_route_target *best = NULL, *probe = NULL;
    int64_t best_open = INT64_MAX;
    uint64_t probe_until = UINT64_MAX;
    for (uint32_t k = 0; k < en->n; k++) {
        const sk_route_target *rt = &en->v[(start + k) % en->n];
        if (tried(client, rt->target))
            continue;
        uint64_t until = SK_LOAD(&rt->target->down_until);
        if (until > now) {
            if (until < probe_until) {
                probe_until = until;
                probe = rt;
            }
            continue;
        }
        int64_t open = SK_LOAD(&rt->target->open);
        if (open < best_open) {
            best_open = open;
            best = rt;
        }
    }
    return best ? best : probe;
}

/* ------------------------------------------------------------ TLS */

#define SK_HANDSHAKE_TIMEOUT_MS 10000

static void handshake_timeout_arm(sk_worker *w, sk_conn *c)
{
    uint64_t ms = (uint64_t)w->engine->opts.connect_timeout_ms;
    if (ms < SK_HANDSHAKE_TIMEOUT_MS)
        ms = SK_HANDSHAKE_TIMEOUT_MS;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo, sk_now_ns() + ms * 1000000u);
}

/* Pins the slot's current config and makes the SSL object. server: accept
 * side (a TLS listener); otherwise originate TLS to a target. */
static bool tls_attach(sk_worker *w, sk_conn *c, int slot, bool server)
{
    sk_tls_config *cfg = sk_tls_current(w, slot);
    SSL_CTX *ctx = cfg ? (server ? cfg->server : cfg->client) : NULL;
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
    return true;
}

void sk_tls_info_cb(const SSL *ssl, int where, int ret)
{
    if ((where & SSL_CB_READ_ALERT) && (ret & 0xff) == SSL3_AD_CLOSE_NOTIFY) {
        sk_conn *c = SSL_get_app_data(ssl);
        if (c)
            c->tls_close_notify = true;
    }
}

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

static void start_connect(sk_worker *w, sk_conn *client);
static void connect_failed(sk_worker *w, sk_conn *s, int err);
static void established(sk_worker *w, sk_conn *s);

static void tls_failed(sk_worker *w, sk_conn *c)
{
    SK_ADD(&w->engine->tls_failures, 1);
    ERR_clear_error();
    if (c->is_client)
        sk_conn_close(w, c, true);
    else
        connect_failed(w, c, EPROTO); /* try another target */
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
            c->state = SK_C_OPEN;
            if (c->listener->opts.app)
                sk_app_accepted(w, c, c->listener);
            else
                start_connect(w, c);
            return;
        }
    }
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
        c->tls_done = true;
        c->tls_want = 0;
        SK_ADD(&w->engine->tls_handshakes, 1);
        tls_record_peer(w, c);
        c->state = SK_C_OPEN;
        if (c->is_client && c->listener->opts.app)
            sk_app_accepted(w, c, c->listener);
        else if (c->is_client)
            start_connect(w, c);
        else
            established(w, c);
        return;
    }
    switch (SSL_get_error(c->ssl, rc)) {
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

/* Plain or TLS read: >0 bytes, 0 end of stream, -1 try later, -2 error. */
ssize_t sk_io_recv(sk_worker *w, sk_conn *c, void *buf, size_t len)
{
    if (!c->ssl) {
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0)
            return n;
        return errno == EAGAIN || errno == EINTR ? -1 : -2;
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

ssize_t sk_io_send(sk_conn *c, const void *buf, size_t len)
{
    if (!c->ssl) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        return errno == EAGAIN || errno == EINTR ? -1 : -2;
    }
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

static void fail_flow(sk_worker *w, sk_conn *client)
{
    SK_ADD(&w->engine->flows_failed, 1);
    if (client->listener)
        SK_ADD(&client->listener->failed, 1);
    sk_conn_close(w, client, false);
}

static void connected(sk_worker *w, sk_conn *s);

static void start_connect(sk_worker *w, sk_conn *client)
{
    sk_engine *e = w->engine;
    uint32_t limit = SK_MAX_TRIES;
    if (e->opts.max_connect_attempts > 0 && (uint32_t)e->opts.max_connect_attempts < limit)
        limit = (uint32_t)e->opts.max_connect_attempts;
    while (client->attempts < limit) {
        sk_routes *rt = (sk_routes *)sk_slot_cached(&e->routes, &w->routes_cache);
        uint32_t aid = client->listener->opts.address_id;
        const sk_route_entry *en = rt && aid < rt->n ? &rt->addr[aid] : NULL;
        const sk_route_target *pick = pick_target(w, en, client);
        if (!pick)
            break;
        sk_target *t = pick->target;
        client->tried[client->attempts++] = t;
        int fd = socket(pick->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            client->last_err = errno;
            /* out of descriptors: another target will not help, and accepting
             * more clients that cannot be served would only spin */
            if (errno == EMFILE || errno == ENFILE)
                sk_worker_pause_listener(w, client->listener, errno);
            break;
        }
        set_sockopts(e, fd);
        int rc = connect(fd, (const struct sockaddr *)&pick->sa, pick->salen);
        if (rc != 0 && errno != EINPROGRESS) {
            client->last_err = errno;
            close(fd);
            target_failed(w, t, client->last_err);
            continue;
        }
        sk_conn *s = sk_conn_new(w, fd, NULL, NULL);
        if (!s) {
            close(fd);
            client->last_err = ENOMEM;
            break;
        }
        sk_target_ref(t);
        s->target = t;
        SK_ADD(&t->open, 1);
        memcpy(s->label, pick->label, sizeof s->label);
        if (pick->tls_slot >= 0) {
            if (!tls_attach(w, s, pick->tls_slot, false)) {
                client->last_err = EPROTO;
                sk_conn_close(w, s, false);
                target_failed(w, t, EPROTO);
                continue;
            }
            if (!pick->host_is_ip)
                SSL_set_tlsext_host_name(s->ssl, pick->host);
            if (s->tls->has_ca) {
                SSL_set_verify(s->ssl, SSL_VERIFY_PEER, NULL);
                if (pick->verify_host) {
                    const char *h = pick->host[0] ? pick->host : NULL;
                    if (!h || pick->host_is_ip) {
                        char ip[300];
                        snprintf(ip, sizeof ip, "%s", h ? h : pick->label);
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
                }
            }
        }
        pthread_mutex_lock(&w->conn_lock);
        s->peer = client;
        client->peer = s;
        pthread_mutex_unlock(&w->conn_lock);
        if (rc == 0) {
            connected(w, s);
            return;
        }
        s->state = SK_C_CONNECTING;
        sk_conn_set_interest(w, s, EPOLLOUT);
        if (s->state == SK_C_CLOSED)
            return;
        sk_worker_schedule(w, SK_PRIO_NORMAL, &s->tmo,
                           sk_now_ns() + (uint64_t)e->opts.connect_timeout_ms * 1000000u);
        return;
    }
    fail_flow(w, client);
}

static void connect_failed(sk_worker *w, sk_conn *s, int err)
{
    sk_conn *client = s->peer;
    target_failed(w, s->target, err);
    pthread_mutex_lock(&w->conn_lock);
    s->peer = NULL;
    if (client)
        client->peer = NULL;
    pthread_mutex_unlock(&w->conn_lock);
    sk_conn_close(w, s, false);
    if (client) {
        client->last_err = err;
        start_connect(w, client);
    }
}

static void connect_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *s = SK_CONTAINER_OF(t, sk_conn, tmo);
    if (s->state == SK_C_CONNECTING)
        connect_failed(w, s, ETIMEDOUT);
    else if (s->state == SK_C_HANDSHAKE)
        tls_failed(w, s);
}

static void update_interest(sk_worker *w, sk_conn *c);
static void relay_read(sk_worker *w, sk_conn *c);

static void connected(sk_worker *w, sk_conn *s)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    if (s->ssl) {
        s->state = SK_C_HANDSHAKE;
        handshake_timeout_arm(w, s);
        tls_handshake(w, s);
        return;
    }
    s->state = SK_C_OPEN;
    established(w, s);
}

/* The target side is ready (TCP, and TLS when configured): start relaying. */
static void established(sk_worker *w, sk_conn *s)
{
    SK_ADD(&s->target->opened, 1);
    target_up(w, s->target);
    update_interest(w, s);
    if (s->peer)
        update_interest(w, s->peer);
}

void sk_conn_accepted(sk_worker *w, sk_listener *l, int fd, const struct sockaddr *sa,
                      socklen_t salen)
{
    SK_UNUSED(salen);
    sk_engine *e = w->engine;
    sk_conn *c = sk_conn_new(w, fd, l, sa);
    if (!c) {
        close(fd);
        return;
    }
    SK_ADD(&l->opened, 1);
    SK_ADD(&l->active, 1);
    SK_ADD(&e->accepted, 1); /* TCP_NODELAY, SO_KEEPALIVE: inherited from the listener */
    c->state = SK_C_OPEN;
    if (l->opts.tls_slot >= 0) {
        if (!tls_attach(w, c, l->opts.tls_slot, true)) {
            SK_ADD(&e->tls_failures, 1);
            fail_flow(w, c);
            return;
        }
        if (l->opts.authenticate_peer)
            SSL_set_verify(c->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        c->tls_sniff = l->opts.tls_optional != 0;
        c->state = SK_C_HANDSHAKE;
        handshake_timeout_arm(w, c);
        tls_handshake(w, c);
        return;
    }
    if (l->opts.app) {
        sk_app_accepted(w, c, l);
        return;
    }
    /* the client is not read until its target answers: nothing to buffer */
    start_connect(w, c);
}

/* -------------------------------------------------------------- relay */

static bool buf_full(const sk_buf *b)
{
    return b && b->end - b->start == b->cap;
}

static void update_interest(sk_worker *w, sk_conn *c)
{
    if (c->state != SK_C_OPEN)
        return;
    uint32_t ev = 0;
    sk_conn *p = c->peer;
    if (p && p->state == SK_C_OPEN && !c->rd_eof && !buf_full(p->out))
        ev |= EPOLLIN;
    if (c->out && c->out->start < c->out->end)
        ev |= EPOLLOUT;
    if (c->ssl) {
        if (c->tls_rd_wants_out)
            ev |= EPOLLOUT;
        if (c->tls_wr_wants_in)
            ev |= EPOLLIN;
        /* decrypted bytes inside OpenSSL wake no epoll: queue another read */
        if ((ev & EPOLLIN) && !c->rd_eof && SSL_pending(c->ssl) > 0)
            sk_ready_push(w, c);
    }
    sk_conn_set_interest(w, c, ev);
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
        if (c->state != SK_C_OPEN || c->rd_eof)
            continue;
        if (c->app)
            sk_app_conn_readable(w, c);
        else if (c->peer)
            relay_read(w, c);
    }
}

static void count_in(sk_conn *c, uint64_t n)
{
    SK_BUMP(&c->bytes_in, n);
    if (c->listener)
        SK_ADD(&c->listener->bytes_in, n);
    if (c->target)
        SK_ADD(&c->target->bytes_in, n);
}

static void count_out(sk_conn *c, uint64_t n)
{
    SK_BUMP(&c->bytes_out, n);
    if (c->listener)
        SK_ADD(&c->listener->bytes_out, n);
    if (c->target)
        SK_ADD(&c->target->bytes_out, n);
}

/* Both directions finished: every byte read was written, FIN sent both ways. */
static bool flow_done(const sk_conn *c)
{
    const sk_conn *p = c->peer;
    return c->rd_eof && p->rd_eof && c->wr_shut && p->wr_shut;
}

/* Writes c->out to c. Returns false when the pair was closed. */
static bool flush(sk_worker *w, sk_conn *c)
{
    sk_buf *b = c->out;
    while (b && b->start < b->end) {
        ssize_t n = sk_io_send(c, b->data + b->start, b->end - b->start);
        if (n > 0) {
            b->start += (uint32_t)n;
            count_out(c, (uint64_t)n);
            continue;
        }
        if (n == -1)
            break;
        sk_conn_close(w, c, true); /* EPIPE/ECONNRESET: abort the pair */
        return false;
    }
    if (b && b->start == b->end) {
        sk_buf_put(w, b);
        c->out = NULL;
    }
    sk_conn *p = c->peer;
    if (!c->out && p->rd_eof && !c->wr_shut) {
        if (c->ssl) {
            SSL_shutdown(c->ssl); /* close_notify, then FIN */
            ERR_clear_error();
        }
        c->wr_shut = true;
        /* when this ends the flow, close() sends the FIN: skip the syscall
         * (both read sides saw EOF, so no unread data turns it into a RST) */
        if (!flow_done(c))
            shutdown(c->fd, SHUT_WR); /* propagate the half-close */
    }
    if (flow_done(c)) {
        sk_conn_close(w, c, false);
        return false;
    }
    update_interest(w, c);
    update_interest(w, p);
    return true;
}

/* Reads from c into its partner's buffer and writes it on. One readable
 * event moves at most SK_EVENT_QUANTUM bytes: a bulk stream fills whole
 * buffers and gets a few rounds, a short message gets one read. */
#define SK_EVENT_QUANTUM (256u * 1024u)

static void relay_read(sk_worker *w, sk_conn *c)
{
    size_t budget = SK_EVENT_QUANTUM;
    for (;;) {
        sk_conn *p = c->peer;
        if (!p->out) {
            p->out = sk_buf_get(w);
            if (!p->out) {
                sk_conn_close(w, c, true);
                return;
            }
        }
        sk_buf *b = p->out;
        if (b->end == b->cap && b->start > 0) {
            memmove(b->data, b->data + b->start, b->end - b->start);
            b->end -= b->start;
            b->start = 0;
        }
        size_t space = b->cap - b->end;
        if (space == 0) {
            update_interest(w, c);
            return;
        }
        ssize_t n = sk_io_recv(w, c, b->data + b->end, space);
        if (n > 0) {
            b->end += (uint32_t)n;
            count_in(c, (uint64_t)n);
        } else if (n == 0) {
            c->rd_eof = true;
        } else if (n == -1) {
            if (b->start == b->end) {
                sk_buf_put(w, b);
                p->out = NULL;
            }
            update_interest(w, c); /* SSL_read may want the socket writable */
            return;
        } else {
            sk_conn_close(w, c, true); /* reset by the peer: reset the other side */
            return;
        }
        if (!flush(w, p))
            return;
        budget -= (size_t)n < budget ? (size_t)n : budget;
        /* go on only while the partner keeps up and more is likely waiting:
         * a full read (plain) or any record (TLS reads one record per call) */
        bool more = n > 0 && !p->out && budget > 0 && ((size_t)n == space || c->ssl);
        if (!more) {
            update_interest(w, c);
            return;
        }
    }
}

void sk_conn_event(sk_worker *w, sk_conn *c, uint32_t ev)
{
    if (c->state == SK_C_CONNECTING) {
        /* a failed connect always raises EPOLLERR: ask for the error only then */
        int err = 0;
        if (ev & (EPOLLERR | EPOLLHUP)) {
            socklen_t len = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
            if (!err && !(ev & EPOLLOUT))
                err = ECONNRESET;
        }
        if (err)
            connect_failed(w, c, err);
        else if (ev & EPOLLOUT)
            connected(w, c);
        return;
    }
    if (c->state == SK_C_HANDSHAKE) {
        tls_handshake(w, c);
        return;
    }
    if (c->app) {
        bool ard = (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0;
        bool awr = (ev & EPOLLOUT) != 0;
        if (c->ssl && c->tls_wr_wants_in && (ev & EPOLLIN))
            awr = true;
        if (c->ssl && c->tls_rd_wants_out && (ev & EPOLLOUT))
            ard = true;
        if (ard)
            sk_app_conn_readable(w, c);
        if (c->state == SK_C_OPEN && awr)
            sk_app_conn_writable(w, c);
        return;
    }
    if (!c->peer) {
        sk_conn_close(w, c, true);
        return;
    }
    bool rd = (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (c->events & EPOLLIN);
    bool wr = (ev & EPOLLOUT) != 0;
    if (c->ssl) {
        /* OpenSSL may need the other readiness than the one the data needs */
        if (c->tls_wr_wants_in && (ev & EPOLLIN))
            wr = true;
        if (c->tls_rd_wants_out && (ev & EPOLLOUT)) {
            rd = true;
            wr = c->out != NULL;
        }
    }
    if (rd)
        relay_read(w, c);
    else if (ev & EPOLLERR)
        sk_conn_close(w, c, true);
    if (c->state == SK_C_OPEN && wr)
        flush(w, c);
}
