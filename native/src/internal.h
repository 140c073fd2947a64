/*
 * internal.h -- private types of the engine. Nothing here is seen by cffi.
 *
 * Conventions: sk_<file>_<verb>. "Worker-owned" data is touched only by its
 * worker thread; everything another thread may read is _Atomic (relaxed
 * unless stated) or behind a lock that is never held across a syscall that
 * can wait. Every fd in a worker's epoll set belongs to an object embedding
 * an sk_handle: the worker calls its on_io and knows no object kinds. One
 * section below per source file, lower layers first: data structures (heap,
 * hist, ring, snapshot, routes), then the engine and its workers (engine,
 * worker, mailbox, event, timer, buf, pipe), then the network objects (listener,
 * conn, connect, tls_io, relay, tls, app).
 */
#ifndef SKIFF_INTERNAL_H
#define SKIFF_INTERNAL_H

#include "skiff.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>

#define SK_UNUSED(x) ((void)(x))
#define SK_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#define SK_LOAD(p) atomic_load_explicit((p), memory_order_relaxed)
#define SK_STORE(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define SK_ADD(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define SK_SUB(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)
/* Single-writer counter: a relaxed load and store, no locked instruction. */
#define SK_BUMP(p, v) SK_STORE((p), SK_LOAD(p) + (v))

static inline uint64_t sk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void sk_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------ heap.c */

typedef struct sk_worker sk_worker;
typedef struct sk_timer sk_timer;
typedef void (*sk_timer_cb)(sk_worker *w, sk_timer *t, uint64_t now);

#define SK_TIMER_IDLE UINT32_MAX

/* A timer is embedded in its owner; the heap stores pointers only. */
struct sk_timer {
    uint64_t deadline; /* CLOCK_MONOTONIC ns */
    uint64_t seq;      /* schedule order, breaks deadline ties (FIFO) */
    uint32_t index;    /* position in the heap, SK_TIMER_IDLE when not queued */
    sk_timer_cb cb;
};

typedef struct sk_heap {
    sk_timer **v;
    uint32_t n, cap;
    uint64_t seq;
} sk_heap;

void sk_timer_init(sk_timer *t, sk_timer_cb cb);
static inline bool sk_timer_pending(const sk_timer *t) { return t->index != SK_TIMER_IDLE; }
void sk_heap_init(sk_heap *h);
void sk_heap_free(sk_heap *h);
/* (Re)schedules t at deadline. O(log n). Returns -1 only when out of memory. */
int sk_heap_push(sk_heap *h, sk_timer *t, uint64_t deadline);
/* Removes t if queued. O(log n). */
void sk_heap_remove(sk_heap *h, sk_timer *t);
static inline sk_timer *sk_heap_top(const sk_heap *h) { return h->n ? h->v[0] : NULL; }
/* Removes and returns the earliest timer if its deadline <= now. */
sk_timer *sk_heap_pop_due(sk_heap *h, uint64_t now);

/* ------------------------------------------------------------ hist.c */

/* Written by one worker, read by anyone. Buckets are not cumulative here. */
typedef struct sk_hist_atomic {
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
    _Atomic uint64_t max_ns;
    _Atomic uint64_t bucket[SK_HIST_BUCKETS];
} sk_hist_atomic;

int sk_hist_bucket_of(uint64_t ns);
void sk_hist_record(sk_hist_atomic *h, uint64_t ns);
/* the same for a histogram several threads write (app waits) */
void sk_hist_record_shared(sk_hist_atomic *h, uint64_t ns);
/* Adds h into out (cumulative buckets). */
void sk_hist_accumulate(const sk_hist_atomic *h, sk_hist *out);

/* ------------------------------------------------------------ ring.c */

/* Single-producer (a worker), single-consumer (the drain caller) ring. */
typedef struct sk_ring {
    sk_event *slot;
    uint32_t mask;
    _Alignas(64) _Atomic uint32_t head; /* consumer position */
    _Alignas(64) _Atomic uint32_t tail; /* producer position */
    _Atomic uint64_t dropped;
    _Atomic int overflow;
} sk_ring;

int sk_ring_init(sk_ring *r, uint32_t size_pow2);
void sk_ring_free(sk_ring *r);
/* Returns 0, or -1 when full (the event is dropped and overflow is set). */
int sk_ring_push(sk_ring *r, const sk_event *ev);
int sk_ring_pop(sk_ring *r, sk_event *out, int max);
/* Returns and clears the overflow flag. */
int sk_ring_take_overflow(sk_ring *r);

/* ------------------------------------------------------------ snapshot.c */

/* An immutable published object. Embed as the first member. */
typedef struct sk_snap {
    _Atomic uint64_t refs;
    uint64_t version;
    void (*destroy)(struct sk_snap *s);
    bool off_worker;        /* never destroyed on an I/O worker (the reaper does it) */
    struct sk_snap *reap_next;
} sk_snap;

/* Where the current version lives. acquire() takes a lock only for the
 * pointer copy and the increment, so it can never race the publisher's
 * release of the old version. */
typedef struct sk_slot {
    pthread_mutex_t lock;
    sk_snap *cur;
    _Atomic uint64_t version;
} sk_slot;

/* A worker's cached reference: refreshed only when the slot's version moved,
 * so the hot path is one atomic load. */
typedef struct sk_slot_cache {
    sk_snap *snap;
    uint64_t version;
} sk_slot_cache;

void sk_snap_init(sk_snap *s, void (*destroy)(sk_snap *));
/* The same, for a snapshot whose destroy costs real work (a TLS config:
 * SSL_CTXs, a trust store of maybe thousands of certificates): when an I/O
 * worker drops its last reference, the process's reaper thread destroys it
 * instead (inline where there is no reaper). */
void sk_snap_init_off_worker(sk_snap *s, void (*destroy)(sk_snap *));
/* Starts the reaper once per process, at the calling thread's priority:
 * sk_engine_create calls it before starting workers (there is no worker
 * without an engine), so no worker and no low-priority loader creates it. */
void sk_snap_reaper_start(void);
/* Marks the calling thread as an I/O worker (sk_worker_main). */
void sk_snap_thread_is_worker(void);
/* Snapshots the reaper destroyed, process-wide. */
uint64_t sk_snap_reaped(void);
void sk_snap_ref(sk_snap *s);
void sk_snap_release(sk_snap *s);
void sk_slot_init(sk_slot *slot);
void sk_slot_destroy(sk_slot *slot);
/* Takes the caller's reference to s; returns the version assigned. */
uint64_t sk_slot_publish(sk_slot *slot, sk_snap *s);
sk_snap *sk_slot_acquire(sk_slot *slot); /* +1 reference, or NULL */
/* Borrowed pointer, valid until the next call with the same cache. */
sk_snap *sk_slot_cached(sk_slot *slot, sk_slot_cache *cache);
void sk_slot_cache_clear(sk_slot_cache *cache);

/* ------------------------------------------------------------ routes.c */

struct sk_target {
    _Atomic uint64_t refs;
    uint64_t user_id;
    sk_engine *engine;
    _Atomic int64_t open;         /* flows currently using this target */
    _Atomic uint64_t down_until;  /* monotonic ns; 0 = up */
    _Atomic uint32_t backoff_step;
    _Atomic int down;             /* 1 while reported down */
    _Atomic uint64_t opened, closed, bytes_in, bytes_out, failed;
    /* a remote destination's state (sk_routes_add_remote): owned by its
     * peer's list, keyed by address id and destination router */
    bool remote;
    uint32_t raddr;
    char *rdest;
    struct sk_target *rnext; /* the peer's list, under peer->lock */
};


typedef struct sk_route_target {
    sk_target *target;
    struct sockaddr_storage sa;
    socklen_t salen;
    uint32_t weight;
    int tls_slot;
    bool verify_host;
    bool host_is_ip;
    char label[64]; /* "ip:port" */
    char host[256];
} sk_route_target;

/* A neighbour router (sk_peer_create): where data connections are dialled. */
struct sk_peer {
    _Atomic uint64_t refs;
    sk_engine *engine;
    uint64_t user_id;
    char router_id[256];
    sk_route_target dial; /* address, TLS slot, host, verify_host (target unused) */
    pthread_mutex_t lock; /* guards states (control thread only adds) */
    sk_target *states;
    _Atomic uint64_t flows, active, bytes_in, bytes_out, failures, resets;
    /* OUTBOUND pools, one per worker (pools[w->index] is worker-owned) */
    uint32_t pool_size, pool_idle_ms;
    uint64_t instance, link_id;
    int npools;
    struct sk_dc_pool *pools; /* claimable: OUTBOUND (dialled), or a reverse
                               * peer's accepted INBOUND connections */
    _Atomic uint64_t pool_idle, pool_hits, pool_misses;
    _Atomic uint64_t pool_stale; /* idle pooled connections closed: older TLS config */
    /* INBOUND direction (dataconn.c) */
    bool reverse;             /* no address: claims the INBOUND connections the
                               * neighbour dialled here */
    uint32_t inbound_pool_size, pool_max, inbound_cap, pool_wait_ms, pool_wait_max;
    struct sk_dc_pool *ipools; /* dialler: INBOUND connections idle at the peer */
    _Atomic int closing;      /* sk_peer_close: no refill, no new HELLO */
    bool registered;          /* in the engine's registry (e->rid_lock) */
    struct sk_peer *reg_next;
    _Atomic uint64_t inbound_idle, inbound_claims, inbound_failures, inbound_accepted,
        hello_refused, hello_overloaded, pool_waits, pool_exhausted, pool_handoffs;
    /* TLS peers: per worker (sessions[w->index] is worker-owned), the last
     * session a data connection to the peer was given, for the next dial to
     * resume (dataconn.c, sk_dc_tls_resume) */
    struct sk_dc_session *sessions;
};

typedef struct sk_dc_session {
    struct ssl_session_st *sess;
    uint64_t version; /* the TLS config version it was made with */
} sk_dc_session;

/* One worker's pool of one peer: idle connections (HELLO answered OK) and
 * the ones being dialled for it. Worker-owned, except the _pub atomics that
 * other workers read to find idle connections or waiting flows. */
typedef struct sk_dc_pool {
    struct sk_conn *idle; /* via dc->pnext */
    uint32_t nidle, ndial;
    struct sk_peer *peer;
    int windex;
    /* demand sizing: the target grows on misses, decays when quiet */
    uint32_t target;
    uint64_t grown_ns;
    _Atomic uint32_t target_pub;
    /* dialler INBOUND: refill timer and back-off */
    sk_timer refill;
    uint32_t fails;
    /* reverse: flows waiting for an idle connection (FIFO, via dc_wnext) */
    struct sk_conn *wait_head, *wait_tail;
    uint32_t nwait;
    _Atomic uint32_t nidle_pub, nwait_pub, inflight; /* inflight: hand-offs to here */
} sk_dc_pool;

/* Engine registry of peers that must be closed (reverse peers, INBOUND pools). */
void sk_peer_registry_clear(sk_engine *e);
/* The reverse peer named router_id (a reference), or NULL. */
sk_peer *sk_peer_find_reverse(sk_engine *e, const char *id, size_t len);

typedef struct sk_route_remote {
    sk_target *state; /* per (peer, address, dest) open count and back-off (ref) */
    sk_peer *peer;    /* next hop (ref) */
    uint32_t cost, targets;
    uint8_t dest_len;
    char dest[256];
} sk_route_remote;

typedef struct sk_route_entry {
    sk_route_target *v;
    uint32_t n, cap;
    sk_route_remote *rv; /* remote destinations */
    uint32_t rn, rcap;
    char *name; /* the address (FLOW addr), or NULL */
    uint16_t name_len;
} sk_route_entry;

struct sk_routes {
    sk_snap snap;
    uint32_t n;
    sk_route_entry *addr;
    uint32_t *index; /* open addressing by name: address id + 1, 0 = empty */
    uint32_t index_mask;
};

/* The address id named name in r, or -1. */
int64_t sk_routes_find(const sk_routes *r, const char *name, size_t len);
void sk_peer_ref(sk_peer *p);

void sk_target_ref(sk_target *t);
/* ------------------------------------------------------------ types */

/* Declared here because the worker holds lists of them; each is defined in
 * the section of the file that owns it. */
typedef struct sk_handle sk_handle;
typedef struct sk_msg sk_msg;
typedef struct sk_utimer sk_utimer;
typedef struct sk_buf sk_buf;
typedef struct sk_pipe sk_pipe;
typedef struct sk_conn sk_conn;
typedef struct sk_lsock sk_lsock;
typedef struct sk_app sk_app;
typedef struct sk_app_dial sk_app_dial;

/* ------------------------------------------------------------ engine.c */

struct sk_engine {
    sk_engine_options opts;
    int nworkers;
    sk_worker *workers;
    int eventfd;
    _Atomic int event_signalled;
    _Atomic int stopping;
    bool stopped;
    pthread_mutex_t drain_lock;

    sk_slot routes;
    sk_slot tls[SK_TLS_SLOTS];
    _Atomic uint32_t tls_nslots;
    _Atomic uint64_t next_id;
    _Atomic uint32_t next_worker;

    pthread_mutex_t app_lock;
    sk_app *app_table[256]; /* chained by id */

    _Atomic uint64_t pipes_live, pipes_in_use, splice_fallbacks;
    _Atomic uint64_t conns_live, bufs_live, buf_bytes_live, accepted, connects_failed,
        flows_failed, accept_paused, limit_rejected, tls_handshakes, tls_failures,
        tls_unexpected_eof, tls_closed_old, tls_resumed, tls_detached, tls_yields,
        accept_deferred, bulk_turns, served_between;
    _Atomic uint64_t app_live, app_outbound_live, app_connects_failed, app_direct_writes;
    /* app.c: how long bytes waited between threads (sk_engine_app_wait);
     * written by any thread with atomic adds */
    sk_hist_atomic app_wait[3];
    /* direct reads: the epoll set of plain app sockets the control thread
     * reads itself (edge-triggered, keyed by app id), and whether new app
     * connections join it (sk_engine_app_direct_reads) */
    int app_epfd;
    _Atomic int app_direct_reads;
    _Atomic uint64_t app_direct_reads_total;

    /* data plane (dataconn.c) */
    pthread_mutex_t rid_lock; /* guards router_id (copied out, never held over I/O) */
    char router_id[256];
    _Atomic uint64_t dp_accepted, dp_originated, dp_transited, dp_terminated, dp_retries;
    /* idle pooled data connections: accepted (HELLO answered) and dialled */
    _Atomic uint64_t dp_pool_in, dp_pool_out;
    _Atomic uint64_t dp_verdicts_sent[SK_DP_VERDICTS], dp_verdicts_received[SK_DP_VERDICTS];
    _Atomic uint64_t dp_header_errors[SK_DP_REASONS];
    _Atomic uint64_t dp_hello_unknown;
    struct sk_peer *peer_reg; /* registry (sk_peer_close), under rid_lock */
};

uint64_t sk_engine_next_id(sk_engine *e);

/* ------------------------------------------------------------ worker.c */

/* Called by the worker loop for each epoll event of a registered fd. */
typedef void (*sk_io_cb)(sk_worker *w, sk_handle *h, uint32_t events);

/* What epoll hands back: the owner of every registered fd embeds one and
 * points on_io at the code for its current phase (a connection changes it as
 * it goes from connecting to TLS handshake to relaying, and to a no-op once
 * closed), so the loop makes one indirect call and no switch. */
struct sk_handle {
    sk_io_cb on_io;
};

struct sk_worker {
    sk_engine *engine;
    int index;
    int cpu; /* pinned to this CPU at start; -1: not pinned */
    pthread_t thread;
    bool initialized;
    bool started;
    int epfd;
    int wakefd;
    sk_handle wake_handle;

    sk_heap heap[2];
    sk_hist_atomic lateness[2];
    sk_hist_atomic dispatch[2]; /* lateness caused by the worker's own work */
    sk_hist_atomic dispatch_cpu[2]; /* the worker's CPU time over that span */
    /* of those, the spans the worker was not preempted in (no involuntary
     * context switch between the sample they count from and the timer's
     * run): a preempted span's CPU clock also grows with the cold caches
     * and the switch, and it counts its unit's CPU from before the deadline */
    sk_hist_atomic dispatch_cpu_unpreempted[2];
    uint64_t wake_ns;           /* when epoll_pwait2 last returned */
    /* the last wake-up that served anything but a splicing flow (accepts,
     * connects, handshakes, copied bytes, app links): relay.c gives splicing
     * flows long turns only while this is SK_BULK_QUIET_NS old */
    uint64_t interactive_ns;
    uint64_t round_bulk_left; /* long-turn bytes left this round (relay.c) */
    /* thread CPU time samples of this batch, the bases of dispatch_cpu: the
     * first (at the wake-up, or when the batch scheduled its first timer)
     * and the last (the last high check) */
    bool cpu_sampled;
    uint64_t first_cpu_ns, mark_ns, mark_cpu_ns;
    long first_ivcs, mark_ivcs; /* involuntary context switches at those samples */
    sk_ring ring[2];

    pthread_mutex_t mbox_lock;
    sk_msg *mbox_head, *mbox_tail;
    _Atomic int wake_pending;

    /* connections, listed under conn_lock (held only for list edits and
     * listing, never across I/O) */
    pthread_mutex_t conn_lock;
    sk_conn *conns;
    sk_conn *graveyard; /* closed during this batch; freed after it */

    sk_lsock *lsocks;
    sk_lsock *lsock_grave; /* closed during this batch; freed after it */
    sk_utimer *utimers;
    sk_slot_cache routes_cache;
    sk_slot_cache tls_cache[SK_TLS_SLOTS];
    /* tls_io.c: handshakes ended since the last heap trim, the last one's
     * time, and the timer that trims once they have stopped for a while */
    uint64_t tls_hs_untrimmed, tls_hs_last_ns;
    sk_timer tls_trim;
    bool tls_trim_init;
    sk_conn *ready; /* to read again before sleeping: TLS connections with decrypted
                     * bytes pending, plain ones whose quantum ran out (relay.c) */
    uint32_t rr;
    sk_buf *buf_free;
    int buf_free_n;
    sk_pipe *pipe_free; /* empty splice pipes */
    int pipes_open;     /* pipes of this worker, in use or free */
    uint64_t high_budget_ns; /* CPU clock samples this long before a deadline */

    clockid_t cpu_clock;
    _Atomic uint64_t cpu_final_ns;
    _Atomic int running;
    /* set_worker_nice: -1 until the worker set it, then 0 or its errno */
    _Atomic int nice_rc;
    _Atomic uint64_t busy_ns, wakeups, io_events, timers_fired, high_rechecks, nconns;
};

int sk_worker_init(sk_engine *e, sk_worker *w, int index, char *err, size_t errlen);
void sk_worker_fini(sk_worker *w);
/* The thread body (pthread_create): runs until the engine stops, then closes
 * everything the worker owns. */
void *sk_worker_main(void *arg);
/* Adds or changes epoll interest for fd; h->on_io gets its events. */
int sk_worker_epoll(sk_worker *w, int op, int fd, uint32_t events, sk_handle *h);

/* ------------------------------------------------------------ mailbox.c */

enum sk_msg_kind {
    SK_MSG_ADD_LSOCK = 1,
    SK_MSG_CLOSE_LISTENER,
    SK_MSG_TIMER_START,
    SK_MSG_TIMER_CANCEL,
    SK_MSG_APP_KICK,
    SK_MSG_CLOSE_TARGET_FLOWS,
    SK_MSG_TLS_CLOSE_OLDER,
    SK_MSG_APP_CONNECT,
    SK_MSG_PEER_FILL,   /* dialler: fill this worker's INBOUND pool (peer ref) */
    SK_MSG_PEER_CLOSE,  /* sk_peer_close: this worker's part (peer ref) */
    SK_MSG_DC_GIVE,     /* reverse: hand an idle connection to worker `to` */
    SK_MSG_DC_ADOPT,    /* reverse: an idle connection handed to this worker */
};

typedef struct sk_close_req sk_close_req;

struct sk_msg {
    struct sk_msg *next;
    int kind;
    union {
        sk_lsock *lsock;
        struct {
            sk_listener *listener;
            int drop;
        } close;
        sk_utimer *timer;
        uint64_t timer_id;
        sk_app *app;
        sk_app_dial *dial;
        sk_close_req *req;
        struct {
            int slot;
            uint64_t ordinal;
        } older;
        struct {
            struct sk_peer *peer; /* a reference */
            struct sk_conn *conn; /* ADOPT: detached from its old worker */
            int to, ttl;          /* GIVE: the asking worker, forwards left */
        } dc;
    } u;
};

/* Any thread: queues m for w (which then owns it) and wakes w. */
void sk_worker_post(sk_worker *w, sk_msg *m);
/* The wake eventfd's on_io: runs every queued message. */
void sk_mbox_io(sk_worker *w, sk_handle *h, uint32_t events);
/* Frees messages left when a worker stopped, releasing what they hold.
 * Caller holds mbox_lock. */
void sk_mbox_discard(sk_worker *w);

/* ------------------------------------------------------------ event.c */

/* Queues an event for the control thread (worker context). */
void sk_worker_emit(sk_worker *w, int prio, uint32_t type, uint64_t id, int64_t a, int64_t b);

/* ------------------------------------------------------------ timer.c */

/* A timer started by the control plane (sk_timer_start). */
struct sk_utimer {
    sk_timer t;
    uint64_t id;
    uint64_t period;
    int prio;
    struct sk_utimer *next;
};

void sk_worker_schedule(sk_worker *w, int prio, sk_timer *t, uint64_t deadline);
void sk_worker_cancel(sk_worker *w, int prio, sk_timer *t);
/* Runs the due timers of class cls (0 high, 1 normal), recording lateness,
 * dispatch delay and dispatch CPU. */
void sk_timer_run_due(sk_worker *w, int cls, uint64_t now);
/* The calling thread's CPU time (ns). */
uint64_t sk_thread_cpu_ns(void);
/* After epoll returns at now: notes the thread's CPU time if a timer may
 * come due in this batch (the base of the dispatch CPU figures). */
void sk_timer_mark_wake(sk_worker *w, uint64_t now);
/* Notes the thread's CPU time as of now (wall time now). */
void sk_timer_mark(sk_worker *w, uint64_t now);
/* Runs due high-priority timers when the in-batch budget has passed: call it
 * between units of work inside any loop that can run long. */
void sk_worker_high_check(sk_worker *w);
/* Whether a high-priority timer is due, for a point that cannot run it
 * itself (sk_tls_yield_point); when none is, the CPU clock is sampled as at
 * an in-batch check (the base of the dispatch CPU figure). */
bool sk_worker_high_due(sk_worker *w);
/* Mailbox side of sk_timer_start / sk_timer_cancel. */
void sk_utimer_add(sk_worker *w, sk_utimer *ut);
void sk_utimer_cancel(sk_worker *w, uint64_t timer_id);
/* Worker shutdown, after the heaps were emptied. */
void sk_utimer_free_all(sk_worker *w);

/* ------------------------------------------------------------ buf.c */

struct sk_buf {
    uint32_t start, end, cap;
    struct sk_buf *next; /* free list */
    char data[];
};

sk_buf *sk_buf_get(sk_worker *w);
void sk_buf_put(sk_worker *w, sk_buf *b);
/* Frees the worker's cached buffers (shutdown). */
void sk_buf_free_all(sk_worker *w);

/* ------------------------------------------------------------ pipe.c */

/* A kernel pipe holding len bytes on their way from one socket to another. */
struct sk_pipe {
    int rfd, wfd;
    uint32_t len;
    struct sk_pipe *next; /* free list */
};

/* An empty pipe from w's pool, or NULL when splice_pipes are all in use. */
sk_pipe *sk_pipe_get(sk_worker *w);
/* Back to the pool; a pipe with bytes inside is closed. NULL is ignored. */
void sk_pipe_put(sk_worker *w, sk_pipe *p);
/* Closes the worker's pooled pipes (shutdown). */
void sk_pipe_free_all(sk_worker *w);

/* ------------------------------------------------------------ listener.c */

struct sk_listener {
    _Atomic uint64_t refs;
    sk_engine *engine;
    sk_listener_options opts;
    char host[64];
    int port;
    _Atomic int closing;
    _Atomic int pending_workers; /* lsocks not yet closed */
    int *fds; /* the lsocks' fds, one per worker: shut down by sk_listener_close */
    _Atomic uint64_t opened, closed, bytes_in, bytes_out, failed, active;
    _Atomic int64_t dp_idle; /* data_ok: pooled connections idle now */
};

struct sk_lsock {
    sk_handle h;
    int fd;
    sk_listener *listener;
    sk_worker *worker;
    sk_lsock *next;
    sk_timer resume; /* accept back-off after EMFILE */
    uint64_t backoff_ms;
    bool paused;
};

void sk_listener_ref(sk_listener *l);
void sk_lsock_attach(sk_worker *w, sk_lsock *ls);
void sk_worker_close_listener(sk_worker *w, sk_listener *l, int drop);
/* Closes ls; its memory goes after the batch (sk_lsock_reap). */
void sk_lsock_destroy(sk_worker *w, sk_lsock *ls);
void sk_lsock_reap(sk_worker *w);
/* Out of descriptors while serving l's client: stop accepting for a while. */
void sk_worker_pause_listener(sk_worker *w, sk_listener *l, int err);

/* ------------------------------------------------------------ conn.c */

enum sk_conn_state { SK_C_CONNECTING = 1, SK_C_HANDSHAKE, SK_C_OPEN, SK_C_CLOSED };

/* Targets one client may try before its flow fails. */
#define SK_MAX_TRIES 8

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_session_st SSL_SESSION;
typedef struct x509_store_st X509_STORE;
typedef struct sk_tls_rl sk_tls_rl;

/* One socket of a flow: the client side (accepted) or the target side
 * (connected). c->h.on_io follows c->state; change both together. */
struct sk_conn {
    sk_handle h;
    sk_worker *worker;
    int fd;
    int state;
    uint64_t id;
    sk_conn *peer;       /* relay partner */
    sk_conn *next, *prev;
    sk_listener *listener; /* client side: accepting listener (ref) */
    sk_target *target;     /* server side: target in use (ref) */
    sk_app *app;           /* delivered to Python */
    sk_buf *out;           /* bytes waiting to be written to fd */
    sk_pipe *pipe;         /* or: bytes waiting in a splice pipe (never both) */
    uint32_t events;       /* current epoll interest (level-triggered only) */
    bool registered;
    /* Plain flows (no TLS on either side) are registered once, edge-triggered
     * (SK_CONN_ET_EVENTS), and never modified: the relay keeps what the last
     * edges said, until a read or write returns EAGAIN (relay.c) */
    bool et;
    bool rd_ready;         /* fd may have bytes or EOF to read */
    bool rd_hup;           /* EOF or error seen by epoll: read on to it */
    bool wr_ready;         /* fd may take bytes */
    bool rd_eof;           /* read side saw EOF */
    bool wr_shut;          /* we shut down the write side */
    bool is_client;
    bool app_out;          /* an app connection dialled by sk_app_connect */
    sk_timer tmo;          /* connect or handshake time-out (normal class) */
    /* TLS */
    SSL *ssl;              /* OpenSSL: the handshake, and records unless detached */
    sk_tls_rl *rl;         /* detached: our record layer (tls_rl.c), ssl freed */
    sk_tls_config *tls;    /* pinned config (a reference) */
    int tls_slot;
    uint32_t tls_want;     /* epoll events the TLS engine waits for */
    bool tls_rd_wants_out; /* SSL_read needs the socket writable */
    bool tls_wr_wants_in;  /* SSL_write needs the socket readable */
    bool tls_done;         /* handshake finished */
    bool tls_close_notify; /* the peer's close_notify alert arrived */
    bool tls_sniff;        /* optional TLS: decide from the first byte */
    bool tls_no_yield;     /* finishing a paused handshake to free it: no more pauses */
    const char *tls_proto; /* static strings of OpenSSL, set once the handshake is done */
    const char *tls_cipher;
    bool in_ready;         /* on the worker's ready list */
    sk_conn *ready_next;
    char *peer_subject;
    /* connect attempts of the client this server conn belongs to */
    uint32_t attempts;
    int last_err;
    sk_target *tried[SK_MAX_TRIES];
    uint64_t opened_ns;
    _Atomic uint64_t bytes_in, bytes_out; /* read from / written to fd */
    /* remote "ip:port"; an accepted client keeps the peer's raw sockaddr
     * here instead (label_raw), formatted only when listed (sk_conn_label) */
    char label[64];
    bool label_raw;
    struct sk_dc *dc;      /* data connection state (dataconn.c), or NULL */
    bool dc_sniffed;       /* data_ok listener: the first bytes were looked at */
    bool off_listener_count; /* a data connection: not in its listener's active */
    uint8_t dc_dead_claims; /* client: claimed pooled connections found dead */
    /* client waiting for an idle INBOUND connection of a reverse peer */
    struct sk_peer *dc_wait;
    sk_conn *dc_wnext;
};

/* c speaks TLS: through OpenSSL, or detached through tls_rl.c. */
static inline bool sk_conn_is_tls(const sk_conn *c)
{
    return c->ssl != NULL || c->rl != NULL;
}

static inline void sk_conn_enter(sk_conn *c, int state, sk_io_cb on_io)
{
    c->state = state;
    c->h.on_io = on_io;
}

/* Links a new connection into w's list; the client side's listener and peer
 * address are set first, so a concurrent listing never sees them half done. */
sk_conn *sk_conn_new(sk_worker *w, int fd, sk_listener *l, const struct sockaddr *peer);
/* A client accepted by l's socket on w: TLS handshake, app or target. */
void sk_conn_accepted(sk_worker *w, sk_listener *l, int fd, const struct sockaddr *sa,
                      socklen_t salen);
/* The client side is ready (TCP, and TLS when configured): hand it to the
 * control plane (app listener) or go and connect a target. */
void sk_conn_open_client(sk_worker *w, sk_conn *c);
/* Closes c (and its relay partner). abortive: RST instead of FIN. */
void sk_conn_close(sk_worker *w, sk_conn *c, bool abortive);
/* Frees the connections closed during this batch. */
void sk_conn_reap(sk_worker *w);
void sk_conn_set_interest(sk_worker *w, sk_conn *c, uint32_t events);
#define SK_CONN_ET_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
/* Registers c edge-triggered for good (ADD, or MOD from a level-triggered
 * registration); set_interest is a no-op afterwards. Closes c on failure. */
void sk_conn_register_et(sk_worker *w, sk_conn *c);
/* Plain or TLS I/O: >0 bytes, 0 end of stream (recv), -1 try later, -2 error. */
ssize_t sk_io_recv(sk_worker *w, sk_conn *c, void *buf, size_t len);
ssize_t sk_io_send(sk_conn *c, const void *buf, size_t len);
typedef bool (*sk_conn_pred)(const sk_conn *c, const void *a, uint64_t b);
/* Closes every connection of w matching pred, with its partner. Returns how
 * many matched. */
size_t sk_conn_close_matching(sk_worker *w, sk_conn_pred pred, const void *a, uint64_t b);
/* Closes every open flow accepted by l or served by t (either may be NULL). */
void sk_worker_close_flows(sk_worker *w, const sk_listener *l, const sk_target *t);
/* Mailbox side of sk_engine_close_target_flows; done() alone when discarded. */
void sk_close_req_run(sk_worker *w, sk_close_req *req);
void sk_close_req_done(sk_worker *w, sk_close_req *req);
void sk_format_addr(const struct sockaddr *sa, char *out, size_t outlen);
/* c's remote address as text ("ip:port", "[ip]:port" or a target's label). */
void sk_conn_label(const sk_conn *c, char *out, size_t outlen);

/* ------------------------------------------------------------ connect.c */

/* Picks a target for client c and connects to it, trying others (and
 * recording back-off) as attempts fail; closes c when none is left. */
void sk_connect_start(sk_worker *w, sk_conn *client);
/* Target side s failed before relaying (connect or TLS): back off its
 * target and try another for its client. */
void sk_connect_failed(sk_worker *w, sk_conn *s, int err);
/* Target side s is ready (TCP, and TLS when configured): start relaying. */
void sk_connect_established(sk_worker *w, sk_conn *s);
/* Gives up on client's flow (counted as failed) and closes it. */
void sk_connect_fail_flow(sk_worker *w, sk_conn *client);
/* A remote destination answered VERDICT OK on s: count it, lift its back-off. */
void sk_connect_remote_ok(sk_worker *w, sk_conn *s);
/* A waiting client (sk_dc_wait) got an idle connection on its worker: claims
 * it for destination t (tried last), or picks again if t left the routes. */
void sk_connect_resume(sk_worker *w, sk_conn *client, sk_target *t);
/* Its wait timed out: the attempt fails like OVERLOADED (t backs off). */
void sk_connect_overloaded(sk_worker *w, sk_conn *client, sk_target *t);
/* conn.c: moves an idle connection between workers. w forgets c (epoll,
 * timer, ready list, its list); the new owner adopts it after a mailbox hop. */
void sk_conn_detach(sk_worker *w, sk_conn *c);
void sk_conn_adopt(sk_worker *w, sk_conn *c);

/* ------------------------------------------------------------ dataconn.c */

/* A data connection's state, on either end (c->dc). */
typedef struct sk_dc sk_dc;
/* Where the candidates of a flow come from (sk_connect_start). */
enum sk_dc_mode {
    SK_DC_ORIGIN = 0, /* a local client: local targets and remote destinations */
    SK_DC_LOCAL,      /* an incoming flow for this router: local targets only */
    SK_DC_FORWARD,    /* an incoming flow for another router: its next hops, once */
};
/* TLS session resumption for dialled data connections: s was just given
 * its SSL (dialling): offer the peer's last session of the same config
 * version. sk_dc_tls_session keeps a new session the server sent on data
 * connection c (1: kept, the caller's reference taken; 0: not a data
 * connection to a TLS peer). Worker-owned per worker: no lock. */
void sk_dc_tls_resume(sk_worker *w, sk_conn *s);
int sk_dc_tls_session(sk_conn *c, SSL_SESSION *sess);
/* tls_io.c: the client contexts' new-session callback (tls.c installs it). */
int sk_tls_new_session_cb(SSL *ssl, SSL_SESSION *sess);

/* Short TCP keep-alive for data connections (dialled sockets, and data_ok
 * listening sockets, whose accepted connections inherit it). */
void sk_dc_keepalive(int fd);
/* The mode, address id and FLOW fields of client c's flow. */
int sk_dc_mode(const sk_conn *client);
uint32_t sk_dc_address(const sk_conn *client);
const char *sk_dc_dest(const sk_conn *client, size_t *len);
/* connect.c picked a remote destination for client: s is the new data
 * connection (dialling); builds its FLOW header. false: no memory/encoding. */
bool sk_dc_originate(sk_worker *w, sk_conn *client, sk_conn *s, const sk_route_remote *rr,
                     const sk_routes *routes, uint32_t aid);
/* s (a dialled data connection) is connected (and TLS done): send its FLOW. */
void sk_dc_established(sk_worker *w, sk_conn *s);
/* Client c's flow failed (no candidate left): an incoming data connection
 * answers with its verdict and closes; true when handled. */
bool sk_dc_fail_flow(sk_worker *w, sk_conn *c);
/* The router at the flow's other end ("" before its FLOW): where it came
 * from (*incoming true) or goes to. Under the worker's conn_lock. */
const char *sk_dc_router(const sk_dc *dc, bool *incoming);
/* The local target of an incoming flow answered: VERDICT OK then relay. */
void sk_dc_local_established(sk_worker *w, sk_conn *client);
/* connect.c's sk_connect_failed on a data connection s (before OK): counts
 * it and notes for client what to answer upstream if no candidate is left. */
void sk_dc_attempt_failed(sk_worker *w, sk_conn *s, sk_conn *client, int err);
/* Pools: an idle pooled connection of p on w, taken out of the pool (NULL:
 * none); dials what the pool lacks. */
sk_conn *sk_dc_pool_claim(sk_worker *w, sk_peer *p);
void sk_dc_pool_fill(sk_worker *w, sk_peer *p);
/* sk_connect_failed's first step: a pooled connection that failed before it
 * was claimed is dropped here (true). */
bool sk_dc_pool_failed(sk_worker *w, sk_conn *s, int err);
/* Reverse peers: no idle connection on w for client's pick t through p:
 * queue the client (true: it waits; an idle connection or the time-out
 * resumes it) or false (queue full: counted as exhausted). */
bool sk_dc_wait(sk_worker *w, sk_conn *client, sk_peer *p, sk_target *t);
/* No idle connection and no room to wait: what client's flow says if
 * nothing else is left (OVERLOADED upstream), or an origin retry counted. */
void sk_dc_attempt_overloaded(sk_worker *w, sk_conn *client);
/* close_one's hook for a waiting client. */
void sk_dc_wait_cancel(sk_worker *w, sk_conn *client);
/* Mailbox messages of the data plane. */
void sk_dc_msg(sk_worker *w, sk_msg *m);
void sk_dc_msg_discard(sk_worker *w, sk_msg *m);
/* Accepted on a data_ok listener: sniff for "SK". */
void sk_dc_sniff_start(sk_worker *w, sk_conn *c);
/* close_one's hook: counters, frees c->dc. */
void sk_dc_closing(sk_worker *w, sk_conn *c, bool abortive);

/* ------------------------------------------------------------ tls_io.c */

/* Pin the slot's current config and make the SSL object. Client side of a
 * TLS listener l: its client-certificate and optional-TLS settings. */
bool sk_tls_io_attach_server(sk_worker *w, sk_conn *c, const sk_listener *l);
/* Target side: SNI and peer verification as rt asks. */
bool sk_tls_io_attach_client(sk_worker *w, sk_conn *s, const sk_route_target *rt);
/* Enters the handshake phase (time-out armed) and runs its first step. */
void sk_tls_io_handshake_start(sk_worker *w, sk_conn *c);
ssize_t sk_tls_io_recv(sk_worker *w, sk_conn *c, void *buf, size_t len);
ssize_t sk_tls_io_send(sk_conn *c, const void *buf, size_t len);
/* Adds the readiness OpenSSL waits for to ev; queues c on the ready list when
 * it may read and OpenSSL holds decrypted bytes (they wake no epoll). */
uint32_t sk_tls_io_interest(sk_worker *w, sk_conn *c, uint32_t ev, bool may_read);
/* Sends close_notify (never waits). */
void sk_tls_io_shutdown(sk_conn *c);
/* Closing c: close_notify unless abortive, then frees the SSL object (or
 * the detached record layer). */
void sk_tls_io_close(sk_worker *w, sk_conn *c, bool abortive);
/* Up to len decrypted bytes without consuming them: as sk_tls_io_recv, but
 * -1 means "try later" with *want the readiness to wait for. */
ssize_t sk_tls_io_peek(sk_conn *c, void *buf, size_t len, uint32_t *want);
/* Decrypted bytes wait inside the TLS layer (they wake no epoll). */
bool sk_tls_io_pending(const sk_conn *c);
void sk_ready_push(sk_worker *w, sk_conn *c);
void sk_ready_remove(sk_worker *w, sk_conn *c);
/* Reads from the ready connections (end of every batch). */
void sk_worker_run_ready(sk_worker *w);
void sk_worker_close_tls_older(sk_worker *w, int slot, uint64_t ordinal);
/* SSL info callback: notes a received close_notify. */
void sk_tls_info_cb(const SSL *ssl, int where, int ret);
/* A point between two steps of a handshake inside OpenSSL (the message and
 * key log callbacks call it): when a high-priority timer of the connection's
 * worker is due, the handshake pauses there (an OpenSSL async job,
 * SSL_MODE_ASYNC) and tls_io.c runs the timer before resuming it, so a
 * server flight (key share, signature: hundreds of microseconds) does not
 * hold a heartbeat back. SKIFF_TLS_YIELD 0 builds without it; ThreadSanitizer
 * builds have it off, since TSan cannot follow OpenSSL's stack switches. */
#ifndef SKIFF_TLS_YIELD
#if defined(__SANITIZE_THREAD__)
#define SKIFF_TLS_YIELD 0
#else
#define SKIFF_TLS_YIELD 1
#endif
#endif
void sk_tls_yield_point(const SSL *ssl);
/* A server context's extra pause points (its ClientHello and certificate
 * callbacks). */
void sk_tls_yield_install(SSL_CTX *ctx);

/* tls_rl.c: our TLS 1.3 record layer for server connections after the
 * handshake. SKIFF_TLS_DETACH 0 builds without it (OpenSSL keeps every
 * connection, as before). */
#ifndef SKIFF_TLS_DETACH
#define SKIFF_TLS_DETACH 1
#endif
/* Server contexts: capture the traffic secrets and count the records the
 * handshake writes. False when this OpenSSL lacks what it needs. */
bool sk_tls_rl_install(SSL_CTX *ctx);
/* Handshake done on a server SSL of such a context: a record layer that
 * continues where OpenSSL stopped (the caller then frees ssl), or NULL when
 * the connection must keep OpenSSL (not TLS 1.3 with one of its three
 * suites, bytes buffered inside OpenSSL or unwritten). Either way the
 * capture is gone afterwards. */
sk_tls_rl *sk_tls_rl_detach(SSL *ssl);
/* Drops the capture of a connection that keeps OpenSSL. */
void sk_tls_rl_forget(SSL *ssl);
void sk_tls_rl_free(sk_tls_rl *rl);
/* As sk_tls_io_recv / sk_tls_io_send on socket fd: >0, 0 EOF (recv), -1
 * would block, -2 fatal. A send that could not write a whole record returns
 * what was written in whole records, or -1: the caller retries with the same
 * bytes. peek: copies without consuming. */
ssize_t sk_tls_rl_recv(sk_tls_rl *rl, int fd, void *buf, size_t len, bool peek);
ssize_t sk_tls_rl_send(sk_tls_rl *rl, int fd, const void *buf, size_t len);
/* Something the next recv returns without the socket: plaintext, a whole
 * record, end of stream or an error. */
bool sk_tls_rl_pending(const sk_tls_rl *rl);
bool sk_tls_rl_close_notify(const sk_tls_rl *rl);
/* Best-effort close_notify; later sends fail. */
void sk_tls_rl_shutdown(sk_tls_rl *rl, int fd);
/* Records one write key may seal before our own KeyUpdate (default 2^24,
 * under AES-GCM's limit); 0 restores the default. For tests. */
void sk_tls_rl_set_rekey_records(uint64_t n);
/* HKDF-Expand-Label(secret, label, "", out_len) (RFC 8446 §7.1) as the
 * record layer derives keys, hash_len 32 (SHA-256) or 48 (SHA-384). For tests. */
bool sk_tls_rl_expand_label(size_t hash_len, const uint8_t *secret, const char *label,
                            uint8_t *out, size_t out_len);

/* ------------------------------------------------------------ relay.c */

/* Both sides of s's flow are ready: set their interest and relay. */
void sk_relay_start(sk_worker *w, sk_conn *s);
/* on_io of a relaying connection. */
void sk_relay_io(sk_worker *w, sk_handle *h, uint32_t events);
/* Turns (relay.c). A readable event moves at most SK_EVENT_QUANTUM, except
 * a splicing (bulk) direction on a worker that served nothing else for
 * SK_BULK_QUIET_NS: its turn goes on by SK_EVENT_QUANTUM at a time, up to
 * SK_BULK_TURN, while the round's allowance (round_bulk_left, SK_BULK_ROUND
 * per epoll wake-up) lasts and no newcomer waits (sk_worker_newcomers: a
 * listener's accept queue or a control-plane request; it makes turns short
 * again), due heartbeats running between quanta. Each turn ends a burst for
 * the sender (its socket drains) and the receiver (its socket fills), and
 * each burst costs both a wake-up: with four bulk flows on one worker,
 * 256 KiB turns made ~3x the wake-ups per GB of 4 MiB ones and ~1.5x the
 * CPU per GB (docs/benchmarks.md, "Bulk turns"). The allowance bounds a
 * round: other events wait behind at most SK_BULK_ROUND of long turns. */
#define SK_EVENT_QUANTUM (256u * 1024u)
#define SK_BULK_TURN (4u * 1024u * 1024u)
#define SK_BULK_ROUND (8u * 1024u * 1024u)
#define SK_BULK_QUIET_NS 10000000u
/* How much a turn that already got `extended` beyond SK_EVENT_QUANTUM may
 * go on by now: SK_EVENT_QUANTUM or 0 (the policy, without the checks). */
size_t sk_relay_extension(const sk_worker *w, size_t extended);
/* A listener of w has connections to accept, or the control plane posted
 * w a request (poll without waiting; the worker thread only). */
bool sk_worker_newcomers(sk_worker *w);
/* h is one side of a flow that splices (or is about to). */
bool sk_relay_bulk_handle(const sk_worker *w, const sk_handle *h);
/* An event of a bulk flow taken in between two turns (sk_worker_serve_between):
 * notes what it says and puts the flow on the ready list, served in the next
 * round; false (nothing done) for any other event. */
bool sk_relay_defer(sk_worker *w, sk_handle *h, uint32_t ev);
/* A relayed connection from the ready list: flushes what waits for it when
 * it may write, then reads on (edge-triggered flows, with what their edges
 * said); sk_relay_read for the others. */
void sk_relay_resume(sk_worker *w, sk_conn *c);
/* Between two bulk turns: takes in the events that became ready meanwhile
 * (epoll without waiting) and serves at once those that are not a bulk
 * flow's (accepts, connects, short flows, handshakes, app and control),
 * deferring the bulk flows' to the next round (sk_relay_defer). */
void sk_worker_serve_between(sk_worker *w);
/* Moves what c has to read to its partner (ready list). */
void sk_relay_read(sk_worker *w, sk_conn *c);
/* Plain flows: true when neither side of c's flow has TLS (edge-triggered). */
bool sk_relay_plain(const sk_conn *c);

/* ------------------------------------------------------------ tls.c */

/* An immutable TLS config: one per published version of an sslProfile. */
struct sk_tls_config {
    sk_snap snap; /* snap.version is the profile's config version */
    SSL_CTX *server; /* NULL without certificate and key */
    SSL_CTX *server_links; /* the same with a server session cache instead of
                              tickets: inter-router (data_ok) listeners and
                              tlsResumption: cache */
    SSL_CTX *client;
    X509_STORE *store; /* shared by both contexts */
    unsigned char ca_hash[32];
    bool has_ca;
    uint64_t ordinal;
    char fingerprint[65];
};

/* Worker side: the current config of a slot, from the worker's cache. */
sk_tls_config *sk_tls_current(sk_worker *w, int slot);
/* tls_io.c: heap trims done after bursts of handshakes (process-wide). */
uint64_t sk_tls_io_heap_trims(void);

/* ------------------------------------------------------------ app.c */

struct sk_app {
    _Atomic uint64_t refs;
    uint64_t id;
    sk_engine *engine;
    sk_worker *worker;
    sk_conn *conn; /* worker-owned; NULL once closed */
    bool outbound; /* dialled by sk_app_connect */
    uint64_t user_id; /* outbound: the caller's, echoed in SK_EV_APP_OPEN */
    uint64_t dial_deadline; /* outbound: connect and TLS handshake done by then */
    int close_err; /* worker-owned: SK_EV_APP_CLOSED's a when the close gives none */

    pthread_mutex_t lock; /* guards the fields below; never held across I/O */
    char *in;
    size_t in_len, in_cap;
    char *outq;
    size_t outq_len, outq_cap;
    bool eof;
    bool closed;
    bool close_req, abort_req;
    bool kick_pending;
    bool read_paused;
    bool readable_signalled;
    char *ka_frame;
    size_t ka_len;
    uint64_t ka_interval_ns;
    bool ka_changed;
    uint64_t in_since_ns;  /* first byte of in not yet read: when it arrived; 0 none */
    uint64_t out_since_ns; /* outq: when it became non-empty; 0 empty */
    /* direct writes (sk_app_write sends on the caller's thread): the socket
     * while that is allowed (open, plain), -1 otherwise; the send token (a
     * writer is in send(2) on it now: the worker writes nothing meanwhile,
     * and hands the fd's close to that writer if the connection closes);
     * whether the worker holds unsent bytes; when a direct write last sent
     * (the keep-alive's clock). A direct write counts its bytes on the
     * connection itself, so app connections' byte counters are added to
     * atomically (two writers). */
    int direct_fd;
    bool direct_busy; /* the token: a direct send or receive is in a syscall */
    bool direct_close_fd;
    /* direct reads (the control thread reads a plain socket itself, see
     * sk_engine_app_poll): chosen at the open, then the worker never reads
     * this socket; a read that found the token taken (re-armed when it is
     * released); an error the reader saw, for the worker to close on */
    bool direct_read;
    bool direct_rd_missed;
    int direct_rd_err;
    bool direct_hup; /* worker-owned: its epoll saw HUP/ERR, it waits for the reader */
    bool w_busy;
    uint64_t direct_last_ns;

    /* worker-owned */
    char *wbuf; /* bytes being sent, swapped with outq when drained */
    size_t wlen, woff, wcap;
    uint64_t last_write_ns;
    sk_timer ka_timer; /* high priority */
    struct sk_app *hnext; /* engine table chain, under engine->app_lock */
};

/* A new app connection object for worker w with the given id: two
 * references (its connection's and the engine table's, where it is linked). */
sk_app *sk_app_new(sk_engine *e, sk_worker *w, uint64_t id, bool outbound);
/* Makes c an app connection (its on_io becomes sk_app_io). */
void sk_app_accepted(sk_worker *w, sk_conn *c, sk_listener *l);
/* Ends a that never had (or no longer has) a connection: unlinks it, reports
 * SK_EV_APP_CLOSED(err) and drops both references. */
void sk_app_finish(sk_worker *w, sk_app *a, int err);
void sk_app_io(sk_worker *w, sk_handle *h, uint32_t events);
void sk_app_conn_readable(sk_worker *w, sk_conn *c);
void sk_app_kick(sk_worker *w, sk_app *a);
void sk_app_conn_closed(sk_worker *w, sk_conn *c, int err);
/* Before c's socket is closed: true when the worker may close it now; false
 * when a direct write is in send(2) on it, which then closes it itself (the
 * worker only takes it out of its epoll set). */
bool sk_app_release_fd(sk_worker *w, sk_conn *c);
/* The socket of an open plain app connection may take direct writes. */
void sk_app_direct_open(sk_app *a, sk_conn *c);
void sk_app_direct_reads_open(sk_app *a, sk_conn *c);
void sk_app_unref(sk_app *a);
void sk_app_table_free(sk_engine *e);

/* ------------------------------------------------------------ app_connect.c */

/* Mailbox side of sk_app_connect: creates the socket and starts the dial. */
void sk_app_dial_run(sk_worker *w, sk_app_dial *d);
/* A dial message left when the worker stopped: ends its app (ECANCELED). */
void sk_app_dial_discard(sk_worker *w, sk_app_dial *d);
/* sk_app_kick while a's connection still dials: a close request ends it. */
void sk_app_dial_kick(sk_worker *w, sk_app *a);
/* tls_io.c's hooks for a dialled connection (c->app_out): handshake done,
 * or failed (SK_EV_APP_CLOSED with EPROTO or -X509_V_ERR_*). */
void sk_app_dial_tls_done(sk_worker *w, sk_conn *c);
void sk_app_dial_tls_failed(sk_worker *w, sk_conn *c);

/* ------------------------------------------------------------ flow.c */

/* The data plane's wire format: the first bytes of a data connection between
 * two routers (docs/dataplane.md has the byte tables). Three messages, each
 * a 6-byte preamble ("SK", version, type, total length u16) and a body:
 *   HELLO    the dialler's first bytes on a pooled data connection: pool
 *            role, link, instance and TLS config version, both router ids;
 *   FLOW     written by whichever side claims the connection for a flow,
 *            before any client byte: flow id, hops left, flags, address,
 *            origin router, destination router (empty: any);
 *   VERDICT  the far end's answer to a HELLO (flow id 0) or a FLOW, before
 *            any client byte is relayed.
 * Integers are big-endian. Strings are length-prefixed UTF-8 without NUL or
 * control characters. A body may grow at its end (later fields, skipped by
 * older readers) within the type's bound; the version changes only for an
 * incompatible format. Nothing here allocates, blocks or keeps pointers into
 * the caller's bytes; a parse call does at most one message's worth of work. */

#define SK_FLOW_VERSION 1
#define SK_FLOW_PREAMBLE 6
#define SK_FLOW_ADDR_MAX 1024 /* address bytes (u16 on the wire) */
#define SK_FLOW_ID_MAX 255    /* router id bytes (u8 on the wire) */
#define SK_FLOW_MAX_HOPS 32   /* hops a header may grant */
#define SK_FLOW_HDR_MAX 2048  /* bounds of the declared lengths, per type */
#define SK_FLOW_HELLO_MAX 1024
#define SK_FLOW_VERDICT_MAX 64
#define SK_FLOW_HDR_MIN 22 /* the fixed fields and the shortest strings */
#define SK_FLOW_HELLO_MIN 36
#define SK_FLOW_VERDICT_LEN 16 /* what version 1 writes (and the minimum) */

enum sk_flow_type { SK_FLOW_T_HELLO = 'H', SK_FLOW_T_HDR = 'F', SK_FLOW_T_VERDICT = 'V' };

/* FLOW flags. REVERSE: the accepting router sends this flow to the dialler
 * on one of the dialler's SK_FLOW_ROLE_INBOUND connections. */
#define SK_FLOW_F_REVERSE 0x01
#define SK_FLOW_F_KNOWN 0x01

/* HELLO roles: who may claim the pooled connection for a flow. */
enum sk_flow_role {
    SK_FLOW_ROLE_OUTBOUND = 1, /* the dialler writes FLOW headers on it */
    SK_FLOW_ROLE_INBOUND = 2,  /* the accepting router does (SK_FLOW_F_REVERSE) */
};

enum sk_flow_verdict_code {
    SK_FLOW_V_OK = 0,         /* connected (FLOW) or pooled (HELLO): relay */
    SK_FLOW_V_NO_ROUTE,       /* no target and no next hop for the address */
    SK_FLOW_V_REFUSED,        /* the target or next hop refused or did not answer;
                               * HELLO: unknown neighbour or wrong router */
    SK_FLOW_V_HOP_LIMIT,      /* hops ran out: a loop, or routes converging */
    SK_FLOW_V_BAD_HEADER,     /* the message was invalid; detail = sk_flow_err */
    SK_FLOW_V_OVERLOADED,     /* no pooled connection onwards (cap reached), or
                               * HELLO: the pool is full */
    SK_FLOW_V__COUNT
};

/* Why a message was refused. Each closes only its connection and is counted
 * (sk_flow_errors); sk_flow_err_name gives the metric label. */
enum sk_flow_err {
    SK_FLOW_E_NONE = 0,
    SK_FLOW_E_MAGIC,      /* not "SK": not a Skiff data connection */
    SK_FLOW_E_VERSION,    /* a version this router does not speak */
    SK_FLOW_E_TYPE,       /* another message than the one expected here */
    SK_FLOW_E_LENGTH,     /* declared length below the minimum, or a field runs past it */
    SK_FLOW_E_TOO_LARGE,  /* declared length above the type's bound */
    SK_FLOW_E_FLOW_ID,    /* flow id 0 in a FLOW */
    SK_FLOW_E_HOP_LIMIT,  /* no hop left (0) */
    SK_FLOW_E_HOPS,       /* more hops than SK_FLOW_MAX_HOPS */
    SK_FLOW_E_FLAGS,      /* unknown flag bits */
    SK_FLOW_E_DIRECTION,  /* REVERSE does not match the connection's role */
    SK_FLOW_E_ROLE,       /* unknown HELLO role */
    SK_FLOW_E_VERDICT,    /* unknown verdict code */
    SK_FLOW_E_EMPTY,      /* empty address or router id */
    SK_FLOW_E_ADDR_LEN,   /* address longer than SK_FLOW_ADDR_MAX */
    SK_FLOW_E_UTF8,       /* malformed UTF-8 (overlong, surrogate, cut short...) */
    SK_FLOW_E_CONTROL,    /* NUL or another control character */
    SK_FLOW_E_TRUNCATED,  /* the stream ended inside a message */
    SK_FLOW_E_NOSPACE,    /* encode: the caller's buffer is too small */
    SK_FLOW_E__COUNT
};

typedef struct sk_flow_hdr {
    uint64_t flow_id; /* chosen by the origin, never 0 */
    uint8_t hops;     /* hops the receiver may still use, 1..SK_FLOW_MAX_HOPS */
    uint8_t flags;
    uint16_t addr_len;
    uint8_t origin_len, dest_len;
    char addr[SK_FLOW_ADDR_MAX + 1]; /* parsed strings are NUL-terminated */
    char origin[SK_FLOW_ID_MAX + 1];
    char dest[SK_FLOW_ID_MAX + 1]; /* empty: the receiver picks from its table */
} sk_flow_hdr;

typedef struct sk_flow_hello {
    uint8_t role; /* sk_flow_role */
    uint8_t flags; /* none defined: 0 */
    uint8_t from_len, to_len;
    uint64_t instance;    /* the dialler's router instance (its HELLO's) */
    uint64_t link_id;     /* the dialler's connector link, for counters and logs */
    uint64_t tls_version; /* TLS config version it was made with; 0: plain */
    char from[SK_FLOW_ID_MAX + 1]; /* the dialler */
    char to[SK_FLOW_ID_MAX + 1];   /* the router it meant to reach */
} sk_flow_hello;

typedef struct sk_flow_verdict {
    uint8_t code;     /* sk_flow_verdict_code */
    uint8_t detail;   /* BAD_HEADER, HOP_LIMIT: an sk_flow_err; REFUSED: errno, capped */
    uint64_t flow_id; /* the FLOW answered, 0 for a HELLO */
} sk_flow_verdict;

/* What to encode: strings by pointer and length (need no NUL). */
typedef struct sk_flow_str {
    const char *p;
    size_t n;
} sk_flow_str;

/* Encoders check what the parser checks, so a router never writes what its
 * neighbour would refuse. They return the bytes written, or -sk_flow_err
 * (SK_FLOW_E_NOSPACE when cap is too small; nothing useful is in buf then). */
int sk_flow_encode_hdr(void *buf, size_t cap, uint64_t flow_id, uint8_t hops, uint8_t flags,
                       sk_flow_str addr, sk_flow_str origin, sk_flow_str dest);
int sk_flow_encode_hello(void *buf, size_t cap, uint8_t role, uint64_t instance,
                         uint64_t link_id, uint64_t tls_version, sk_flow_str from,
                         sk_flow_str to);
int sk_flow_encode_verdict(void *buf, size_t cap, uint8_t code, uint8_t detail,
                           uint64_t flow_id);

enum sk_flow_status { SK_FLOW_NEED_MORE = 0, SK_FLOW_DONE = 1, SK_FLOW_ERROR = -1 };

/* An incremental parser for one message of an expected type, fed chunks of
 * any size (one byte works). Worker-owned; about 1.6 KiB (the FLOW strings),
 * so a connection should hold one only while a message is due. */
typedef struct sk_flow_parser {
    uint8_t type;        /* sk_flow_type expected */
    uint8_t state;       /* private */
    uint8_t field;       /* private: index of the field being read */
    uint8_t want_reverse; /* FLOW: 1 if SK_FLOW_F_REVERSE must be set, else clear */
    uint8_t err;         /* sk_flow_err once SK_FLOW_ERROR was returned */
    uint8_t u8_need, u8_lo, u8_hi, u8_c1; /* private: UTF-8 decoder */
    uint16_t len;        /* declared length (once the preamble is in) */
    uint16_t pos;        /* bytes of the message consumed so far */
    uint16_t err_at;     /* offset in the message of the offending byte */
    uint16_t n;          /* private: bytes of the current field read */
    uint16_t str_len;    /* private */
    uint64_t acc;        /* private: the integer being assembled */
    union {
        sk_flow_hdr hdr;
        sk_flow_hello hello;
        sk_flow_verdict verdict;
    } out; /* valid on SK_FLOW_DONE; hdr.flow_id as soon as it was read */
} sk_flow_parser;

/* (Re)arms p for a message of type (sk_flow_type). want_reverse: FLOW only. */
void sk_flow_parser_init(sk_flow_parser *p, int type, bool want_reverse);
/* Feeds a chunk. *consumed gets the bytes of data used: on SK_FLOW_DONE the
 * rest of data (client bytes, or the next message) is the caller's. Once
 * DONE or ERROR, further calls return the same and consume nothing. */
int sk_flow_parse(sk_flow_parser *p, const void *data, size_t len, size_t *consumed);
/* The stream ended: SK_FLOW_E_NONE if no message was started (an idle
 * pooled connection closing) or it was complete, else SK_FLOW_E_TRUNCATED,
 * and p is put in the error state. */
int sk_flow_parse_eof(sk_flow_parser *p);

/* The verdict that answers a refused message: HOP_LIMIT or BAD_HEADER. */
int sk_flow_err_verdict(int err);
const char *sk_flow_err_name(int err);         /* "bad_magic", ... ; "?" if unknown */
const char *sk_flow_verdict_name(int code);    /* "ok", "no_route", ... */

/* Refusals by reason, for /metrics (any writer: atomic adds). */
typedef struct sk_flow_errors {
    _Atomic uint64_t n[SK_FLOW_E__COUNT];
} sk_flow_errors;

static inline void sk_flow_errors_count(sk_flow_errors *c, int err)
{
    if (err > SK_FLOW_E_NONE && err < SK_FLOW_E__COUNT)
        SK_ADD(&c->n[err], 1);
}

#endif /* SKIFF_INTERNAL_H */
