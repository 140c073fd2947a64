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
    if (o->port <= 0 || o->port > 65535) {
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
    if (o->ip && inet_pton(AF_INET, o->ip, &sin->sin_addr) == 1) {
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
    rt->tls_slot = o->tls_slot < 0 ? -1 : o->tls_slot;
    rt->verify_host = o->verify_host != 0;
    rt->weight = 1;
    sk_format_addr((struct sockaddr *)&rt->sa, rt->label, sizeof rt->label);
    atomic_init(&p->refs, 1);
    p->engine = e;
    p->user_id = o->user_id;
    memcpy(p->router_id, o->router_id, idl + 1);
    p->pool_size = o->pool_size;
    p->pool_idle_ms = o->pool_idle_ms ? o->pool_idle_ms : 60000;
    p->instance = o->instance;
    p->link_id = o->link_id;
    if (p->pool_size) {
        p->npools = e->nworkers;
        p->pools = calloc((size_t)p->npools, sizeof *p->pools);
        if (!p->pools) {
            sk_set_err(err, errlen, "out of memory");
            free(p);
            return NULL;
        }
    }
    pthread_mutex_init(&p->lock, NULL);
    return p;
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
}
