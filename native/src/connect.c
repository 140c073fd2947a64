/* connect.c -- the target side of a flow: target choice, outbound connect,
 * retry on another target, and per-target back-off.
 *
 * Choice: fewest open flows among the targets that are up, ties round-robin;
 * when every untried target is backing off, probe the one whose back-off
 * ends first. A failed attempt (refused, timed out, TLS handshake failed)
 * backs its target off exponentially and tries the next one, up to
 * SK_MAX_TRIES targets per client; a success resets the back-off. The
 * per-target state is shared by every worker (relaxed atomics). Once the
 * target side is ready the flow is relay.c's. Runs on an I/O worker: connect()
 * is non-blocking and its completion arrives as an epoll event. */
#include "internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

static void set_sockopts(sk_engine *e, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (e->opts.keepalive)
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

/* ------------------------------------------------------------ back-off */

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
    if (atomic_exchange(&t->down, 1) == 0 && !t->remote)
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_TARGET_DOWN, t->user_id, err, (int64_t)ms);
}

static void target_up(sk_worker *w, sk_target *t)
{
    if (SK_LOAD(&t->backoff_step) == 0)
        return;
    SK_STORE(&t->backoff_step, 0);
    SK_STORE(&t->down_until, 0);
    if (atomic_exchange(&t->down, 0) == 1 && !t->remote)
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_TARGET_UP, t->user_id, 0, 0);
}

/* ------------------------------------------------------------ choice */

static bool tried(const sk_conn *client, const sk_target *t)
{
    for (uint32_t i = 0; i < client->attempts && i < SK_MAX_TRIES; i++)
        if (client->tried[i] == t)
            return true;
    return false;
}

/* A candidate: a local target or a remote destination (through a peer). */
typedef struct sk_pick {
    const sk_route_target *local;
    const sk_route_remote *remote;
    sk_target *t; /* the local target, or the remote destination's state */
} sk_pick;

/* Lowest cost first (local targets cost 0), then fewest open flows, ties
 * round robin; only what the client's mode allows. A client of a balanced
 * listener takes the fewest open flows plus cost instead (Skupper's
 * balanced treatment: the cost is a bias, so flows spill over to other
 * sites as local targets fill). Transit hops follow the origin's choice. */
static bool pick_target(sk_worker *w, const sk_route_entry *en, const sk_conn *client,
                        sk_pick *out)
{
    if (!en)
        return false;
    int mode = sk_dc_mode(client);
    size_t dlen = 0;
    const char *dest = mode == SK_DC_FORWARD ? sk_dc_dest(client, &dlen) : NULL;
    uint32_t nl = mode == SK_DC_FORWARD ? 0 : en->n;
    uint32_t nr = mode == SK_DC_LOCAL ? 0 : en->rn;
    uint32_t total = nl + nr;
    bool balanced = mode != SK_DC_FORWARD && client->listener && client->listener->opts.balanced;
    if (total == 0)
        return false;
    uint64_t now = sk_now_ns();
    uint32_t start = w->rr++;
    sk_pick best = {0}, probe = {0};
    int64_t best_open = INT64_MAX;
    uint32_t best_cost = UINT32_MAX;
    uint64_t probe_until = UINT64_MAX;
    for (uint32_t k = 0; k < total; k++) {
        uint32_t i = (start + k) % total;
        sk_pick c = {0};
        uint32_t cost = 0;
        if (i < nl) {
            c.local = &en->v[i];
            c.t = c.local->target;
        } else {
            c.remote = &en->rv[i - nl];
            if (dlen && (c.remote->dest_len != dlen || memcmp(c.remote->dest, dest, dlen) != 0))
                continue;
            c.t = c.remote->state;
            cost = c.remote->cost;
        }
        if (tried(client, c.t))
            continue;
        uint64_t until = SK_LOAD(&c.t->down_until);
        if (until > now) {
            if (until < probe_until) {
                probe_until = until;
                probe = c;
            }
            continue;
        }
        int64_t open = SK_LOAD(&c.t->open);
        if (balanced) {
            open += cost; /* the score; cost only breaks no tie below */
            cost = 0;
        }
        if (cost < best_cost || (cost == best_cost && open < best_open)) {
            best_cost = cost;
            best_open = open;
            best = c;
        }
    }
    *out = best.t ? best : probe;
    return out->t != NULL;
}

/* ------------------------------------------------------------ connect */

void sk_connect_fail_flow(sk_worker *w, sk_conn *client)
{
    if (sk_dc_fail_flow(w, client))
        return;
    SK_ADD(&w->engine->flows_failed, 1);
    if (client->listener)
        SK_ADD(&client->listener->failed, 1);
    sk_conn_close(w, client, false);
}

static void connect_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *s = SK_CONTAINER_OF(t, sk_conn, tmo);
    if (s->state == SK_C_CONNECTING)
        sk_connect_failed(w, s, ETIMEDOUT);
}

static void connected(sk_worker *w, sk_conn *s)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    if (s->ssl) {
        sk_tls_io_handshake_start(w, s);
        return;
    }
    sk_conn_enter(s, SK_C_OPEN, sk_relay_io);
    sk_connect_established(w, s);
}

/* on_io while connecting. */
static void connect_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    /* a failed connect always raises EPOLLERR: ask for the error only then */
    int err = 0;
    if (ev & (EPOLLERR | EPOLLHUP)) {
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (!err && !(ev & EPOLLOUT))
            err = ECONNRESET;
    }
    if (err) {
        sk_connect_failed(w, c, err);
    } else if (ev & EPOLLOUT) {
        /* edge-triggered: an edge is not repeated, so keep what it said */
        c->rd_ready = c->et && (ev & (EPOLLIN | EPOLLRDHUP));
        c->rd_hup = c->et && (ev & EPOLLRDHUP);
        connected(w, c);
    }
}

/* s, an idle pooled connection of rr's peer taken for client: its FLOW goes
 * at once. false: the header could not be made (s closed). */
static bool claim_start(sk_worker *w, sk_conn *client, sk_conn *s, sk_target *t,
                        const sk_route_remote *rr, const sk_routes *rt, uint32_t aid)
{
    sk_peer *peer = rr->peer;
    sk_target_ref(t);
    s->target = t;
    SK_ADD(&t->open, 1);
    if (!sk_dc_originate(w, client, s, rr, rt, aid)) {
        client->last_err = EINVAL;
        sk_conn_close(w, s, false);
        return false;
    }
    pthread_mutex_lock(&w->conn_lock);
    s->peer = client;
    client->peer = s;
    pthread_mutex_unlock(&w->conn_lock);
    SK_ADD(&peer->pool_hits, 1);
    sk_dc_pool_fill(w, peer);
    sk_dc_established(w, s); /* FLOW on the warm connection */
    return true;
}

/* No connection to be had through a reverse peer: like an OVERLOADED verdict,
 * the destination backs off and the client goes on to the next candidate. */
static void overloaded_attempt(sk_worker *w, sk_conn *client, sk_target *t)
{
    if (t)
        target_failed(w, t, EAGAIN);
    client->last_err = EAGAIN;
    sk_dc_attempt_overloaded(w, client);
}

void sk_connect_overloaded(sk_worker *w, sk_conn *client, sk_target *t)
{
    overloaded_attempt(w, client, t);
    sk_connect_start(w, client);
}

void sk_connect_resume(sk_worker *w, sk_conn *client, sk_target *t)
{
    sk_engine *e = w->engine;
    sk_routes *rt = (sk_routes *)sk_slot_cached(&e->routes, &w->routes_cache);
    uint32_t aid = sk_dc_address(client);
    const sk_route_entry *en = rt && aid < rt->n ? &rt->addr[aid] : NULL;
    for (uint32_t i = 0; en && t && i < en->rn; i++) {
        const sk_route_remote *rr = &en->rv[i];
        if (rr->state != t)
            continue;
        sk_conn *s = sk_dc_pool_claim(w, rr->peer);
        if (s && claim_start(w, client, s, t, rr, rt, aid))
            return;
        break;
    }
    sk_connect_start(w, client); /* gone from the routes: the next candidate */
}

void sk_connect_start(sk_worker *w, sk_conn *client)
{
    sk_engine *e = w->engine;
    uint32_t limit = SK_MAX_TRIES;
    if (e->opts.max_connect_attempts > 0 && (uint32_t)e->opts.max_connect_attempts < limit)
        limit = (uint32_t)e->opts.max_connect_attempts;
    if (sk_dc_mode(client) == SK_DC_FORWARD)
        limit = 1; /* an intermediate router does not retry: the origin does */
    while (client->attempts < limit) {
        sk_routes *rt = (sk_routes *)sk_slot_cached(&e->routes, &w->routes_cache);
        uint32_t aid = sk_dc_address(client);
        const sk_route_entry *en = rt && aid < rt->n ? &rt->addr[aid] : NULL;
        sk_pick pk;
        if (!pick_target(w, en, client, &pk))
            break;
        /* a remote destination is dialled at its next hop's address */
        const sk_route_target *pick = pk.local ? pk.local : &pk.remote->peer->dial;
        sk_target *t = pk.t;
        client->tried[client->attempts++] = t;
        if (pk.remote && (pk.remote->peer->pool_size || pk.remote->peer->reverse)) {
            sk_peer *peer = pk.remote->peer;
            sk_conn *s = sk_dc_pool_claim(w, peer);
            if (s) {
                if (!claim_start(w, client, s, t, pk.remote, rt, aid))
                    continue;
                return;
            }
            if (peer->reverse) {
                /* never dialled: wait for an INBOUND connection, or move on */
                SK_ADD(&peer->pool_misses, 1);
                if (sk_dc_wait(w, client, peer, t))
                    return;
                overloaded_attempt(w, client, t);
                continue;
            }
            SK_ADD(&peer->pool_misses, 1);
            sk_dc_pool_fill(w, peer);
        }
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
        if (pk.remote && !sk_dc_originate(w, client, s, pk.remote, rt, aid)) {
            /* no router id or address name to write: not this candidate */
            client->last_err = EINVAL;
            sk_conn_close(w, s, false);
            continue;
        }
        if (pick->tls_slot >= 0 && !sk_tls_io_attach_client(w, s, pick)) {
            client->last_err = EPROTO;
            sk_conn_close(w, s, false);
            target_failed(w, t, EPROTO);
            continue;
        }
        pthread_mutex_lock(&w->conn_lock);
        s->peer = client;
        client->peer = s;
        pthread_mutex_unlock(&w->conn_lock);
        if (rc == 0) {
            connected(w, s);
            return;
        }
        sk_conn_enter(s, SK_C_CONNECTING, connect_io);
        /* a data connection reads its verdict first (dataconn.c, level-
         * triggered); sk_relay_start makes it edge-triggered after OK */
        if (sk_relay_plain(s) && !s->dc && !client->dc)
            sk_conn_register_et(w, s); /* once, for the relay too */
        else
            sk_conn_set_interest(w, s, EPOLLOUT);
        if (s->state == SK_C_CLOSED)
            return;
        s->tmo.cb = connect_timeout;
        sk_worker_schedule(w, SK_PRIO_NORMAL, &s->tmo,
                           sk_now_ns() + (uint64_t)e->opts.connect_timeout_ms * 1000000u);
        return;
    }
    sk_connect_fail_flow(w, client);
}

void sk_connect_failed(sk_worker *w, sk_conn *s, int err)
{
    if (s->dc && sk_dc_pool_failed(w, s, err))
        return; /* a pooled connection that no flow had claimed yet */
    sk_conn *client = s->peer;
    target_failed(w, s->target, err);
    if (s->dc)
        sk_dc_attempt_failed(w, s, client, err);
    pthread_mutex_lock(&w->conn_lock);
    s->peer = NULL;
    if (client)
        client->peer = NULL;
    pthread_mutex_unlock(&w->conn_lock);
    sk_conn_close(w, s, false);
    if (client) {
        client->last_err = err;
        sk_connect_start(w, client);
    }
}

void sk_connect_established(sk_worker *w, sk_conn *s)
{
    if (s->dc) {
        sk_dc_established(w, s); /* a data connection: FLOW, then its verdict */
        return;
    }
    SK_ADD(&s->target->opened, 1);
    target_up(w, s->target);
    if (s->peer && s->peer->dc) {
        sk_dc_local_established(w, s->peer); /* VERDICT OK upstream, then relay */
        return;
    }
    sk_relay_start(w, s);
}

void sk_connect_remote_ok(sk_worker *w, sk_conn *s)
{
    SK_ADD(&s->target->opened, 1);
    target_up(w, s->target);
}
