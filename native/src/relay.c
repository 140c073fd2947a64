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

sk_conn *sk_conn_new(sk_worker *w, int fd)
{
    sk_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->h.kind = SK_H_CONN;
    c->worker = w;
    c->fd = fd;
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

/* ------------------------------------------------------------ closing */

static void close_one(sk_worker *w, sk_conn *c, bool abortive)
{
    if (c->state == SK_C_CLOSED)
        return;
    bool was_open = c->state == SK_C_OPEN;
    c->state = SK_C_CLOSED;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
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
    if (c->listener) {
        SK_ADD(&c->listener->closed, 1);
        SK_SUB(&c->listener->active, 1);
        sk_listener_release(c->listener);
        c->listener = NULL;
    }
    if (c->target) {
        if (was_open)
            SK_ADD(&c->target->closed, 1);
        SK_SUB(&c->target->open, 1);
        sk_target_release(c->target);
        c->target = NULL;
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

void sk_worker_close_flows(sk_worker *w, const sk_listener *l, const sk_target *t)
{
    /* collect first: closing a flow unlinks both of its connections; closed
     * connections stay allocated until the end of the batch */
    size_t n = 0, cap = 0;
    sk_conn **hit = NULL;
    for (sk_conn *c = w->conns; c; c = c->next) {
        bool match = (l && c->listener == l) || (t && c->target == t);
        if (!match)
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
            break; /* out of descriptors: another target will not help */
        }
        set_sockopts(e, fd);
        int rc = connect(fd, (const struct sockaddr *)&pick->sa, pick->salen);
        if (rc != 0 && errno != EINPROGRESS) {
            client->last_err = errno;
            close(fd);
            target_failed(w, t, client->last_err);
            continue;
        }
        sk_conn *s = sk_conn_new(w, fd);
        if (!s) {
            close(fd);
            client->last_err = ENOMEM;
            break;
        }
        sk_target_ref(t);
        s->target = t;
        SK_ADD(&t->open, 1);
        memcpy(s->label, pick->label, sizeof s->label);
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
}

static void update_interest(sk_worker *w, sk_conn *c);

static void connected(sk_worker *w, sk_conn *s)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    s->state = SK_C_OPEN;
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
    sk_conn *c = sk_conn_new(w, fd);
    if (!c) {
        close(fd);
        return;
    }
    c->is_client = true;
    sk_listener_ref(l);
    c->listener = l;
    sk_format_addr(sa, c->label, sizeof c->label);
    SK_ADD(&l->opened, 1);
    SK_ADD(&l->active, 1);
    SK_ADD(&e->accepted, 1);
    set_sockopts(e, fd);
    c->state = SK_C_OPEN;
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
    sk_conn_set_interest(w, c, ev);
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
        ssize_t n = send(c->fd, b->data + b->start, b->end - b->start, MSG_NOSIGNAL);
        if (n > 0) {
            b->start += (uint32_t)n;
            count_out(c, (uint64_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
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
        shutdown(c->fd, SHUT_WR); /* propagate the half-close */
        c->wr_shut = true;
    }
    if (flow_done(c)) {
        sk_conn_close(w, c, false);
        return false;
    }
    update_interest(w, c);
    update_interest(w, p);
    return true;
}

/* Reads from c into its partner's buffer (one read: the per-event quantum). */
static void relay_read(sk_worker *w, sk_conn *c)
{
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
    ssize_t n = recv(c->fd, b->data + b->end, space, 0);
    if (n > 0) {
        b->end += (uint32_t)n;
        count_in(c, (uint64_t)n);
    } else if (n == 0) {
        c->rd_eof = true;
    } else if (errno == EAGAIN || errno == EINTR) {
        if (b->start == b->end) {
            sk_buf_put(w, b);
            p->out = NULL;
        }
        return;
    } else {
        sk_conn_close(w, c, true); /* reset by the peer: reset the other side */
        return;
    }
    if (flush(w, p))
        update_interest(w, c);
}

void sk_conn_event(sk_worker *w, sk_conn *c, uint32_t ev)
{
    if (c->state == SK_C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err)
            connect_failed(w, c, err);
        else if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            connected(w, c);
        return;
    }
    if (c->app) {
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
            sk_app_conn_readable(w, c);
        if (c->state == SK_C_OPEN && (ev & EPOLLOUT))
            sk_app_conn_writable(w, c);
        return;
    }
    if (!c->peer) {
        sk_conn_close(w, c, true);
        return;
    }
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (c->events & EPOLLIN))
        relay_read(w, c);
    else if (ev & EPOLLERR)
        sk_conn_close(w, c, true);
    if (c->state == SK_C_OPEN && (ev & EPOLLOUT))
        flush(w, c);
}
