/* peer.c -- neighbour routers that data connections are dialled to.
 *
 * A peer is shared and reference counted like a target: every route table
 * that names it as a next hop holds a reference, and so does every data
 * connection dialled to it. It owns the state of the remote destinations
 * reached through it (one sk_target per address id and destination router,
 * flagged remote): open flows and back-off survive a new route table.
 * Created and released on the control thread; counters are atomics. */
#include "internal.h"

#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sk_peer_options_init(sk_peer_options *o)
{
    memset(o, 0, sizeof *o);
    o->router_id = "";
    o->ip = "";
    o->host = "";
    o->tls_slot = -1;
}

sk_peer *sk_peer_create(sk_engine *e, const sk_peer_options *o, char *err, size_t errlen)
{
    size_t idl = o->router_id ? strlen(o->router_id) : 0;
    if (idl == 0 || idl > SK_FLOW_ID_MAX) {
        sk_set_err(err, errlen, "peer router id must be 1-%d bytes", SK_FLOW_ID_MAX);
        return NULL;
    }
    if (o->reverse && (o->pool_size || o->inbound_pool_size)) {
        sk_set_err(err, errlen, "reverse peer '%s': no pool_size or inbound_pool_size "
                   "(it never dials)", o->router_id);
        return NULL;
    }
    if (!o->reverse && (o->port <= 0 || o->port > 65535)) {
        sk_set_err(err, errlen, "port %d out of range 1-65535", o->port);
        return NULL;
    }
    if (o->tls_slot >= SK_TLS_SLOTS) {
        sk_set_err(err, errlen, "TLS slot %d out of range", o->tls_slot);
        return NULL;
    }
    sk_peer *p = calloc(1, sizeof *p);
    if (!p) {
        sk_set_err(err, errlen, "out of memory");
        return NULL;
    }
    sk_route_target *rt = &p->dial;
    struct sockaddr_in *sin = (struct sockaddr_in *)&rt->sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&rt->sa;
    if (o->reverse) {
        rt->salen = 0; /* never dialled */
    } else if (o->ip && inet_pton(AF_INET, o->ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)o->port);
        rt->salen = sizeof *sin;
    } else if (o->ip && inet_pton(AF_INET6, o->ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)o->port);
        rt->salen = sizeof *sin6;
    } else {
        sk_set_err(err, errlen, "'%s' is not a numeric IPv4 or IPv6 address",
                   o->ip ? o->ip : "(null)");
        free(p);
        return NULL;
    }
    const char *h = o->host ? o->host : "";
    struct in6_addr tmp6;
    struct in_addr tmp4;
    rt->host_is_ip = !*h || inet_pton(AF_INET, h, &tmp4) == 1 || inet_pton(AF_INET6, h, &tmp6) == 1;
    snprintf(rt->host, sizeof rt->host, "%s", h);
    rt->tls_slot = o->tls_slot < 0 || o->reverse ? -1 : o->tls_slot;
    rt->verify_host = o->verify_host != 0;
    rt->weight = 1;
    if (o->reverse)
        snprintf(rt->label, sizeof rt->label, "reverse:%s", o->router_id);
    else
        sk_format_addr((struct sockaddr *)&rt->sa, rt->label, sizeof rt->label);
    atomic_init(&p->refs, 1);
    p->engine = e;
    p->user_id = o->user_id;
    memcpy(p->router_id, o->router_id, idl + 1);
    p->pool_size = o->pool_size;
    /* a reverse peer's idle connections are the dialler's to close */
    p->pool_idle_ms = o->pool_idle_ms ? o->pool_idle_ms : o->reverse ? 0 : 60000;
    p->instance = o->instance;
    p->link_id = o->link_id;
    p->reverse = o->reverse != 0;
    p->inbound_pool_size = o->inbound_pool_size;
    uint32_t base = p->pool_size > p->inbound_pool_size ? p->pool_size : p->inbound_pool_size;
    p->pool_max = o->pool_max ? o->pool_max : (base * 4 > 8 ? base * 4 : 8);
    if (p->pool_max < base)
        p->pool_max = base;
    p->inbound_cap = o->inbound_cap ? o->inbound_cap : 64;
    p->pool_wait_ms = o->pool_wait_ms ? o->pool_wait_ms : (uint32_t)e->opts.connect_timeout_ms;
    p->pool_wait_max = o->pool_wait_max ? o->pool_wait_max : 64;
    p->npools = e->nworkers;
    if (p->pool_size || p->reverse) {
        p->pools = calloc((size_t)p->npools, sizeof *p->pools);
        if (!p->pools)
            goto oom;
    }
    if (p->inbound_pool_size) {
        p->ipools = calloc((size_t)p->npools, sizeof *p->ipools);
        if (!p->ipools)
            goto oom;
    }
    if (!p->reverse && p->dial.tls_slot >= 0) {
        p->sessions = calloc((size_t)p->npools, sizeof *p->sessions);
        if (!p->sessions)
            goto oom;
    }
    for (int i = 0; i < p->npools; i++) {
        if (p->pools) {
            p->pools[i].peer = p;
            p->pools[i].windex = i;
            p->pools[i].target = p->pool_size;
            atomic_init(&p->pools[i].target_pub, p->pool_size);
            sk_timer_init(&p->pools[i].refill, NULL);
        }
        if (p->ipools) {
            p->ipools[i].peer = p;
            p->ipools[i].windex = i;
            p->ipools[i].target = p->inbound_pool_size;
            atomic_init(&p->ipools[i].target_pub, p->inbound_pool_size);
            sk_timer_init(&p->ipools[i].refill, NULL);
        }
    }
    pthread_mutex_init(&p->lock, NULL);
    if (p->reverse || p->ipools) {
        /* the registry keeps it until sk_peer_close: refill timers and the
         * HELLO lookup need it alive. At the head: a newer reverse peer for
         * the same router takes its HELLOs from the older one (a link that
         * came back before the old one was closed) */
        sk_peer_ref(p);
        pthread_mutex_lock(&e->rid_lock);
        p->registered = true;
        p->reg_next = e->peer_reg;
        e->peer_reg = p;
        pthread_mutex_unlock(&e->rid_lock);
    }
    if (p->ipools) {
        /* INBOUND pools are filled at once: the neighbour cannot ask (a
         * stopped engine's workers run nothing more) */
        for (int i = 0; !atomic_load(&e->stopping) && i < e->nworkers; i++) {
            sk_msg *m = calloc(1, sizeof *m);
            if (!m)
                continue; /* that worker fills on its first refill instead */
            m->kind = SK_MSG_PEER_FILL;
            sk_peer_ref(p);
            m->u.dc.peer = p;
            sk_worker_post(&e->workers[i], m);
        }
    }
    return p;
oom:
    sk_set_err(err, errlen, "out of memory");
    free(p->pools);
    free(p->ipools);
    free(p->sessions);
    free(p);
    return NULL;
}

sk_peer *sk_peer_find_reverse(sk_engine *e, const char *id, size_t len)
{
    sk_peer *found = NULL;
    pthread_mutex_lock(&e->rid_lock);
    for (sk_peer *p = e->peer_reg; p; p = p->reg_next)
        if (p->reverse && strlen(p->router_id) == len && memcmp(p->router_id, id, len) == 0) {
            sk_peer_ref(p);
            found = p;
            break;
        }
    pthread_mutex_unlock(&e->rid_lock);
    return found;
}

static bool unregister(sk_peer *p)
{
    sk_engine *e = p->engine;
    bool was = false;
    pthread_mutex_lock(&e->rid_lock);
    for (sk_peer **pp = &e->peer_reg; *pp; pp = &(*pp)->reg_next)
        if (*pp == p) {
            *pp = p->reg_next;
            was = true;
            break;
        }
    p->registered = false;
    p->reg_next = NULL;
    pthread_mutex_unlock(&e->rid_lock);
    return was;
}

void sk_peer_close(sk_peer *p)
{
    if (!p)
        return;
    /* registered is cleared by sk_peer_registry_clear when the engine goes:
     * then there is no worker left to tell */
    if (p->registered && unregister(p)) {
        sk_engine *e = p->engine;
        SK_STORE(&p->closing, 1);
        /* a stopped engine's workers run nothing more (their connections
         * are closed and their timers gone): nothing to tell them */
        for (int i = 0; !atomic_load(&e->stopping) && i < e->nworkers; i++) {
            sk_msg *m = calloc(1, sizeof *m);
            if (!m)
                abort(); /* a lost close would leave a refill timer on a freed peer */
            m->kind = SK_MSG_PEER_CLOSE;
            sk_peer_ref(p);
            m->u.dc.peer = p;
            sk_worker_post(&e->workers[i], m);
        }
        sk_peer_release(p); /* the registry's */
    }
    sk_peer_release(p);
}

void sk_peer_registry_clear(sk_engine *e)
{
    pthread_mutex_lock(&e->rid_lock);
    sk_peer *p = e->peer_reg;
    e->peer_reg = NULL;
    pthread_mutex_unlock(&e->rid_lock);
    while (p) {
        sk_peer *next = p->reg_next;
        p->registered = false;
        p->reg_next = NULL;
        sk_peer_release(p);
        p = next;
    }
}

void sk_peer_ref(sk_peer *p)
{
    SK_ADD(&p->refs, 1);
}

void sk_peer_release(sk_peer *p)
{
    if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    sk_target *t = p->states;
    while (t) {
        sk_target *next = t->rnext;
        sk_target_release(t);
        t = next;
    }
    pthread_mutex_destroy(&p->lock);
    free(p->pools); /* empty: every pooled connection held a reference */
    free(p->ipools);
    for (int i = 0; p->sessions && i < p->npools; i++)
        SSL_SESSION_free(p->sessions[i].sess);
    free(p->sessions);
    free(p);
}

void sk_peer_stats_get(sk_peer *p, sk_peer_stats *out)
{
    uint64_t n = 0, down = 0;
    pthread_mutex_lock(&p->lock);
    for (const sk_target *t = p->states; t; t = t->rnext) {
        n++;
        down += SK_LOAD(&t->down) != 0;
    }
    pthread_mutex_unlock(&p->lock);
    out->destinations = n;
    out->destinations_down = down;
    out->pool_idle = SK_LOAD(&p->pool_idle);
    out->pool_stale = SK_LOAD(&p->pool_stale);
    out->pool_hits = SK_LOAD(&p->pool_hits);
    out->pool_misses = SK_LOAD(&p->pool_misses);
    out->flows = SK_LOAD(&p->flows);
    out->active = SK_LOAD(&p->active);
    out->bytes_in = SK_LOAD(&p->bytes_in);
    out->bytes_out = SK_LOAD(&p->bytes_out);
    out->failures = SK_LOAD(&p->failures);
    out->resets = SK_LOAD(&p->resets);
    out->inbound_idle = SK_LOAD(&p->inbound_idle);
    out->inbound_claims = SK_LOAD(&p->inbound_claims);
    out->inbound_failures = SK_LOAD(&p->inbound_failures);
    out->inbound_accepted = SK_LOAD(&p->inbound_accepted);
    out->hello_refused = SK_LOAD(&p->hello_refused);
    out->hello_overloaded = SK_LOAD(&p->hello_overloaded);
    out->pool_waits = SK_LOAD(&p->pool_waits);
    out->pool_exhausted = SK_LOAD(&p->pool_exhausted);
    out->pool_handoffs = SK_LOAD(&p->pool_handoffs);
    uint64_t tg = 0;
    for (int i = 0; i < p->npools; i++) {
        uint64_t a = p->pools ? SK_LOAD(&p->pools[i].target_pub) : 0;
        uint64_t b = p->ipools ? SK_LOAD(&p->ipools[i].target_pub) : 0;
        if (a > tg)
            tg = a;
        if (b > tg)
            tg = b;
    }
    out->pool_target = tg;
}
