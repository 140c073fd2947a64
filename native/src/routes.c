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
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1) {
        free(t->rdest);
        free(t);
    }
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
        for (uint32_t j = 0; j < r->addr[i].rn; j++) {
            sk_target_release(r->addr[i].rv[j].state);
            sk_peer_release(r->addr[i].rv[j].peer);
        }
        free(r->addr[i].rv);
        free(r->addr[i].name);
    }
    free(r->addr);
    free(r->index);
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

/* ------------------------------------------------------------ data plane */

static uint32_t name_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

int64_t sk_routes_find(const sk_routes *r, const char *name, size_t len)
{
    if (!r || !r->index)
        return -1;
    for (uint32_t i = name_hash(name, len) & r->index_mask;; i = (i + 1) & r->index_mask) {
        uint32_t v = r->index[i];
        if (v == 0)
            return -1;
        const sk_route_entry *en = &r->addr[v - 1];
        if (en->name_len == len && memcmp(en->name, name, len) == 0)
            return v - 1;
    }
}

int sk_routes_set_address(sk_routes *r, uint32_t address_id, const char *name, char *err,
                          size_t errlen)
{
    if (address_id >= r->n) {
        sk_set_err(err, errlen, "address id %u out of range (table has %u)", address_id, r->n);
        return -1;
    }
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > SK_FLOW_ADDR_MAX) {
        sk_set_err(err, errlen, "address name must be 1-%d bytes", SK_FLOW_ADDR_MAX);
        return -1;
    }
    /* the encoder checks what a neighbour's parser would refuse */
    char tmp[SK_FLOW_HDR_MAX];
    sk_flow_str a = {name, len}, o = {"x", 1}, d = {"", 0};
    if (sk_flow_encode_hdr(tmp, sizeof tmp, 1, 1, 0, a, o, d) < 0) {
        sk_set_err(err, errlen, "address name '%s' cannot be carried in a FLOW header", name);
        return -1;
    }
    sk_route_entry *en = &r->addr[address_id];
    if (en->name) {
        sk_set_err(err, errlen, "address id %u already has a name", address_id);
        return -1;
    }
    if (sk_routes_find(r, name, len) >= 0) {
        sk_set_err(err, errlen, "address name '%s' is already in the table", name);
        return -1;
    }
    if (!r->index) {
        uint32_t cap = 16;
        while (cap < 2 * r->n)
            cap *= 2;
        r->index = calloc(cap, sizeof *r->index);
        if (!r->index) {
            sk_set_err(err, errlen, "out of memory");
            return -1;
        }
        r->index_mask = cap - 1;
    }
    en->name = strdup(name);
    if (!en->name) {
        sk_set_err(err, errlen, "out of memory");
        return -1;
    }
    en->name_len = (uint16_t)len;
    uint32_t i = name_hash(name, len) & r->index_mask;
    while (r->index[i])
        i = (i + 1) & r->index_mask;
    r->index[i] = address_id + 1;
    return 0;
}

/* The peer's state for (address id, dest), created on first use (+1 ref). */
static sk_target *remote_state(sk_peer *p, uint32_t aid, const char *dest)
{
    pthread_mutex_lock(&p->lock);
    sk_target *t;
    for (t = p->states; t; t = t->rnext)
        if (t->raddr == aid && strcmp(t->rdest, dest) == 0)
            break;
    if (!t) {
        t = sk_target_create(p->engine, 0);
        if (t) {
            t->remote = true;
            t->raddr = aid;
            t->rdest = strdup(dest);
            if (!t->rdest) {
                free(t);
                t = NULL;
            } else {
                t->rnext = p->states;
                p->states = t; /* the list's reference */
            }
        }
    }
    if (t)
        sk_target_ref(t);
    pthread_mutex_unlock(&p->lock);
    return t;
}

int sk_routes_add_remote(sk_routes *r, uint32_t address_id, const char *dest_router_id,
                         uint32_t cost, sk_peer *next_hop, uint32_t targets, char *err,
                         size_t errlen)
{
    if (address_id >= r->n) {
        sk_set_err(err, errlen, "address id %u out of range (table has %u)", address_id, r->n);
        return -1;
    }
    if (!next_hop) {
        sk_set_err(err, errlen, "next hop is NULL");
        return -1;
    }
    size_t dl = dest_router_id ? strlen(dest_router_id) : 0;
    if (dl == 0 || dl > SK_FLOW_ID_MAX) {
        sk_set_err(err, errlen, "destination router id must be 1-%d bytes", SK_FLOW_ID_MAX);
        return -1;
    }
    char tmp[SK_FLOW_HDR_MAX];
    sk_flow_str a = {"x", 1}, d = {dest_router_id, dl};
    if (sk_flow_encode_hdr(tmp, sizeof tmp, 1, 1, 0, a, d, d) < 0) {
        sk_set_err(err, errlen, "router id '%s' cannot be carried in a FLOW header",
                   dest_router_id);
        return -1;
    }
    sk_route_entry *en = &r->addr[address_id];
    if (en->rn == en->rcap) {
        uint32_t cap = en->rcap ? en->rcap * 2 : 4;
        sk_route_remote *v = realloc(en->rv, cap * sizeof *v);
        if (!v) {
            sk_set_err(err, errlen, "out of memory");
            return -1;
        }
        en->rv = v;
        en->rcap = cap;
    }
    sk_target *st = remote_state(next_hop, address_id, dest_router_id);
    if (!st) {
        sk_set_err(err, errlen, "out of memory");
        return -1;
    }
    sk_route_remote *rr = &en->rv[en->rn++];
    memset(rr, 0, sizeof *rr);
    rr->state = st;
    sk_peer_ref(next_hop);
    rr->peer = next_hop;
    rr->cost = cost ? cost : 1;
    rr->targets = targets;
    rr->dest_len = (uint8_t)dl;
    memcpy(rr->dest, dest_router_id, dl + 1);
    return 0;
}
