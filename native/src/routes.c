/* routes.c -- route table snapshots and the shared per-target state.
 *
 * The control thread builds a table (address -> targets with their resolved
 * socket address and TLS settings) and publishes it as an immutable snapshot;
 * workers read it lock-free when they choose a target (connect.c). A target
 * outlives the tables that name it: its counters and back-off state are
 * shared by every worker and every table version. */
#include "internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sk_target *sk_target_create(sk_engine *e, uint64_t user_id)
{
    sk_target *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    atomic_init(&t->refs, 1);
    t->user_id = user_id;
    t->engine = e;
    return t;
}

void sk_target_ref(sk_target *t)
{
    SK_ADD(&t->refs, 1);
}

void sk_target_release(sk_target *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        free(t);
}

void sk_target_stats(const sk_target *t, sk_flow_stats *out)
{
    out->opened = SK_LOAD(&t->opened);
    out->closed = SK_LOAD(&t->closed);
    out->bytes_in = SK_LOAD(&t->bytes_in);
    out->bytes_out = SK_LOAD(&t->bytes_out);
    out->failed = SK_LOAD(&t->failed);
    int64_t open = SK_LOAD(&t->open);
    out->active = open > 0 ? (uint64_t)open : 0;
}

int sk_target_is_down(const sk_target *t)
{
    return SK_LOAD(&t->down);
}

static void routes_destroy(sk_snap *s)
{
    sk_routes *r = (sk_routes *)s;
    for (uint32_t i = 0; i < r->n; i++) {
        for (uint32_t j = 0; j < r->addr[i].n; j++)
            sk_target_release(r->addr[i].v[j].target);
        free(r->addr[i].v);
    }
    free(r->addr);
    free(r);
}

sk_routes *sk_routes_create(uint32_t n_addresses)
{
    sk_routes *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    sk_snap_init(&r->snap, routes_destroy);
    r->n = n_addresses;
    if (n_addresses) {
        r->addr = calloc(n_addresses, sizeof *r->addr);
        if (!r->addr) {
            free(r);
            return NULL;
        }
    }
    return r;
}

void sk_routes_free(sk_routes *r)
{
    if (r)
        sk_snap_release(&r->snap);
}

int sk_routes_add(sk_routes *r, uint32_t address_id, sk_target *t, const char *ip, int port,
                  const char *host, uint32_t weight, int tls_slot, int verify_host, char *err,
                  size_t errlen)
{
    if (address_id >= r->n) {
        sk_set_err(err, errlen, "address id %u out of range (table has %u)", address_id, r->n);
        return -1;
    }
    if (!t) {
        sk_set_err(err, errlen, "target is NULL");
        return -1;
    }
    if (port <= 0 || port > 65535) {
        sk_set_err(err, errlen, "port %d out of range 1-65535", port);
        return -1;
    }
    if (tls_slot >= SK_TLS_SLOTS) {
        sk_set_err(err, errlen, "TLS slot %d out of range", tls_slot);
        return -1;
    }
    sk_route_target rt;
    memset(&rt, 0, sizeof rt);
    struct sockaddr_in *sin = (struct sockaddr_in *)&rt.sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&rt.sa;
    if (ip && inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        rt.salen = sizeof *sin;
    } else if (ip && inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        rt.salen = sizeof *sin6;
    } else {
        sk_set_err(err, errlen, "'%s' is not a numeric IPv4 or IPv6 address", ip ? ip : "(null)");
        return -1;
    }
    sk_route_entry *en = &r->addr[address_id];
    if (en->n == en->cap) {
        uint32_t cap = en->cap ? en->cap * 2 : 4;
        sk_route_target *v = realloc(en->v, cap * sizeof *v);
        if (!v) {
            sk_set_err(err, errlen, "out of memory");
            return -1;
        }
        en->v = v;
        en->cap = cap;
    }
    rt.target = t;
    rt.weight = weight ? weight : 1;
    rt.tls_slot = tls_slot < 0 ? -1 : tls_slot;
    rt.verify_host = verify_host != 0;
    {
        struct in6_addr tmp6;
        struct in_addr tmp4;
        const char *h = host ? host : "";
        rt.host_is_ip = !*h || inet_pton(AF_INET, h, &tmp4) == 1 || inet_pton(AF_INET6, h, &tmp6) == 1;
    }
    sk_format_addr((struct sockaddr *)&rt.sa, rt.label, sizeof rt.label);
    snprintf(rt.host, sizeof rt.host, "%s", host ? host : "");
    sk_target_ref(t);
    en->v[en->n++] = rt;
    return 0;
}
