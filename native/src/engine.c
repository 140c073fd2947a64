/* engine.c -- the engine object: options, creation of the workers, stop
 * and destroy, and the engine-wide counters.
 *
 * Everything else lives with its concept: the worker loop in worker.c, the
 * mailbox in mailbox.c, events to the control thread in event.c, timers in
 * timer.c, connections in conn.c. Runs on the control thread. */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
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
    o->splice_pipes = 32;
}

uint64_t sk_engine_next_id(sk_engine *e)
{
    return SK_ADD(&e->next_id, 1) + 1;
}

int sk_engine_worker_count(const sk_engine *e)
{
    return e->nworkers;
}

static bool cpu_bit(const uint64_t *mask, int cpu)
{
    return (mask[cpu / 64] >> (cpu % 64)) & 1u;
}

/* "0-3,6": the set CPUs of a cpu_set_t, for an error message */
static void format_cpus(const cpu_set_t *set, char *out, size_t outlen)
{
    size_t used = 0;
    out[0] = 0;
    for (int c = 0; c < CPU_SETSIZE && used < outlen; c++) {
        if (!CPU_ISSET(c, set))
            continue;
        int last = c;
        while (last + 1 < CPU_SETSIZE && CPU_ISSET(last + 1, set))
            last++;
        int n = last > c ? snprintf(out + used, outlen - used, "%s%d-%d", used ? "," : "", c, last)
                         : snprintf(out + used, outlen - used, "%s%d", used ? "," : "", c);
        if (n < 0)
            break;
        used += (size_t)n;
        c = last;
    }
}

/* Assigns each worker its CPU (the i-th set CPU, round robin) after checking
 * that every CPU given is one this thread may use. */
static int assign_cpus(sk_engine *e, char *err, size_t errlen)
{
    const uint64_t *mask = e->opts.worker_cpus;
    int cpus[SK_CPU_WORDS * 64];
    int n = 0;
    for (int c = 0; c < SK_CPU_WORDS * 64; c++)
        if (cpu_bit(mask, c))
            cpus[n++] = c;
    for (int i = 0; i < e->nworkers; i++)
        e->workers[i].cpu = n ? cpus[i % n] : -1;
    if (!n)
        return 0;
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        sk_set_err(err, errlen, "worker_cpus: sched_getaffinity: %s", strerror(errno));
        return -1;
    }
    for (int k = 0; k < n; k++)
        if (cpus[k] >= CPU_SETSIZE || !CPU_ISSET(cpus[k], &allowed)) {
            char have[128];
            format_cpus(&allowed, have, sizeof have);
            sk_set_err(err, errlen,
                       "worker_cpus: CPU %d is not in this process's allowed set (%s)",
                       cpus[k], have);
            return -1;
        }
    return 0;
}

/* set_worker_nice: waits for every started worker to have set its nice
 * value (the first thing it does) and fails when one could not. */
static int check_worker_nice(sk_engine *e, char *err, size_t errlen)
{
    for (int i = 0; i < e->nworkers; i++) {
        sk_worker *w = &e->workers[i];
        int rc;
        /* bounded: a started worker sets it before anything else */
        for (int spins = 0; (rc = atomic_load(&w->nice_rc)) < 0 && spins < 100000; spins++) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
        if (rc < 0) {
            sk_set_err(err, errlen, "worker_nice %d: worker %d did not start",
                       e->opts.worker_nice, i);
            return -1;
        }
        if (rc > 0) {
            sk_set_err(err, errlen, "worker_nice %d: setpriority: %s%s", e->opts.worker_nice,
                       strerror(rc),
                       rc == EPERM || rc == EACCES
                           ? " (a value below the process's own needs CAP_SYS_NICE or RLIMIT_NICE)"
                           : "");
            return -1;
        }
    }
    return 0;
}

/* pthread_create with the worker's CPU set in its attributes: the thread
 * starts pinned (pthread_setaffinity_np before it runs any code) */
static int start_worker(sk_worker *w)
{
    if (w->cpu < 0)
        return pthread_create(&w->thread, NULL, sk_worker_main, w);
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0)
        return rc;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    rc = pthread_attr_setaffinity_np(&attr, sizeof set, &set);
    if (rc == 0)
        rc = pthread_create(&w->thread, &attr, sk_worker_main, w);
    pthread_attr_destroy(&attr);
    return rc;
}

int sk_engine_worker_cpu(const sk_engine *e, int worker)
{
    if (worker < 0 || worker >= e->nworkers)
        return -1;
    return e->workers[worker].cpu;
}

int sk_engine_worker_affinity(sk_engine *e, int worker, uint64_t *mask, int words)
{
    if (worker < 0 || worker >= e->nworkers || !e->workers[worker].started || words < 0)
        return -1;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (pthread_getaffinity_np(e->workers[worker].thread, sizeof set, &set) != 0)
        return -1;
    memset(mask, 0, (size_t)words * sizeof *mask);
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set)) {
            n++;
            if (c / 64 < words)
                mask[c / 64] |= (uint64_t)1 << (c % 64);
        }
    return n;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
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
    if (o.splice_pipes < 0 || o.splice_pipes > 4096) {
        sk_set_err(err, errlen, "splice_pipes %d out of range 0-4096", o.splice_pipes);
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
    pthread_mutex_init(&e->rid_lock, NULL);
    sk_slot_init(&e->routes);
    for (int i = 0; i < SK_TLS_SLOTS; i++)
        sk_slot_init(&e->tls[i]);
    e->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->app_epfd = epoll_create1(EPOLL_CLOEXEC);
    e->workers = calloc((size_t)e->nworkers, sizeof *e->workers);
    if (e->eventfd < 0 || e->app_epfd < 0 || !e->workers) {
        sk_set_err(err, errlen, "engine: %s", strerror(errno ? errno : ENOMEM));
        goto fail;
    }
    for (int i = 0; i < e->nworkers; i++)
        e->workers[i].epfd = e->workers[i].wakefd = -1; /* not 0: that is stdin */
    if (assign_cpus(e, err, errlen) != 0)
        goto fail;
    if (e->opts.set_worker_nice && (e->opts.worker_nice < -20 || e->opts.worker_nice > 19)) {
        sk_set_err(err, errlen, "worker_nice %d: not a nice value (-20 to 19)", e->opts.worker_nice);
        goto fail;
    }
    for (int i = 0; i < e->nworkers; i++)
        if (sk_worker_init(e, &e->workers[i], i, err, errlen) != 0)
            goto fail;

    /* workers never take signals: block them all while creating threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* from the creating thread (the control loop's, at its priority), not
     * from a TLS load's thread, which runs at nice 10 or SCHED_IDLE and
     * would pass that on */
    sk_snap_reaper_start();
    int rc = 0;
    for (int i = 0; i < e->nworkers && rc == 0; i++) {
        rc = start_worker(&e->workers[i]);
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
    if (e->opts.set_worker_nice && check_worker_nice(e, err, errlen) != 0)
        goto fail;
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
        sk_mbox_discard(&e->workers[i]);
        pthread_mutex_unlock(&e->workers[i].mbox_lock);
        sk_lsock_reap(&e->workers[i]);
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
        sk_worker_fini(&e->workers[i]);
    sk_peer_registry_clear(e); /* peers never closed (sk_peer_close) */
    free(e->workers);
    sk_app_table_free(e);
    sk_slot_destroy(&e->routes);
    for (int i = 0; i < SK_TLS_SLOTS; i++)
        sk_slot_destroy(&e->tls[i]);
    if (e->eventfd >= 0)
        close(e->eventfd);
    if (e->app_epfd >= 0)
        close(e->app_epfd);
    pthread_mutex_destroy(&e->drain_lock);
    pthread_mutex_destroy(&e->app_lock);
    pthread_mutex_destroy(&e->rid_lock);
    free(e);
}

/* ----------------------------------------------------------------- stats */

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
    out->tls_resumed = SK_LOAD(&e->tls_resumed);
    out->app_direct_writes = SK_LOAD(&e->app_direct_writes);
    out->app_direct_reads = SK_LOAD(&e->app_direct_reads_total);
    out->tls_detached = SK_LOAD(&e->tls_detached);
    out->tls_yields = SK_LOAD(&e->tls_yields);
    out->accept_deferred = SK_LOAD(&e->accept_deferred);
    out->bulk_turns = SK_LOAD(&e->bulk_turns);
    out->served_between = SK_LOAD(&e->served_between);
    out->pipes_live = SK_LOAD(&e->pipes_live);
    out->pool_idle_in = SK_LOAD(&e->dp_pool_in);
    out->pool_idle_out = SK_LOAD(&e->dp_pool_out);
    out->pipes_in_use = SK_LOAD(&e->pipes_in_use);
    out->splice_fallbacks = SK_LOAD(&e->splice_fallbacks);
    out->app_live = SK_LOAD(&e->app_live);
    out->app_outbound_live = SK_LOAD(&e->app_outbound_live);
    out->app_connects_failed = SK_LOAD(&e->app_connects_failed);
}

uint64_t sk_engine_publish_routes(sk_engine *e, sk_routes *r)
{
    return sk_slot_publish(&e->routes, &r->snap);
}
