/* listener.c -- listening sockets: one SO_REUSEPORT socket per worker.
 *
 * The kernel spreads new connections over the workers' sockets, so accepting
 * needs no lock and no hand-off between threads. Each socket's on_io accepts
 * a bounded number per event and hands every client to conn.c; running out
 * of descriptors pauses the socket on a back-off timer instead of spinning.
 * Opening and closing run on the control thread and reach the workers through
 * their mailboxes.
 *
 * The bound is a count and a time: at most SK_ACCEPTS_PER_EVENT clients,
 * and no new accept once SK_ACCEPT_BUDGET_NS have passed since the event's
 * first. On a TLS listener an accept runs the client's first handshake
 * flight at once (its ClientHello is usually queued already: key exchange
 * and signature, 0.3-0.5 ms with a P-256 key, 2 ms and more with RSA), so
 * 32 of them held the worker 10-16 ms or more in a connection storm while
 * its other connections (relayed streams, management, inter-router links)
 * waited for the loop to end. A plain accept takes ~15-30 us: a burst of
 * them still runs to (or near) the count, and the extra epoll round when it
 * does not costs a few us. The sockets are level-triggered: clients left in
 * the queue are reported again by the next epoll_wait, after the events
 * already collected. */
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

#define SK_ACCEPTS_PER_EVENT 32
#define SK_ACCEPT_BUDGET_NS 500000u /* 0.5 ms: see above */
#define SK_ACCEPT_BACKOFF_MIN_MS 10
#define SK_ACCEPT_BACKOFF_MAX_MS 1000

void sk_listener_options_init(sk_listener_options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "";
    o->backlog = 128;
    o->tls_slot = -1;
}

void sk_listener_ref(sk_listener *l)
{
    SK_ADD(&l->refs, 1);
}

void sk_listener_release(sk_listener *l)
{
    if (l && atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1) {
        free(l->fds);
        free(l);
    }
}

int sk_listener_port(const sk_listener *l)
{
    return l->port;
}

void sk_listener_stats(const sk_listener *l, sk_flow_stats *out)
{
    out->opened = SK_LOAD(&l->opened);
    out->closed = SK_LOAD(&l->closed);
    out->bytes_in = SK_LOAD(&l->bytes_in);
    out->bytes_out = SK_LOAD(&l->bytes_out);
    out->failed = SK_LOAD(&l->failed);
    out->active = SK_LOAD(&l->active);
}

/* Fills sa for host:port; "" means every address (IPv6 dual-stack). */
static int parse_bind_addr(const char *host, int port, int family_any,
                           struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (!host || !*host) {
        if (family_any == AF_INET6) {
            sin6->sin6_family = AF_INET6;
            sin6->sin6_addr = in6addr_any;
            sin6->sin6_port = htons((uint16_t)port);
            *len = sizeof *sin6;
        } else {
            sin->sin_family = AF_INET;
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
            sin->sin_port = htons((uint16_t)port);
            *len = sizeof *sin;
        }
        return 0;
    }
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof *sin6;
        return 0;
    }
    return -1;
}

/* Fails when any other socket holds the port: a bind without SO_REUSEPORT
 * conflicts with every listening socket there (SO_REUSEADDR only lets it
 * past connections in TIME_WAIT and sockets that bound but never listened).
 * Without this check a process of the same user that listens with
 * SO_REUSEPORT would silently share the port with the router's group, and
 * the kernel would split clients between the two. Returns 0, -2 when the
 * port is taken, -1 on another error (err filled). */
static int probe_port(const struct sockaddr_storage *ss, socklen_t len, int any6, char *err,
                      size_t errlen, const char *what)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        sk_set_err(err, errlen, "socket for %s: %s", what, strerror(errno));
        return -1;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (any6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    int rc = bind(fd, (const struct sockaddr *)ss, len);
    int bind_errno = errno;
    close(fd);
    if (rc == 0)
        return 0;
    if (bind_errno == EADDRINUSE) {
        /* keeps "cannot bind H:P: Address already in use" first: callers
         * and operators match on it */
        const char *colon = strrchr(what, ':');
        sk_set_err(err, errlen,
                   "cannot bind %s: %s: port %s on %.*s is already in use by another socket "
                   "or process",
                   what, strerror(bind_errno), colon ? colon + 1 : what,
                   colon ? (int)(colon - what) : 0, what);
        return -2;
    }
    sk_set_err(err, errlen, "cannot bind %s: %s", what, strerror(bind_errno));
    return -1;
}

/* Returns the listening fd, -2 when the port is held by another socket, -1
 * on any other failure (err filled either way). probe: check first that no
 * other socket holds the port (a fixed port's first socket). */
static int open_socket(const struct sockaddr_storage *ss, socklen_t len, int any6, int backlog,
                       int keepalive, bool probe, char *err, size_t errlen, const char *what)
{
    if (probe) {
        int rc = probe_port(ss, len, any6, err, errlen, what);
        if (rc != 0)
            return rc;
    }
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        sk_set_err(err, errlen, "socket for %s: %s", what, strerror(errno));
        return -1;
    }
    int one = 1, zero = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (any6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0)) {
        sk_set_err(err, errlen, "setsockopt for %s: %s", what, strerror(errno));
        close(fd);
        return -1;
    }
    /* accepted sockets inherit these on Linux: no setsockopt per client */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (keepalive)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)ss, len) != 0) {
        int in_use = errno == EADDRINUSE;
        sk_set_err(err, errlen, "cannot bind %s: %s", what, strerror(errno));
        close(fd);
        return in_use ? -2 : -1;
    }
    if (listen(fd, backlog) != 0) {
        sk_set_err(err, errlen, "cannot listen on %s: %s", what, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void resume_accept(sk_worker *w, sk_timer *t, uint64_t now);
static void lsock_io(sk_worker *w, sk_handle *h, uint32_t events);

sk_listener *sk_listener_open(sk_engine *e, const sk_listener_options *opts, char *err,
                              size_t errlen)
{
    if (atomic_load(&e->stopping)) {
        sk_set_err(err, errlen, "engine is stopped");
        return NULL;
    }
    if (opts->port < 0 || opts->port > 65535) {
        sk_set_err(err, errlen, "cannot listen on %s:%d: port %d out of range 0-65535",
                   opts->host && *opts->host ? opts->host : "*", opts->port, opts->port);
        return NULL;
    }
    if (opts->tls_slot >= SK_TLS_SLOTS) {
        sk_set_err(err, errlen, "TLS slot %d out of range", opts->tls_slot);
        return NULL;
    }
    if (opts->max_connections < 0) {
        sk_set_err(err, errlen, "max_connections %d must be >= 0", opts->max_connections);
        return NULL;
    }
    const char *host = opts->host ? opts->host : "";
    char what[96];
    snprintf(what, sizeof what, "%s:%d", *host ? host : "*", opts->port);
    struct sockaddr_storage ss;
    socklen_t len;
    int any6 = !*host;
    if (parse_bind_addr(host, opts->port, AF_INET6, &ss, &len) != 0) {
        sk_set_err(err, errlen, "cannot listen on %s: '%s' is not a numeric IPv4 or IPv6 address",
                   what, host);
        return NULL;
    }
    int backlog = opts->backlog > 0 ? opts->backlog : 128;

    int n = e->nworkers;
    int *fds = calloc((size_t)n, sizeof *fds);
    sk_lsock **ls = calloc((size_t)n, sizeof *ls);
    sk_listener *l = calloc(1, sizeof *l);
    if (!fds || !ls || !l) {
        sk_set_err(err, errlen, "out of memory");
        goto fail_alloc;
    }
    for (int i = 0; i < n; i++)
        fds[i] = -1;
    for (int i = 0; i < n; i++) {
        /* a fixed port must be free of other sockets before the group
         * forms; the rest of the group joins the first socket on purpose */
        bool probe = i == 0 && opts->port != 0;
        int fd = open_socket(&ss, len, any6, backlog, e->opts.keepalive, probe, err, errlen, what);
        if (fd == -1 && i == 0 && any6) {
            /* no IPv6 on this host: every IPv4 address instead (not when the
             * port is taken: IPv4 alone would hide that) */
            any6 = 0;
            parse_bind_addr("", opts->port, AF_INET, &ss, &len);
            fd = open_socket(&ss, len, 0, backlog, e->opts.keepalive, probe, err, errlen, what);
        }
        if (fd < 0)
            goto fail;
        if (opts->data_ok)
            sk_dc_keepalive(fd); /* inherited by every accepted connection */
        fds[i] = fd;
        if (i == 0) {
            /* the rest of the group binds the port the first one got */
            struct sockaddr_storage got;
            socklen_t glen = sizeof got;
            getsockname(fds[0], (struct sockaddr *)&got, &glen);
            uint16_t port = got.ss_family == AF_INET6
                                ? ((struct sockaddr_in6 *)&got)->sin6_port
                                : ((struct sockaddr_in *)&got)->sin_port;
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = port;
            else
                ((struct sockaddr_in *)&ss)->sin_port = port;
            l->port = ntohs(port);
        }
        ls[i] = calloc(1, sizeof *ls[i]);
        if (!ls[i]) {
            sk_set_err(err, errlen, "out of memory");
            goto fail;
        }
    }

    atomic_init(&l->refs, 1 + (uint64_t)n); /* the caller's and one per lsock */
    l->engine = e;
    l->opts = *opts;
    snprintf(l->host, sizeof l->host, "%s", host);
    l->opts.host = l->host;
    atomic_init(&l->pending_workers, n);
    for (int i = 0; i < n; i++) {
        ls[i]->h.on_io = lsock_io;
        ls[i]->fd = fds[i];
        ls[i]->listener = l;
        ls[i]->worker = &e->workers[i];
        sk_timer_init(&ls[i]->resume, resume_accept);
        sk_msg *m = calloc(1, sizeof *m);
        if (!m)
            abort(); /* half-posted listener could not be undone cleanly */
        m->kind = SK_MSG_ADD_LSOCK;
        m->u.lsock = ls[i];
        sk_worker_post(&e->workers[i], m);
    }
    l->fds = fds;
    free(ls);
    return l;

fail:
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        free(ls[i]);
    }
fail_alloc:
    free(fds);
    free(ls);
    free(l);
    return NULL;
}

void sk_lsock_attach(sk_worker *w, sk_lsock *ls)
{
    ls->next = w->lsocks;
    w->lsocks = ls;
    if (sk_worker_epoll(w, EPOLL_CTL_ADD, ls->fd, EPOLLIN, &ls->h) != 0) {
        /* cannot happen for a fresh fd short of ENOMEM: retry on the timer */
        ls->paused = true;
        ls->backoff_ms = SK_ACCEPT_BACKOFF_MIN_MS;
        sk_worker_schedule(w, SK_PRIO_NORMAL, &ls->resume,
                           sk_now_ns() + ls->backoff_ms * 1000000u);
    }
}

/* on_io of a closed listening socket: events already collected in this batch. */
static void lsock_closed_io(sk_worker *w, sk_handle *h, uint32_t events)
{
    SK_UNUSED(w);
    SK_UNUSED(h);
    SK_UNUSED(events);
}

void sk_lsock_destroy(sk_worker *w, sk_lsock *ls)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &ls->resume);
    close(ls->fd); /* also leaves the epoll set */
    ls->fd = -1;
    sk_listener_release(ls->listener);
    ls->listener = NULL;
    /* an event for it may still wait later in this batch (the mailbox runs
     * first): freed after the batch, like connections */
    ls->h.on_io = lsock_closed_io;
    ls->next = w->lsock_grave;
    w->lsock_grave = ls;
}

void sk_lsock_reap(sk_worker *w)
{
    while (w->lsock_grave) {
        sk_lsock *ls = w->lsock_grave;
        w->lsock_grave = ls->next;
        free(ls);
    }
}

static void resume_accept(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_lsock *ls = SK_CONTAINER_OF(t, sk_lsock, resume);
    if (!ls->paused)
        return;
    ls->paused = false;
    if (sk_worker_epoll(w, EPOLL_CTL_ADD, ls->fd, EPOLLIN, &ls->h) != 0) {
        ls->paused = true;
        sk_worker_schedule(w, SK_PRIO_NORMAL, &ls->resume,
                           sk_now_ns() + ls->backoff_ms * 1000000u);
    }
}

static void pause_accept(sk_worker *w, sk_lsock *ls, int err)
{
    /* out of descriptors: stop polling this socket instead of spinning on it */
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, ls->fd, NULL);
    ls->paused = true;
    ls->backoff_ms = ls->backoff_ms ? ls->backoff_ms * 2 : SK_ACCEPT_BACKOFF_MIN_MS;
    if (ls->backoff_ms > SK_ACCEPT_BACKOFF_MAX_MS)
        ls->backoff_ms = SK_ACCEPT_BACKOFF_MAX_MS;
    SK_ADD(&w->engine->accept_paused, 1);
    sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_ACCEPT_PAUSED, ls->listener->opts.user_id, err,
                   (int64_t)ls->backoff_ms);
    sk_worker_schedule(w, SK_PRIO_NORMAL, &ls->resume, sk_now_ns() + ls->backoff_ms * 1000000u);
}

void sk_worker_pause_listener(sk_worker *w, sk_listener *l, int err)
{
    for (sk_lsock *ls = w->lsocks; ls; ls = ls->next)
        if (ls->listener == l && !ls->paused) {
            pause_accept(w, ls, err);
            return;
        }
}

/* on_io of a listening socket (level-triggered): accepts a bounded number
 * per event, within a time budget; at least one. */
static void lsock_io(sk_worker *w, sk_handle *h, uint32_t events)
{
    SK_UNUSED(events);
    sk_lsock *ls = SK_CONTAINER_OF(h, sk_lsock, h);
    sk_listener *l = ls->listener;
    uint64_t start = sk_now_ns();
    for (int i = 0; i < SK_ACCEPTS_PER_EVENT && !ls->paused; i++) {
        if (i > 0) {
            if (sk_now_ns() - start >= SK_ACCEPT_BUDGET_NS) {
                SK_ADD(&w->engine->accept_deferred, 1);
                return; /* the rest on the next round, after the other events */
            }
            sk_worker_high_check(w); /* each accept starts a connect: not free */
        }
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int fd = accept4(ls->fd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == ECONNABORTED || e == EINTR || e == EPROTO)
                continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                pause_accept(w, ls, e);
            } else if (e == EINVAL) {
                /* shut down by sk_listener_close (no longer listening): its
                 * level-triggered HUP would spin until the close message */
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, ls->fd, NULL);
                ls->paused = true;
            }
            return; /* EAGAIN: drained */
        }
        ls->backoff_ms = 0;
        if (l->opts.max_connections > 0 &&
            SK_LOAD(&l->active) >= (uint64_t)l->opts.max_connections) {
            SK_ADD(&w->engine->limit_rejected, 1);
            close(fd);
            continue;
        }
        sk_conn_accepted(w, l, fd, (struct sockaddr *)&sa, salen);
    }
}

void sk_worker_close_listener(sk_worker *w, sk_listener *l, int drop)
{
    for (sk_lsock **pp = &w->lsocks; *pp; pp = &(*pp)->next) {
        if ((*pp)->listener == l) {
            sk_lsock *ls = *pp;
            *pp = ls->next;
            sk_lsock_destroy(w, ls);
            break;
        }
    }
    if (drop)
        sk_worker_close_flows(w, l, NULL);
    if (atomic_fetch_sub_explicit(&l->pending_workers, 1, memory_order_acq_rel) == 1)
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_LISTENER_CLOSED, l->opts.user_id, 0, 0);
    sk_listener_release(l); /* the close message's reference */
}

void sk_listener_close(sk_listener *l, int drop_flows)
{
    if (atomic_exchange(&l->closing, 1))
        return;
    sk_engine *e = l->engine;
    if (atomic_load(&e->stopping))
        return; /* the workers closed every socket when they stopped */
    /* Leave the port now, not when each worker gets to its message: a
     * listener reopened on the same port at once must find it free (see
     * probe_port). A shut-down listening socket stops listening but stays
     * open (its fd cannot be reused under the worker) until the worker
     * closes it; clients waiting in its queue are reset, as close() would. */
    for (int i = 0; i < e->nworkers; i++)
        shutdown(l->fds[i], SHUT_RDWR);
    for (int i = 0; i < e->nworkers; i++) {
        sk_msg *m = calloc(1, sizeof *m);
        if (!m)
            abort();
        m->kind = SK_MSG_CLOSE_LISTENER;
        m->u.close.listener = l;
        m->u.close.drop = drop_flows;
        sk_listener_ref(l);
        sk_worker_post(&e->workers[i], m);
    }
}
