/* worker.c -- an I/O worker thread: its epoll set and its loop.
 *
 * One batch: sleep until an fd is ready or the earliest timer is due, run the
 * due high-priority timers, then the mailbox, then each epoll event through
 * its handle's on_io (with a high-priority check between events), the TLS
 * ready list, the due timers of both classes, and last free what the batch
 * closed. Nothing here blocks except epoll itself. */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

int sk_worker_epoll(sk_worker *w, int op, int fd, uint32_t events, sk_handle *h)
{
    struct epoll_event ev = {.events = events, .data.ptr = h};
    return epoll_ctl(w->epfd, op, fd, &ev);
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
        sk_conn_reap(w);
    }
    while (w->lsocks) {
        sk_lsock *ls = w->lsocks;
        w->lsocks = ls->next;
        sk_lsock_destroy(w, ls);
    }
    pthread_mutex_lock(&w->mbox_lock);
    sk_mbox_discard(w);
    pthread_mutex_unlock(&w->mbox_lock);
    sk_conn_reap(w);
    sk_lsock_reap(w);
    /* empty the heaps before freeing the timers they point to */
    sk_heap_free(&w->heap[0]);
    sk_heap_free(&w->heap[1]);
    sk_utimer_free_all(w);
    sk_slot_cache_clear(&w->routes_cache);
    for (int i = 0; i < SK_TLS_SLOTS; i++)
        sk_slot_cache_clear(&w->tls_cache[i]);
    sk_buf_free_all(w);
    sk_pipe_free_all(w);
}

static uint64_t thread_cpu_ns(clockid_t clk)
{
    struct timespec ts;
    if (clock_gettime(clk, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Serves one event. Anything but a bulk flow's (an accept, a connect, a
 * handshake, a short or TLS flow, an app event; the mailbox aside) makes the
 * worker's bulk turns short for SK_BULK_QUIET_NS (relay.c). */
static void serve(sk_worker *w, sk_handle *h, uint32_t ev, bool bulk)
{
    if (!bulk && h != &w->wake_handle)
        w->interactive_ns = w->wake_ns;
    h->on_io(w, h, ev);
}

void sk_worker_serve_between(sk_worker *w)
{
    enum { PEEK = 16 };
    struct epoll_event evs[PEEK];
    struct timespec zero = {0, 0};
    int n = epoll_pwait2(w->epfd, evs, PEEK, &zero, NULL);
    for (int i = 0; i < n; i++) {
        sk_handle *h = evs[i].data.ptr;
        if (sk_relay_defer(w, h, evs[i].events))
            continue;
        SK_ADD(&w->engine->served_between, 1);
        serve(w, h, evs[i].events, false);
    }
}

bool sk_worker_newcomers(sk_worker *w)
{
    if (atomic_load_explicit(&w->wake_pending, memory_order_acquire))
        return true;
    enum { MAX_LISTENERS = 32 }; /* beyond: new connections wait for the round */
    struct pollfd pf[MAX_LISTENERS];
    nfds_t n = 0;
    for (const sk_lsock *ls = w->lsocks; ls && n < MAX_LISTENERS; ls = ls->next)
        if (!ls->paused)
            pf[n++] = (struct pollfd){.fd = ls->fd, .events = POLLIN};
    return n > 0 && poll(pf, n, 0) > 0;
}

void *sk_worker_main(void *arg)
{
    sk_worker *w = arg;
    sk_engine *e = w->engine;
    int maxev = e->opts.events_per_wakeup;
    struct epoll_event *evs = calloc((size_t)maxev, sizeof *evs);
    w->high_budget_ns = (uint64_t)e->opts.high_check_budget_us * 1000u;
    pthread_getcpuclockid(pthread_self(), &w->cpu_clock);
    /* the default 50 us timer slack would make every timer that late */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    /* named for top -H, perf and /proc/PID/task/TID/comm */
    char name[16];
    snprintf(name, sizeof name, "skiff-w%d", w->index);
    prctl(PR_SET_NAME, name, 0UL, 0UL, 0UL);
    sk_snap_thread_is_worker();
    if (e->opts.set_worker_nice) /* first, before any work: sk_engine_create waits for it */
        atomic_store(&w->nice_rc, setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid),
                                              e->opts.worker_nice) == 0 ? 0 : errno);
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
        w->round_bulk_left = SK_BULK_ROUND;
        sk_timer_mark_wake(w, start);
        SK_BUMP(&w->wakeups, 1);
        if (n < 0 && errno != EINTR)
            break;
        /* due heartbeats first, before any connection event */
        sk_timer_run_due(w, 0, start);
        /* then the control plane's requests (management replies, closes):
         * they should not wait behind a whole batch of connection events */
        if (atomic_load_explicit(&w->wake_pending, memory_order_acquire))
            sk_mbox_io(w, &w->wake_handle, EPOLLIN);
        /* then app connections (management requests, router control links):
         * a request read here is in the control loop's hands before the
         * batch's relayed connections are served */
        if (SK_LOAD(&e->app_live))
            for (int i = 0; i < n; i++) {
                sk_handle *h = evs[i].data.ptr;
                if (h->on_io == sk_app_io) {
                    serve(w, h, evs[i].events, false);
                    evs[i].data.ptr = NULL;
                }
            }
        for (int i = 0; i < n; i++) {
            sk_handle *h = evs[i].data.ptr;
            if (!h)
                continue;
            bool bulk = sk_relay_bulk_handle(w, h);
            if (i > 0) {
                sk_worker_high_check(w);
                /* a bulk turn next: what arrived meanwhile for short flows first */
                if (bulk)
                    sk_worker_serve_between(w);
            }
            serve(w, h, evs[i].events, bulk);
        }
        SK_BUMP(&w->io_events, (uint64_t)(n > 0 ? n : 0));
        sk_worker_run_ready(w);
        uint64_t t = sk_now_ns();
        sk_timer_run_due(w, 0, t);
        sk_timer_run_due(w, 1, t);
        sk_conn_reap(w);
        sk_lsock_reap(w);
        SK_BUMP(&w->busy_ns, sk_now_ns() - start);
    }
    free(evs);
    atomic_store(&w->running, 0);
    worker_shutdown(w);
    SK_STORE(&w->cpu_final_ns, thread_cpu_ns(w->cpu_clock));
    return NULL;
}

int sk_worker_init(sk_engine *e, sk_worker *w, int index, char *err, size_t errlen)
{
    w->initialized = true;
    w->engine = e;
    w->index = index;
    w->epfd = -1;
    w->wakefd = -1;
    w->wake_handle.on_io = sk_mbox_io;
    pthread_mutex_init(&w->mbox_lock, NULL);
    pthread_mutex_init(&w->conn_lock, NULL);
    sk_heap_init(&w->heap[0]);
    sk_heap_init(&w->heap[1]);
    w->cpu_clock = CLOCK_THREAD_CPUTIME_ID;
    atomic_store(&w->nice_rc, -1);
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

void sk_worker_fini(sk_worker *w)
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
