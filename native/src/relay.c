/* relay.c -- moving bytes between the two sides of an open flow.
 *
 * Runs on an I/O worker: nothing here may block. Each readable event reads
 * at most SK_EVENT_QUANTUM bytes; each direction holds its waiting bytes in
 * one bounded place, the partner's c->out buffer (relay_buffer_bytes) or,
 * when neither side has TLS and the direction carried a buffer's worth
 * already (bulk), a splice pipe (c->pipe, pipe.c) filled only while empty
 * and with at most relay_buffer_bytes: the bytes then go socket to pipe to
 * socket without a copy into user space. A direction uses one of
 * the two at a time (it fills one only when the other is empty), so order is
 * kept when it falls back to copying because every pipe is in use. A side
 * stops being read while its partner has bytes it cannot take (buffer full,
 * or any bytes in the pipe). A half-close is passed on (FIN after the
 * waiting bytes) and the flow closes once both directions finished. How
 * the two sides got here (accept, target choice, connect, TLS handshake) is
 * conn.c's, connect.c's and tls_io.c's; TLS records go through sk_io_*.
 * Plain flows are edge-triggered (registered once, readiness kept per side
 * until EAGAIN, see relay_et_io); TLS flows set level-triggered interest. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* splice(2) moves bytes between a socket and a pipe only: TLS must copy.
 * A direction starts on the copy path and splices once it carried a buffer's
 * worth: for a short message a copy is cheaper than moving page references
 * through a pipe, and a short-lived flow never touches the pool. */
static bool may_splice(const sk_worker *w, const sk_conn *c)
{
    return w->engine->opts.splice_pipes > 0 && !sk_conn_is_tls(c) && !sk_conn_is_tls(c->peer) &&
           SK_LOAD(&c->bytes_in) >= (uint64_t)w->engine->opts.relay_buffer_bytes;
}

static bool buf_full(const sk_buf *b)
{
    return b && b->end - b->start == b->cap;
}

/* Bytes wait to be written to c (in its buffer or its pipe). */
static bool pending(const sk_conn *c)
{
    return (c->out && c->out->start < c->out->end) || c->pipe;
}

bool sk_relay_plain(const sk_conn *c)
{
    return c->peer && !sk_conn_is_tls(c) && !sk_conn_is_tls(c->peer);
}

static void update_interest(sk_worker *w, sk_conn *c)
{
    if (c->state != SK_C_OPEN || c->et)
        return; /* edge-triggered: registered once, never modified */
    uint32_t ev = 0;
    sk_conn *p = c->peer;
    /* a direction that splices lets copied bytes drain before it reads on:
     * copying behind them would keep it on the copy path for good */
    if (p && p->state == SK_C_OPEN && !c->rd_eof && !buf_full(p->out) && !p->pipe &&
        !(p->out && p->out->start < p->out->end && may_splice(w, c)))
        ev |= EPOLLIN;
    if ((c->out && c->out->start < c->out->end) || c->pipe)
        ev |= EPOLLOUT;
    if (sk_conn_is_tls(c))
        ev = sk_tls_io_interest(w, c, ev, !c->rd_eof);
    sk_conn_set_interest(w, c, ev);
}

static bool flush(sk_worker *w, sk_conn *c);

void sk_relay_start(sk_worker *w, sk_conn *s)
{
    if (sk_relay_plain(s)) {
        sk_conn *c = s->peer;
        sk_conn_register_et(w, s); /* already, unless connect() completed at once */
        if (s->state == SK_C_OPEN)
            sk_conn_register_et(w, c); /* the client is read only from now on */
        if (s->state != SK_C_OPEN)
            return;
        /* a connected or accepted socket takes bytes; an EAGAIN corrects it */
        s->wr_ready = c->wr_ready = true;
        /* bytes a level-triggered client (optional TLS that stayed plain)
         * had read while the target connected: the connect's edge is spent */
        if (pending(s) && !flush(w, s))
            return;
        if (s->rd_ready)
            sk_relay_read(w, s); /* the target spoke first (connect.c kept the edge) */
        return;
    }
    update_interest(w, s);
    if (s->peer)
        update_interest(w, s->peer);
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
    /* edge-triggered: after an EAGAIN, only an EPOLLOUT edge says try again */
    bool can = !c->et || c->wr_ready;
    sk_buf *b = c->out;
    while (can && b && b->start < b->end) {
        ssize_t n = sk_io_send(c, b->data + b->start, b->end - b->start);
        if (n > 0) {
            b->start += (uint32_t)n;
            count_out(c, (uint64_t)n);
            continue;
        }
        if (n == -1) {
            c->wr_ready = false;
            break;
        }
        sk_conn_close(w, c, true); /* EPIPE/ECONNRESET: abort the pair */
        return false;
    }
    if (b && b->start == b->end) {
        sk_buf_put(w, b);
        c->out = NULL;
    }
    sk_pipe *pp = c->pipe;
    while (can && pp && pp->len) {
        ssize_t n = splice(pp->rfd, NULL, c->fd, NULL, pp->len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            pp->len -= (uint32_t)n;
            count_out(c, (uint64_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            c->wr_ready = false;
            break;
        }
        sk_conn_close(w, c, true); /* EPIPE/ECONNRESET: abort the pair */
        return false;
    }
    if (pp && !pp->len) {
        sk_pipe_put(w, pp); /* empty: back to the pool, the flow holds none */
        c->pipe = NULL;
    }
    sk_conn *p = c->peer;
    if (!c->out && !c->pipe && p->rd_eof && !c->wr_shut) {
        if (sk_conn_is_tls(c))
            sk_tls_io_shutdown(c); /* close_notify, then FIN */
        c->wr_shut = true;
        /* when this ends the flow, close() sends the FIN: skip the syscall
         * (both read sides saw EOF, so no unread data turns it into a RST) */
        if (!flow_done(c))
            shutdown(c->fd, SHUT_WR); /* propagate the half-close */
    }
    if (flow_done(c)) {
        sk_conn_close(w, c, false);
        return false;
    }
    update_interest(w, c);
    update_interest(w, p);
    return true;
}

/* c's flow moves bytes socket to pipe to socket (or is about to). */
static bool bulk_flow(const sk_worker *w, const sk_conn *c)
{
    return c->et && c->peer && (c->pipe || c->peer->pipe || may_splice(w, c) ||
                                may_splice(w, c->peer));
}

size_t sk_relay_extension(const sk_worker *w, size_t extended)
{
    bool quiet = w->wake_ns - w->interactive_ns >= SK_BULK_QUIET_NS;
    if (!quiet || extended + SK_EVENT_QUANTUM >= SK_BULK_TURN ||
        w->round_bulk_left < SK_EVENT_QUANTUM)
        return 0;
    return SK_EVENT_QUANTUM;
}

/* A splicing direction whose SK_EVENT_QUANTUM is spent, with its socket
 * still readable and its partner keeping up: whether its turn goes on by
 * another quantum (sk_relay_extension), once due heartbeats ran and no new
 * connection or control-plane request waits for the worker (a newcomer
 * makes the worker's turns short again). */
static bool extend_turn(sk_worker *w, size_t extended)
{
    if (!sk_relay_extension(w, extended))
        return false;
    sk_worker_high_check(w);
    if (sk_worker_newcomers(w)) {
        w->interactive_ns = w->wake_ns;
        return false;
    }
    w->round_bulk_left -= SK_EVENT_QUANTUM;
    return true;
}

bool sk_relay_bulk_handle(const sk_worker *w, const sk_handle *h)
{
    return h->on_io == sk_relay_io && bulk_flow(w, SK_CONTAINER_OF(h, const sk_conn, h));
}

/* The splice path of sk_relay_read: socket -> pipe -> partner's socket.
 * Returns false when it handled the event (the pair may be closed), true
 * when the caller should copy instead (every pipe is in use). */
static bool read_splice(sk_worker *w, sk_conn *c, size_t *budget)
{
    size_t extended = 0; /* what this turn got beyond SK_EVENT_QUANTUM */
    for (;;) {
        sk_conn *p = c->peer;
        if ((p->out && p->out->start < p->out->end) || p->pipe) {
            update_interest(w, c); /* not read until they drained (keeps order) */
            return false;
        }
        p->pipe = sk_pipe_get(w);
        if (!p->pipe) {
            SK_ADD(&w->engine->splice_fallbacks, 1);
            return true;
        }
        /* fill only an empty pipe, with at most the direction's bound: an
         * EAGAIN then always means the socket is drained */
        size_t want = (size_t)w->engine->opts.relay_buffer_bytes;
        if (want > *budget)
            want = *budget;
        ssize_t n = splice(c->fd, NULL, p->pipe->wfd, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            p->pipe->len = (uint32_t)n;
            count_in(c, (uint64_t)n);
        } else if (n == 0) {
            c->rd_eof = true;
        } else if (errno == EAGAIN || errno == EINTR) {
            c->rd_ready = false; /* drained: the next edge says when there is more */
            sk_pipe_put(w, p->pipe);
            p->pipe = NULL;
            update_interest(w, c);
            return false;
        } else {
            sk_conn_close(w, c, true); /* reset by the peer: reset the other side */
            return false;
        }
        if (!flush(w, p))
            return false;
        *budget -= (size_t)n < *budget ? (size_t)n : *budget;
        if (n > 0 && !p->pipe && *budget == 0) {
            /* a bulk flow alone on a quiet worker goes on (extend_turn) */
            bool more = extend_turn(w, extended);
            if (c->state != SK_C_OPEN || p->state != SK_C_OPEN)
                return false; /* a due timer closed the pair (freed at the reap) */
            if (more) {
                if (!extended)
                    SK_ADD(&w->engine->bulk_turns, 1);
                extended += SK_EVENT_QUANTUM;
                *budget = SK_EVENT_QUANTUM;
            }
        }
        /* on while the partner keeps up, until the socket is drained (an
         * EAGAIN) or the quantum is spent: a bulk sender refills the socket
         * while the pipe empties, and one more splice is cheaper than a
         * sleep and a wake-up in epoll */
        if (!(n > 0 && !p->pipe && *budget > 0)) {
            update_interest(w, c);
            return false;
        }
    }
}

/* Reads from c into its partner's buffer and writes it on. One readable
 * event moves at most SK_EVENT_QUANTUM bytes (internal.h: more for a bulk
 * flow on a quiet worker): a bulk stream fills whole buffers and gets a few
 * rounds, a short message gets one read. */
static void relay_read(sk_worker *w, sk_conn *c)
{
    size_t budget = SK_EVENT_QUANTUM;
    if (may_splice(w, c) && !read_splice(w, c, &budget))
        return;
    for (;;) {
        sk_conn *p = c->peer;
        if (p->pipe) {
            update_interest(w, c); /* wait until the pipe is empty: keeps order */
            return;
        }
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
        ssize_t n = sk_io_recv(w, c, b->data + b->end, space);
        if (n > 0) {
            b->end += (uint32_t)n;
            count_in(c, (uint64_t)n);
            /* a short read emptied the socket: what arrives later raises a
             * new edge. Unless epoll reported an EOF or error: it may sit
             * behind these bytes, and its edge was spent */
            if ((size_t)n < space && !c->rd_hup)
                c->rd_ready = false;
        } else if (n == 0) {
            c->rd_eof = true;
        } else if (n == -1) {
            c->rd_ready = false;
            if (b->start == b->end) {
                sk_buf_put(w, b);
                p->out = NULL;
            }
            update_interest(w, c); /* SSL_read may want the socket writable */
            return;
        } else {
            sk_conn_close(w, c, true); /* reset by the peer: reset the other side */
            return;
        }
        if (!flush(w, p))
            return;
        budget -= (size_t)n < budget ? (size_t)n : budget;
        /* go on only while the partner keeps up and more is likely waiting:
         * a full read (plain) or any record (TLS reads one record per call) */
        bool likely = c->et ? c->rd_ready : ((size_t)n == space || sk_conn_is_tls(c));
        bool more = n > 0 && !p->out && budget > 0 && likely &&
                    !may_splice(w, c); /* a bulk direction goes on with splice */
        if (!more) {
            update_interest(w, c);
            return;
        }
    }
}

/* Edge-triggered plain flows. A direction reads only while its partner holds
 * no bytes for it (backpressure: then it waits for the partner's EPOLLOUT
 * edge, which resumes it below). It stops with its socket still readable when
 * its quantum is spent, or to switch to splice: then it goes on the ready
 * list, served after this batch's other events and before the worker sleeps,
 * so no edge is lost and one busy flow cannot hold the worker. */
void sk_relay_read(sk_worker *w, sk_conn *c)
{
    if (!c->et) {
        relay_read(w, c);
        return;
    }
    if (!c->rd_ready || c->rd_eof || pending(c->peer))
        return;
    relay_read(w, c);
    if (c->state == SK_C_OPEN && c->rd_ready && !c->rd_eof && !pending(c->peer))
        sk_ready_push(w, c);
}

/* What an edge says, kept per side until a read or write says otherwise. */
static void et_note(sk_conn *c, uint32_t ev)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->rd_ready = true;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->rd_hup = true;
    if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        c->wr_ready = true;
}

static void relay_et_io(sk_worker *w, sk_conn *c, uint32_t ev)
{
    et_note(c, ev);
    sk_conn *p = c->peer;
    /* the partner's direction: its bytes waiting for c */
    bool waited = pending(c);
    if (waited && c->wr_ready && !flush(w, c))
        return;
    /* c's own direction */
    if (c->rd_ready && !c->rd_eof) {
        sk_relay_read(w, c);
        if (c->state != SK_C_OPEN)
            return;
    } else if (ev & EPOLLERR) {
        sk_conn_close(w, c, true); /* nothing left to read: reset the other side */
        return;
    }
    /* the flush made room for the partner's direction; no new edge will say
     * that its socket still holds bytes */
    if (waited && !pending(c))
        sk_relay_read(w, p);
}

bool sk_relay_defer(sk_worker *w, sk_handle *h, uint32_t ev)
{
    if ((ev & EPOLLERR) || !sk_relay_bulk_handle(w, h))
        return false;
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    et_note(c, ev);
    sk_ready_push(w, c);
    return true;
}

void sk_relay_resume(sk_worker *w, sk_conn *c)
{
    if (c->et)
        relay_et_io(w, c, 0); /* with what its edges said */
    else
        sk_relay_read(w, c);
}

void sk_relay_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    if (!c->peer) {
        sk_conn_close(w, c, true);
        return;
    }
    if (c->et) {
        relay_et_io(w, c, ev);
        return;
    }
    bool rd = (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (c->events & EPOLLIN);
    bool wr = (ev & EPOLLOUT) != 0;
    if (sk_conn_is_tls(c)) {
        /* OpenSSL may need the other readiness than the one the data needs */
        if (c->tls_wr_wants_in && (ev & EPOLLIN))
            wr = true;
        if (c->tls_rd_wants_out && (ev & EPOLLOUT)) {
            rd = true;
            wr = c->out != NULL;
        }
    }
    if (rd)
        sk_relay_read(w, c);
    else if (ev & EPOLLERR)
        sk_conn_close(w, c, true);
    if (c->state == SK_C_OPEN && wr)
        flush(w, c);
}
