/* dataconn.c -- data connections between routers: one TCP (or TLS)
 * connection per flow per hop, opened by a FLOW header and answered by a
 * VERDICT before any client byte moves (docs/dataplane.md).
 *
 * Dialled side (s->dc, !incoming): connect.c chose a remote destination for
 * a client (a local client, or an incoming flow being forwarded), dialled its
 * next hop and, once connected, calls sk_dc_established: the FLOW header is
 * written, the VERDICT read. OK: the data connection is the flow's target
 * side and relay.c takes over. Anything else (a failure verdict, EOF, reset,
 * time-out): connect.c's sk_connect_failed backs the destination off and
 * retries the client elsewhere (an intermediate router does not retry).
 *
 * Accepting side (c->dc, incoming): a data_ok listener's connection whose
 * first byte is 'S' (the magic "SK"; AMQP starts with 'A', anything else
 * stays on the listener's usual path) is parsed as a FLOW. The address is
 * looked up by name: a flow for this router (or for any router) goes to a
 * local target through connect.c (its retries among local targets), a flow
 * for another router to that router's next hop with one hop less. The
 * VERDICT goes upstream once the target answered or the next hop's verdict
 * came; a refusal answers its verdict, stops writing and lingers briefly
 * (reading and dropping) so the verdict is not lost to a reset.
 *
 * Messages are read with reads no longer than what the message still lacks,
 * so no byte after it is ever taken from the socket here: what follows a
 * header or verdict is the relay's. Runs on the owning worker; never blocks. */
#include "internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define SK_DC_LINGER_MS 2000
#define SK_DC_LINGER_BYTES (1u << 20)
#define SK_DC_VERDICT_WAIT 4 /* verdict wait: this many connect time-outs */
#define SK_DC_REFILL_MIN_MS 250   /* INBOUND refill back-off: first step */
#define SK_DC_REFILL_MAX_MS 8000  /* and its ceiling */
#define SK_DC_YOUNG_NS 1000000000ull /* an idle INBOUND dying sooner is a failure */
#define SK_DC_QUIET_NS 30000000000ull /* demand sizing: decay after this quiet */

struct sk_dc {
    bool incoming;
    bool ok;          /* the verdict was OK: relaying */
    bool got_verdict; /* dialled: a verdict other than OK arrived */
    bool up_set;      /* incoming: what to answer upstream if the flow fails */
    uint8_t vcode, vdetail;
    uint8_t up_code, up_detail;
    int mode; /* incoming: SK_DC_LOCAL or SK_DC_FORWARD */
    uint32_t aid;
    uint64_t flow_id;
    sk_peer *peer;     /* dialled: the next hop (ref) */
    sk_flow_parser *p; /* while a message is due (incoming: until OK, the header) */
    char *wbuf;        /* dialled: the FLOW header (or HELLO) until written */
    uint16_t wlen, woff;
    uint32_t lingered; /* bytes dropped while lingering */
    /* OUTBOUND pools */
    bool pooled;   /* dialled for the peer's pool: HELLO first */
    bool claimed;  /* pooled, then claimed by a flow */
    bool idle;     /* pooled, HELLO answered OK, in the pool */
    bool hello_in; /* accepting side: a HELLO was answered OK, idle until FLOW */
    /* INBOUND direction */
    bool inbound;  /* dialler: pooled with HELLO role INBOUND (the peer claims it) */
    bool idle_in;  /* dialler: INBOUND, idle until the peer's FLOW REVERSE */
    bool moving;   /* reverse: between workers (sk_conn_detach .. adopt) */
    uint64_t idle_since;
    sk_conn *pnext; /* the pool's idle list */
    /* the other end of the flow, for listings: incoming, the router it came
     * from (FLOW origin); dialled, the router it goes to (FLOW destination).
     * Allocated to its length (NULL: none yet), not an inline 256 bytes:
     * a relayed flow holds one or two of these per router. */
    char *router;
};

/* Caller holds w->conn_lock: listings read dc->router under it. Without
 * memory the listing keeps the previous name (or none). */
static void set_router(sk_dc *dc, const char *id, size_t len)
{
    if (len > SK_FLOW_ID_MAX)
        len = SK_FLOW_ID_MAX;
    char *name = malloc(len + 1);
    if (!name)
        return;
    memcpy(name, id, len);
    name[len] = '\0';
    free(dc->router);
    dc->router = name;
}

static void dc_free(sk_dc *dc)
{
    if (!dc)
        return;
    free(dc->router);
    free(dc);
}

const char *sk_dc_router(const sk_dc *dc, bool *incoming)
{
    *incoming = dc->incoming;
    return dc->router ? dc->router : "";
}

/* ------------------------------------------------------------ engine API */

int sk_engine_set_router_id(sk_engine *e, const char *router_id)
{
    size_t n = router_id ? strlen(router_id) : 0;
    if (n == 0 || n > SK_FLOW_ID_MAX)
        return -1;
    char tmp[SK_FLOW_HDR_MAX]; /* the encoder refuses what a neighbour would */
    sk_flow_str a = {"x", 1}, o = {router_id, n}, d = {"", 0};
    if (sk_flow_encode_hdr(tmp, sizeof tmp, 1, 1, 0, a, o, d) < 0)
        return -1;
    pthread_mutex_lock(&e->rid_lock);
    memcpy(e->router_id, router_id, n + 1);
    pthread_mutex_unlock(&e->rid_lock);
    return 0;
}

/* Copies the router id into out (256 bytes); returns its length. */
static size_t router_id(sk_engine *e, char *out)
{
    pthread_mutex_lock(&e->rid_lock);
    size_t n = strlen(e->router_id);
    memcpy(out, e->router_id, n + 1);
    pthread_mutex_unlock(&e->rid_lock);
    return n;
}

void sk_engine_dataplane_counters(sk_engine *e, sk_dataplane_counters *out)
{
    memset(out, 0, sizeof *out);
    out->data_accepted = SK_LOAD(&e->dp_accepted);
    out->flows_originated = SK_LOAD(&e->dp_originated);
    out->flows_transited = SK_LOAD(&e->dp_transited);
    out->flows_terminated = SK_LOAD(&e->dp_terminated);
    out->origin_retries = SK_LOAD(&e->dp_retries);
    out->hello_unknown = SK_LOAD(&e->dp_hello_unknown);
    for (int i = 0; i < SK_DP_VERDICTS; i++) {
        out->verdicts_sent[i] = SK_LOAD(&e->dp_verdicts_sent[i]);
        out->verdicts_received[i] = SK_LOAD(&e->dp_verdicts_received[i]);
    }
    for (int i = 0; i < SK_DP_REASONS; i++)
        out->header_errors[i] = SK_LOAD(&e->dp_header_errors[i]);
}

const char *sk_dp_reason_name(int reason)
{
    return sk_flow_err_name(reason);
}

const char *sk_dp_verdict_name(int code)
{
    return sk_flow_verdict_name(code);
}

_Static_assert(SK_FLOW_E__COUNT <= SK_DP_REASONS, "SK_DP_REASONS too small");
_Static_assert(SK_FLOW_V__COUNT == SK_DP_VERDICTS, "SK_DP_VERDICTS mismatch");

static void count_error(sk_engine *e, int err)
{
    if (err > 0 && err < SK_DP_REASONS)
        SK_ADD(&e->dp_header_errors[err], 1);
}

/* ------------------------------------------------------------ helpers */

int sk_dc_mode(const sk_conn *client)
{
    return client->dc ? client->dc->mode : SK_DC_ORIGIN;
}

uint32_t sk_dc_address(const sk_conn *client)
{
    return client->dc ? client->dc->aid : client->listener->opts.address_id;
}

const char *sk_dc_dest(const sk_conn *client, size_t *len)
{
    const sk_flow_hdr *h = &client->dc->p->out.hdr;
    *len = h->dest_len;
    return h->dest;
}

static void free_parser(sk_dc *dc)
{
    free(dc->p);
    dc->p = NULL;
}

static uint64_t verdict_wait_ns(sk_engine *e)
{
    return (uint64_t)e->opts.connect_timeout_ms * SK_DC_VERDICT_WAIT * 1000000u;
}

/* Epoll interest while a message is exchanged (not relaying). */
static void set_interest(sk_worker *w, sk_conn *c, uint32_t ev)
{
    if (sk_conn_is_tls(c))
        ev = sk_tls_io_interest(w, c, ev, (ev & EPOLLIN) != 0);
    sk_conn_set_interest(w, c, ev);
}

/* Queues a VERDICT as the first bytes c->out sends (before any relayed byte). */
static bool queue_verdict(sk_worker *w, sk_conn *c, uint8_t code, uint8_t detail,
                          uint64_t flow_id)
{
    sk_buf *b = sk_buf_get(w);
    if (!b)
        return false;
    int n = sk_flow_encode_verdict(b->data, b->cap, code, detail, flow_id);
    if (n < 0) {
        sk_buf_put(w, b);
        return false;
    }
    b->start = 0;
    b->end = (uint32_t)n;
    c->out = b;
    SK_ADD(&w->engine->dp_verdicts_sent[code], 1);
    return true;
}

/* ------------------------------------------------------------ refusal */

/* A connection's timer that just closes it: a refusal's linger, a pooled
 * connection's idle time. */
static void close_on_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn_close(w, SK_CONTAINER_OF(t, sk_conn, tmo), false);
}

/* on_io after a refusal: drop what arrives until EOF (or the bounds). */
static void linger_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    SK_UNUSED(ev);
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    char tmp[4096];
    for (int i = 0; i < 16; i++) {
        ssize_t n = sk_io_recv(w, c, tmp, sizeof tmp);
        if (n == -1) {
            set_interest(w, c, EPOLLIN);
            return;
        }
        if (n <= 0 || (c->dc->lingered += (uint32_t)n) > SK_DC_LINGER_BYTES) {
            sk_conn_close(w, c, false);
            return;
        }
    }
    set_interest(w, c, EPOLLIN);
}

/* Answers a refused or failed incoming flow with its verdict (best effort:
 * one small write on an idle connection) and closes only this connection. */
static void refuse(sk_worker *w, sk_conn *c, uint8_t code, uint8_t detail, uint64_t flow_id)
{
    sk_engine *e = w->engine;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    char v[SK_FLOW_VERDICT_LEN];
    int n = sk_flow_encode_verdict(v, sizeof v, code, detail, flow_id);
    if (n > 0) {
        SK_ADD(&e->dp_verdicts_sent[code], 1); /* counted first: the peer may act at once */
        sk_io_send(c, v, (size_t)n); /* a fresh idle connection takes 16 bytes */
    }
    free_parser(c->dc);
    if (sk_conn_is_tls(c))
        sk_tls_io_shutdown(c);
    shutdown(c->fd, SHUT_WR);
    c->wr_shut = true;
    sk_conn_enter(c, SK_C_OPEN, linger_io);
    c->tmo.cb = close_on_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo, sk_now_ns() + SK_DC_LINGER_MS * 1000000ull);
    set_interest(w, c, EPOLLIN);
}

bool sk_dc_fail_flow(sk_worker *w, sk_conn *c)
{
    sk_dc *dc = c->dc;
    if (!dc || !dc->incoming)
        return false;
    SK_ADD(&w->engine->flows_failed, 1);
    if (c->listener)
        SK_ADD(&c->listener->failed, 1);
    uint8_t code, detail = 0;
    if (dc->up_set) {
        code = dc->up_code;
        detail = dc->up_detail;
    } else if (c->attempts == 0) {
        code = SK_FLOW_V_NO_ROUTE;
    } else {
        code = SK_FLOW_V_REFUSED;
        detail = (uint8_t)(c->last_err > 255 ? 255 : c->last_err < 0 ? 0 : c->last_err);
    }
    refuse(w, c, code, detail, dc->flow_id);
    return true;
}

void sk_dc_attempt_overloaded(sk_worker *w, sk_conn *client)
{
    if (!client->dc) {
        SK_ADD(&w->engine->dp_retries, 1);
        return;
    }
    client->dc->up_set = true;
    client->dc->up_code = SK_FLOW_V_OVERLOADED;
    client->dc->up_detail = 0;
}

void sk_dc_attempt_failed(sk_worker *w, sk_conn *s, sk_conn *client, int err)
{
    sk_dc *dc = s->dc;
    SK_ADD(&dc->peer->failures, 1);
    if (!client)
        return;
    if (!client->dc) {
        SK_ADD(&w->engine->dp_retries, 1);
        return;
    }
    /* an intermediate router answers upstream what its next hop said */
    client->dc->up_set = true;
    if (dc->got_verdict) {
        client->dc->up_code = dc->vcode;
        client->dc->up_detail = dc->vdetail;
    } else {
        client->dc->up_code = SK_FLOW_V_REFUSED;
        client->dc->up_detail = (uint8_t)(err > 255 ? 255 : err < 0 ? 0 : err);
    }
}

/* ------------------------------------------------------------ dialled side */

bool sk_dc_originate(sk_worker *w, sk_conn *client, sk_conn *s, const sk_route_remote *rr,
                     const sk_routes *routes, uint32_t aid)
{
    sk_engine *e = w->engine;
    bool reuse = s->dc != NULL; /* a claimed pooled connection */
    sk_dc *dc = reuse ? s->dc : calloc(1, sizeof *dc);
    char *buf = malloc(SK_FLOW_HDR_MAX);
    if (!dc || !buf) {
        if (!reuse)
            dc_free(dc);
        free(buf);
        return false;
    }
    int n;
    /* through a reverse peer: on one of its INBOUND connections */
    uint8_t flags = rr->peer->reverse ? SK_FLOW_F_REVERSE : 0;
    if (client->dc) {
        /* forwarding: the same flow, one hop less, towards the same router */
        const sk_flow_hdr *h = &client->dc->p->out.hdr;
        sk_flow_str a = {h->addr, h->addr_len}, o = {h->origin, h->origin_len},
                    d = {h->dest, h->dest_len};
        dc->flow_id = h->flow_id;
        pthread_mutex_lock(&w->conn_lock);
        set_router(dc, h->dest, h->dest_len);
        pthread_mutex_unlock(&w->conn_lock);
        n = sk_flow_encode_hdr(buf, SK_FLOW_HDR_MAX, h->flow_id, (uint8_t)(h->hops - 1), flags,
                               a, o, d);
    } else {
        char me[256];
        size_t ml = router_id(e, me);
        const sk_route_entry *en = &routes->addr[aid];
        dc->flow_id = sk_engine_next_id(e);
        pthread_mutex_lock(&w->conn_lock);
        set_router(dc, rr->dest, rr->dest_len);
        pthread_mutex_unlock(&w->conn_lock);
        sk_flow_str a = {en->name, en->name ? en->name_len : 0}, o = {me, ml},
                    d = {rr->dest, rr->dest_len};
        n = ml && en->name ? sk_flow_encode_hdr(buf, SK_FLOW_HDR_MAX, dc->flow_id,
                                                SK_FLOW_MAX_HOPS, flags, a, o, d)
                           : -SK_FLOW_E_EMPTY;
    }
    if (n < 0) {
        if (!reuse)
            dc_free(dc);
        free(buf);
        return false;
    }
    dc->wbuf = buf;
    dc->wlen = (uint16_t)n;
    dc->woff = 0;
    if (reuse)
        return true; /* the pooled connection holds its peer already */
    sk_peer_ref(rr->peer);
    dc->peer = rr->peer;
    SK_ADD(&rr->peer->active, 1);
    s->dc = dc;
    return true;
}

static void verdict_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *s = SK_CONTAINER_OF(t, sk_conn, tmo);
    if (s->dc && !s->dc->ok)
        sk_connect_failed(w, s, ETIMEDOUT);
}

/* The next hop answered OK: s becomes the flow's target side. */
static void dialled_ok(sk_worker *w, sk_conn *s)
{
    sk_engine *e = w->engine;
    sk_dc *dc = s->dc;
    sk_conn *client = s->peer;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    dc->ok = true;
    free_parser(dc);
    SK_ADD(&dc->peer->flows, 1);
    sk_connect_remote_ok(w, s);
    if (client->dc) {
        /* transit: OK upstream, then relay both ways */
        if (!queue_verdict(w, client, SK_FLOW_V_OK, 0, client->dc->flow_id)) {
            sk_conn_close(w, s, true);
            return;
        }
        client->dc->ok = true;
        free_parser(client->dc);
        sk_conn_enter(client, SK_C_OPEN, sk_relay_io);
        SK_ADD(&e->dp_transited, 1);
    } else {
        SK_ADD(&e->dp_originated, 1);
    }
    sk_conn_enter(s, SK_C_OPEN, sk_relay_io);
    sk_relay_start(w, s);
}

static void pool_add(sk_worker *w, sk_conn *s);
static void inbound_idle(sk_worker *w, sk_conn *s);

/* A claimed pooled connection was found dead (EOF or reset before any
 * verdict): no fault of the destination. The client tries again, taking the
 * next pooled connection or dialling. Other failures: sk_connect_failed. */
static void dialled_failed(sk_worker *w, sk_conn *s, int err, bool dead)
{
    sk_dc *dc = s->dc;
    sk_conn *client = s->peer;
    /* bounded: a neighbour that answers HELLOs and drops every FLOW must not
     * keep a client claiming the refills for ever */
    if (!(dead && dc->claimed && !dc->got_verdict) ||
        (client && client->dc_dead_claims >=
                       (dc->peer->reverse ? SK_MAX_TRIES : dc->peer->pool_size))) {
        sk_connect_failed(w, s, err);
        return;
    }
    pthread_mutex_lock(&w->conn_lock);
    s->peer = NULL;
    if (client)
        client->peer = NULL;
    pthread_mutex_unlock(&w->conn_lock);
    sk_conn_close(w, s, true);
    if (client) {
        client->dc_dead_claims++;
        client->attempts--; /* not an attempt on the destination */
        sk_connect_start(w, client);
    }
}

/* on_io of a dialled data connection: write the FLOW (or HELLO), read the
 * VERDICT. */
static void dialled_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    SK_UNUSED(ev);
    sk_conn *s = SK_CONTAINER_OF(h, sk_conn, h);
    sk_dc *dc = s->dc;
    sk_engine *e = w->engine;
    while (dc->wbuf && dc->woff < dc->wlen) {
        ssize_t n = sk_io_send(s, dc->wbuf + dc->woff, dc->wlen - dc->woff);
        if (n > 0) {
            dc->woff = (uint16_t)(dc->woff + n);
            continue;
        }
        if (n == -1)
            break;
        dialled_failed(w, s, ECONNRESET, true);
        return;
    }
    if (dc->wbuf && dc->woff == dc->wlen) {
        free(dc->wbuf);
        dc->wbuf = NULL;
    }
    sk_flow_parser *p = dc->p;
    for (;;) {
        char tmp[SK_FLOW_VERDICT_MAX];
        size_t need = p->pos < SK_FLOW_PREAMBLE ? SK_FLOW_PREAMBLE - p->pos : p->len - p->pos;
        if (need > sizeof tmp)
            need = sizeof tmp;
        ssize_t n = sk_io_recv(w, s, tmp, need);
        if (n == -1)
            break;
        if (n == -2) {
            dialled_failed(w, s, ECONNRESET, true);
            return;
        }
        if (n == 0) {
            count_error(e, sk_flow_parse_eof(p));
            dialled_failed(w, s, ECONNRESET, true); /* closed before its verdict */
            return;
        }
        size_t used;
        int rc = sk_flow_parse(p, tmp, (size_t)n, &used);
        if (rc == SK_FLOW_NEED_MORE)
            continue;
        if (rc == SK_FLOW_ERROR) {
            count_error(e, p->err);
            sk_connect_failed(w, s, EPROTO);
            return;
        }
        const sk_flow_verdict *v = &p->out.verdict;
        if (v->flow_id != dc->flow_id) {
            sk_connect_failed(w, s, EPROTO);
            return;
        }
        SK_ADD(&e->dp_verdicts_received[v->code], 1);
        if (v->code == SK_FLOW_V_OK) {
            if (dc->pooled && !dc->claimed && dc->inbound)
                inbound_idle(w, s); /* HELLO answered: the peer may claim it */
            else if (dc->pooled && !dc->claimed)
                pool_add(w, s); /* HELLO answered: warm */
            else
                dialled_ok(w, s);
            return;
        }
        dc->got_verdict = true;
        dc->vcode = v->code;
        dc->vdetail = v->detail;
        sk_connect_failed(w, s, v->code == SK_FLOW_V_REFUSED && v->detail ? v->detail : EPROTO);
        return;
    }
    set_interest(w, s, EPOLLIN | (dc->wbuf ? EPOLLOUT : 0));
}

void sk_dc_established(sk_worker *w, sk_conn *s)
{
    sk_dc *dc = s->dc;
    dc->p = malloc(sizeof *dc->p);
    if (!dc->p) {
        sk_connect_failed(w, s, ENOMEM);
        return;
    }
    if (dc->pooled && !dc->claimed) {
        /* a pooled connection says HELLO first */
        char me[256];
        size_t ml = router_id(w->engine, me);
        sk_peer *pe = dc->peer;
        dc->wbuf = malloc(SK_FLOW_HELLO_MAX);
        sk_flow_str from = {me, ml}, to = {pe->router_id, strlen(pe->router_id)};
        int n = dc->wbuf ? sk_flow_encode_hello(dc->wbuf, SK_FLOW_HELLO_MAX,
                                                dc->inbound ? SK_FLOW_ROLE_INBOUND
                                                            : SK_FLOW_ROLE_OUTBOUND,
                                                pe->instance,
                                                pe->link_id, s->tls ? s->tls->snap.version : 0,
                                                from, to)
                         : -SK_FLOW_E_NOSPACE;
        if (n < 0) {
            sk_connect_failed(w, s, EINVAL);
            return;
        }
        dc->wlen = (uint16_t)n;
        dc->woff = 0;
        dc->flow_id = 0;
    }
    sk_flow_parser_init(dc->p, SK_FLOW_T_VERDICT, false);
    sk_conn_enter(s, SK_C_OPEN, dialled_io);
    s->tmo.cb = verdict_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &s->tmo, sk_now_ns() + verdict_wait_ns(w->engine));
    dialled_io(w, &s->h, EPOLLOUT);
}

/* ------------------------------------------------------------ pools */

static void incoming_io(sk_worker *w, sk_handle *h, uint32_t ev);

/* ------------------------------------------------------------ TLS resumption */

/* A dialled data connection to a TLS peer resumes the session the peer's
 * last data connection on this worker was given (TLS 1.3 ticket), so a
 * pool refill or a per-flow dial costs no certificate signature or chain
 * verification on either side. Only a session of the connection's own
 * config version is offered: after a rotation the first dial makes a full
 * handshake with the new material, and the old session is dropped. The
 * server's ticket keys belong to its config version, so a server that
 * rotated declines the ticket and the handshake is simply a full one. */
void sk_dc_tls_resume(sk_worker *w, sk_conn *s)
{
    sk_peer *p = s->dc ? s->dc->peer : NULL;
    if (!p || !p->sessions || w->index >= p->npools || !s->ssl || !s->tls)
        return;
    sk_dc_session *slot = &p->sessions[w->index];
    if (!slot->sess)
        return;
    if (slot->version != s->tls->snap.version || !SSL_SESSION_is_resumable(slot->sess)) {
        SSL_SESSION_free(slot->sess);
        slot->sess = NULL;
        return;
    }
    if (SSL_set_session(s->ssl, slot->sess) != 1)
        ERR_clear_error(); /* a full handshake then */
}

int sk_dc_tls_session(sk_conn *c, SSL_SESSION *sess)
{
    sk_dc *dc = c->dc;
    sk_peer *p = dc && !dc->incoming ? dc->peer : NULL;
    sk_worker *w = c->worker;
    if (!p || !p->sessions || !w || w->index >= p->npools || !c->tls)
        return 0;
    sk_dc_session *slot = &p->sessions[w->index];
    if (slot->sess)
        SSL_SESSION_free(slot->sess);
    slot->sess = sess; /* the callback's reference is ours now */
    slot->version = c->tls->snap.version;
    return 1;
}

/* Data connections sit idle in pools for minutes, where a NAT or a
 * firewall may forget them, or a neighbour vanish without a FIN: keep-alive
 * probes find such a connection dead in about a minute (30 s idle, then 3
 * probes 10 s apart) at both ends, instead of the kernel's two hours; the
 * dialler then refills and the acceptor's INBOUND pool drops it. Set on
 * each dialled socket, and on data_ok listening sockets, whose accepted
 * connections inherit it (listener.c). */
#define SK_DC_KEEPIDLE_S 30
#define SK_DC_KEEPINTVL_S 10
#define SK_DC_KEEPCNT 3

void sk_dc_keepalive(int fd)
{
    int on = 1, idle = SK_DC_KEEPIDLE_S, intvl = SK_DC_KEEPINTVL_S, cnt = SK_DC_KEEPCNT;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static sk_dc_pool *pool_of(sk_worker *w, sk_peer *p)
{
    return p->pools && w->index < p->npools ? &p->pools[w->index] : NULL;
}

static sk_dc_pool *ipool_of(sk_worker *w, sk_peer *p)
{
    return p->ipools && w->index < p->npools ? &p->ipools[w->index] : NULL;
}

/* The pool a pooled connection belongs to on w: the dialler's INBOUND ones,
 * or the claimable ones (OUTBOUND dialled, or a reverse peer's accepted). */
static sk_dc_pool *home_of(sk_worker *w, const sk_dc *dc)
{
    return dc->inbound ? ipool_of(w, dc->peer) : pool_of(w, dc->peer);
}

static void pool_link(sk_worker *w, sk_conn *s)
{
    sk_dc *dc = s->dc;
    sk_dc_pool *pl = home_of(w, dc);
    dc->idle = true;
    dc->pnext = pl->idle;
    pl->idle = s;
    pl->nidle++;
    atomic_store(&pl->nidle_pub, pl->nidle); /* seq_cst: see pool_arrived */
    SK_ADD(dc->inbound ? &dc->peer->inbound_idle : &dc->peer->pool_idle, 1);
    SK_ADD(dc->peer->reverse ? &w->engine->dp_pool_in : &w->engine->dp_pool_out, 1);
}

static void pool_unlink(sk_worker *w, sk_conn *s)
{
    sk_dc *dc = s->dc;
    sk_dc_pool *pl = home_of(w, dc);
    for (sk_conn **pp = &pl->idle; *pp; pp = &(*pp)->dc->pnext)
        if (*pp == s) {
            *pp = dc->pnext;
            break;
        }
    dc->pnext = NULL;
    dc->idle = false;
    pl->nidle--;
    atomic_store(&pl->nidle_pub, pl->nidle); /* seq_cst: see pool_arrived */
    SK_SUB(dc->inbound ? &dc->peer->inbound_idle : &dc->peer->pool_idle, 1);
    SK_SUB(dc->peer->reverse ? &w->engine->dp_pool_in : &w->engine->dp_pool_out, 1);
}

/* Demand sizing: the per-worker target doubles (up to pool_max) when claims
 * drain the pool faster than refills, and halves back towards the
 * configured size once nothing grew it for SK_DC_QUIET_NS. */
static void pool_grow(sk_dc_pool *pl, uint32_t base, uint32_t max)
{
    uint32_t t = pl->target ? pl->target * 2 : 1;
    if (t > max)
        t = max;
    if (t < base)
        t = base;
    pl->target = t;
    pl->grown_ns = sk_now_ns();
    SK_STORE(&pl->target_pub, t);
}

static void pool_decay(sk_dc_pool *pl, uint32_t base, uint64_t now)
{
    if (pl->target <= base || now - pl->grown_ns < SK_DC_QUIET_NS)
        return;
    uint32_t t = pl->target / 2;
    pl->target = t < base ? base : t;
    pl->grown_ns = now;
    SK_STORE(&pl->target_pub, pl->target);
}

/* on_io of an idle pooled connection: nothing may arrive but TLS
 * housekeeping (session tickets); EOF, a reset or bytes end it. */
static void pool_idle_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    SK_UNUSED(ev);
    sk_conn *s = SK_CONTAINER_OF(h, sk_conn, h);
    char b;
    if (sk_io_recv(w, s, &b, 1) == -1) {
        set_interest(w, s, EPOLLIN);
        return;
    }
    sk_conn_close(w, s, false);
}

static void idle_timer(sk_worker *w, sk_conn *s)
{
    uint32_t ms = s->dc->peer->pool_idle_ms;
    if (!ms)
        return; /* a reverse peer's: the dialler closes its idle ones */
    s->tmo.cb = close_on_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &s->tmo, sk_now_ns() + (uint64_t)ms * 1000000u);
}

/* s (HELLO answered OK, not counted in ndial) goes idle in its pool. */
static void pool_idle_enter(sk_worker *w, sk_conn *s)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    free_parser(s->dc);
    pool_link(w, s);
    sk_conn_enter(s, SK_C_OPEN, pool_idle_io);
    idle_timer(w, s);
    set_interest(w, s, EPOLLIN);
}

static void pool_add(sk_worker *w, sk_conn *s)
{
    sk_dc *dc = s->dc;
    if (SK_LOAD(&dc->peer->closing)) {
        sk_conn_close(w, s, false);
        return;
    }
    pool_of(w, dc->peer)->ndial--;
    pool_idle_enter(w, s);
}

sk_conn *sk_dc_pool_claim(sk_worker *w, sk_peer *p)
{
    sk_dc_pool *pl = pool_of(w, p);
    /* a pooled connection keeps the TLS config it was made with: once the
     * link's profile has published a newer one, the idle ones of older
     * versions are closed, not claimed (running flows keep theirs) */
    const sk_tls_config *now = p->dial.tls_slot >= 0 ? sk_tls_current(w, p->dial.tls_slot) : NULL;
    while (pl && pl->idle) {
        sk_conn *s = pl->idle;
        pool_unlink(w, s);
        sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
        if (now && s->tls && s->tls->snap.version < now->snap.version) {
            SK_ADD(&p->pool_stale, 1);
            sk_conn_close(w, s, false);
            continue;
        }
        s->dc->claimed = true;
        /* drained while refills are on their way: more are needed */
        if (!p->reverse && pl->nidle == 0 && pl->ndial > 0)
            pool_grow(pl, p->pool_size, p->pool_max);
        return s;
    }
    if (pl && !p->reverse && pl->ndial > 0)
        pool_grow(pl, p->pool_size, p->pool_max); /* a miss with refills pending */
    return NULL;
}

bool sk_dc_pool_failed(sk_worker *w, sk_conn *s, int err)
{
    SK_UNUSED(err);
    sk_dc *dc = s->dc;
    if (!dc->pooled || dc->claimed)
        return false;
    SK_ADD(&dc->peer->failures, 1);
    if (dc->inbound)
        SK_ADD(&dc->peer->inbound_failures, 1);
    sk_conn_close(w, s, false); /* INBOUND: sk_dc_closing schedules the refill */
    return true;
}

static void pool_connect_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *s = SK_CONTAINER_OF(t, sk_conn, tmo);
    if (s->state == SK_C_CONNECTING)
        sk_connect_failed(w, s, ETIMEDOUT);
}

static void pool_connected(sk_worker *w, sk_conn *s)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    if (s->ssl) {
        sk_tls_io_handshake_start(w, s); /* then sk_connect_established */
        return;
    }
    sk_conn_enter(s, SK_C_OPEN, sk_relay_io);
    sk_dc_established(w, s);
}

static void pool_connect_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    sk_conn *s = SK_CONTAINER_OF(h, sk_conn, h);
    int err = 0;
    if (ev & (EPOLLERR | EPOLLHUP)) {
        socklen_t len = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (!err && !(ev & EPOLLOUT))
            err = ECONNRESET;
    }
    if (err)
        sk_connect_failed(w, s, err);
    else if (ev & EPOLLOUT)
        pool_connected(w, s);
}

/* Dials one pooled connection of p (HELLO once connected): OUTBOUND into
 * pl = pools[w], or INBOUND (the peer claims it) into pl = ipools[w]. */
static bool pool_dial(sk_worker *w, sk_peer *p, sk_dc_pool *pl, bool inbound)
{
    sk_engine *e = w->engine;
    const sk_route_target *d = &p->dial;
    int fd = socket(d->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sk_dc_keepalive(fd); /* pooled: idle for minutes by design */
    int rc = connect(fd, (const struct sockaddr *)&d->sa, d->salen);
    if (rc != 0 && errno != EINPROGRESS) {
        close(fd);
        SK_ADD(&p->failures, 1);
        if (inbound)
            SK_ADD(&p->inbound_failures, 1);
        return false;
    }
    sk_dc *dc = calloc(1, sizeof *dc);
    sk_conn *s = dc ? sk_conn_new(w, fd, NULL, NULL) : NULL;
    if (!s) {
        dc_free(dc);
        close(fd);
        return false;
    }
    memcpy(s->label, d->label, sizeof s->label);
    dc->pooled = true;
    dc->inbound = inbound;
    sk_peer_ref(p);
    dc->peer = p;
    SK_ADD(&p->active, 1);
    s->dc = dc;
    pl->ndial++;
    if (d->tls_slot >= 0 && !sk_tls_io_attach_client(w, s, d)) {
        sk_connect_failed(w, s, EPROTO);
        return false;
    }
    if (rc == 0) {
        pool_connected(w, s);
        return true;
    }
    sk_conn_enter(s, SK_C_CONNECTING, pool_connect_io);
    sk_conn_set_interest(w, s, EPOLLOUT);
    if (s->state == SK_C_CLOSED)
        return false;
    s->tmo.cb = pool_connect_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &s->tmo,
                       sk_now_ns() + (uint64_t)e->opts.connect_timeout_ms * 1000000u);
    return true;
}

void sk_dc_pool_fill(sk_worker *w, sk_peer *p)
{
    sk_dc_pool *pl = pool_of(w, p);
    if (!pl || p->reverse || SK_LOAD(&p->closing))
        return; /* a reverse peer never dials */
    pool_decay(pl, p->pool_size, sk_now_ns());
    while (pl->nidle + pl->ndial < pl->target)
        if (!pool_dial(w, p, pl, false))
            break;
}

/* ------------------------------------------------------------ INBOUND pools (dialler) */

static uint64_t refill_backoff_ns(uint32_t fails)
{
    uint64_t ms = SK_DC_REFILL_MIN_MS;
    for (uint32_t i = 1; i < fails && ms < SK_DC_REFILL_MAX_MS; i++)
        ms *= 2;
    if (ms > SK_DC_REFILL_MAX_MS)
        ms = SK_DC_REFILL_MAX_MS;
    return ms * 1000000ull;
}

static void inbound_fill(sk_worker *w, sk_dc_pool *pl);

static void refill_fire(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    inbound_fill(w, SK_CONTAINER_OF(t, sk_dc_pool, refill));
}

/* The refill runs from a timer, never from inside a close: delay 0 after a
 * claim or an old connection's end, the back-off after failures. */
static void refill_kick(sk_worker *w, sk_dc_pool *pl, uint64_t delay_ns)
{
    if (SK_LOAD(&pl->peer->closing) || atomic_load(&w->engine->stopping) ||
        sk_timer_pending(&pl->refill))
        return;
    pl->refill.cb = refill_fire;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &pl->refill, sk_now_ns() + delay_ns);
}

/* A dial, handshake or HELLO of this round failed: the next round waits
 * the back-off, doubled once per round (not per connection of the round). */
static void refill_failed(sk_worker *w, sk_dc_pool *pl)
{
    if (sk_timer_pending(&pl->refill))
        return; /* this round's failure is counted already */
    pl->fails++;
    refill_kick(w, pl, refill_backoff_ns(pl->fails));
}

static void inbound_fill(sk_worker *w, sk_dc_pool *pl)
{
    sk_peer *p = pl->peer;
    if (SK_LOAD(&p->closing) || atomic_load(&w->engine->stopping))
        return;
    /* the peer claims these with whatever TLS config they were made with:
     * once the link's profile has a newer one, the idle ones of older
     * versions are closed here and replaced (running flows keep theirs) */
    const sk_tls_config *now = p->dial.tls_slot >= 0 ? sk_tls_current(w, p->dial.tls_slot) : NULL;
    for (sk_conn *s = pl->idle, *next; now && s; s = next) {
        next = s->dc->pnext;
        if (s->tls && s->tls->snap.version < now->snap.version) {
            SK_ADD(&p->pool_stale, 1);
            s->dc->idle_since = 0; /* not a failure: replaced at once */
            sk_conn_close(w, s, false);
        }
    }
    sk_worker_cancel(w, SK_PRIO_NORMAL, &pl->refill); /* the closes kicked it */
    pool_decay(pl, p->inbound_pool_size, sk_now_ns());
    while (pl->nidle + pl->ndial < pl->target)
        if (!pool_dial(w, p, pl, true)) {
            refill_failed(w, pl);
            break;
        }
}

/* The peer answered an INBOUND HELLO with OK: s waits, idle, for its FLOW
 * REVERSE (read by incoming_io, as on a data_ok listener). */
static void inbound_idle(sk_worker *w, sk_conn *s)
{
    sk_dc *dc = s->dc;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &s->tmo);
    if (SK_LOAD(&dc->peer->closing)) {
        sk_conn_close(w, s, false);
        return;
    }
    ipool_of(w, dc->peer)->ndial--;
    pool_link(w, s);
    dc->idle_in = true;
    dc->idle_since = sk_now_ns();
    sk_flow_parser_init(dc->p, SK_FLOW_T_HDR, true);
    sk_conn_enter(s, SK_C_OPEN, incoming_io);
    idle_timer(w, s);
    set_interest(w, s, EPOLLIN);
}

/* The first byte of a FLOW REVERSE on an idle INBOUND connection: the peer
 * claimed it. From here it is an incoming data connection; a refill goes. */
static void inbound_claimed(sk_worker *w, sk_conn *c)
{
    sk_dc *dc = c->dc;
    sk_peer *p = dc->peer;
    sk_dc_pool *pl = ipool_of(w, p);
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    pool_unlink(w, c);
    dc->idle_in = false;
    dc->claimed = true;
    dc->mode = SK_DC_LOCAL;
    pthread_mutex_lock(&w->conn_lock);
    dc->incoming = true;
    c->is_client = true; /* one listing row per flow: this side */
    pthread_mutex_unlock(&w->conn_lock);
    SK_ADD(&p->inbound_claims, 1);
    /* drained faster than refilled: empty now, and a refill was still on its
     * way or the claimed one had barely arrived */
    if (pl->nidle == 0 && (pl->ndial > 0 || sk_now_ns() - dc->idle_since < SK_DC_YOUNG_NS))
        pool_grow(pl, p->inbound_pool_size, p->pool_max);
    pl->fails = 0;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &pl->refill);
    refill_kick(w, pl, 0);
}

/* ------------------------------------------------------------ reverse peers (acceptor) */

/* Unlinks a waiting client; the caller releases the returned peer. */
static sk_peer *wait_unlink(sk_worker *w, sk_conn *c)
{
    sk_peer *p = c->dc_wait;
    sk_dc_pool *pl = pool_of(w, p);
    sk_conn *prev = NULL;
    for (sk_conn *x = pl->wait_head; x; prev = x, x = x->dc_wnext)
        if (x == c) {
            if (prev)
                prev->dc_wnext = c->dc_wnext;
            else
                pl->wait_head = c->dc_wnext;
            if (pl->wait_tail == c)
                pl->wait_tail = prev;
            pl->nwait--;
            atomic_store(&pl->nwait_pub, pl->nwait);
            break;
        }
    c->dc_wnext = NULL;
    c->dc_wait = NULL;
    return p;
}

static sk_target *last_tried(const sk_conn *c)
{
    return c->attempts ? c->tried[c->attempts - 1] : NULL;
}

void sk_dc_wait_cancel(sk_worker *w, sk_conn *client)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &client->tmo);
    sk_peer_release(wait_unlink(w, client));
}

static void wait_timeout(sk_worker *w, sk_timer *tm, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *c = SK_CONTAINER_OF(tm, sk_conn, tmo);
    sk_peer *p = wait_unlink(w, c); /* its reference keeps the target alive */
    SK_ADD(&p->pool_exhausted, 1);
    sk_connect_overloaded(w, c, last_tried(c));
    sk_peer_release(p);
}

static void post_give(sk_engine *e, sk_peer *p, int owner, int to, int ttl)
{
    sk_msg *m = calloc(1, sizeof *m);
    if (!m) {
        atomic_fetch_sub(&p->pools[to].inflight, 1);
        return; /* the waiter waits for an arrival or its time-out */
    }
    m->kind = SK_MSG_DC_GIVE;
    sk_peer_ref(p);
    m->u.dc.peer = p;
    m->u.dc.to = to;
    m->u.dc.ttl = ttl;
    sk_worker_post(&e->workers[owner], m);
}

/* A worker other than w and skip with idle connections of p, or -1. */
static int worker_with_idle(const sk_peer *p, int w, int skip)
{
    int best = -1;
    uint32_t most = 0;
    for (int i = 0; i < p->npools; i++) {
        uint32_t n = atomic_load(&p->pools[i].nidle_pub);
        if (i != w && i != skip && n > most) {
            most = n;
            best = i;
        }
    }
    return best;
}

bool sk_dc_wait(sk_worker *w, sk_conn *client, sk_peer *p, sk_target *t)
{
    SK_UNUSED(t);
    sk_dc_pool *pl = pool_of(w, p);
    if (!pl || SK_LOAD(&p->closing) || pl->nwait >= p->pool_wait_max) {
        SK_ADD(&p->pool_exhausted, 1);
        return false;
    }
    sk_peer_ref(p);
    client->dc_wait = p;
    client->dc_wnext = NULL;
    if (pl->wait_tail)
        pl->wait_tail->dc_wnext = client;
    else
        pl->wait_head = client;
    pl->wait_tail = client;
    pl->nwait++;
    atomic_store(&pl->nwait_pub, pl->nwait);
    SK_ADD(&p->pool_waits, 1);
    sk_worker_cancel(w, SK_PRIO_NORMAL, &client->tmo);
    client->tmo.cb = wait_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &client->tmo,
                       sk_now_ns() + (uint64_t)p->pool_wait_ms * 1000000u);
    /* idle connections on another worker: ask their owner for one */
    int owner = worker_with_idle(p, w->index, -1);
    if (owner >= 0) {
        atomic_fetch_add(&pl->inflight, 1);
        post_give(w->engine, p, owner, w->index, p->npools);
    }
    return true;
}

/* Moves idle s of p from w to worker `to` (its inflight counted already). */
static void hand_over(sk_worker *w, sk_peer *p, sk_conn *s, int to)
{
    sk_msg *m = calloc(1, sizeof *m);
    if (!m) {
        atomic_fetch_sub(&p->pools[to].inflight, 1);
        return;
    }
    pool_unlink(w, s);
    s->dc->moving = true;
    sk_conn_detach(w, s);
    m->kind = SK_MSG_DC_ADOPT;
    sk_peer_ref(p);
    m->u.dc.peer = p;
    m->u.dc.conn = s;
    SK_ADD(&p->pool_handoffs, 1);
    sk_worker_post(&w->engine->workers[to], m);
}

/* An idle connection of reverse peer p landed on w: the waiting flows here
 * first, else a worker whose flows wait (and expect none yet) gets it.
 * No lost wake-up: a worker queuing a flow stores its nwait_pub, then reads
 * the others' nidle_pub (sk_dc_wait); a worker pooling a connection stores
 * its nidle_pub, then reads the others' nwait_pub (here). Both sequentially
 * consistent, so at least one of the two sees the other (then a GIVE or a
 * hand-over follows; both at once are harmless). */
static void pool_arrived(sk_worker *w, sk_peer *p)
{
    sk_peer_ref(p);
    sk_dc_pool *pl = pool_of(w, p);
    while (pl->wait_head && pl->idle) {
        sk_conn *c = pl->wait_head;
        sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
        sk_peer *wp = wait_unlink(w, c);
        sk_connect_resume(w, c, last_tried(c));
        sk_peer_release(wp);
    }
    if (pl->idle && pl->nwait == 0)
        for (int i = 0; i < p->npools; i++) {
            sk_dc_pool *o = &p->pools[i];
            if (i != w->index && atomic_load(&o->nwait_pub) > atomic_load(&o->inflight)) {
                atomic_fetch_add(&o->inflight, 1);
                hand_over(w, p, pl->idle, i);
                break;
            }
        }
    sk_peer_release(p);
}

/* sk_peer_close, on each worker: no refill, idle connections closed, the
 * waiting flows retried elsewhere. */
static void peer_close_here(sk_worker *w, sk_peer *p)
{
    sk_dc_pool *pl = pool_of(w, p), *ip = ipool_of(w, p);
    if (ip) {
        sk_worker_cancel(w, SK_PRIO_NORMAL, &ip->refill);
        while (ip->idle)
            sk_conn_close(w, ip->idle, false);
    }
    if (!pl)
        return;
    while (pl->wait_head) {
        sk_conn *c = pl->wait_head;
        sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
        sk_peer *wp = wait_unlink(w, c);
        SK_ADD(&p->pool_exhausted, 1);
        sk_connect_overloaded(w, c, last_tried(c));
        sk_peer_release(wp);
    }
    while (pl->idle)
        sk_conn_close(w, pl->idle, false);
}

void sk_dc_msg(sk_worker *w, sk_msg *m)
{
    sk_peer *p = m->u.dc.peer;
    bool closing = SK_LOAD(&p->closing);
    switch (m->kind) {
    case SK_MSG_PEER_FILL:
        if (ipool_of(w, p))
            inbound_fill(w, ipool_of(w, p));
        break;
    case SK_MSG_PEER_CLOSE:
        peer_close_here(w, p);
        break;
    case SK_MSG_DC_GIVE: {
        sk_dc_pool *pl = pool_of(w, p);
        int to = m->u.dc.to;
        if (!closing && pl && pl->idle) {
            hand_over(w, p, pl->idle, to);
            break;
        }
        int ttl = closing ? 0 : m->u.dc.ttl - 1;
        int next = ttl > 0 ? worker_with_idle(p, w->index, to) : -1;
        if (next >= 0) {
            post_give(w->engine, p, next, to, ttl);
            break;
        }
        sk_dc_pool *o = &p->pools[to];
        atomic_fetch_sub(&o->inflight, 1);
        /* a connection pooled elsewhere meanwhile may have seen this give
         * in flight and stayed: look again now that it is withdrawn */
        next = ttl > 0 ? worker_with_idle(p, w->index, to) : -1;
        if (next >= 0 && atomic_load(&o->nwait_pub) > atomic_load(&o->inflight)) {
            atomic_fetch_add(&o->inflight, 1);
            post_give(w->engine, p, next, to, ttl);
        }
        break;
    }
    case SK_MSG_DC_ADOPT: {
        sk_conn *s = m->u.dc.conn;
        atomic_fetch_sub(&p->pools[w->index].inflight, 1);
        sk_conn_adopt(w, s);
        if (closing) {
            sk_conn_close(w, s, false); /* still moving: no pool to leave */
            break;
        }
        s->dc->moving = false;
        pool_idle_enter(w, s);
        pool_arrived(w, p);
        break;
    }
    default:
        break;
    }
    sk_peer_release(p);
}

void sk_dc_msg_discard(sk_worker *w, sk_msg *m)
{
    if (m->kind == SK_MSG_DC_ADOPT) {
        sk_conn *s = m->u.dc.conn;
        sk_conn_adopt(w, s);
        sk_conn_close(w, s, false);
        sk_conn_reap(w);
    }
    sk_peer_release(m->u.dc.peer);
}

/* ------------------------------------------------------------ accepting side */

void sk_dc_local_established(sk_worker *w, sk_conn *client)
{
    sk_conn *s = client->peer;
    sk_dc *dc = client->dc;
    if (!queue_verdict(w, client, SK_FLOW_V_OK, 0, dc->flow_id)) {
        sk_conn_close(w, client, true);
        return;
    }
    dc->ok = true;
    free_parser(dc);
    SK_ADD(&w->engine->dp_terminated, 1);
    sk_conn_enter(client, SK_C_OPEN, sk_relay_io);
    sk_relay_start(w, s);
}

/* A complete FLOW: where does it go? */
static void route_flow(sk_worker *w, sk_conn *c)
{
    sk_engine *e = w->engine;
    sk_dc *dc = c->dc;
    const sk_flow_hdr *h = &dc->p->out.hdr;
    dc->flow_id = h->flow_id;
    pthread_mutex_lock(&w->conn_lock);
    set_router(dc, h->origin, h->origin_len);
    pthread_mutex_unlock(&w->conn_lock);
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    if (dc->hello_in) {
        dc->hello_in = false; /* claimed: no longer idle */
        SK_SUB(&c->listener->dp_idle, 1);
        SK_SUB(&e->dp_pool_in, 1);
    }
    sk_conn_set_interest(w, c, 0); /* nothing more is read until the verdict */
    sk_routes *rt = (sk_routes *)sk_slot_cached(&e->routes, &w->routes_cache);
    int64_t aid = sk_routes_find(rt, h->addr, h->addr_len);
    if (aid < 0) {
        refuse(w, c, SK_FLOW_V_NO_ROUTE, 0, dc->flow_id);
        return;
    }
    const sk_route_entry *en = &rt->addr[aid];
    char me[256];
    size_t ml = router_id(e, me);
    bool for_me = h->dest_len == 0 || (ml == h->dest_len && memcmp(me, h->dest, ml) == 0);
    dc->aid = (uint32_t)aid;
    if (for_me && en->n > 0) {
        dc->mode = SK_DC_LOCAL;
    } else if (h->dest_len == 0 ? en->rn > 0 : !for_me) {
        dc->mode = SK_DC_FORWARD;
        if (h->hops <= 1) {
            refuse(w, c, SK_FLOW_V_HOP_LIMIT, SK_FLOW_E_HOP_LIMIT, dc->flow_id);
            return;
        }
    } else {
        refuse(w, c, SK_FLOW_V_NO_ROUTE, 0, dc->flow_id);
        return;
    }
    sk_connect_start(w, c);
}

static void header_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    sk_conn *c = SK_CONTAINER_OF(t, sk_conn, tmo);
    count_error(w->engine, SK_FLOW_E_TRUNCATED);
    sk_conn_close(w, c, true);
}

/* An INBOUND HELLO (to this router, checked): the dialler's reverse peer
 * here takes the connection into its pool on this worker, to claim for flows
 * towards the dialler (FLOW REVERSE). Always returns false: incoming_io is
 * done with it either way. */
static bool inbound_hello(sk_worker *w, sk_conn *c)
{
    sk_engine *e = w->engine;
    sk_dc *dc = c->dc;
    const sk_flow_hello *hl = &dc->p->out.hello;
    sk_peer *p = sk_peer_find_reverse(e, hl->from, hl->from_len);
    if (!p) {
        SK_ADD(&e->dp_hello_unknown, 1); /* no link from that router here */
        refuse(w, c, SK_FLOW_V_REFUSED, 0, 0);
        return false;
    }
    if (SK_LOAD(&p->closing) || (p->instance && hl->instance != p->instance)) {
        SK_ADD(&p->hello_refused, 1);
        sk_peer_release(p);
        refuse(w, c, SK_FLOW_V_REFUSED, 0, 0);
        return false;
    }
    if (SK_LOAD(&p->pool_idle) >= p->inbound_cap) {
        SK_ADD(&p->hello_overloaded, 1);
        sk_peer_release(p);
        refuse(w, c, SK_FLOW_V_OVERLOADED, 0, 0);
        return false;
    }
    char v[SK_FLOW_VERDICT_LEN];
    int n = sk_flow_encode_verdict(v, sizeof v, SK_FLOW_V_OK, 0, 0);
    SK_ADD(&e->dp_verdicts_sent[SK_FLOW_V_OK], 1);
    if (sk_io_send(c, v, (size_t)n) != n) {
        sk_peer_release(p);
        sk_conn_close(w, c, true);
        return false;
    }
    SK_ADD(&p->inbound_accepted, 1);
    /* from here it is this router's to claim, as a dialled pooled one is: it
     * leaves its listener (counted closed there) and the listing's clients */
    sk_listener *l = c->listener;
    pthread_mutex_lock(&w->conn_lock);
    c->listener = NULL;
    c->is_client = false;
    dc->incoming = false;
    set_router(dc, hl->from, hl->from_len);
    pthread_mutex_unlock(&w->conn_lock);
    SK_ADD(&l->closed, 1);
    sk_listener_release(l);
    c->off_listener_count = false;
    dc->pooled = true;
    dc->peer = p; /* the lookup's reference */
    SK_ADD(&p->active, 1);
    pool_idle_enter(w, c);
    pool_arrived(w, p);
    return false;
}

/* A HELLO arrived: checks it and answers. OK: the connection waits, idle,
 * for a FLOW (no time-out: the dialler closes its idle ones). Returns false
 * when the connection was refused or is no longer this code's. */
static bool hello_answered(sk_worker *w, sk_conn *c)
{
    sk_dc *dc = c->dc;
    const sk_flow_hello *hl = &dc->p->out.hello;
    char me[256];
    size_t ml = router_id(w->engine, me);
    sk_listener *l = c->listener;
    if (hl->to_len != ml || memcmp(hl->to, me, ml) != 0) {
        refuse(w, c, SK_FLOW_V_REFUSED, 0, 0); /* a misdial */
        return false;
    }
    if (hl->role == SK_FLOW_ROLE_INBOUND)
        return inbound_hello(w, c);
    if (l->opts.data_pool_cap > 0 && SK_LOAD(&l->dp_idle) >= l->opts.data_pool_cap) {
        refuse(w, c, SK_FLOW_V_OVERLOADED, 0, 0);
        return false;
    }
    char v[SK_FLOW_VERDICT_LEN];
    int n = sk_flow_encode_verdict(v, sizeof v, SK_FLOW_V_OK, 0, 0);
    SK_ADD(&w->engine->dp_verdicts_sent[SK_FLOW_V_OK], 1);
    if (sk_io_send(c, v, (size_t)n) != n) {
        sk_conn_close(w, c, true); /* 16 bytes on an idle connection: it is gone */
        return false;
    }
    SK_ADD(&l->dp_idle, 1);
    SK_ADD(&w->engine->dp_pool_in, 1);
    dc->hello_in = true;
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    sk_flow_parser_init(dc->p, SK_FLOW_T_HDR, false);
    return true;
}

/* on_io of an accepted data connection while its FLOW arrives. */
static void incoming_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    SK_UNUSED(ev);
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    sk_dc *dc = c->dc;
    sk_flow_parser *p = dc->p;
    sk_engine *e = w->engine;
    for (int rounds = 0; rounds < 64; rounds++) {
        char tmp[SK_FLOW_HDR_MAX];
        size_t need = p->pos < SK_FLOW_PREAMBLE ? SK_FLOW_PREAMBLE - p->pos : p->len - p->pos;
        if (need > sizeof tmp)
            need = sizeof tmp;
        ssize_t n = sk_io_recv(w, c, tmp, need);
        if (n == -1) {
            set_interest(w, c, EPOLLIN);
            return;
        }
        if (n == -2) {
            sk_conn_close(w, c, true);
            return;
        }
        if (n == 0) {
            count_error(e, sk_flow_parse_eof(p));
            sk_conn_close(w, c, false);
            return;
        }
        size_t used, pos0 = p->pos;
        if (dc->idle_in)
            inbound_claimed(w, c); /* the peer's FLOW REVERSE begins */
        if ((dc->hello_in || dc->inbound) && pos0 == 0) {
            /* a pooled connection is being claimed: its FLOW has the usual time */
            c->tmo.cb = header_timeout;
            sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo,
                               sk_now_ns() + (uint64_t)e->opts.connect_timeout_ms * 1000000u);
        }
        int rc = sk_flow_parse(p, tmp, (size_t)n, &used);
        if (rc == SK_FLOW_ERROR && p->err == SK_FLOW_E_TYPE && p->type == SK_FLOW_T_HDR &&
            p->err_at == 3 && pos0 <= 3 && !dc->hello_in && !dc->inbound &&
            tmp[3 - pos0] == SK_FLOW_T_HELLO) {
            /* a pooled connection's HELLO instead of a FLOW: parse it as one */
            static const char pre[4] = {'S', 'K', SK_FLOW_VERSION, SK_FLOW_T_HELLO};
            sk_flow_parser_init(p, SK_FLOW_T_HELLO, false);
            sk_flow_parse(p, pre, 4, &used);
            rc = sk_flow_parse(p, tmp + (4 - pos0), (size_t)n - (4 - pos0), &used);
        }
        if (rc == SK_FLOW_NEED_MORE)
            continue;
        if (rc == SK_FLOW_DONE && p->type == SK_FLOW_T_HELLO) {
            if (!hello_answered(w, c))
                return;
            continue; /* idle until a FLOW */
        }
        if (rc == SK_FLOW_ERROR) {
            count_error(e, p->err);
            int code = sk_flow_err_verdict(p->err);
            uint64_t fid = p->out.hdr.flow_id; /* 0 until its 8 bytes are in */
            refuse(w, c, (uint8_t)code, p->err, fid);
            return;
        }
        route_flow(w, c);
        return;
    }
    set_interest(w, c, EPOLLIN);
}

static void become_data(sk_worker *w, sk_conn *c)
{
    sk_engine *e = w->engine;
    sk_dc *dc = calloc(1, sizeof *dc);
    sk_flow_parser *p = malloc(sizeof *p);
    if (!dc || !p) {
        dc_free(dc);
        free(p);
        sk_conn_close(w, c, true);
        return;
    }
    SK_ADD(&e->dp_accepted, 1);
    /* a data connection belongs to the data plane, not to what the listener
     * serves: it leaves the listener's count (and so its max_connections) */
    SK_SUB(&c->listener->active, 1);
    c->off_listener_count = true;
    dc->incoming = true;
    dc->mode = SK_DC_LOCAL;
    dc->p = p;
    sk_flow_parser_init(p, SK_FLOW_T_HDR, false);
    c->dc = dc;
    sk_conn_enter(c, SK_C_OPEN, incoming_io);
    c->tmo.cb = header_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo,
                       sk_now_ns() + (uint64_t)e->opts.connect_timeout_ms * 1000000u);
    incoming_io(w, &c->h, EPOLLIN);
}

/* Not a data connection: the listener's usual path, as if never sniffed. */
static void hand_off(sk_worker *w, sk_conn *c)
{
    sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
    sk_conn_set_interest(w, c, 0);
    sk_conn_open_client(w, c);
    /* decrypted bytes the peek left inside the TLS layer wake no epoll */
    if (c->state == SK_C_OPEN && sk_conn_is_tls(c) && c->app && sk_tls_io_pending(c))
        sk_ready_push(w, c);
}

static void sniff_timeout(sk_worker *w, sk_timer *t, uint64_t now)
{
    SK_UNUSED(now);
    hand_off(w, SK_CONTAINER_OF(t, sk_conn, tmo));
}

static void sniff_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    SK_UNUSED(ev);
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    unsigned char b[2];
    ssize_t n;
    if (sk_conn_is_tls(c)) {
        uint32_t want;
        n = sk_tls_io_peek(c, b, sizeof b, &want);
        if (n == -1) {
            sk_conn_set_interest(w, c, want);
            return;
        }
        if (n < 0)
            n = 0;
    } else {
        n = recv(c->fd, b, sizeof b, MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            sk_conn_set_interest(w, c, EPOLLIN);
            return;
        }
    }
    /* a lone 'S' commits: the parser then refuses anything but "SK" */
    if (n >= 1 && b[0] == 'S' && (n == 1 || b[1] == 'K')) {
        sk_worker_cancel(w, SK_PRIO_NORMAL, &c->tmo);
        become_data(w, c);
        return;
    }
    hand_off(w, c); /* another protocol, EOF or an error: the usual path sees it */
}

void sk_dc_sniff_start(sk_worker *w, sk_conn *c)
{
    c->dc_sniffed = true;
    sk_conn_enter(c, SK_C_OPEN, sniff_io);
    c->tmo.cb = sniff_timeout;
    sk_worker_schedule(w, SK_PRIO_NORMAL, &c->tmo,
                       sk_now_ns() + (uint64_t)w->engine->opts.connect_timeout_ms * 1000000u);
    sniff_io(w, &c->h, EPOLLIN);
}

/* ------------------------------------------------------------ close */

void sk_dc_closing(sk_worker *w, sk_conn *c, bool abortive)
{
    sk_dc *dc = c->dc;
    bool was_idle = dc->idle;
    if (dc->idle)
        pool_unlink(w, c);
    else if (dc->pooled && !dc->claimed && !dc->moving)
        home_of(w, dc)->ndial--;
    if (dc->inbound && !dc->claimed) {
        /* an INBOUND connection the peer never claimed: replace it, at once
         * if it had lived, else after the back-off (the peer is down or
         * refuses: no redial storm) */
        sk_dc_pool *pl = ipool_of(w, dc->peer);
        if (was_idle && sk_now_ns() - dc->idle_since >= SK_DC_YOUNG_NS) {
            pl->fails = 0;
            refill_kick(w, pl, 0);
        } else {
            refill_failed(w, pl);
        }
    }
    if (dc->hello_in && c->listener) {
        SK_SUB(&c->listener->dp_idle, 1);
        SK_SUB(&w->engine->dp_pool_in, 1);
    }
    /* listings read c->dc and its router under conn_lock */
    pthread_mutex_lock(&w->conn_lock);
    c->dc = NULL;
    pthread_mutex_unlock(&w->conn_lock);
    if (dc->peer) {
        SK_SUB(&dc->peer->active, 1);
        SK_ADD(&dc->peer->bytes_in, SK_LOAD(&c->bytes_in));
        SK_ADD(&dc->peer->bytes_out, SK_LOAD(&c->bytes_out));
        if (dc->ok && abortive)
            SK_ADD(&dc->peer->resets, 1);
        sk_peer_release(dc->peer);
    }
    free(dc->p);
    free(dc->wbuf);
    dc_free(dc);
}
