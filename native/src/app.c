/* app.c -- connections whose bytes go to the control plane (AMQP and HTTP
 * management) instead of being relayed.
 *
 * The control thread pulls received bytes with sk_app_read (bounded by a
 * credit of relay_buffer_bytes: the socket is not read while that much waits)
 * and queues whole frames with sk_app_write. The owning worker reads the
 * socket, writes what is queued, and sends the keep-alive frame on a
 * high-priority timer by itself, so heartbeats never wait for Python or the
 * GIL. One shortcut: sk_app_write on a plain open connection whose worker
 * holds nothing unsent sends on the caller's thread (a direct write), so a
 * reply does not wait for the worker to be scheduled. It takes a send token
 * under the lock and calls send(2) without it; the worker never waits for the
 * token: while it is taken the worker writes nothing (the writer kicks it
 * afterwards for whatever was queued meanwhile), and a connection closed
 * meanwhile leaves the socket's close(2) to the writer (sk_app_release_fd),
 * so the descriptor cannot be reused under the send. Likewise for input
 * (direct reads, sk_engine_app_poll): once the control thread asked for them,
 * a plain connection that opens joins an edge-triggered epoll set the
 * control thread watches, and is read there, with the same token and
 * credit; its worker then neither reads nor watches it for input, and
 * closes it when the reader reports an error. The connection is accepted by
 * an app listener, or dialled by sk_app_connect (app_connect.c), which hands
 * it over here once open. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define SK_APP_BUCKETS 256

static void ka_fire(sk_worker *w, sk_timer *t, uint64_t now);
static void app_interest(sk_worker *w, sk_conn *c);

/* ------------------------------------------------------------ table */

static sk_app **bucket(sk_engine *e, uint64_t id)
{
    return &e->app_table[(id * 0x9E3779B97F4A7C15ull) >> 56];
}

static sk_app *lookup(sk_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->app_lock);
    sk_app *a = *bucket(e, id);
    while (a && a->id != id)
        a = a->hnext;
    if (a)
        SK_ADD(&a->refs, 1);
    pthread_mutex_unlock(&e->app_lock);
    return a;
}

static void table_remove(sk_engine *e, sk_app *a)
{
    pthread_mutex_lock(&e->app_lock);
    for (sk_app **pp = bucket(e, a->id); *pp; pp = &(*pp)->hnext)
        if (*pp == a) {
            *pp = a->hnext;
            break;
        }
    pthread_mutex_unlock(&e->app_lock);
}

void sk_app_table_free(sk_engine *e)
{
    /* every app conn was closed by its worker, which removed it */
    for (int i = 0; i < SK_APP_BUCKETS; i++)
        while (e->app_table[i]) {
            sk_app *a = e->app_table[i];
            e->app_table[i] = a->hnext;
            sk_app_unref(a);
        }
}

void sk_app_unref(sk_app *a)
{
    if (atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(a->in);
    free(a->outq);
    free(a->wbuf);
    free(a->ka_frame);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* ------------------------------------------------------------ buffers */

static int append(char **buf, size_t *len, size_t *cap, const void *data, size_t n)
{
    if (*len + n > *cap) {
        size_t ncap = *cap ? *cap : 1024;
        while (ncap < *len + n)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

/* ------------------------------------------------------------ waits */

int sk_engine_app_wait(sk_engine *e, int which, sk_hist *out)
{
    if (which < SK_APP_WAIT_INPUT || which > SK_APP_WAIT_RECEIVE)
        return -1;
    memset(out, 0, sizeof *out);
    sk_hist_accumulate(&e->app_wait[which], out);
    return 0;
}

/* ------------------------------------------------------------ worker side */

sk_app *sk_app_new(sk_engine *e, sk_worker *w, uint64_t id, bool outbound)
{
    sk_app *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    atomic_init(&a->refs, 2); /* the worker's connection and the table */
    a->id = id;
    a->engine = e;
    a->worker = w;
    a->outbound = outbound;
    pthread_mutex_init(&a->lock, NULL);
    sk_timer_init(&a->ka_timer, ka_fire);
    a->last_write_ns = sk_now_ns();
    a->direct_fd = -1;
    SK_ADD(&e->app_live, 1);
    if (outbound)
        SK_ADD(&e->app_outbound_live, 1);
    pthread_mutex_lock(&e->app_lock);
    sk_app **b = bucket(e, a->id);
    a->hnext = *b;
    *b = a;
    pthread_mutex_unlock(&e->app_lock);
    return a;
}

void sk_app_accepted(sk_worker *w, sk_conn *c, sk_listener *l)
{
    sk_app *a = sk_app_new(w->engine, w, c->id, false);
    if (!a) {
        sk_conn_close(w, c, true);
        return;
    }
    a->conn = c;
    c->app = a;
    c->h.on_io = sk_app_io;
    sk_app_direct_open(a, c);
    sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_APP_OPEN, a->id, (int64_t)l->opts.user_id, 0);
    sk_app_direct_reads_open(a, c); /* after the open event: see sk_engine_app_poll */
    app_interest(w, c);
}

static void app_interest(sk_worker *w, sk_conn *c)
{
    sk_app *a = c->app;
    pthread_mutex_lock(&a->lock);
    bool paused = a->read_paused;
    pthread_mutex_unlock(&a->lock);
    uint32_t ev = 0;
    if (!c->rd_eof && !paused && !a->direct_read)
        ev |= EPOLLIN;
    if (a->woff < a->wlen)
        ev |= EPOLLOUT;
    if (sk_conn_is_tls(c))
        ev = sk_tls_io_interest(w, c, ev, !c->rd_eof && !paused);
    if (a->direct_hup)
        ev = 0; /* level-triggered HUP/ERR would spin until the reader's kick */
    sk_conn_set_interest(w, c, ev);
}

/* recv(2) on a plain app socket, recording how long its first byte waited
 * in the kernel (SO_TIMESTAMPNS, set at the open) as SK_APP_WAIT_RECEIVE.
 * Returns the bytes, -1 for nothing now, -2 for an error (errno kept). */
static ssize_t recv_stamped(sk_engine *e, int fd, void *buf, size_t len)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(fd, &mh, 0);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? -1 : -2;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n > 0 && cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts, now;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            clock_gettime(CLOCK_REALTIME, &now);
            int64_t d = (int64_t)(now.tv_sec - ts.tv_sec) * 1000000000 + (now.tv_nsec - ts.tv_nsec);
            sk_hist_record_shared(&e->app_wait[SK_APP_WAIT_RECEIVE], d > 0 ? (uint64_t)d : 0);
        }
    return n;
}

void sk_app_conn_readable(sk_worker *w, sk_conn *c)
{
    sk_app *a = c->app;
    if (a->direct_read)
        return; /* the control thread reads this socket (HUP/ERR reach it too) */
    size_t credit = (size_t)w->engine->opts.relay_buffer_bytes;
    char tmp[16384];
    pthread_mutex_lock(&a->lock);
    size_t space = a->in_len < credit ? credit - a->in_len : 0;
    if (space == 0)
        a->read_paused = true;
    pthread_mutex_unlock(&a->lock);
    if (space == 0 || c->rd_eof) {
        app_interest(w, c);
        return;
    }
    size_t want = space < sizeof tmp ? space : sizeof tmp;
    ssize_t n = sk_conn_is_tls(c) ? sk_io_recv(w, c, tmp, want)
                                  : recv_stamped(w->engine, c->fd, tmp, want);
    if (n == -1) {
        if (sk_conn_is_tls(c))
            app_interest(w, c); /* SSL_read may want the socket writable */
        return;
    }
    if (n < 0) {
        sk_conn_close(w, c, true);
        return;
    }
    bool notify;
    pthread_mutex_lock(&a->lock);
    if (n > 0) {
        if (a->in_len == 0)
            a->in_since_ns = sk_now_ns();
        if (append(&a->in, &a->in_len, &a->in_cap, tmp, (size_t)n) != 0) {
            pthread_mutex_unlock(&a->lock);
            sk_conn_close(w, c, true);
            return;
        }
    } else {
        a->eof = true;
    }
    notify = !a->readable_signalled;
    a->readable_signalled = true;
    pthread_mutex_unlock(&a->lock);
    if (n > 0)
        SK_BUMP(&c->bytes_in, (uint64_t)n);
    else
        c->rd_eof = true;
    if (c->listener && n > 0)
        SK_ADD(&c->listener->bytes_in, (uint64_t)n);
    if (notify)
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_APP_READABLE, a->id, 0, 0);
    app_interest(w, c);
}

void sk_app_direct_open(sk_app *a, sk_conn *c)
{
    /* TLS records are the worker's alone, OpenSSL's or detached */
    if (sk_conn_is_tls(c))
        return;
    int one = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    pthread_mutex_lock(&a->lock);
    a->direct_fd = c->fd;
    pthread_mutex_unlock(&a->lock);
}

void sk_app_direct_reads_open(sk_app *a, sk_conn *c)
{
    sk_engine *e = a->engine;
    if (sk_conn_is_tls(c) || !SK_LOAD(&e->app_direct_reads))
        return;
    /* the caller emitted SK_EV_APP_OPEN already: a poll that returns this id
     * finds its open in the rings */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = a->id};
    /* set before the socket joins: its first event may be polled at once */
    pthread_mutex_lock(&a->lock);
    a->direct_read = true;
    pthread_mutex_unlock(&a->lock);
    if (epoll_ctl(e->app_epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        pthread_mutex_lock(&a->lock);
        a->direct_read = false; /* the worker reads it */
        pthread_mutex_unlock(&a->lock);
    }
}

/* Caller holds a->lock, the fd is open (direct_fd >= 0): the poll set
 * looks at the socket again (EPOLL_CTL_MOD re-reports bytes already there,
 * which an edge-triggered set would not). */
static void rearm_locked(sk_engine *e, sk_app *a)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = a->id};
    epoll_ctl(e->app_epfd, EPOLL_CTL_MOD, a->direct_fd, &ev);
}

/* Caller holds a->lock: the last direct write's time goes to the
 * keep-alive's clock. */
static void fold_direct_locked(sk_app *a)
{
    if (a->direct_last_ns > a->last_write_ns)
        a->last_write_ns = a->direct_last_ns;
}

/* Bytes sent: by the worker, or by a direct write while it holds a->lock
 * and the connection is open (so c and its listener are alive). */
static void count_out(sk_conn *c, uint64_t n)
{
    SK_ADD(&c->bytes_out, n);
    if (c->listener)
        SK_ADD(&c->listener->bytes_out, n);
}

bool sk_app_release_fd(sk_worker *w, sk_conn *c)
{
    sk_app *a = c->app;
    /* out of the epoll set first: once the lock is released below, a writer
     * holding the token may close the fd, and its number be reused */
    if (c->registered && a->direct_fd >= 0)
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    pthread_mutex_lock(&a->lock);
    a->direct_fd = -1;
    bool mine = !a->direct_busy;
    if (!mine)
        a->direct_close_fd = true;
    pthread_mutex_unlock(&a->lock);
    return mine;
}

/* Sends what the worker holds; takes the next batch from Python's queue when
 * that is drained. Writes nothing while a direct write holds the send token
 * (its writer kicks the worker when it is done). Returns false when the
 * connection was closed. */
static bool pump(sk_worker *w, sk_conn *c)
{
    sk_app *a = c->app;
    for (int swaps = 0;;) {
        if (a->woff == a->wlen) {
            bool close_now = false, abort_now = false, token = false;
            uint64_t queued_ns = 0;
            pthread_mutex_lock(&a->lock);
            fold_direct_locked(a);
            if (a->direct_busy) {
                token = true;
            } else if (a->outq_len && swaps < 2) { /* two batches a call, at most */
                swaps++;
                queued_ns = a->out_since_ns;
                a->out_since_ns = 0;
                /* swap: Python keeps appending to the other buffer */
                char *tb = a->wbuf;
                size_t tc = a->wcap;
                a->wbuf = a->outq;
                a->wcap = a->outq_cap;
                a->wlen = a->outq_len;
                a->woff = 0;
                a->outq = tb;
                a->outq_cap = tc;
                a->outq_len = 0;
                a->w_busy = true;
            } else if (!a->outq_len) {
                a->wlen = a->woff = 0;
                a->w_busy = false;
                close_now = a->close_req;
            }
            abort_now = a->abort_req;
            pthread_mutex_unlock(&a->lock);
            if (queued_ns) {
                uint64_t now = sk_now_ns();
                sk_hist_record_shared(&w->engine->app_wait[SK_APP_WAIT_OUTPUT],
                                      now > queued_ns ? now - queued_ns : 0);
            }
            if (abort_now || close_now) {
                sk_conn_close(w, c, abort_now);
                return false;
            }
            if (token || a->woff == a->wlen)
                return true; /* nothing to write now */
        }
        while (a->woff < a->wlen) {
            ssize_t n = sk_io_send(c, a->wbuf + a->woff, a->wlen - a->woff);
            if (n > 0) {
                a->woff += (size_t)n;
                a->last_write_ns = sk_now_ns();
                count_out(c, (uint64_t)n);
                continue;
            }
            if (n == -1)
                return true;
            sk_conn_close(w, c, true);
            return false;
        }
    }
}

static void app_conn_writable(sk_worker *w, sk_conn *c)
{
    if (pump(w, c))
        app_interest(w, c);
}

void sk_app_io(sk_worker *w, sk_handle *h, uint32_t ev)
{
    sk_conn *c = SK_CONTAINER_OF(h, sk_conn, h);
    if (c->app->direct_read && (ev & (EPOLLHUP | EPOLLERR))) {
        /* the control thread's read finds the end or the error (its set
         * reports HUP/ERR too) and kicks us to close */
        c->app->direct_hup = true;
        app_interest(w, c);
        return;
    }
    bool ard = (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0;
    bool awr = (ev & EPOLLOUT) != 0;
    if (sk_conn_is_tls(c) && c->tls_wr_wants_in && (ev & EPOLLIN))
        awr = true;
    if (sk_conn_is_tls(c) && c->tls_rd_wants_out && (ev & EPOLLOUT))
        ard = true;
    if (ard)
        sk_app_conn_readable(w, c);
    if (c->state == SK_C_OPEN && awr)
        app_conn_writable(w, c);
}

void sk_app_kick(sk_worker *w, sk_app *a)
{
    sk_conn *c = a->conn;
    if (c && c->app_out && (c->state == SK_C_CONNECTING || c->state == SK_C_HANDSHAKE)) {
        sk_app_dial_kick(w, a); /* the rest waits for the open */
        return;
    }
    if (!c || c->state != SK_C_OPEN)
        return;
    pthread_mutex_lock(&a->lock);
    a->kick_pending = false;
    bool ka_changed = a->ka_changed;
    a->ka_changed = false;
    uint64_t interval = a->ka_interval_ns;
    int rd_err = a->direct_rd_err;
    pthread_mutex_unlock(&a->lock);
    if (rd_err) {
        /* a direct read failed (reset): closed as the worker's own read would */
        sk_conn_close(w, c, true);
        return;
    }
    if (ka_changed) {
        if (interval)
            sk_worker_schedule(w, SK_PRIO_HIGH, &a->ka_timer, a->last_write_ns + interval);
        else
            sk_worker_cancel(w, SK_PRIO_HIGH, &a->ka_timer);
    }
    if (pump(w, c))
        app_interest(w, c);
}

static void ka_fire(sk_worker *w, sk_timer *t, uint64_t now)
{
    sk_app *a = SK_CONTAINER_OF(t, sk_app, ka_timer);
    sk_conn *c = a->conn;
    if (!c || c->state != SK_C_OPEN)
        return;
    pthread_mutex_lock(&a->lock);
    fold_direct_locked(a);
    uint64_t interval = a->ka_interval_ns;
    bool idle = a->outq_len == 0 && a->woff == a->wlen && !a->direct_busy;
    bool send_frame = interval && idle && now - a->last_write_ns >= interval;
    if (send_frame) {
        /* between whole frames by construction: Python queues whole frames */
        a->wlen = a->woff = 0;
        if (append(&a->wbuf, &a->wlen, &a->wcap, a->ka_frame, a->ka_len) != 0)
            send_frame = false;
        else
            a->w_busy = true;
    }
    pthread_mutex_unlock(&a->lock);
    if (!interval)
        return;
    if (send_frame && !pump(w, c))
        return;
    app_interest(w, c);
    uint64_t next = a->last_write_ns + interval;
    if (next <= now)
        next = now + interval; /* could not write (peer not reading): try later */
    sk_worker_schedule(w, SK_PRIO_HIGH, &a->ka_timer, next);
}

void sk_app_finish(sk_worker *w, sk_app *a, int err)
{
    sk_engine *e = w->engine;
    sk_worker_cancel(w, SK_PRIO_HIGH, &a->ka_timer);
    pthread_mutex_lock(&a->lock);
    a->closed = true;
    a->conn = NULL;
    a->direct_fd = -1;
    pthread_mutex_unlock(&a->lock);
    table_remove(e, a);
    SK_SUB(&e->app_live, 1);
    if (a->outbound)
        SK_SUB(&e->app_outbound_live, 1);
    sk_app_unref(a); /* the table's reference */
    sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_APP_CLOSED, a->id, err, 0);
    sk_app_unref(a); /* the connection's reference */
}

void sk_app_conn_closed(sk_worker *w, sk_conn *c, int err)
{
    sk_app *a = c->app;
    c->app = NULL;
    sk_app_finish(w, a, err ? err : a->close_err);
}

/* ------------------------------------------------------------ control side */

/* Asks the owning worker to look at the connection, once per batch. The
 * caller decides under a->lock (want_kick) and posts after unlocking
 * (kick): posting writes the worker's eventfd, and a worker woken while the
 * writer still held a->lock would only block on it (seen as a quarter of the
 * control loop's samples in app_write during a storm). */
static bool want_kick(sk_app *a)
{
    /* caller holds a->lock */
    if (a->kick_pending)
        return false;
    a->kick_pending = true;
    return true;
}

static void kick(sk_app *a)
{
    /* caller does not hold a->lock, holds a reference, and won want_kick */
    sk_msg *m = calloc(1, sizeof *m);
    if (!m) {
        pthread_mutex_lock(&a->lock);
        a->kick_pending = false;
        pthread_mutex_unlock(&a->lock);
        return;
    }
    SK_ADD(&a->refs, 1);
    m->kind = SK_MSG_APP_KICK;
    m->u.app = a;
    sk_worker_post(a->worker, m);
}

int64_t sk_app_read(sk_engine *e, uint64_t conn_id, void *buf, size_t len)
{
    sk_app *a = lookup(e, conn_id);
    if (!a)
        return -2;
    pthread_mutex_lock(&a->lock);
    size_t n = a->in_len < len ? a->in_len : len;
    int64_t rc;
    uint64_t arrived_ns = 0;
    if (n) {
        memcpy(buf, a->in, n);
        memmove(a->in, a->in + n, a->in_len - n);
        a->in_len -= n;
        rc = (int64_t)n;
        arrived_ns = a->in_since_ns;
        /* what stays was picked up now too: counted once, with this read */
        a->in_since_ns = a->in_len ? sk_now_ns() : 0;
    } else {
        rc = a->eof ? -1 : 0;
    }
    if (a->in_len == 0)
        a->readable_signalled = false;
    bool post = false;
    if (a->read_paused && n && !a->closed && !atomic_load(&e->stopping)) {
        a->read_paused = false; /* credit returned: the worker reads again */
        if (a->direct_read) {
            if (a->direct_fd >= 0)
                rearm_locked(e, a); /* or the next poll does */
        } else {
            post = want_kick(a);
        }
    }
    pthread_mutex_unlock(&a->lock);
    if (post)
        kick(a);
    if (arrived_ns) {
        uint64_t now = sk_now_ns();
        sk_hist_record_shared(&e->app_wait[SK_APP_WAIT_INPUT],
                              now > arrived_ns ? now - arrived_ns : 0);
    }
    sk_app_unref(a);
    return rc;
}

/* Caller holds a->lock: whether a write of len bytes may go out on the
 * caller's thread now (see the top of the file). */
static bool direct_ok(const sk_app *a, size_t len)
{
    return len && a->direct_fd >= 0 && !a->direct_busy && !a->w_busy && !a->outq_len &&
           !a->close_req && !a->closed;
}

/* Sends on the caller's thread what direct_ok allowed; the token is taken.
 * What send(2) did not take is queued for the worker, as an ordinary write. */
static int direct_write(sk_engine *e, sk_app *a, const char *buf, size_t len)
{
    int fd = a->direct_fd;
    a->direct_busy = true;
    pthread_mutex_unlock(&a->lock);
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    size_t sent = n > 0 ? (size_t)n : 0;
    uint64_t now = sk_now_ns();
    pthread_mutex_lock(&a->lock);
    a->direct_busy = false;
    bool close_fd = a->direct_close_fd;
    a->direct_close_fd = false;
    if (a->direct_rd_missed && !close_fd) {
        a->direct_rd_missed = false;
        rearm_locked(e, a);
    }
    if (sent) {
        a->direct_last_ns = now;
        SK_ADD(&e->app_direct_writes, 1);
        if (!close_fd && a->conn)
            count_out(a->conn, sent); /* open: the worker cannot free it while we hold the lock */
    }
    int rc = 0;
    if (close_fd) {
        /* the worker closed the connection meanwhile and left the fd to us;
         * what was not sent is dropped with it, as it would have been */
    } else if (sent < len) {
        /* a full socket buffer or an error: the worker sends the rest, or
         * finds the error, in the ordinary way */
        if (!a->outq_len)
            a->out_since_ns = now;
        if (append(&a->outq, &a->outq_len, &a->outq_cap, buf + sent, len - sent) != 0)
            rc = -4;
    }
    /* sent or queued: the worker looks at what others queued meanwhile */
    bool post = a->outq_len && !a->closed && !atomic_load(&e->stopping) && want_kick(a);
    pthread_mutex_unlock(&a->lock);
    if (close_fd)
        close(fd);
    if (post)
        kick(a);
    if (sent == len)
        sk_hist_record_shared(&e->app_wait[SK_APP_WAIT_OUTPUT], 0);
    return rc;
}

/* A direct read (see skiff.h): reads the socket on the caller's thread
 * until it is drained, the credit is spent, or the stream ends, with the
 * token taken for each recv(2) as a direct write takes it for send(2).
 * Returns true when the caller should tell Python (bytes or the end newly
 * readable, as SK_EV_APP_READABLE would). */
static bool direct_read(sk_engine *e, sk_app *a, uint32_t events)
{
    /* a short read means drained, unless the end or an error was reported
     * with the bytes: then read on to it (no edge will report it again) */
    bool to_end = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
    size_t credit = (size_t)e->opts.relay_buffer_bytes;
    char tmp[16384];
    bool got = false, post = false, close_fd = false;
    int fd = -1;
    pthread_mutex_lock(&a->lock);
    for (;;) {
        if (a->direct_fd < 0 || !a->direct_read || a->closed || a->eof || a->direct_rd_err)
            break;
        if (a->direct_busy) {
            a->direct_rd_missed = true; /* its holder re-arms the socket */
            break;
        }
        size_t space = a->in_len < credit ? credit - a->in_len : 0;
        if (space == 0) {
            a->read_paused = true; /* sk_app_read re-arms it */
            break;
        }
        size_t want = space < sizeof tmp ? space : sizeof tmp;
        fd = a->direct_fd;
        a->direct_busy = true;
        pthread_mutex_unlock(&a->lock);
        ssize_t n = recv_stamped(e, fd, tmp, want);
        int rerr = errno;
        pthread_mutex_lock(&a->lock);
        a->direct_busy = false;
        if (a->direct_close_fd) {
            /* the worker closed the connection meanwhile and left the fd to
             * us; what was read goes with it, as it would have */
            a->direct_close_fd = false;
            close_fd = true;
            break;
        }
        a->direct_rd_missed = false; /* a reader that met the token: read on here */
        if (n == -1)
            break; /* drained */
        if (n == -2) {
            a->direct_rd_err = rerr ? rerr : EIO;
            post = !a->closed && !atomic_load(&e->stopping) && want_kick(a);
            break;
        }
        if (n == 0) {
            a->eof = true;
            got = true;
            break;
        }
        if (a->in_len == 0)
            a->in_since_ns = sk_now_ns();
        if (append(&a->in, &a->in_len, &a->in_cap, tmp, (size_t)n) != 0) {
            a->direct_rd_err = ENOMEM;
            post = !a->closed && !atomic_load(&e->stopping) && want_kick(a);
            break;
        }
        got = true;
        SK_ADD(&e->app_direct_reads_total, 1);
        if (a->conn) {
            /* open: the worker cannot free it while we hold the lock */
            SK_ADD(&a->conn->bytes_in, (uint64_t)n);
            if (a->conn->listener)
                SK_ADD(&a->conn->listener->bytes_in, (uint64_t)n);
        }
        if ((size_t)n < want && !to_end)
            break; /* a short read: drained when it was made */
    }
    bool tell = got && !a->readable_signalled;
    if (tell)
        a->readable_signalled = true;
    pthread_mutex_unlock(&a->lock);
    if (close_fd)
        close(fd);
    if (post)
        kick(a);
    return tell;
}

void sk_engine_app_direct_reads(sk_engine *e, int on)
{
    SK_STORE(&e->app_direct_reads, on ? 1 : 0);
}

int sk_engine_app_poll_fd(const sk_engine *e)
{
    return e->app_epfd;
}

int sk_engine_app_poll(sk_engine *e, uint64_t *ids, int max)
{
    struct epoll_event evs[64];
    if (max > 64)
        max = 64;
    if (max <= 0)
        return 0;
    int n = epoll_wait(e->app_epfd, evs, max, 0);
    int out = 0;
    for (int i = 0; i < n; i++) {
        sk_app *a = lookup(e, evs[i].data.u64);
        if (!a)
            continue; /* closed since: its socket left the set with its close */
        if (direct_read(e, a, evs[i].events))
            ids[out++] = a->id;
        sk_app_unref(a);
    }
    return out;
}

int sk_app_write(sk_engine *e, uint64_t conn_id, const void *buf, size_t len)
{
    sk_app *a = lookup(e, conn_id);
    if (!a)
        return -2;
    int rc = 0;
    bool post = false;
    pthread_mutex_lock(&a->lock);
    if (a->closed || a->close_req || atomic_load(&e->stopping)) {
        rc = -3;
    } else if (direct_ok(a, len)) {
        rc = direct_write(e, a, buf, len); /* returns with a->lock released */
        sk_app_unref(a);
        return rc;
    } else {
        bool was_empty = a->outq_len == 0;
        if (append(&a->outq, &a->outq_len, &a->outq_cap, buf, len) != 0) {
            rc = -4;
        } else {
            if (was_empty && len)
                a->out_since_ns = sk_now_ns();
            post = want_kick(a);
        }
    }
    pthread_mutex_unlock(&a->lock);
    if (post)
        kick(a);
    sk_app_unref(a);
    return rc;
}

int64_t sk_app_pending(sk_engine *e, uint64_t conn_id)
{
    sk_app *a = lookup(e, conn_id);
    if (!a)
        return -2;
    pthread_mutex_lock(&a->lock);
    int64_t n = (int64_t)a->outq_len;
    pthread_mutex_unlock(&a->lock);
    sk_app_unref(a);
    return n;
}

int sk_app_set_keepalive(sk_engine *e, uint64_t conn_id, const void *frame, size_t len,
                         uint32_t interval_ms)
{
    sk_app *a = lookup(e, conn_id);
    if (!a)
        return -2;
    int rc = 0;
    char *copy = NULL;
    if (interval_ms && len) {
        copy = malloc(len);
        if (!copy)
            rc = -4;
        else
            memcpy(copy, frame, len);
    }
    bool post = false;
    pthread_mutex_lock(&a->lock);
    if (rc == 0 && (a->closed || atomic_load(&e->stopping))) {
        rc = -3;
    } else if (rc == 0) {
        free(a->ka_frame);
        a->ka_frame = copy;
        copy = NULL;
        a->ka_len = interval_ms && len ? len : 0;
        a->ka_interval_ns = a->ka_len ? (uint64_t)interval_ms * 1000000u : 0;
        a->ka_changed = true;
        post = want_kick(a);
    }
    pthread_mutex_unlock(&a->lock);
    if (post)
        kick(a);
    free(copy);
    sk_app_unref(a);
    return rc;
}

int sk_app_close(sk_engine *e, uint64_t conn_id, int abort_now)
{
    sk_app *a = lookup(e, conn_id);
    if (!a)
        return -2;
    bool post = false;
    pthread_mutex_lock(&a->lock);
    if (!a->closed && !atomic_load(&e->stopping)) {
        a->close_req = true;
        if (abort_now)
            a->abort_req = true;
        post = want_kick(a);
    }
    pthread_mutex_unlock(&a->lock);
    if (post)
        kick(a);
    sk_app_unref(a);
    return 0;
}
