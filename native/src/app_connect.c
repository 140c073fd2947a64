/* app_connect.c -- outbound app connections: the engine dials, the control
 * plane gets the bytes (an inter-router connector running AMQP over them).
 *
 * sk_app_connect checks its arguments on the control thread, makes the
 * connection's sk_app (in the engine table at once, so sk_app_close can
 * cancel the dial and writes can be queued early) and posts the dial to a
 * worker. The worker connects without blocking (numeric address only), runs
 * the TLS client handshake with the slot's current config pinned (tls_io.c,
 * as for a relay target), and only then reports SK_EV_APP_OPEN (b = 1); from
 * there on the connection is app.c's, exactly like an accepted one. A dial
 * that fails before that ends with SK_EV_APP_CLOSED alone, whose a says why.
 * One deadline covers connect and handshake. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

/* What to dial: the message's, freed by the worker once the dial started. */
struct sk_app_dial {
    sk_app *app;        /* the connection's reference */
    sk_route_target rt; /* address and TLS settings, as a route's (no target) */
};

void sk_app_connect_options_init(sk_app_connect_options *o)
{
    memset(o, 0, sizeof *o);
    o->ip = "";
    o->host = "";
    o->tls_slot = -1;
    o->worker = -1;
}

/* ------------------------------------------------------------ worker side */

static void dial_fail(sk_worker *w, sk_conn *c, int err)
{
    if (err != ECANCELED)
        SK_ADD(&w->engine->app_connects_failed, 1);
    c->app->close_err = err; /* SK_EV_APP_CLOSED's a, from sk_app_conn_closed */
    sk_conn_close(w, c, true);
}

static void dial_open(sk_worker *w, sk_conn *c)
{
    sk_app *a = c->app;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    sk_conn_enter(c, SK_C_OPEN, sk_app_io);
    a->close_err = 0;
    a->last_write_ns = sk_now_ns();
    sk_app_direct_open(a, c);
    sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_APP_OPEN, a->id, (int64_t)a->user_id, 1);
    sk_app_direct_reads_open(a, c); /* after the open event: see sk_engine_app_poll */
    /* what was queued before the open: bytes, keep-alive, a close; sets the
     * epoll interest in any case */
    sk_app_kick(w, a);
}

static void dial_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *c = SK_CONTAINER_OF(t, sk_conn, tmo);
    if (c->state == SK_C_HANDSHAKE)
        SK_ADD(&w->engine->tls_failures, 1);
    if (c->state == SK_C_CONNECTING || c->state == SK_C_HANDSHAKE)
        dial_fail(w, c, ETIMEDOUT);
}

static void dial_connected(sk_worker *w, sk_conn *c)
{
    if (!c->ssl) {
        dial_open(w, c);
        return;
    }
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    sk_tls_io_handshake_start(w, c);
    if (c->state == SK_C_HANDSHAKE) {
        /* the handshake's own time-out gives way to the dial's deadline */
        c->tmo.cb = dial_timeout;
        sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo, c->app->dial_deadline);
    }
}

/* on_io while connecting. */
static void dial_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    int err = 0;
    if (ev & (EPOLLERR | EPOLLHUP)) {
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (!err && !(ev & EPOLLOUT))
            err = ECONNRESET;
    }
    if (err)
        dial_fail(w, c, err);
    else if (ev & EPOLLOUT)
        dial_connected(w, c);
}

void sk_app_dial_run(sk_worker *w, sk_app_dial *d)
{
    sk_engine *e = w->engine;
    sk_app *a = d->app;
    const sk_route_target *rt = &d->rt;
    int err = 0;
    int fd = socket(rt->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = errno;
        goto failed;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (e->opts.keepalive)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int rc = connect(fd, (const struct sockaddr *)&rt->sa, rt->salen);
    if (rc != 0 && errno != EINPROGRESS) {
        err = errno;
        close(fd);
        goto failed;
    }
    sk_conn *c = sk_conn_new(w, fd, NULL, (const struct sockaddr *)&rt->sa);
    if (!c) {
        close(fd);
        err = ENOMEM;
        goto failed;
    }
    /* listings read these under the lock: the id is the one the caller has */
    pthread_mutex_lock(&w->conn_lock);
    c->id = a->id;
    c->is_client = true; /* one row per flow: this one */
    c->app_out = true;
    c->app = a;
    pthread_mutex_unlock(&w->conn_lock);
    a->conn = c;
    if (rt->tls_slot >= 0 && !sk_tls_io_attach_client(w, c, rt)) {
        SK_ADD(&e->tls_failures, 1);
        free(d);
        dial_fail(w, c, EPROTO);
        return;
    }
    free(d);
    if (rc == 0) {
        dial_connected(w, c);
        return;
    }
    sk_conn_enter(c, SK_C_CONNECTING, dial_io);
    sk_conn_set_interest(w, c, EPOLLOUT);
    if (c->state == SK_C_CLOSED)
        return;
    c->tmo.cb = dial_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo, a->dial_deadline);
    return;

failed:
    free(d);
    SK_ADD(&e->app_connects_failed, 1);
    sk_app_finish(w, a, err);
}

void sk_app_dial_discard(sk_worker *w, sk_app_dial *d)
{
    sk_app_finish(w, d->app, ECANCELED);
    free(d);
}

void sk_app_dial_kick(sk_worker *w, sk_app *a)
{
    pthread_mutex_lock(&a->lock);
    a->kick_pending = false;
    bool cancel = a->close_req;
    pthread_mutex_unlock(&a->lock);
    if (cancel)
        dial_fail(w, a->conn, ECANCELED);
}

void sk_app_dial_tls_done(sk_worker *w, sk_conn *c)
{
    dial_open(w, c);
}

void sk_app_dial_tls_failed(sk_worker *w, sk_conn *c)
{
    long vr = SSL_get_verify_result(c->ssl);
    ERR_clear_error();
    dial_fail(w, c, vr != X509_V_OK ? -(int)vr : EPROTO);
}

/* ------------------------------------------------------------ control side */

const char *sk_tls_verify_error(int code)
{
    return X509_verify_cert_error_string(code);
}

static bool slot_has_client(sk_engine *e, int slot)
{
    sk_snap *s = sk_slot_acquire(&e->tls[slot]);
    if (!s)
        return false;
    bool ok = ((sk_tls_config *)s)->client != NULL;
    sk_snap_release(s);
    return ok;
}

static int parse_ip(const char *ip, uint16_t port, sk_route_target *rt)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&rt->sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&rt->sa;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        rt->salen = sizeof *sin;
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        rt->salen = sizeof *sin6;
        return 0;
    }
    return -1;
}

uint64_t sk_app_connect(sk_engine *e, const sk_app_connect_options *o, char *err,
                        size_t errlen)
{
    if (!o) {
        sk_set_err(err, errlen, "no options");
        return 0;
    }
    if (atomic_load(&e->stopping)) {
        sk_set_err(err, errlen, "engine is stopped");
        return 0;
    }
    const char *ip = o->ip ? o->ip : "";
    const char *host = o->host ? o->host : "";
    int nslots = (int)SK_LOAD(&e->tls_nslots);
    if (o->port == 0) {
        sk_set_err(err, errlen, "cannot connect to %s:0: port out of range 1-65535", ip);
        return 0;
    }
    if (strlen(host) >= sizeof ((sk_route_target *)NULL)->host) {
        sk_set_err(err, errlen, "host name '%.32s...' longer than 255 bytes", host);
        return 0;
    }
    if (o->tls_slot < -1 || o->tls_slot >= nslots) {
        sk_set_err(err, errlen, "TLS slot %d does not exist", o->tls_slot);
        return 0;
    }
    if (o->tls_slot >= 0 && !slot_has_client(e, o->tls_slot)) {
        sk_set_err(err, errlen, "no TLS material published in slot %d", o->tls_slot);
        return 0;
    }
    if (o->worker < -1 || o->worker >= e->nworkers) {
        sk_set_err(err, errlen, "worker %d out of range 0-%d", o->worker, e->nworkers - 1);
        return 0;
    }
    sk_app_dial *d = calloc(1, sizeof *d);
    sk_msg *m = calloc(1, sizeof *m);
    if (!d || !m) {
        free(d);
        free(m);
        sk_set_err(err, errlen, "out of memory");
        return 0;
    }
    sk_route_target *rt = &d->rt;
    if (parse_ip(ip, o->port, rt) != 0) {
        free(d);
        free(m);
        sk_set_err(err, errlen, "cannot connect to %s:%u: '%s' is not a numeric IPv4 or IPv6 address",
                   ip, o->port, ip);
        return 0;
    }
    rt->tls_slot = o->tls_slot;
    rt->verify_host = o->verify_host != 0;
    {
        struct in_addr tmp4;
        struct in6_addr tmp6;
        rt->host_is_ip = !*host || inet_pton(AF_INET, host, &tmp4) == 1 ||
                         inet_pton(AF_INET6, host, &tmp6) == 1;
    }
    sk_format_addr((const struct sockaddr *)&rt->sa, rt->label, sizeof rt->label);
    snprintf(rt->host, sizeof rt->host, "%s", host);

    int wi = o->worker >= 0 ? o->worker
                            : (int)(SK_ADD(&e->next_worker, 1) % (uint32_t)e->nworkers);
    sk_worker *w = &e->workers[wi];
    uint64_t id = sk_engine_next_id(e);
    sk_app *a = sk_app_new(e, w, id, true);
    if (!a) {
        free(d);
        free(m);
        sk_set_err(err, errlen, "out of memory");
        return 0;
    }
    uint32_t ms = o->timeout_ms ? o->timeout_ms : SK_APP_CONNECT_TIMEOUT_MS;
    a->user_id = o->user_id;
    a->dial_deadline = sk_now_ns() + (uint64_t)ms * 1000000u;
    a->close_err = ECANCELED; /* closed before it opened: the engine stopped */
    d->app = a;
    m->kind = SK_MSG_APP_CONNECT;
    m->u.dial = d;
    sk_worker_post(w, m);
    return id;
}
