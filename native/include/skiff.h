/*
 * skiff.h -- the whole public C API of the Skiff engine.
 *
 * This header is the only one cffi sees (router/_native is built from it),
 * so it contains no preprocessor logic beyond include guards and plain
 * #define constants.
 *
 * Threading model: sk_* functions are called from the control thread (the
 * Python event loop or a loader thread). The engine's I/O workers are C
 * threads that never call back into the caller; everything they want to say
 * arrives as sk_event records, read with sk_engine_drain() after the
 * engine's event fd becomes readable.
 *
 * Ownership: every object returned by a *_create/_open function is owned by
 * the caller until handed to a function documented as taking ownership, or
 * released with its *_release/_free function.
 */
#ifndef SKIFF_H
#define SKIFF_H

#include <stddef.h>
#include <stdint.h>

#define SK_ERRLEN 256
/* bucket i counts values <= sk_hist_bound_ns(i): 1, 1.5, 2, 2.5, 3, 4, 5, 7.5
 * times each power of ten from 1 us to 7.5 s, then 10 s; the last is +Inf */
#define SK_HIST_BUCKETS 58
#define SK_PRIO_HIGH 0
#define SK_PRIO_NORMAL 1
#define SK_CPU_WORDS 16 /* sk_engine_options.worker_cpus: CPUs 0-1023, 64 per word */

typedef struct sk_engine sk_engine;
typedef struct sk_listener sk_listener;
typedef struct sk_target sk_target;
typedef struct sk_routes sk_routes;
typedef struct sk_tls_config sk_tls_config;
typedef struct sk_peer sk_peer;

/* ---------------------------------------------------------------- engine */

typedef struct sk_engine_options {
    int worker_threads;        /* 0: one per CPU */
    int connect_timeout_ms;    /* outbound connect time-out (default 5000) */
    int max_connect_attempts;  /* targets tried per client; 0 (default): each once, at most 8 */
    int backoff_initial_ms;    /* first down period of a failed target (500) */
    int backoff_max_ms;        /* cap of the exponential back-off (30000) */
    int relay_buffer_bytes;    /* bound per direction per connection (65536) */
    int keepalive;             /* SO_KEEPALIVE on relayed sockets (1) */
    int event_ring_size;       /* events per worker per priority, 2^n (4096) */
    int high_check_budget_us;  /* sample the CPU clock at the in-batch checks this long
                                  before a timer's deadline (250) */
    int events_per_wakeup;     /* epoll batch size (64) */
    int splice_pipes;          /* plain relays move bytes with splice(2) through at
                                  most this many pipes per worker, held only while
                                  bytes wait; beyond that, and with TLS, they copy.
                                  0: always copy (32) */
    uint64_t worker_cpus[SK_CPU_WORDS]; /* CPU affinity (HAProxy's cpu-map auto:
                                  one CPU per thread): bit c of word c/64 set
                                  for each CPU; worker i runs on the i-th set CPU
                                  (round robin when fewer CPUs than workers).
                                  Every CPU must be in the creating thread's
                                  allowed set. All zero (default): no pinning,
                                  workers inherit the creating thread's set */
    int set_worker_nice;       /* 1: the workers run at worker_nice (nginx's
                                  worker_priority); 0 (default): they inherit
                                  the creating thread's nice value */
    int worker_nice;           /* -20 to 19; below the creating thread's value
                                  needs CAP_SYS_NICE or RLIMIT_NICE, or
                                  sk_engine_create fails */
} sk_engine_options;

void sk_engine_options_init(sk_engine_options *opts);

/* Starts the workers. Returns NULL and fills err on failure. */
sk_engine *sk_engine_create(const sk_engine_options *opts, char *err, size_t errlen);

/* Stops accepting and relaying, joins every worker, closes every socket and
 * frees every connection and buffer. Objects the caller still holds
 * (listeners, targets) stay valid for stats until released. Idempotent. */
void sk_engine_stop(sk_engine *e);

/* Frees the engine; sk_engine_stop() must have been called. */
void sk_engine_destroy(sk_engine *e);

int sk_engine_worker_count(const sk_engine *e);

/* The CPUs worker may run on, as the kernel reports them now
 * (pthread_getaffinity_np): fills mask[0..words) like worker_cpus and
 * returns how many CPUs are set, or -1 (bad worker, not started, error). */
int sk_engine_worker_affinity(sk_engine *e, int worker, uint64_t *mask, int words);

/* The CPU worker was pinned to at create, or -1 when it was not pinned. */
int sk_engine_worker_cpu(const sk_engine *e, int worker);

/* Readable (eventfd semantics) when events are pending. */
int sk_engine_event_fd(const sk_engine *e);

/* ---------------------------------------------------------------- events */

enum sk_event_type {
    SK_EV_TIMER = 1,           /* id: timer id; a: lateness ns */
    SK_EV_TIMER_CANCELLED,     /* id: timer id; a: 1 if it had still been pending */
    SK_EV_LISTENER_CLOSED,     /* id: listener user id; every worker let go */
    SK_EV_TARGET_DOWN,         /* id: target user id; a: errno; b: down for ms */
    SK_EV_TARGET_UP,           /* id: target user id */
    SK_EV_ACCEPT_PAUSED,       /* id: listener user id; a: errno (EMFILE/ENFILE) */
    SK_EV_APP_OPEN,            /* id: app conn id; a: listener user id (accepted,
                                  b = 0) or sk_app_connect's user_id (b = 1) */
    SK_EV_APP_READABLE,        /* id: app conn id; bytes wait for sk_app_read */
    SK_EV_APP_CLOSED,          /* id: app conn id; a: 0, or why a dial failed
                                  before any APP_OPEN (see sk_app_connect) */
    SK_EV_CLOSE_DONE           /* id: request id from sk_engine_close_flows */
};

typedef struct sk_event {
    uint32_t type;
    uint32_t worker;
    uint64_t id;
    int64_t a;
    int64_t b;
} sk_event;

/* Copies up to max pending events into out, high priority first (all
 * workers), then normal. Returns the count. *overflow is set to 1 when some
 * worker dropped events because its ring was full since the last drain: the
 * caller must then resynchronise from the counters. */
int sk_engine_drain(sk_engine *e, sk_event *out, int max, int *overflow);

/* Reads and clears the event fd's counter (non-blocking). */
void sk_engine_ack_event_fd(sk_engine *e);

/* ---------------------------------------------------------------- timers */

/* Schedules a timer on a worker (-1: round robin). Fires SK_EV_TIMER after
 * delay_ns, then every period_ns if non-zero. Returns the timer id (> 0) or
 * 0 on error. */
uint64_t sk_timer_start(sk_engine *e, int worker, int prio, uint64_t delay_ns,
                        uint64_t period_ns);

/* Asynchronous: the owning worker removes the timer and reports
 * SK_EV_TIMER_CANCELLED; no SK_EV_TIMER for it is produced after that.
 * Returns -1 for an unknown id. */
int sk_timer_cancel(sk_engine *e, uint64_t timer_id);

/* ---------------------------------------------------------------- stats */

typedef struct sk_hist {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t max_ns;
    uint64_t cumulative[SK_HIST_BUCKETS]; /* count with value <= bound(i) */
} sk_hist;

/* Upper bound of bucket i in nanoseconds (UINT64_MAX for the last). */
uint64_t sk_hist_bound_ns(int i);

/* Timer lateness of one priority class, summed over workers (worker < 0)
 * or for one worker. Returns -1 on bad arguments. */
int sk_engine_timer_lateness(sk_engine *e, int prio, int worker, sk_hist *out);

/* The engine's own share of that lateness: from the later of the deadline
 * and the worker's wake-up to the timer's run, i.e. time spent on other work
 * first. Lateness minus this is the operating system's scheduling delay. */
int sk_engine_timer_dispatch_delay(sk_engine *e, int prio, int worker, sk_hist *out);

/* The worker's own CPU time (its thread CPU clock) over that same span: what
 * the engine's work cost, which preemption cannot inflate. When a timer came
 * due in the middle of a batch the span starts at the last in-batch check
 * before its deadline (at most one unit of work early: the clock is sampled
 * at every check within high_check_budget_us of a deadline, and at a check
 * whenever the last sample is 50 us old while a deadline is within 10 ms; a
 * TLS handshake's pause points are checks too), so this is an upper bound;
 * each figure is also capped by the timer's dispatch delay (CPU time over a
 * span is at most its wall time), which makes it exact when the worker was
 * not preempted after the timer became ready. A timer that came due more than 10 ms
 * into one batch without an in-batch check in its last 10 ms (a normal
 * timer while no high one is pending) is not counted here. */
int sk_engine_timer_dispatch_cpu(sk_engine *e, int prio, int worker, sk_hist *out);

/* The figures of sk_engine_timer_dispatch_cpu whose span the worker was not
 * preempted in (its involuntary context switches, getrusage RUSAGE_THREAD,
 * the same at the sample the span counts from and at the timer's run). The
 * CPU clock is not immune to preemption: a worker switched out in the
 * middle of a unit of work comes back to cold caches, and a deadline that
 * passed while it was off its CPU gets the whole unit's CPU, from before
 * the deadline. This is the engine's own share without that. */
int sk_engine_timer_dispatch_cpu_unpreempted(sk_engine *e, int prio, int worker, sk_hist *out);

typedef struct sk_worker_stats {
    uint64_t busy_ns;      /* wall time spent outside epoll_wait */
    uint64_t cpu_ns;       /* the thread's CPU time */
    uint64_t wakeups;
    uint64_t io_events;
    uint64_t timers_fired;
    uint64_t high_rechecks; /* in-batch re-checks of the high heap */
    uint64_t connections;   /* currently owned */
} sk_worker_stats;

int sk_engine_worker_stats(sk_engine *e, int worker, sk_worker_stats *out);

typedef struct sk_engine_counters {
    uint64_t conns_live;        /* connection objects allocated */
    uint64_t bufs_live;         /* relay/app buffers allocated */
    uint64_t buf_bytes_live;    /* bytes in those buffers */
    uint64_t accepted;
    uint64_t connects_failed;
    uint64_t flows_failed;      /* clients closed because no target worked */
    uint64_t accept_paused;     /* EMFILE/ENFILE pauses */
    uint64_t limit_rejected;    /* refused by a listener connection limit */
    uint64_t events_dropped;    /* ring overflows */
    uint64_t routes_version;
    uint64_t tls_handshakes;    /* completed, both roles */
    uint64_t tls_failures;      /* failed or timed out handshakes */
    uint64_t tls_unexpected_eof; /* peers that closed TCP without close_notify */
    uint64_t tls_closed_old;    /* closed by sk_tls_close_older */
    uint64_t pipes_live;        /* splice pipes open, pooled ones included */
    uint64_t pool_idle_in;      /* idle pooled data connections other routers keep here */
    uint64_t pool_idle_out;     /* idle pooled data connections this engine keeps */
    uint64_t pipes_in_use;      /* splice pipes holding bytes of a flow */
    uint64_t splice_fallbacks;  /* reads copied because every pipe was in use */
    uint64_t app_live;          /* app connections held now, accepted and dialled
                                   (dials in progress included) */
    uint64_t app_outbound_live; /* of those, dialled by sk_app_connect */
    uint64_t app_connects_failed; /* dials that ended before SK_EV_APP_OPEN
                                   (refused, timed out, TLS), cancels excluded */
    uint64_t tls_resumed;       /* of tls_handshakes, those that resumed a session */
    uint64_t app_direct_writes; /* sk_app_write calls that sent on the caller's thread */
    uint64_t app_direct_reads;  /* recv calls sk_engine_app_poll made that returned bytes */
    uint64_t tls_detached;      /* server connections that left OpenSSL after the
                                   handshake for the engine's record layer */
    uint64_t tls_yields;        /* handshakes paused inside OpenSSL because a
                                   high-priority timer was due (SK_TLS_YIELD) */
    uint64_t accept_deferred;   /* listener events whose accepts stopped at the
                                   time budget (the rest on the next round) */
    uint64_t bulk_turns;        /* splicing turns longer than a short one's 256 KiB
                                   (a worker with only bulk flows: SK_BULK_TURN) */
    uint64_t served_between;    /* events that were not a bulk flow's, served between
                                   two bulk turns (sk_worker_serve_between) */
} sk_engine_counters;

void sk_engine_counters_get(sk_engine *e, sk_engine_counters *out);

typedef struct sk_flow_stats {
    uint64_t opened;
    uint64_t closed;
    uint64_t bytes_in;   /* from the client (listener) / from the target (target) */
    uint64_t bytes_out;  /* to the client / to the target */
    uint64_t failed;     /* listener: clients no target served; target: connect failures */
    uint64_t active;     /* open now */
} sk_flow_stats;

/* ------------------------------------------------------------- listeners */

typedef struct sk_listener_options {
    const char *host;      /* numeric IPv4/IPv6 address; "" = all (IPv6 dual-stack) */
    int port;              /* 0 = choose; see sk_listener_port */
    int backlog;
    uint32_t address_id;   /* route table index for relayed listeners */
    int app;               /* 1: deliver connections to Python (SK_EV_APP_*) */
    int max_connections;   /* 0 = unlimited; data connections (data_ok) leave the
                              count once their first bytes say so */
    uint64_t user_id;      /* echoed in events */
    int tls_slot;          /* -1: plain TCP; else terminate TLS with that slot's config */
    int authenticate_peer; /* TLS: require a client certificate the CA file trusts */
    int tls_optional;      /* TLS: a client whose first byte is not a TLS record
                              stays plain (management listeners without requireSsl);
                              decided when that byte arrives: the client speaks first */
    int data_ok;           /* inter-router listener: a connection whose first bytes
                              are the data-plane magic "SK" is a data connection
                              handled by the engine (FLOW, VERDICT, relay); any
                              other stays on the listener's usual path (app or relay) */
    int data_pool_cap;     /* data_ok: pooled (HELLO) connections idle at once on this
                              listener; beyond, a HELLO gets OVERLOADED. 0: no cap */
    int balanced;          /* relayed listener: pick the target with the fewest open
                              flows plus path cost over every target in the network
                              (Skupper's "balanced"); 0: lowest cost first, then the
                              fewest open flows (Skupper's "closest") */
    int tls_resumption;    /* TLS: how clients may resume, SK_TLS_RESUME_* */
} sk_listener_options;

/* tls_resumption: a stateless TLS ticket (the session, encrypted; the
 * server keeps nothing), a ticket naming a session in the profile's bounded
 * server cache (HAProxy's no-tls-tickets), or no ticket at all (the
 * cheapest handshake; every connection a full one). */
#define SK_TLS_RESUME_TICKETS 0
#define SK_TLS_RESUME_CACHE 1
#define SK_TLS_RESUME_OFF 2

void sk_listener_options_init(sk_listener_options *opts);

/* Binds one SO_REUSEPORT socket per worker and starts accepting. A fixed
 * port must be free of any other socket first (a bind without SO_REUSEPORT
 * is tried): another process's SO_REUSEPORT listener is never joined. */
sk_listener *sk_listener_open(sk_engine *e, const sk_listener_options *opts,
                              char *err, size_t errlen);
int sk_listener_port(const sk_listener *l);
void sk_listener_stats(const sk_listener *l, sk_flow_stats *out);

/* Asynchronous: stops accepting at once, and leaves the port at once (the
 * sockets stop listening here; their workers close them later),
 * optionally closes the listener's open flows, and reports
 * SK_EV_LISTENER_CLOSED when every worker has let go. */
void sk_listener_close(sk_listener *l, int drop_flows);

/* Drops the caller's reference; the listener must have been closed. */
void sk_listener_release(sk_listener *l);

/* --------------------------------------------------------------- targets */

/* Shared, mutable state of one connect target (a tcpConnector): open
 * connection count, down-until time and back-off step, counters. Successive
 * route tables share it. Reference counted. */
sk_target *sk_target_create(sk_engine *e, uint64_t user_id);
void sk_target_release(sk_target *t);
void sk_target_stats(const sk_target *t, sk_flow_stats *out);
/* 1 while marked down after a failure */
int sk_target_is_down(const sk_target *t);

/* ----------------------------------------------------------- route table */

sk_routes *sk_routes_create(uint32_t n_addresses);

/* Adds a target for an address. ip is numeric (resolution is the control
 * plane's job); host is the name it came from. With tls_slot >= 0 the engine
 * originates TLS with that slot's config: SNI is sent for DNS names, and with
 * verify_host the certificate must match host (DNS name or IP SAN). */
int sk_routes_add(sk_routes *r, uint32_t address_id, sk_target *t, const char *ip,
                  int port, const char *host, uint32_t weight, int tls_slot,
                  int verify_host, char *err, size_t errlen);

/* Frees a table that was never published. */
void sk_routes_free(sk_routes *r);

/* The address's name (the tcpListener/tcpConnector address): written in the
 * FLOW headers of flows to it, and how an incoming FLOW's address is looked up
 * (names must be unique in a table). */
int sk_routes_set_address(sk_routes *r, uint32_t address_id, const char *name, char *err,
                          size_t errlen);

/* A remote destination for an address: router dest_router_id serves it
 * (targets: how many targets it has there, informational), reached through
 * the neighbour next_hop at cost (> 0; local targets cost 0). The engine
 * chooses the lowest cost, then the fewest open flows; a destination whose
 * attempt failed is backed off like a target. Its state (open flows, back-off)
 * is kept per (next_hop, address id, dest_router_id) across tables. */
int sk_routes_add_remote(sk_routes *r, uint32_t address_id, const char *dest_router_id,
                         uint32_t cost, sk_peer *next_hop, uint32_t targets, char *err,
                         size_t errlen);

/* Takes ownership and swaps it in atomically; new connections use it,
 * connections already relayed are untouched. Returns the table's version. */
uint64_t sk_engine_publish_routes(sk_engine *e, sk_routes *r);

/* Asynchronously closes every open flow of a target (dropTcpConnections).
 * Reports SK_EV_CLOSE_DONE with the returned request id when all workers
 * have done it. */
uint64_t sk_engine_close_target_flows(sk_engine *e, sk_target *t);

/* ------------------------------------------------------------- data plane */

/* This router's id: the FLOW origin of flows it originates, and the
 * destination it terminates. 0, or -1 when empty or longer than 255 bytes. */
int sk_engine_set_router_id(sk_engine *e, const char *router_id);

/* A neighbour router that data connections are dialled to (one per flow):
 * its router id, numeric ip:port (its inter-router listener), and the link's
 * sslProfile (tls_slot >= 0: TLS client with that slot's current config,
 * pinned per connection; its certificate is offered for mutual TLS;
 * verify_host checks host, DNS name or IP SAN, as for targets). Shared and
 * reference counted like sk_target; successive route tables share it. */
typedef struct sk_peer_options {
    const char *router_id;
    const char *ip;
    int port;
    const char *host;
    int tls_slot;
    int verify_host;
    uint64_t user_id;
    uint32_t pool_size;    /* warm OUTBOUND data connections kept per worker (HELLO
                              answered OK, idle until a flow claims one); refilled
                              as they are used. 0 (default): dialled per flow */
    uint32_t pool_idle_ms; /* an idle pooled connection is closed after this
                              (not refilled until the next use); 0: 60000 */
    uint64_t instance;     /* HELLO fields: this router's instance, the link id;
                              reverse: the neighbour's instance its HELLOs must
                              carry (0: any) */
    uint64_t link_id;
    /* INBOUND direction (docs/dataplane.md, "Pools (INBOUND)") */
    int reverse;           /* 1: a reverse peer, made by the router that ACCEPTED
                              the link (ip and port unused, never dialled): flows to
                              it claim the idle INBOUND connections it dialled here
                              (REVERSE). The newest for a router id takes
                              its INBOUND HELLOs. */
    uint32_t inbound_pool_size; /* dialler: idle INBOUND connections kept per
                              worker at the peer (filled at once, refilled when
                              claimed or dead, with back-off) */
    uint32_t pool_max;     /* demand sizing: a per-worker pool target grows up to
                              this (0: 4 x the configured size, at least 8; never
                              below the configured size) */
    uint32_t inbound_cap;  /* reverse: idle INBOUND connections accepted at once
                              (all workers; over it: OVERLOADED); 0: 64 */
    uint32_t pool_wait_ms; /* reverse: how long a flow waits for an idle INBOUND
                              connection when none is left (0: connect_timeout_ms) */
    uint32_t pool_wait_max; /* reverse: flows waiting at once per worker (0: 64) */
} sk_peer_options;

void sk_peer_options_init(sk_peer_options *o);
sk_peer *sk_peer_create(sk_engine *e, const sk_peer_options *o, char *err, size_t errlen);
void sk_peer_release(sk_peer *p);
/* The owner is done with p (control thread): a reverse peer leaves the engine's
 * registry (later INBOUND HELLOs naming it are REFUSED), pools stop refilling,
 * idle pooled connections close and waiting flows are retried elsewhere; then
 * the owner's reference is dropped. Peers with INBOUND pools or reverse must be
 * ended with this (sk_peer_release would leave them to the engine's end). */
void sk_peer_close(sk_peer *p);

typedef struct sk_peer_stats {
    uint64_t flows;      /* data connections dialled to it that got VERDICT OK */
    uint64_t active;     /* data connections to it open now (dialling and idle
                            pooled ones included) */
    uint64_t bytes_in;   /* read from its data connections */
    uint64_t bytes_out;  /* written to them */
    uint64_t failures;   /* dials that failed: connect, TLS, EOF or time-out
                            before the verdict, or a verdict other than OK (pooled
                            connections' HELLOs included) */
    uint64_t resets;     /* data connections ended by a reset after OK */
    uint64_t destinations; /* remote destinations (address, router) reached through it */
    uint64_t destinations_down; /* of those, backing off after a failed attempt */
    uint64_t pool_idle;  /* warm pooled connections waiting now (all workers) */
    uint64_t pool_hits;  /* flows that claimed a pooled connection */
    uint64_t pool_misses; /* flows dialled because the worker's pool was empty */
    uint64_t pool_stale;  /* idle pooled connections closed unclaimed: their TLS
                             config was older than the link profile's current one */
    /* INBOUND direction */
    uint64_t inbound_idle; /* dialler: idle INBOUND connections kept at the peer now */
    uint64_t inbound_claims; /* dialler: INBOUND connections claimed by the peer (FLOW
                                REVERSE) */
    uint64_t inbound_failures; /* dialler: INBOUND dials that failed before OK */
    uint64_t inbound_accepted; /* reverse: INBOUND HELLOs answered OK */
    uint64_t hello_refused; /* reverse: INBOUND HELLOs refused: wrong instance, or
                               closing */
    uint64_t hello_overloaded; /* reverse: INBOUND HELLOs over inbound_cap */
    uint64_t pool_waits;   /* reverse: flows that waited for an idle connection */
    uint64_t pool_exhausted; /* reverse: flows whose wait timed out or found the
                                queue full (failed like OVERLOADED) */
    uint64_t pool_handoffs; /* reverse: idle connections moved between workers */
    uint64_t pool_target;  /* current per-worker pool target (the largest over
                              workers): OUTBOUND or INBOUND, after demand sizing */
} sk_peer_stats;

void sk_peer_stats_get(sk_peer *p, sk_peer_stats *out);

#define SK_DP_VERDICTS 6  /* verdict codes: ok, no_route, refused, hop_limit,
                             bad_header, overloaded */
#define SK_DP_REASONS 20  /* header refusal reasons (index: sk_dp_reason_name) */

typedef struct sk_dataplane_counters {
    uint64_t data_accepted;      /* data connections accepted (sniffed "SK") */
    uint64_t flows_originated;   /* flows of local clients sent to a remote router, OK */
    uint64_t flows_transited;    /* flows forwarded to a next hop, OK */
    uint64_t flows_terminated;   /* flows delivered to a local target, OK */
    uint64_t origin_retries;     /* remote attempts of local clients that failed (the
                                    client is retried while a candidate is left) */
    uint64_t verdicts_sent[SK_DP_VERDICTS];
    uint64_t verdicts_received[SK_DP_VERDICTS];
    uint64_t header_errors[SK_DP_REASONS]; /* refused incoming messages by reason */
    uint64_t hello_unknown;      /* INBOUND HELLOs from a router with no reverse peer
                                    here (REFUSED) */
} sk_dataplane_counters;

void sk_engine_dataplane_counters(sk_engine *e, sk_dataplane_counters *out);
/* Metric labels: "bad_magic", ... ("?" if unknown); "ok", "no_route", ... */
const char *sk_dp_reason_name(int reason);
const char *sk_dp_verdict_name(int code);

/* ------------------------------------------------------- connection list */

typedef struct sk_conn_info {
    uint64_t id;
    uint64_t listener_id;   /* user id of the accepting listener */
    uint64_t target_id;     /* user id of the target (0 if none) */
    uint32_t worker;
    uint32_t app;           /* delivered to Python */
    uint32_t outbound;      /* app: dialled by sk_app_connect (listener_id 0,
                               peer is the remote address) */
    char peer[64];          /* client address "ip:port" */
    char target[64];        /* target address "ip:port" */
    uint64_t bytes_in;      /* from the client */
    uint64_t bytes_out;     /* to the client */
    uint64_t opened_ns;     /* CLOCK_MONOTONIC */
    uint64_t tls_version;   /* pinned TLS config version, 0 = plain */
    uint64_t tls_ordinal;
    char peer_subject[128]; /* peer certificate subject, "" if none */
    char tls_protocol[16];  /* e.g. "TLSv1.3", "" if plain */
    char tls_cipher[64];
    char remote_router[64]; /* a flow across routers: the router it goes to
                               (remote_incoming 0) or came from (1); "" if local */
    uint32_t remote_incoming;
} sk_conn_info;

/* Fills up to max entries; returns how many connections there are in all
 * (may exceed max). */
int sk_engine_list_connections(sk_engine *e, sk_conn_info *out, int max);

/* One connection by id (as in SK_EV_APP_OPEN): 0, or -1 when unknown. */
int sk_engine_conn_info(sk_engine *e, uint64_t conn_id, sk_conn_info *out);

/* ------------------------------------------------ connections to Python */

/* Copies up to len received bytes. Returns the count, 0 when nothing is
 * buffered, -1 at end of stream with the buffer empty, -2 unknown id. Reading
 * returns credit: the worker resumes reading the socket. */
int64_t sk_app_read(sk_engine *e, uint64_t conn_id, void *buf, size_t len);

/* Queues a copy of buf for the owning worker to send. Python writes whole
 * protocol frames. Returns 0, -2 unknown id, -3 closed. */
int sk_app_write(sk_engine *e, uint64_t conn_id, const void *buf, size_t len);

/* Direct reads. When on (sk_engine_app_direct_reads(e, 1), before the
 * connections open), every plain app connection that opens afterwards is
 * read by the control thread itself instead of by its worker: its socket
 * joins an edge-triggered epoll set (sk_engine_app_poll_fd), and when that
 * fd is readable the control thread calls sk_engine_app_poll, which reads
 * the ready sockets into each connection's input (the same credit as the
 * worker's reads: nothing is read while relay_buffer_bytes wait) and
 * returns the ids whose input became readable, in place of the
 * SK_EV_APP_READABLE a worker would emit (none is emitted for them). So a
 * request never waits for a busy worker to be scheduled. The worker still
 * writes what direct writes could not, runs the keep-alive and closes the
 * connection; a receive error the reader sees reaches it as a kick. An
 * SK_EV_APP_OPEN is emitted before the connection joins the set, so a
 * caller that drains events before handling the returned ids sees the open
 * first. TLS connections are read by their worker in any case. */
void sk_engine_app_direct_reads(sk_engine *e, int on);
int sk_engine_app_poll_fd(const sk_engine *e);
/* Returns how many ids it stored (at most max, at most 64 a call). */
int sk_engine_app_poll(sk_engine *e, uint64_t *ids, int max);

/* How long app connection bytes waited for the other thread, over all app
 * connections (accepted and dialled) since the engine started:
 * SK_APP_WAIT_INPUT from a worker receiving bytes to sk_app_read taking them
 * (the control loop's pick-up delay), SK_APP_WAIT_OUTPUT from sk_app_write
 * queueing into an empty queue to the owning worker taking the queue to send
 * it (the worker's wake-up delay), SK_APP_WAIT_RECEIVE from the kernel
 * queueing received bytes on a plain socket (its receive timestamp) to the
 * worker or a direct read taking them. Returns -1 for a bad which. */
#define SK_APP_WAIT_INPUT 0
#define SK_APP_WAIT_OUTPUT 1
#define SK_APP_WAIT_RECEIVE 2
int sk_engine_app_wait(sk_engine *e, int which, sk_hist *out);

/* Bytes queued and not yet written (so Python can apply its own backpressure). */
int64_t sk_app_pending(sk_engine *e, uint64_t conn_id);

/* Sends frame whenever nothing was written for interval_ms, on a
 * high-priority timer of the owning worker (no Python involved). interval 0
 * turns it off. */
int sk_app_set_keepalive(sk_engine *e, uint64_t conn_id, const void *frame, size_t len,
                         uint32_t interval_ms);

/* Closes after the queued bytes are written (abort=0) or at once with RST.
 * A connection sk_app_connect still dials is cancelled (APP_CLOSED with
 * ECANCELED, no APP_OPEN). */
int sk_app_close(sk_engine *e, uint64_t conn_id, int abort);

/* Outbound app connections (an inter-router connector dialling a neighbour):
 * the engine connects, does the TLS client side, and then the connection is
 * exactly like an accepted one (sk_app_read/write/pending/set_keepalive/
 * close, sk_engine_conn_info with app = outbound = 1). */
typedef struct sk_app_connect_options {
    const char *ip;       /* numeric IPv4 or IPv6 address (no DNS on a worker) */
    uint16_t port;        /* 1-65535 */
    const char *host;     /* TLS: SNI (DNS names only) and the name verify_host
                             checks (DNS name or IP SAN; "" or NULL: ip) */
    int tls_slot;         /* -1: plain TCP; else the slot's current config,
                             pinned: its certificate is offered (mutual TLS)
                             and, with a CA, the peer's is verified */
    int verify_host;      /* TLS: the peer certificate must match host (only
                             when the slot's config has a CA: without one the
                             peer is not verified at all, as for targets) */
    uint64_t user_id;     /* echoed in SK_EV_APP_OPEN's a */
    uint32_t timeout_ms;  /* connect and TLS handshake together; 0: 10000 */
    int worker;           /* the owning worker; -1: round robin */
} sk_app_connect_options;

#define SK_APP_CONNECT_TIMEOUT_MS 10000

void sk_app_connect_options_init(sk_app_connect_options *o);

/* Starts a non-blocking dial on a worker and returns the connection's id
 * (> 0), or 0 with err filled (bad address, port, slot or worker, a TLS slot
 * with nothing published, engine stopped, out of memory). Never blocks.
 * Exactly one SK_EV_APP_CLOSED ends every id; before it either
 *   SK_EV_APP_OPEN(id, a = user_id, b = 1) once TCP is up and TLS (when
 *   asked) completed, or nothing: the dial failed and APP_CLOSED's a says
 *   why: an errno (ECONNREFUSED, ETIMEDOUT when timeout_ms passed, ENETUNREACH,
 *   EMFILE, ...), EPROTO for a failed TLS handshake, -n for a peer certificate
 *   that failed verification with X509_V_ERR n (e.g. -62 hostname mismatch,
 *   -18 self-signed, -20 unknown issuer), or ECANCELED when sk_app_close or
 *   the engine's stop ended the dial.
 * Bytes written and keep-alive set before APP_OPEN are sent once open. */
uint64_t sk_app_connect(sk_engine *e, const sk_app_connect_options *o, char *err,
                        size_t errlen);

/* OpenSSL's words for an X509_V_ERR code (APP_CLOSED's a is minus one). */
const char *sk_tls_verify_error(int code);

/* ------------------------------------------------------------------- TLS */

/* Loading runs on a loader thread (it reads files and may block: a FIFO, a
 * slow disk); it never touches a worker. Everything that decides whether a
 * config may be published is checked here with the engine's own OpenSSL, on
 * the exact bytes that were hashed. */

#define SK_TLS_SLOTS 64
#define SK_TLS_OK 0
#define SK_TLS_UNCHANGED 1
#define SK_TLS_ERROR -1

/* A parsed CA bundle (trust store): immutable and refcounted, identified by
 * the content hash of the bundle's bytes. A first parse of thousands of CAs
 * takes a second or more, so a bundle is loaded on its own
 * (sk_tls_store_load) and a certificate and key are loaded with the last
 * good store (ca_store below): new material never waits for a bundle. A
 * store's certificates come from a cache shared by all stores (one parsed
 * certificate per distinct DER), so a rewrite parses only what it changed. */
typedef struct sk_tls_store sk_tls_store;

/* Raised by the caller while a bundle load (sk_tls_store_load) runs: a newer
 * write may be pending. The load re-reads the file before its next
 * certificate and, when the bytes changed, goes on with the newest ones
 * (keeping every certificate it parsed): an older bundle is never finished
 * before a newer one is started. Any thread may raise it. */
typedef struct sk_tls_newer sk_tls_newer;
sk_tls_newer *sk_tls_newer_new(void);
void sk_tls_newer_raise(sk_tls_newer *n);
void sk_tls_newer_free(sk_tls_newer *n);

typedef struct sk_tls_load_params {
    const char *cert_file;    /* PEM: certificate, then intermediates; NULL = none */
    const char *key_file;     /* PEM private key; NULL = none */
    const char *ca_file;      /* PEM trust store for peers; NULL = none */
    const char *password;     /* of the key; NULL = none */
    const char *ciphers;      /* TLS 1.2 cipher list or TLS 1.3 suites; NULL = default */
    const char *protocols;    /* e.g. "TLSv1.2 TLSv1.3"; NULL = TLS 1.2 and 1.3 */
    uint64_t ordinal;
    int max_reads;            /* reads of the set until two hashes agree (5) */
    int retry_delay_ms;       /* between such reads (5) */
    const sk_tls_config *previous; /* reuse its trust store when the CA bytes match */
    const char *unchanged_if; /* a fingerprint: SK_TLS_UNCHANGED when equal */
    const sk_tls_store *ca_store; /* sk_tls_load: this trust store, ca_file not read */
    sk_tls_newer *newer;      /* sk_tls_store_load: see sk_tls_newer; NULL = none */
    const sk_tls_store *in_force; /* sk_tls_store_load, with unchanged_if its fingerprint:
                                     the store in force; while the file's stat (inode,
                                     size, times) is the one it was read with,
                                     SK_TLS_UNCHANGED without reading the file */
} sk_tls_load_params;

typedef struct sk_tls_load_result {
    int status;               /* SK_TLS_OK, SK_TLS_UNCHANGED or SK_TLS_ERROR */
    char error[512];          /* names the file and the reason */
    char warnings[512];
    char fingerprint[65];     /* SHA-256 over every file and setting, hex */
    int expired;
    int not_yet_valid;
    int untrusted;            /* certificate does not chain to the CA file */
    int reads;
    int ca_reused;
    int64_t not_after;        /* unix seconds */
    sk_tls_config *config;    /* SK_TLS_OK: the caller's until published */
    unsigned char *leaf_der;  /* the certificate, DER (for display) */
    size_t leaf_der_len;
    char ca_fingerprint[65];  /* the trust store's content hash, hex; "" = none */
} sk_tls_load_result;

typedef struct sk_tls_store_result {
    int status;               /* SK_TLS_OK, SK_TLS_UNCHANGED or SK_TLS_ERROR */
    char error[512];
    char fingerprint[65];     /* content hash of the bundle, hex */
    int reads;
    int certs;                /* certificates in the bundle */
    sk_tls_store *store;      /* SK_TLS_OK: one reference, the caller's */
    int parsed;               /* of those, parsed by this load (the rest were cached) */
    int restarts;             /* times a newer write replaced the bytes being parsed */
} sk_tls_store_result;

void sk_tls_load_params_init(sk_tls_load_params *p);
void sk_tls_load(const sk_tls_load_params *p, sk_tls_load_result *out);
/* Frees what the result still owns (an unpublished config, the DER copy). */
void sk_tls_result_clear(sk_tls_load_result *r);
void sk_tls_config_free(sk_tls_config *c);
/* Another reference to c (sk_tls_config_free drops one). */
sk_tls_config *sk_tls_config_ref(sk_tls_config *c);
/* Trust store reuse and status: the config's fingerprint (hex). */
const char *sk_tls_config_fingerprint(const sk_tls_config *c);

/* Reads p->ca_file (until two reads agree; a FIFO once) and builds a store of
 * its certificates, on a thread of its own: at nice 10 while they come from
 * the certificate cache, at SCHED_IDLE once it has parsed a few dozen.
 * p->unchanged_if is compared with the bundle's fingerprint (with
 * p->in_force, stat may say "unchanged" without a read); p->newer, raised
 * meanwhile, makes it go on with the file's newest bytes; the other files
 * are not read. A malformed certificate block fails the load, the error
 * naming the file, the certificate's position and its line. (sk_tls_load
 * runs at SCHED_IDLE when it reads a CA file, else at nice 10: it is
 * cheap.) */
void sk_tls_store_load(const sk_tls_load_params *p, sk_tls_store_result *out);
void sk_tls_store_result_clear(sk_tls_store_result *r);
sk_tls_store *sk_tls_store_ref(sk_tls_store *s);
void sk_tls_store_free(sk_tls_store *s);
const char *sk_tls_store_fingerprint(const sk_tls_store *s);
int sk_tls_store_certs(const sk_tls_store *s);

/* The CA certificate cache every trust store is built from: one parsed
 * certificate per distinct DER (SHA-256), shared by the stores that hold it
 * and dropped when the last one goes. */
typedef struct sk_tls_ca_cache_stats {
    uint64_t entries; /* certificates cached now */
    uint64_t parsed;  /* certificates parsed since start (cache misses) */
    uint64_t reused;  /* certificate blocks found in the cache since start */
} sk_tls_ca_cache_stats;
void sk_tls_ca_cache_stats_get(sk_tls_ca_cache_stats *out);

/* A publication slot for one sslProfile: returns its index or -1. */
int sk_tls_slot_create(sk_engine *e);
/* Takes ownership of cfg and swaps it in: connections started from now on
 * use it, open ones keep the version they started with. Returns the version. */
uint64_t sk_tls_publish(sk_engine *e, int slot, sk_tls_config *cfg);
/* Asynchronously closes connections of slot whose pinned ordinal is below
 * oldest_valid. */
int sk_tls_close_older(sk_engine *e, int slot, uint64_t oldest_valid);

#endif /* SKIFF_H */
