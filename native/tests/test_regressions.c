/* test_regressions.c -- regression tests for engine bugs the unit tests found
 * (all fixed in fc6bc0f; each test failed against the engine before it).
 * Each runs in its own forked process (the parent starts no threads), so a
 * sanitizer abort in one does not hide the others. SKIFF_REGRESSIONS=a,b
 * runs only the named ones.
 *
 *   stop_pending_timer    engine.c worker_shutdown freed the utimers before
 *                         sk_heap_free wrote their index: stopping with a user
 *                         timer pending was a use-after-free (ASan, TSan)
 *   create_fail_fd0       a failed sk_engine_create left the workers after the
 *                         failing one with epfd = wakefd = 0: stop wrote 8 bytes
 *                         to fd 0 and destroy closed it (every build)
 *   ack_lost_wakeup       sk_engine_ack_event_fd cleared the flag before reading
 *                         the eventfd: a racing emit's signal was eaten and the fd
 *                         never became readable again (every build; a race)
 *   list_connections_race close_one cleared and released c->listener / c->target
 *                         outside conn_lock, and sk_conn_accepted set is_client,
 *                         listener and label after linking, while
 *                         sk_engine_list_connections reads them under it (TSan;
 *                         half-closed rows in every build)
 *   cancel_reorder        SK_EV_TIMER_CANCELLED went to the normal ring while a
 *                         high priority timer's events go to the high ring: a
 *                         drain could return the cancellation before an earlier
 *                         TIMER (a race)
 *   close_listener_pending_accept
 *                         (since the split, worker.c/listener.c) the mailbox
 *                         runs before the batch's I/O events and freed a
 *                         closed listening socket whose accept event was
 *                         still in the batch: its on_io was read from freed
 *                         memory (a crash in every build; ASan)
 *
 * File names are those of the fix; since the split worker_shutdown is in
 * worker.c, close_one and sk_conn_accepted in conn.c.
 *
 * The racy ones run for a bounded time: they can only miss a regression, never
 * fail a correct engine.
 */
#include "internal.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t mono_ms(void)
{
    return sk_now_ns() / 1000000u;
}

static sk_engine *new_engine(int workers)
{
    sk_engine_options o;
    sk_engine_options_init(&o);
    o.worker_threads = workers;
    char err[SK_ERRLEN] = "";
    sk_engine *e = sk_engine_create(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "sk_engine_create: %s\n", err);
    return e;
}

/* Waits (draining) for one event; -1 after timeout_ms. */
static int wait_event(sk_engine *e, uint32_t type, uint64_t id, int timeout_ms, sk_event *out)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    while (mono_ms() < end) {
        sk_event evs[64];
        int n = sk_engine_drain(e, evs, 64, NULL);
        for (int i = 0; i < n; i++)
            if (evs[i].type == type && evs[i].id == id) {
                if (out)
                    *out = evs[i];
                return 0;
            }
        if (n == 0) {
            struct pollfd p = {.fd = sk_engine_event_fd(e), .events = POLLIN};
            poll(&p, 1, 5);
            sk_engine_ack_event_fd(e);
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------
 * stop_pending_timer
 *
 * Was: worker_shutdown() freed every sk_utimer and only then called
 * sk_heap_free(), which writes h->v[i]->index = SK_TIMER_IDLE into each timer
 * still queued. Any user timer pending at sk_engine_stop() was written after
 * free -- ASan: heap-use-after-free WRITE of size 4 in sk_heap_free (heap.c),
 * freed by worker_shutdown, allocated by sk_timer_start. A plain build
 * silently corrupted the heap, so this one needs ASan or TSan to fail. */
static int stop_pending_timer(void)
{
    sk_engine *e = new_engine(1);
    REQUIRE(e != NULL);
    uint64_t pending = sk_timer_start(e, 0, SK_PRIO_NORMAL, 3600ull * 1000000000ull, 0);
    uint64_t periodic = sk_timer_start(e, 0, SK_PRIO_HIGH, 3600ull * 1000000000ull,
                                       3600ull * 1000000000ull);
    REQUIRE(pending && periodic);
    /* a later timer on the same worker firing proves both were scheduled */
    uint64_t probe = sk_timer_start(e, 0, SK_PRIO_NORMAL, 1000000, 0);
    REQUIRE(wait_event(e, SK_EV_TIMER, probe, 10000, NULL) == 0);
    sk_engine_stop(e); /* ASan aborts in here */
    sk_engine_destroy(e);
    return 0;
}

/* ------------------------------------------------------------------------
 * create_fail_fd0
 *
 * Was: when worker_init() failed for worker i (event_ring_size not a power
 * of two fails in worker 0), workers i+1.. were still calloc-zeroed, epfd and
 * wakefd 0, not -1. The failure path's sk_engine_stop() wrote an 8-byte
 * eventfd increment to fd 0 and sk_engine_destroy() closed fd 0 twice: the
 * host process's stdin, or any socket or file that had the number. */
static int create_fail_fd0(void)
{
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(dup2(sv[0], 0) == 0); /* fd 0 is now our socket */
    sk_engine_options o;
    sk_engine_options_init(&o);
    o.worker_threads = 2;
    o.event_ring_size = 1000;
    char err[SK_ERRLEN] = "";
    sk_engine *e = sk_engine_create(&o, err, sizeof err);
    CHECK(e == NULL);
    CHECK_STR_CONTAINS(err, "event_ring_size");
    /* nothing may have been written to our socket ... */
    char junk[16];
    ssize_t n = recv(sv[1], junk, sizeof junk, MSG_DONTWAIT);
    CHECK_MSG(n < 0 && errno == EAGAIN, "the engine wrote %zd bytes into fd 0", n);
    /* ... and fd 0 must still be open */
    CHECK_MSG(fcntl(0, F_GETFD) != -1, "fd 0 was closed by the failed sk_engine_create");
    return 0;
}

/* ------------------------------------------------------------------------
 * ack_lost_wakeup
 *
 * Was: sk_engine_ack_event_fd() cleared event_signalled and then read the
 * eventfd. A worker emitting in between wrote the eventfd (it saw the flag
 * clear) and the read ate that write while the flag stayed 1: no later emit
 * wrote the eventfd again and the control thread (router/engine.py uses this
 * ack-then-drain pattern) never woke up. Reproduced within a few hundred
 * wake-ups.
 *
 * A high priority periodic timer fires on each worker while the loop polls,
 * acks and drains; a stall is the fd staying unreadable for 300 ms while the
 * workers keep firing timers, the rings hold events and event_signalled is
 * stuck at 1. */
static int ack_lost_wakeup(void)
{
    sk_engine *e = new_engine(2);
    REQUIRE(e != NULL);
    uint64_t ids[2];
    for (int w = 0; w < 2; w++)
        REQUIRE((ids[w] = sk_timer_start(e, w, SK_PRIO_HIGH, 20000, 20000)) != 0);
    int efd = sk_engine_event_fd(e);
    uint64_t end = mono_ms() + 1500;
    uint64_t wakeups = 0, events = 0;
    int stalled = 0;
    while (mono_ms() < end && !stalled) {
        struct pollfd p = {.fd = efd, .events = POLLIN};
        int r = poll(&p, 1, 300);
        if (r == 0) {
            /* 300 ms without a wake-up although timers fire every 20 us */
            sk_worker_stats a, b;
            sk_engine_worker_stats(e, 0, &a);
            poll(NULL, 0, 50);
            sk_engine_worker_stats(e, 0, &b);
            sk_event evs[64];
            p.revents = 0;
            int still_quiet = poll(&p, 1, 0) == 0;
            int n = sk_engine_drain(e, evs, 64, NULL);
            if (still_quiet && n > 0 && b.timers_fired > a.timers_fired &&
                atomic_load(&e->event_signalled) == 1) {
                stalled = 1;
                fprintf(stderr,
                        "   stalled after %" PRIu64 " wake-ups / %" PRIu64
                        " events: fd unreadable, %d events pending, signalled=1\n",
                        wakeups, events, n);
            }
            continue;
        }
        wakeups++;
        sk_engine_ack_event_fd(e);
        sk_event evs[256];
        int n;
        while ((n = sk_engine_drain(e, evs, 256, NULL)) > 0)
            events += (uint64_t)n;
    }
    CHECK_MSG(!stalled, "the event fd lost its wake-up (sk_engine_ack_event_fd race)");
    if (!stalled)
        fprintf(stderr, "   %" PRIu64 " wake-ups, %" PRIu64 " events, no stall\n", wakeups, events);
    /* cancelled first, so this checks only the wake-ups */
    for (int w = 0; w < 2; w++) {
        sk_timer_cancel(e, ids[w]);
        CHECK(wait_event(e, SK_EV_TIMER_CANCELLED, ids[w], 10000, NULL) == 0);
    }
    sk_engine_stop(e);
    sk_engine_destroy(e);
    return 0;
}

/* ------------------------------------------------------------------------
 * list_connections_race
 *
 * Was: sk_engine_list_connections() (fill_info) reads c->listener, the
 * peer's target, c->label and c->is_client under the worker's conn_lock, but
 * relay.c close_one() -- before sk_conn_close() takes conn_lock to unlink the
 * pair -- set c->listener / c->target to NULL and dropped the references
 * (possibly freeing them) without the lock, and sk_conn_accepted() set
 * is_client, listener and label after sk_conn_new() had linked the conn.
 * TSan reported both; a lister saw rows with listener_id 0 (thousands per
 * run under TSan, a few in a plain build) and could read a freed listener. */

typedef struct echo1 {
    int lfd, port;
    pthread_t th;
} echo1;

static void *echo1_main(void *arg)
{
    echo1 *es = arg;
    for (;;) {
        int fd = accept(es->lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        char buf[4096];
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
            if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
                break;
        close(fd);
    }
}

static int echo1_start(echo1 *es)
{
    es->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (es->lfd < 0 || bind(es->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(es->lfd, 16) != 0 || getsockname(es->lfd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    es->port = ntohs(sa.sin_port);
    return pthread_create(&es->th, NULL, echo1_main, es);
}

static void echo1_stop(echo1 *es)
{
    shutdown(es->lfd, SHUT_RDWR);
    pthread_join(es->th, NULL);
    close(es->lfd);
}

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static sk_engine *lister_engine;
static _Atomic int lister_stop;
static _Atomic uint64_t lister_bad, lister_rows;

static void *lister_main(void *arg)
{
    SK_UNUSED(arg);
    sk_conn_info info[16];
    while (!atomic_load(&lister_stop)) {
        int n = sk_engine_list_connections(lister_engine, info, 16);
        for (int i = 0; i < n && i < 16; i++) {
            atomic_fetch_add(&lister_rows, 1);
            /* every listed row is a client of listener 7: a 0 is a pair caught
             * half-closed by close_one() */
            if (info[i].listener_id != 7)
                atomic_fetch_add(&lister_bad, 1);
        }
    }
    return NULL;
}

static int list_connections_race(void)
{
    echo1 es;
    REQUIRE(echo1_start(&es) == 0);
    sk_engine *e = new_engine(1);
    REQUIRE(e != NULL);
    lister_engine = e;
    char err[SK_ERRLEN];
    sk_target *t = sk_target_create(e, 55);
    sk_routes *r = sk_routes_create(1);
    REQUIRE(sk_routes_add(r, 0, t, "127.0.0.1", es.port, "echo", 1, -1, 0, err, sizeof err) == 0);
    sk_engine_publish_routes(e, r);
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.user_id = 7;
    sk_listener *l = sk_listener_open(e, &lo, err, sizeof err);
    REQUIRE_MSG(l != NULL, "%s", err);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, lister_main, NULL) == 0);
    int ok = 0;
    for (int i = 0; i < 300; i++) {
        int fd = connect_port(sk_listener_port(l));
        if (fd < 0)
            continue;
        char b[4];
        if (send(fd, "ping", 4, MSG_NOSIGNAL) == 4 && recv(fd, b, 4, MSG_WAITALL) == 4)
            ok++;
        close(fd);
    }
    atomic_store(&lister_stop, 1);
    pthread_join(th, NULL);
    CHECK_EQ_I(ok, 300);
    uint64_t rows = atomic_load(&lister_rows), half_closed = atomic_load(&lister_bad);
    fprintf(stderr, "   %" PRIu64 " rows listed, %" PRIu64 " half-closed\n", rows, half_closed);
    CHECK_EQ_U(half_closed, 0);
    sk_engine_stop(e);
    sk_listener_close(l, 0);
    sk_listener_release(l);
    sk_target_release(t);
    sk_engine_destroy(e);
    echo1_stop(&es);
    return 0;
}

/* ------------------------------------------------------------------------
 * cancel_reorder
 *
 * Was: SK_EV_TIMER_CANCELLED was emitted on the normal ring while a high
 * priority timer's SK_EV_TIMER goes to the high ring, and sk_engine_drain
 * pops the high rings before the normal ones. A TIMER emitted after a drain
 * passed the high rings, followed by the cancellation before the drain
 * reached the normal rings, came out as CANCELLED now and TIMER in the next
 * drain -- a TIMER after the cancellation, which skiff.h rules out. */
static int cancel_reorder(void)
{
    sk_engine *e = new_engine(1);
    REQUIRE(e != NULL);
    int violations = 0, rounds = 0;
    uint64_t end = mono_ms() + 1500;
    while (mono_ms() < end && !violations) {
        rounds++;
        uint64_t id = sk_timer_start(e, 0, SK_PRIO_HIGH, 0, 2000); /* every 2 us */
        REQUIRE(id != 0);
        int seen_timer = 0, cancelled = 0, after = 0;
        uint64_t give_up = mono_ms() + 10000; /* only turns a hang into a failure */
        while (!cancelled && mono_ms() < give_up) {
            sk_event evs[64];
            int n = sk_engine_drain(e, evs, 64, NULL);
            for (int i = 0; i < n; i++) {
                if (evs[i].id != id)
                    continue;
                if (evs[i].type == SK_EV_TIMER) {
                    if (cancelled)
                        after++;
                    if (++seen_timer == 3)
                        sk_timer_cancel(e, id);
                } else if (evs[i].type == SK_EV_TIMER_CANCELLED) {
                    cancelled = 1;
                }
            }
        }
        REQUIRE(cancelled);
        /* anything still in flight is in the rings within a few drains */
        for (int k = 0; k < 50; k++) {
            sk_event evs[64];
            int n = sk_engine_drain(e, evs, 64, NULL);
            for (int i = 0; i < n; i++)
                if (evs[i].id == id && evs[i].type == SK_EV_TIMER)
                    after++;
            sched_yield();
        }
        if (after) {
            violations++;
            fprintf(stderr, "   round %d: %d TIMER events after its TIMER_CANCELLED\n", rounds,
                    after);
        }
    }
    if (!violations)
        fprintf(stderr, "   %d rounds, no TIMER after its cancellation\n", rounds);
    CHECK_EQ_I(violations, 0);
    sk_engine_stop(e);
    sk_engine_destroy(e);
    return 0;
}

/* ------------------------------------------------------------------------
 * close_listener_pending_accept
 *
 * A client connects and the listener is closed at once, over and over: now
 * and then the close message and the client's accept event land in the same
 * batch. The socket must stay allocated (inert) until the batch ends. */
static int close_listener_pending_accept(void)
{
    sk_engine *e = new_engine(1);
    REQUIRE(e != NULL);
    char err[SK_ERRLEN];
    int closed = 0;
    for (int i = 0; i < 300; i++) {
        sk_listener_options lo;
        sk_listener_options_init(&lo);
        lo.host = "127.0.0.1";
        lo.user_id = 100 + (uint64_t)i;
        sk_listener *l = sk_listener_open(e, &lo, err, sizeof err);
        REQUIRE_MSG(l != NULL, "%s", err);
        int fd = connect_port(sk_listener_port(l));
        sk_listener_close(l, 0);
        sk_event ev;
        if (wait_event(e, SK_EV_LISTENER_CLOSED, lo.user_id, 5000, &ev) == 0)
            closed++;
        sk_listener_release(l);
        if (fd >= 0)
            close(fd);
    }
    CHECK_EQ_I(closed, 300);
    sk_engine_stop(e);
    sk_engine_destroy(e);
    return 0;
}

int main(void)
{
    const char *sel = getenv("SKIFF_REGRESSIONS");
    struct {
        const char *name;
        int (*fn)(void);
    } all[] = {
        {"stop_pending_timer", stop_pending_timer},
        {"create_fail_fd0", create_fail_fd0},
        {"ack_lost_wakeup", ack_lost_wakeup},
        {"list_connections_race", list_connections_race},
        {"cancel_reorder", cancel_reorder},
        {"close_listener_pending_accept", close_listener_pending_accept},
    };
    int n = (int)(sizeof all / sizeof all[0]);
    signal(SIGPIPE, SIG_IGN);
    alarm(110);
    int failed = 0;
    for (int i = 0; i < n; i++) {
        if (sel && *sel && !strstr(sel, all[i].name))
            continue;
        fprintf(stderr, "-- %s\n", all[i].name);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            TL_FAIL("fork: %s", strerror(errno));
            return 1;
        }
        if (pid == 0) {
            alarm(60);
            all[i].fn();
            exit(atomic_load(&tl_failures) ? 1 : 0); /* exit(): sanitizers report at exit */
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failed++;
            if (WIFSIGNALED(st))
                fprintf(stderr, "-- %s FAILED (signal %d)\n", all[i].name, WTERMSIG(st));
            else
                fprintf(stderr, "-- %s FAILED (exit %d)\n", all[i].name, WEXITSTATUS(st));
        }
    }
    fprintf(stderr, "test_regressions: %d failed\n", failed);
    return failed ? 1 : 0;
}
