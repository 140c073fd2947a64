/* conn.c -- the life cycle of a connection: creation, accept, epoll
 * interest, plain socket I/O, close, and the listing other threads read.
 *
 * A connection is one socket of a flow. What it does while open is another
 * file's business, chosen through its handle's on_io: connect.c while it
 * connects, tls_io.c during a TLS handshake, relay.c or app.c once open.
 * Closing is the same for all: both sides of a flow are closed and unlinked
 * together, and freed only after the worker's batch, so an event later in the
 * same batch never touches freed memory. Runs on the owning worker except the
 * listing, which reads under conn_lock. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

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

void sk_conn_label(const sk_conn *c, char *out, size_t outlen)
{
    if (!c->label_raw) {
        snprintf(out, outlen, "%s", c->label);
        return;
    }
    _Static_assert(sizeof(struct sockaddr_in6) <= sizeof c->label, "a raw label holds an in6");
    struct sockaddr_storage ss; /* the label's bytes are not aligned for it */
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, c->label, sizeof(struct sockaddr_in6));
    sk_format_addr((const struct sockaddr *)&ss, out, outlen);
}

/* ------------------------------------------------------------ create */

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
    c->h.on_io = sk_relay_io;
    c->worker = w;
    c->fd = fd;
    if (l) {
        /* set before the connection is linked: listings read these */
        sk_listener_ref(l);
        c->listener = l;
        c->is_client = true;
    }
    if (peer) {
        /* kept raw: formatting costs ~0.6 us per connection (inet_ntop and
         * snprintf) and is needed only when the connection is listed */
        size_t len = peer->sa_family == AF_INET6  ? sizeof(struct sockaddr_in6)
                     : peer->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                  : 0;
        if (len) {
            memcpy(c->label, peer, len);
            c->label_raw = true;
        } else {
            sk_format_addr(peer, c->label, sizeof c->label);
        }
    }
    c->id = sk_engine_next_id(w->engine);
    c->opened_ns = sk_now_ns();
    sk_timer_init(&c->tmo, NULL); /* the callback is set by whoever arms it */
    SK_ADD(&w->engine->conns_live, 1);
    link_conn(w, c);
    return c;
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
    if (l->opts.tls_slot >= 0) {
        sk_conn_enter(c, SK_C_OPEN, sk_relay_io);
        if (!sk_tls_io_attach_server(w, c, l)) {
            SK_ADD(&e->tls_failures, 1);
            sk_connect_fail_flow(w, c);
            return;
        }
        sk_tls_io_handshake_start(w, c);
        return;
    }
    sk_conn_open_client(w, c);
}

void sk_conn_open_client(sk_worker *w, sk_conn *c)
{
    sk_conn_enter(c, SK_C_OPEN, sk_relay_io);
    if (c->listener->opts.data_ok && !c->dc_sniffed) {
        sk_dc_sniff_start(w, c); /* a data connection from a neighbour, or not */
        return;
    }
    if (c->listener->opts.app) {
        sk_app_accepted(w, c, c->listener);
        return;
    }
    /* the client is not read until its target answers: nothing to buffer */
    sk_connect_start(w, c);
}

/* ------------------------------------------------------------ epoll and I/O */

void sk_conn_set_interest(sk_worker *w, sk_conn *c, uint32_t ev)
{
    if (c->state == SK_C_CLOSED || c->et)
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

void sk_conn_register_et(sk_worker *w, sk_conn *c)
{
    if (c->state == SK_C_CLOSED || c->et)
        return;
    /* an ADD or MOD reports the readiness the socket already has as a first
     * edge, so nothing that arrived before is missed */
    int op = c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (sk_worker_epoll(w, op, c->fd, SK_CONN_ET_EVENTS, &c->h) != 0) {
        sk_conn_close(w, c, true);
        return;
    }
    c->registered = true;
    c->et = true;
    c->events = SK_CONN_ET_EVENTS;
}

ssize_t sk_io_recv(sk_worker *w, sk_conn *c, void *buf, size_t len)
{
    if (sk_conn_is_tls(c))
        return sk_tls_io_recv(w, c, buf, len);
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0)
        return n;
    return errno == EAGAIN || errno == EINTR ? -1 : -2;
}

ssize_t sk_io_send(sk_conn *c, const void *buf, size_t len)
{
    if (sk_conn_is_tls(c))
        return sk_tls_io_send(c, buf, len);
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return n;
    return errno == EAGAIN || errno == EINTR ? -1 : -2;
}

/* ------------------------------------------------------------ close */

/* on_io of a closed connection: events already collected in this batch. */
static void closed_io(sk_worker *w, sk_handle *h, uint32_t events)
{
    SK_UNUSED(w);
    SK_UNUSED(h);
    SK_UNUSED(events);
}

static void close_one(sk_worker *w, sk_conn *c, bool abortive)
{
    if (c->state == SK_C_CLOSED)
        return;
    bool was_open = c->state == SK_C_OPEN;
    sk_conn_enter(c, SK_C_CLOSED, closed_io);
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    if (c->in_ready)
        sk_ready_remove(w, c);
    if (sk_conn_is_tls(c))
        sk_tls_io_close(w, c, abortive);
    if (abortive) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    /* an app connection's socket may be in a direct write's send(2) on the
     * control thread, which then closes it (never waited for here) */
    if (!c->app || sk_app_release_fd(w, c))
        close(c->fd); /* leaves the epoll set too */
    c->fd = -1;
    c->registered = false;
    sk_buf_put(w, c->out);
    c->out = NULL;
    sk_pipe_put(w, c->pipe);
    c->pipe = NULL;
    if (c->app)
        sk_app_conn_closed(w, c, 0);
    if (c->dc_wait)
        sk_dc_wait_cancel(w, c);
    if (c->dc)
        sk_dc_closing(w, c, abortive);
    /* the references themselves go in conn_free, after the connection is
     * unlinked: a concurrent listing may still read them until then */
    if (c->listener) {
        SK_ADD(&c->listener->closed, 1);
        if (!c->off_listener_count)
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

void sk_conn_detach(sk_worker *w, sk_conn *c)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    if (c->in_ready)
        sk_ready_remove(w, c);
    if (c->registered)
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->registered = false;
    c->events = 0;
    pthread_mutex_lock(&w->conn_lock);
    unlink_locked(w, c);
    pthread_mutex_unlock(&w->conn_lock);
    SK_BUMP(&w->nconns, (uint64_t)-1);
}

void sk_conn_adopt(sk_worker *w, sk_conn *c)
{
    c->worker = w;
    link_conn(w, c);
}

static void conn_free(sk_worker *w, sk_conn *c)
{
    SK_SUB(&w->engine->conns_live, 1);
    sk_listener_release(c->listener);
    sk_target_release(c->target);
    if (c->tls)
        sk_snap_release(&c->tls->snap);
    free(c->peer_subject);
    free(c);
}

void sk_conn_reap(sk_worker *w)
{
    while (w->graveyard) {
        sk_conn *c = w->graveyard;
        w->graveyard = c->next;
        conn_free(w, c);
    }
}

/* Collects first: closing a flow unlinks both of its connections; closed
 * connections stay allocated until the end of the batch. */
size_t sk_conn_close_matching(sk_worker *w, sk_conn_pred pred, const void *a, uint64_t b)
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
        sk_conn_close_matching(w, of_listener, l, 0);
    if (t)
        sk_conn_close_matching(w, of_target, t, 0);
}

/* One sk_engine_close_target_flows call: done when every worker ran it. */
struct sk_close_req {
    _Atomic int remaining;
    uint64_t id;
    sk_target *target;
};

void sk_close_req_done(sk_worker *w, sk_close_req *req)
{
    if (atomic_fetch_sub_explicit(&req->remaining, 1, memory_order_acq_rel) == 1) {
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_CLOSE_DONE, req->id, 0, 0);
        sk_target_release(req->target);
        free(req);
    }
}

void sk_close_req_run(sk_worker *w, sk_close_req *req)
{
    sk_worker_close_flows(w, NULL, req->target);
    sk_close_req_done(w, req);
}

uint64_t sk_engine_close_target_flows(sk_engine *e, sk_target *t)
{
    sk_close_req *req = calloc(1, sizeof *req);
    if (!req)
        return 0;
    atomic_init(&req->remaining, e->nworkers);
    req->id = sk_engine_next_id(e);
    req->target = t;
    sk_target_ref(t);
    uint64_t id = req->id;
    for (int i = 0; i < e->nworkers; i++) {
        sk_msg *m = calloc(1, sizeof *m);
        if (!m)
            abort(); /* a lost message would leave the request open forever */
        m->kind = SK_MSG_CLOSE_TARGET_FLOWS;
        m->u.req = req;
        sk_worker_post(&e->workers[i], m);
    }
    return id;
}

/* ------------------------------------------------------------ listing */

/* Any thread, under the worker's conn_lock. */
static void fill_info(const sk_conn *c, sk_conn_info *ci)
{
    memset(ci, 0, sizeof *ci);
    ci->id = c->id;
    ci->worker = (uint32_t)c->worker->index;
    ci->app = c->app != NULL;
    ci->outbound = c->app_out;
    ci->listener_id = c->listener ? c->listener->opts.user_id : 0;
    const sk_conn *srv = c->peer;
    ci->target_id = srv && srv->target ? srv->target->user_id : 0;
    sk_conn_label(c, ci->peer, sizeof ci->peer);
    if (srv)
        sk_conn_label(srv, ci->target, sizeof ci->target);
    ci->bytes_in = SK_LOAD(&c->bytes_in);
    ci->bytes_out = SK_LOAD(&c->bytes_out);
    ci->opened_ns = c->opened_ns;
    /* the client side's TLS, else the target side's */
    const sk_conn *t = c->tls ? c : (srv && srv->tls ? srv : NULL);
    if (t) {
        ci->tls_version = t->tls->snap.version;
        ci->tls_ordinal = t->tls->ordinal;
    }
    if (c->peer_subject)
        snprintf(ci->peer_subject, sizeof ci->peer_subject, "%s", c->peer_subject);
    if (t && t->tls_proto)
        snprintf(ci->tls_protocol, sizeof ci->tls_protocol, "%s", t->tls_proto);
    if (t && t->tls_cipher)
        snprintf(ci->tls_cipher, sizeof ci->tls_cipher, "%s", t->tls_cipher);
    /* across routers: the flow came in on a data connection (c), or goes
     * out on one (its target side) */
    const sk_dc *dc = c->dc ? c->dc : (srv ? srv->dc : NULL);
    if (dc) {
        bool incoming;
        const char *router = sk_dc_router(dc, &incoming);
        snprintf(ci->remote_router, sizeof ci->remote_router, "%s", router);
        ci->remote_incoming = incoming;
    }
}

int sk_engine_conn_info(sk_engine *e, uint64_t conn_id, sk_conn_info *out)
{
    for (int i = 0; i < e->nworkers; i++) {
        sk_worker *w = &e->workers[i];
        pthread_mutex_lock(&w->conn_lock);
        for (sk_conn *c = w->conns; c; c = c->next)
            if (c->id == conn_id) {
                fill_info(c, out);
                pthread_mutex_unlock(&w->conn_lock);
                return 0;
            }
        pthread_mutex_unlock(&w->conn_lock);
    }
    return -1;
}

int sk_engine_list_connections(sk_engine *e, sk_conn_info *out, int max)
{
    int total = 0;
    for (int i = 0; i < e->nworkers; i++) {
        sk_worker *w = &e->workers[i];
        pthread_mutex_lock(&w->conn_lock);
        for (sk_conn *c = w->conns; c; c = c->next) {
            if (!c->is_client)
                continue; /* one row per flow: the client side */
            if (total < max)
                fill_info(c, &out[total]);
            total++;
        }
        pthread_mutex_unlock(&w->conn_lock);
    }
    return total;
}
