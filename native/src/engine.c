/* engine.c -- engine lifecycle, worker loop, mailboxes, events and stats. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

void sk_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void sk_engine_options_init(sk_engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->worker_threads = 0;
    o->connect_timeout_ms = 5000;
    o->max_connect_attempts = 0;
    o->backoff_initial_ms = 500;
    o->backoff_max_ms = 30000;
    o->relay_buffer_bytes = 65536;
    o->keepalive = 1;
    o->event_ring_size = 4096;
    o->high_check_budget_us = 250;
    o->events_per_wakeup = 64;
}

uint64_t sk_engine_next_id(sk_engine *e)
{
    return SK_ADD(&e->next_id, 1) + 1;
}

int sk_engine_worker_count(const sk_engine *e)
{
    return e->nworkers;
}

int sk_engine_event_fd(const sk_engine *e)
{
    return e->eventfd;
}

/* ---------------------------------------------------------------- events */

static void signal_control(sk_engine *e)
{
    if (atomic_exchange_explicit(&e->event_signalled, 1, memory_order_acq_rel) == 0) {
        uint64_t one = 1;
        ssize_t n = write(e->eventfd, &one, sizeof one);
        SK_UNUSED(n); /* an eventfd write only fails on counter overflow */
    }
}

void sk_worker_emit(sk_worker *w, int prio, uint32_t type, uint64_t id, int64_t a, int64_t b)
{
    sk_event ev = {.type = type, .worker = (uint32_t)w->index, .id = id, .a = a, .b = b};
    sk_ring_push(&w->ring[prio == SK_PRIO_HIGH ? 0 : 1], &ev);
    signal_control(w->engine);
}

void sk_engine_ack_event_fd(sk_engine *e)
{
    uint64_t v;
    /* read first, then clear the flag: an emit that raced the read either
     * saw the flag still set (its event is in a ring the caller drains next)
     * or writes the eventfd again after the clear. Clearing first would let
     * the read eat that write and leave the flag set for good. */
    ssize_t n = read(e->eventfd, &v, sizeof v);
    SK_UNUSED(n); /* EAGAIN when already clear */
    atomic_store_explicit(&e->event_signalled, 0, memory_order_seq_cst);
}

int sk_engine_drain(sk_engine *e, sk_event *out, int max, int *overflow)
{
    int n = 0;
    int of = 0;
    pthread_mutex_lock(&e->drain_lock);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < e->nworkers && n < max; i++)
            n += sk_ring_pop(&e->workers[i].ring[p], out + n, max - n);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < e->nworkers; i++)
            of |= sk_ring_take_overflow(&e->workers[i].ring[p]);
    pthread_mutex_unlock(&e->drain_lock);
    if (overflow)
        *overflow = of;
    return n;
}

/* --------------------------------------------------------------- mailbox */

void sk_worker_post(sk_worker *w, sk_msg *m)
{
    m->next = NULL;
    pthread_mutex_lock(&w->mbox_lock);
    if (w->mbox_tail)
        w->mbox_tail->next = m;
    else
        w->mbox_head = m;
    w->mbox_tail = m;
    pthread_mutex_unlock(&w->mbox_lock);
    if (atomic_exchange_explicit(&w->wake_pending, 1, memory_order_acq_rel) == 0) {
        uint64_t one = 1;
        ssize_t n = write(w->wakefd, &one, sizeof one);
        SK_UNUSED(n);
    }
}

static void close_req_done(sk_worker *w, sk_close_req *req)
{
    if (atomic_fetch_sub_explicit(&req->remaining, 1, memory_order_acq_rel) == 1) {
        sk_worker_emit(w, SK_PRIO_NORMAL, SK_EV_CLOSE_DONE, req->id, 0, 0);
        sk_target_release(req->target);
        free(req);
    }
}

static void utimer_fire(sk_worker *w, sk_timer *t, uint64_t now);

static void handle_msg(sk_worker *w, sk_msg *m)
{
    switch (m->kind) {
    case SK_MSG_ADD_LSOCK:
        sk_lsock_attach(w, m->u.lsock);
        break;
    case SK_MSG_CLOSE_LISTENER:
        sk_worker_close_listener(w, m->u.close.listener, m->u.close.drop);
        break;
    case SK_MSG_TIMER_START: {
        sk_utimer *ut = m->u.timer;
        ut->next = w->utimers;
        w->utimers = ut;
        sk_worker_schedule(w, ut->prio, &ut->t, ut->t.deadline);
        break;
    }
    case SK_MSG_TIMER_CANCEL: {
        sk_utimer **pp = &w->utimers;
        int found = 0;
        while (*pp) {
            if ((*pp)->id == m->u.timer_id) {
                sk_utimer *ut = *pp;
                *pp = ut->next;
                sk_worker_cancel(w, ut->prio, &ut->t);
                free(ut);
                found = 1;
                break;
            }
            pp = &(*pp)->next;
        }
        /* same ring as the timer's own events, so none can overtake this one */
        int prio = (int)((m->u.timer_id >> 8) & 1);
        sk_worker_emit(w, prio, SK_EV_TIMER_CANCELLED, m->u.timer_id, found, 0);
        break;
    }
    case SK_MSG_APP_KICK:
        sk_app_kick(w, m->u.app);
        sk_app_unref(m->u.app);
        break;
    case SK_MSG_TLS_CLOSE_OLDER:
        sk_worker_close_tls_older(w, m->u.older.slot, m->u.older.ordinal);
        break;
    case SK_MSG_CLOSE_TARGET_FLOWS: {
        sk_close_req *req = m->u.req;
        sk_worker_close_flows(w, NULL, req->target);
        close_req_done(w, req);
        break;
    }
    }
    free(m);
}

static void drain_mailbox(sk_worker *w)
{
    uint64_t v;
    ssize_t n = read(w->wakefd, &v, sizeof v);
    SK_UNUSED(n);
    atomic_store_explicit(&w->wake_pending, 0, memory_order_release);
    pthread_mutex_lock(&w->mbox_lock);
    sk_msg *m = w->mbox_head;
    w->mbox_head = w->mbox_tail = NULL;
    pthread_mutex_unlock(&w->mbox_lock);
    while (m) {
        sk_msg *next = m->next;
        handle_msg(w, m);
        m = next;
        if (m)
            sk_worker_high_check(w);
    }
}

/* Frees messages left when a worker stops: release what they reference. */
static void discard_mailbox(sk_worker *w)
{
    sk_msg *m = w->mbox_head;
    w->mbox_head = w->mbox_tail = NULL;
    while (m) {
        sk_msg *next = m->next;
        switch (m->kind) {
        case SK_MSG_ADD_LSOCK:
            sk_lsock_destroy(w, m->u.lsock);
            break;
        case SK_MSG_CLOSE_LISTENER:
            sk_worker_close_listener(w, m->u.close.listener, 0);
            break;
        case SK_MSG_TIMER_START:
            free(m->u.timer);
            break;
        case SK_MSG_APP_KICK:
            sk_app_unref(m->u.app);
            break;
        case SK_MSG_CLOSE_TARGET_FLOWS:
            close_req_done(w, m->u.req);
            break;
        default:
            break;
        }
        free(m);
        m = next;
    }
}

/* ---------------------------------------------------------------- timers */

void sk_worker_schedule(sk_worker *w, int prio, sk_timer *t, uint64_t deadline)
{
    /* Out of memory here would lose a timer; the heap grows by doubling and
     * keeps its array, so this only fails when the process cannot allocate. */
    if (sk_heap_push(&w->heap[prio == SK_PRIO_HIGH ? 0 : 1], t, deadline) != 0)
        abort();
}

void sk_worker_cancel(sk_worker *w, int prio, sk_timer *t)
{
    sk_heap_remove(&w->heap[prio == SK_PRIO_HIGH ? 0 : 1], t);
}

static void run_due(sk_worker *w, int cls, uint64_t now)
{
    sk_heap *h = &w->heap[cls];
    sk_timer *t;
    /* timers scheduled while running with a deadline <= now run in this pass
     * too; a periodic timer always moves its deadline forward */
    while ((t = sk_heap_pop_due(h, now)) != NULL) {
        sk_hist_record(&w->lateness[cls], now - t->deadline);
        uint64_t ready = t->deadline > w->wake_ns ? t->deadline : w->wake_ns;
        sk_hist_record(&w->dispatch[cls], now > ready ? now - ready : 0);
        SK_BUMP(&w->timers_fired, 1);
        t->cb(w, t, now);
        now = sk_now_ns();
    }
}

void sk_worker_high_check(sk_worker *w)
{
    uint64_t t = sk_now_ns();
    if (t - w->last_high_check >= w->high_budget_ns) {
        SK_BUMP(&w->high_rechecks, 1);
        run_due(w, 0, t);
        w->last_high_check = t;
    }
}

static void utimer_fire(sk_worker *w, sk_timer *t, uint64_t now)
{
    sk_utimer *ut = SK_CONTAINER_OF(t, sk_utimer, t);
    uint64_t late = now > t->deadline ? now - t->deadline : 0;
    sk_worker_emit(w, ut->prio, SK_EV_TIMER, ut->id, (int64_t)late, 0);
    if (ut->period) {
        uint64_t next = t->deadline + ut->period;
        if (next <= now) /* fell behind: skip missed periods, keep the phase */
            next += ((now - next) / ut->period + 1) * ut->period;
        sk_worker_schedule(w, ut->prio, t, next);
        return;
    }
    sk_utimer **pp = &w->utimers;
    while (*pp && *pp != ut)
        pp = &(*pp)->next;
    if (*pp)
        *pp = ut->next;
    free(ut);
}

uint64_t sk_timer_start(sk_engine *e, int worker, int prio, uint64_t delay_ns,
                        uint64_t period_ns)
{
    if (prio != SK_PRIO_HIGH && prio != SK_PRIO_NORMAL)
        return 0;
    if (worker >= e->nworkers || atomic_load(&e->stopping))
        return 0;
    if (worker < 0)
        worker = (int)(SK_ADD(&e->next_worker, 1) % (uint32_t)e->nworkers);
    sk_utimer *ut = calloc(1, sizeof *ut);
    sk_msg *m = calloc(1, sizeof *m);
    if (!ut || !m) {
        free(ut);
        free(m);
        return 0;
    }
    sk_timer_init(&ut->t, utimer_fire);
    ut->t.deadline = sk_now_ns() + delay_ns;
    ut->period = period_ns;
    ut->prio = prio;
    /* the low byte names the owning worker and bit 8 the class, so a cancel
     * finds the worker and reports in the timer's own ring */
    ut->id = (sk_engine_next_id(e) << 9) | ((uint64_t)prio << 8) | (uint64_t)worker;
    uint64_t id = ut->id;
    m->kind = SK_MSG_TIMER_START;
    m->u.timer = ut;
    sk_worker_post(&e->workers[worker], m);
    return id;
}

int sk_timer_cancel(sk_engine *e, uint64_t timer_id)
{
    int worker = (int)(timer_id & 0xff);
    if (timer_id == 0 || worker >= e->nworkers || atomic_load(&e->stopping))
        return -1;
    sk_msg *m = calloc(1, sizeof *m);
    if (!m)
        return -1;
    m->kind = SK_MSG_TIMER_CANCEL;
    m->u.timer_id = timer_id;
    sk_worker_post(&e->workers[worker], m);
    return 0;
}

/* --------------------------------------------------------------- buffers */

sk_buf *sk_buf_get(sk_worker *w)
{
    sk_buf *b = w->buf_free;
    if (b) {
        w->buf_free = b->next;
        w->buf_free_n--;
    } else {
        uint32_t cap = (uint32_t)w->engine->opts.relay_buffer_bytes;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        SK_ADD(&w->engine->bufs_live, 1);
        SK_ADD(&w->engine->buf_bytes_live, cap);
    }
    b->start = b->end = 0;
    b->next = NULL;
    return b;
}

/* A few drained buffers are kept per worker to spare malloc on busy paths;
 * idle connections hold none. */
#define SK_BUF_KEEP 8

void sk_buf_put(sk_worker *w, sk_buf *b)
{
    if (!b)
        return;
    if (w->buf_free_n < SK_BUF_KEEP) {
        b->next = w->buf_free;
        w->buf_free = b;
        w->buf_free_n++;
        return;
    }
    SK_SUB(&w->engine->bufs_live, 1);
    SK_SUB(&w->engine->buf_bytes_live, b->cap);
    free(b);
}

static void buf_free_all(sk_worker *w)
{
    while (w->buf_free) {
        sk_buf *b = w->buf_free;
        w->buf_free = b->next;
        SK_SUB(&w->engine->bufs_live, 1);
        SK_SUB(&w->engine->buf_bytes_live, b->cap);
        free(b);
    }
    w->buf_free_n = 0;
}

/* ----------------------------------------------------------------- epoll */

int sk_worker_epoll(sk_worker *w, int op, int fd, uint32_t events, sk_handle *h)
{
    struct epoll_event ev = {.events = events, .data.ptr = h};
    return epoll_ctl(w->epfd, op, fd, &ev);
}

/* ---------------------------------------------------------------- worker */

static void reap(sk_worker *w)
{
    while (w->graveyard) {
        sk_conn *c = w->graveyard;
        w->graveyard = c->next;
        sk_conn_free(w, c);
    }
}

static void worker_shutdown(sk_worker *w)
{
    /* close every connection; the list is ours alone once running is 0 */
    for (;;) {
        pthread_mutex_lock(&w->conn_lock);
        sk_conn *c = w->conns;
        pthread_mutex_unlock(&w->conn_lock);
        if (!c)
            break;
        sk_conn_close(w, c, false);
        reap(w);
    }
    while (w->lsocks) {
        sk_lsock *ls = w->lsocks;
        w->lsocks = ls->next;
        sk_lsock_destroy(w, ls);
    }
    pthread_mutex_lock(&w->mbox_lock);
    discard_mailbox(w);
    pthread_mutex_unlock(&w->mbox_lock);
    reap(w);
    /* empty the heaps before freeing the timers they point to */
    sk_heap_free(&w->heap[0]);
    sk_heap_free(&w->heap[1]);
    while (w->utimers) {
        sk_utimer *ut = w->utimers;
        w->utimers = ut->next;
        free(ut);
    }
    sk_slot_cache_clear(&w->routes_cache);
    for (int i = 0; i < SK_TLS_SLOTS; i++)
        sk_slot_cache_clear(&w->tls_cache[i]);
    buf_free_all(w);
}

static uint64_t thread_cpu_ns(clockid_t clk)
{
    struct timespec ts;
    if (clock_gettime(clk, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *worker_main(void *arg)
{
    sk_worker *w = arg;
    sk_engine *e = w->engine;
    int maxev = e->opts.events_per_wakeup;
    struct epoll_event *evs = calloc((size_t)maxev, sizeof *evs);
    w->high_budget_ns = (uint64_t)e->opts.high_check_budget_us * 1000u;
    pthread_getcpuclockid(pthread_self(), &w->cpu_clock);
    /* the default 50 us timer slack would make every timer that late */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    atomic_store(&w->running, 1);

    while (evs && !atomic_load_explicit(&e->stopping, memory_order_acquire)) {
        uint64_t now = sk_now_ns();
        /* sleep until the earliest deadline of either class */
        struct timespec ts, *tsp = NULL;
        uint64_t wake = UINT64_MAX;
        for (int cls = 0; cls < 2; cls++) {
            sk_timer *t = sk_heap_top(&w->heap[cls]);
            if (t && t->deadline < wake)
                wake = t->deadline;
        }
        if (w->ready)
            wake = now; /* decrypted bytes wait: poll without sleeping */
        if (wake != UINT64_MAX) {
            uint64_t d = wake > now ? wake - now : 0;
            ts.tv_sec = (time_t)(d / 1000000000u);
            ts.tv_nsec = (long)(d % 1000000000u);
            tsp = &ts;
        }
        int n = epoll_pwait2(w->epfd, evs, maxev, tsp, NULL);
        uint64_t start = sk_now_ns();
        w->wake_ns = start;
        SK_BUMP(&w->wakeups, 1);
        if (n < 0 && errno != EINTR)
            break;
        /* due heartbeats first, before any connection event */
        run_due(w, 0, start);
        w->last_high_check = start;
        /* then the control plane's requests (management replies, closes):
         * they should not wait behind a whole batch of connection events */
        if (atomic_load_explicit(&w->wake_pending, memory_order_acquire))
            drain_mailbox(w);
        for (int i = 0; i < n; i++) {
            if (i > 0)
                sk_worker_high_check(w);
            sk_handle *h = evs[i].data.ptr;
            switch (h->kind) {
            case SK_H_WAKE:
                drain_mailbox(w);
                break;
            case SK_H_LSOCK:
                sk_lsock_readable(w, (sk_lsock *)h);
                break;
            case SK_H_CONN: {
                sk_conn *c = (sk_conn *)h;
                if (c->state != SK_C_CLOSED)
                    sk_conn_event(w, c, evs[i].events);
                break;
            }
            }
        }
        SK_BUMP(&w->io_events, (uint64_t)(n > 0 ? n : 0));
        sk_worker_run_ready(w);
        uint64_t t = sk_now_ns();
        run_due(w, 0, t);
        run_due(w, 1, t);
        reap(w);
        SK_BUMP(&w->busy_ns, sk_now_ns() - start);
    }
    free(evs);
    atomic_store(&w->running, 0);
    worker_shutdown(w);
    SK_STORE(&w->cpu_final_ns, thread_cpu_ns(w->cpu_clock));
    return NULL;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int worker_init(sk_engine *e, sk_worker *w, int index, char *err, size_t errlen)
{
    w->initialized = true;
    w->engine = e;
    w->index = index;
    w->epfd = -1;
    w->wakefd = -1;
    w->wake_handle.kind = SK_H_WAKE;
    pthread_mutex_init(&w->mbox_lock, NULL);
    pthread_mutex_init(&w->conn_lock, NULL);
    sk_heap_init(&w->heap[0]);
    sk_heap_init(&w->heap[1]);
    w->cpu_clock = CLOCK_THREAD_CPUTIME_ID;
    for (int p = 0; p < 2; p++)
        if (sk_ring_init(&w->ring[p], (uint32_t)e->opts.event_ring_size) != 0) {
            sk_set_err(err, errlen, "event_ring_size %d must be a power of two >= 2",
                       e->opts.event_ring_size);
            return -1;
        }
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->epfd < 0 || w->wakefd < 0) {
        sk_set_err(err, errlen, "worker %d: %s", index, strerror(errno));
        return -1;
    }
    if (sk_worker_epoll(w, EPOLL_CTL_ADD, w->wakefd, EPOLLIN, &w->wake_handle) != 0) {
        sk_set_err(err, errlen, "worker %d: epoll_ctl: %s", index, strerror(errno));
        return -1;
    }
    return 0;
}

static void worker_fini(sk_worker *w)
{
    if (!w->initialized)
        return;
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->wakefd >= 0)
        close(w->wakefd);
    sk_ring_free(&w->ring[0]);
    sk_ring_free(&w->ring[1]);
    pthread_mutex_destroy(&w->mbox_lock);
    pthread_mutex_destroy(&w->conn_lock);
}

sk_engine *sk_engine_create(const sk_engine_options *opts, char *err, size_t errlen)
{
    sk_engine_options o;
    if (opts)
        o = *opts;
    else
        sk_engine_options_init(&o);
    if (o.worker_threads < 0 || o.worker_threads > 255) {
        sk_set_err(err, errlen, "worker_threads %d out of range 0-255", o.worker_threads);
        return NULL;
    }
    if (o.relay_buffer_bytes < 1024 || o.relay_buffer_bytes > (64 << 20)) {
        sk_set_err(err, errlen, "relay_buffer_bytes %d out of range 1024-64M",
                   o.relay_buffer_bytes);
        return NULL;
    }
    if (o.events_per_wakeup < 1)
        o.events_per_wakeup = 64;
    if (o.connect_timeout_ms <= 0)
        o.connect_timeout_ms = 5000;
    if (o.backoff_initial_ms <= 0)
        o.backoff_initial_ms = 500;
    if (o.backoff_max_ms < o.backoff_initial_ms)
        o.backoff_max_ms = o.backoff_initial_ms;
    if (o.worker_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.worker_threads = n > 0 ? (int)(n > 255 ? 255 : n) : 1;
    }
    raise_fd_limit();

    sk_engine *e = calloc(1, sizeof *e);
    if (!e) {
        sk_set_err(err, errlen, "out of memory");
        return NULL;
    }
    e->opts = o;
    e->nworkers = o.worker_threads;
    pthread_mutex_init(&e->drain_lock, NULL);
    pthread_mutex_init(&e->app_lock, NULL);
    sk_slot_init(&e->routes);
    for (int i = 0; i < SK_TLS_SLOTS; i++)
        sk_slot_init(&e->tls[i]);
    e->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->workers = calloc((size_t)e->nworkers, sizeof *e->workers);
    if (e->eventfd < 0 || !e->workers) {
        sk_set_err(err, errlen, "engine: %s", strerror(errno ? errno : ENOMEM));
        goto fail;
    }
    for (int i = 0; i < e->nworkers; i++)
        e->workers[i].epfd = e->workers[i].wakefd = -1; /* not 0: that is stdin */
    for (int i = 0; i < e->nworkers; i++)
        if (worker_init(e, &e->workers[i], i, err, errlen) != 0)
            goto fail;

    /* workers never take signals: block them all while creating threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = 0;
    for (int i = 0; i < e->nworkers && rc == 0; i++) {
        rc = pthread_create(&e->workers[i].thread, NULL, worker_main, &e->workers[i]);
        if (rc == 0)
            e->workers[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        sk_set_err(err, errlen, "pthread_create: %s", strerror(rc));
        sk_engine_stop(e);
        sk_engine_destroy(e);
        return NULL;
    }
    return e;

fail:
    sk_engine_stop(e);
    sk_engine_destroy(e);
    return NULL;
}

void sk_engine_stop(sk_engine *e)
{
    if (!e || e->stopped)
        return;
    atomic_store_explicit(&e->stopping, 1, memory_order_release);
    for (int i = 0; e->workers && i < e->nworkers; i++) {
        uint64_t one = 1;
        if (e->workers[i].wakefd >= 0) {
            ssize_t n = write(e->workers[i].wakefd, &one, sizeof one);
            SK_UNUSED(n);
        }
    }
    for (int i = 0; e->workers && i < e->nworkers; i++)
        if (e->workers[i].started) {
            pthread_join(e->workers[i].thread, NULL);
            e->workers[i].started = false;
        }
    /* messages posted after a worker finished its shutdown */
    for (int i = 0; e->workers && i < e->nworkers; i++) {
        if (!e->workers[i].initialized)
            continue;
        pthread_mutex_lock(&e->workers[i].mbox_lock);
        discard_mailbox(&e->workers[i]);
        pthread_mutex_unlock(&e->workers[i].mbox_lock);
    }
    /* free what the slots hold now; keep their version numbers readable */
    uint64_t routes_version = atomic_load(&e->routes.version);
    sk_slot_destroy(&e->routes);
    sk_slot_init(&e->routes);
    atomic_store(&e->routes.version, routes_version);
    for (int i = 0; i < SK_TLS_SLOTS; i++) {
        uint64_t v = atomic_load(&e->tls[i].version);
        sk_slot_destroy(&e->tls[i]);
        sk_slot_init(&e->tls[i]);
        atomic_store(&e->tls[i].version, v);
    }
    e->stopped = true;
}

void sk_engine_destroy(sk_engine *e)
{
    if (!e)
        return;
    if (!e->stopped)
        sk_engine_stop(e);
    for (int i = 0; e->workers && i < e->nworkers; i++)
        worker_fini(&e->workers[i]);
    free(e->workers);
    sk_app_table_free(e);
    sk_slot_destroy(&e->routes);
    for (int i = 0; i < SK_TLS_SLOTS; i++)
        sk_slot_destroy(&e->tls[i]);
    if (e->eventfd >= 0)
        close(e->eventfd);
    pthread_mutex_destroy(&e->drain_lock);
    pthread_mutex_destroy(&e->app_lock);
    free(e);
}

/* ----------------------------------------------------------------- stats */

/* Sums one of the per-worker timer histograms (which: 0 lateness, 1 dispatch). */
static int timer_hist(sk_engine *e, int which, int prio, int worker, sk_hist *out)
{
    if ((prio != SK_PRIO_HIGH && prio != SK_PRIO_NORMAL) || worker >= e->nworkers)
        return -1;
    memset(out, 0, sizeof *out);
    int cls = prio == SK_PRIO_HIGH ? 0 : 1;
    for (int i = 0; i < e->nworkers; i++)
        if (worker < 0 || worker == i)
            sk_hist_accumulate(which ? &e->workers[i].dispatch[cls] : &e->workers[i].lateness[cls],
                               out);
    return 0;
}

int sk_engine_timer_lateness(sk_engine *e, int prio, int worker, sk_hist *out)
{
    return timer_hist(e, 0, prio, worker, out);
}

int sk_engine_timer_dispatch_delay(sk_engine *e, int prio, int worker, sk_hist *out)
{
    return timer_hist(e, 1, prio, worker, out);
}

int sk_engine_worker_stats(sk_engine *e, int worker, sk_worker_stats *out)
{
    if (worker < 0 || worker >= e->nworkers)
        return -1;
    sk_worker *w = &e->workers[worker];
    out->busy_ns = SK_LOAD(&w->busy_ns);
    out->cpu_ns = atomic_load(&w->running) ? thread_cpu_ns(w->cpu_clock)
                                           : SK_LOAD(&w->cpu_final_ns);
    out->wakeups = SK_LOAD(&w->wakeups);
    out->io_events = SK_LOAD(&w->io_events);
    out->timers_fired = SK_LOAD(&w->timers_fired);
    out->high_rechecks = SK_LOAD(&w->high_rechecks);
    out->connections = SK_LOAD(&w->nconns);
    return 0;
}

void sk_engine_counters_get(sk_engine *e, sk_engine_counters *out)
{
    out->conns_live = SK_LOAD(&e->conns_live);
    out->bufs_live = SK_LOAD(&e->bufs_live);
    out->buf_bytes_live = SK_LOAD(&e->buf_bytes_live);
    out->accepted = SK_LOAD(&e->accepted);
    out->connects_failed = SK_LOAD(&e->connects_failed);
    out->flows_failed = SK_LOAD(&e->flows_failed);
    out->accept_paused = SK_LOAD(&e->accept_paused);
    out->limit_rejected = SK_LOAD(&e->limit_rejected);
    uint64_t dropped = 0;
    for (int i = 0; i < e->nworkers; i++)
        for (int p = 0; p < 2; p++)
            dropped += SK_LOAD(&e->workers[i].ring[p].dropped);
    out->events_dropped = dropped;
    out->routes_version = atomic_load(&e->routes.version);
    out->tls_handshakes = SK_LOAD(&e->tls_handshakes);
    out->tls_failures = SK_LOAD(&e->tls_failures);
    out->tls_unexpected_eof = SK_LOAD(&e->tls_unexpected_eof);
    out->tls_closed_old = SK_LOAD(&e->tls_closed_old);
}

uint64_t sk_engine_publish_routes(sk_engine *e, sk_routes *r)
{
    return sk_slot_publish(&e->routes, &r->snap);
}

uint64_t sk_engine_close_target_flows(sk_engine *e, sk_target *t)
{
    sk_close_req *req = calloc(1, sizeof *req);
    if (!req)
        return 0;
    atomic_init(&req->remaining, e->nworkers);
    req->id = sk_engine_next_id(e);
    req->target = t;
    sk_target_ref(t);
    uint64_t id = req->id;
    for (int i = 0; i < e->nworkers; i++) {
        sk_msg *m = calloc(1, sizeof *m);
        if (!m)
            abort(); /* a lost message would leave the request open forever */
        m->kind = SK_MSG_CLOSE_TARGET_FLOWS;
        m->u.req = req;
        sk_worker_post(&e->workers[i], m);
    }
    return id;
}

static void fill_info(const sk_conn *c, sk_conn_info *ci)
{
    memset(ci, 0, sizeof *ci);
    ci->id = c->id;
    ci->worker = (uint32_t)c->worker->index;
    ci->app = c->app != NULL;
    ci->listener_id = c->listener ? c->listener->opts.user_id : 0;
    const sk_conn *srv = c->peer;
    ci->target_id = srv && srv->target ? srv->target->user_id : 0;
    snprintf(ci->peer, sizeof ci->peer, "%s", c->label);
    if (srv)
        snprintf(ci->target, sizeof ci->target, "%s", srv->label);
    ci->bytes_in = SK_LOAD(&c->bytes_in);
    ci->bytes_out = SK_LOAD(&c->bytes_out);
    ci->opened_ns = c->opened_ns;
    /* the client side's TLS, else the target side's */
    const sk_conn *t = c->tls ? c : (srv && srv->tls ? srv : NULL);
    if (t) {
        ci->tls_version = t->tls->snap.version;
        ci->tls_ordinal = t->tls->ordinal;
    }
    if (c->peer_subject)
        snprintf(ci->peer_subject, sizeof ci->peer_subject, "%s", c->peer_subject);
    if (t && t->tls_proto)
        snprintf(ci->tls_protocol, sizeof ci->tls_protocol, "%s", t->tls_proto);
    if (t && t->tls_cipher)
        snprintf(ci->tls_cipher, sizeof ci->tls_cipher, "%s", t->tls_cipher);
}

int sk_engine_conn_info(sk_engine *e, uint64_t conn_id, sk_conn_info *out)
{
    for (int i = 0; i < e->nworkers; i++) {
        sk_worker *w = &e->workers[i];
        pthread_mutex_lock(&w->conn_lock);
        for (sk_conn *c = w->conns; c; c = c->next)
            if (c->id == conn_id) {
                fill_info(c, out);
                pthread_mutex_unlock(&w->conn_lock);
                return 0;
            }
        pthread_mutex_unlock(&w->conn_lock);
    }
    return -1;
}

int sk_engine_list_connections(sk_engine *e, sk_conn_info *out, int max)
{
    int total = 0;
    for (int i = 0; i < e->nworkers; i++) {
        sk_worker *w = &e->workers[i];
        pthread_mutex_lock(&w->conn_lock);
        for (sk_conn *c = w->conns; c; c = c->next) {
            if (!c->is_client)
                continue; /* one row per flow: the client side */
            if (total < max)
                fill_info(c, &out[total]);
            total++;
        }
        pthread_mutex_unlock(&w->conn_lock);
    }
    return total;
}
