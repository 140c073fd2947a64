/* test_app.c -- app connections (app.c): bytes to and from the control
 * thread, keep-alive frames sent by the worker alone, half-close, close after
 * the queue drains, read back-pressure far beyond the credit, direct
 * writes (sent on the writer's thread) racing the worker's queue, its
 * keep-alive frames and its close, and direct reads (the control thread
 * reads the socket itself) with their credit, a reset, and reads, writes
 * and closes racing each other. */
#include "engine_fixture.h"

#include <dirent.h>
#include <stdlib.h>

/* Reads what the app connection has into out (appending); returns -1 at
 * EOF, else the bytes read now. Waits for APP_READABLE when nothing is
 * buffered. */
static int64_t app_read_some(uint64_t id, char *out, size_t cap, size_t *len)
{
    for (;;) {
        int64_t n = sk_app_read(E, id, out + *len, cap - *len);
        if (n > 0) {
            *len += (size_t)n;
            return n;
        }
        if (n == -1)
            return -1;
        if (n != 0)
            return n; /* -2: unknown */
        if (wait_event(SK_EV_APP_READABLE, id, WAIT_MS, NULL) < 0)
            return -9;
    }
}

/* Bytes of in[0..len) that differ from the fixture's pattern. */
static size_t pattern_errors(const char *in, size_t len)
{
    size_t bad = 0;
    for (size_t i = 0; i < len; i++)
        bad += (uint8_t)in[i] != pattern(i);
    return bad;
}

/* A client connected to the app listener, and the app's open of it. */
static int app_open(int *fd, sk_event *ev)
{
    *fd = connect_to(sk_listener_port(L_APP));
    REQUIRE(*fd >= 0);
    REQUIRE(wait_event(SK_EV_APP_OPEN, ANY_ID, WAIT_MS, ev) >= 0);
    return 0;
}

static int test_app(void)
{
    REQUIRE(settle() == 0);
    char err[SK_ERRLEN];
    sk_listener_options lo;
    sk_listener_options_init(&lo);
    lo.host = "127.0.0.1";
    lo.app = 1;
    lo.user_id = UID_L_APP;
    L_APP = sk_listener_open(E, &lo, err, sizeof err);
    REQUIRE_MSG(L_APP != NULL, "%s", err);

    int fd = connect_to(sk_listener_port(L_APP));
    REQUIRE(fd >= 0);
    REQUIRE(send_all(fd, "hello", 5) == 0);
    sk_event ev;
    long io = wait_event(SK_EV_APP_OPEN, ANY_ID, WAIT_MS, &ev);
    REQUIRE(io >= 0);
    uint64_t id = ev.id;
    CHECK_EQ_I(ev.a, UID_L_APP);
    long ir = wait_event(SK_EV_APP_READABLE, id, WAIT_MS, NULL);
    REQUIRE(ir >= 0);
    CHECK_OP_I(io, <, ir);

    char in[256];
    size_t inlen = 0;
    while (inlen < 5) {
        int64_t n = app_read_some(id, in, 5, &inlen);
        REQUIRE_MSG(n > 0, "sk_app_read gave %" PRId64, n);
    }
    CHECK(memcmp(in, "hello", 5) == 0);
    CHECK_EQ_I(sk_app_read(E, id, in, sizeof in), 0); /* nothing buffered */

    sk_conn_info info[4];
    int total = sk_engine_list_connections(E, info, 4);
    CHECK_EQ_I(total, 1);
    if (total == 1) {
        CHECK_EQ_U(info[0].id, id);
        CHECK_EQ_U(info[0].app, 1);
        CHECK_EQ_U(info[0].listener_id, UID_L_APP);
        CHECK_EQ_U(info[0].target_id, 0);
    }

    /* echo back through the worker */
    size_t client_got = 0;
    CHECK_EQ_I(sk_app_write(E, id, "hello", 5), 0);
    char back[64];
    CHECK_EQ_U(recv_exact(fd, back, 5), 5);
    CHECK(memcmp(back, "hello", 5) == 0);
    client_got += 5;
    CHECK_OP_I(sk_app_pending(E, id), >=, 0);

    /* keep-alive: "KA" while idle, repeatedly, with no Python involved */
    CHECK_EQ_I(sk_app_set_keepalive(E, id, "KA", 2, 50), 0);
    char ka[6];
    CHECK_EQ_U(recv_exact(fd, ka, 6), 6);
    CHECK(memcmp(ka, "KAKAKA", 6) == 0);
    client_got += 6;
    /* off again; a frame written after switching it off is the last byte */
    CHECK_EQ_I(sk_app_set_keepalive(E, id, NULL, 0, 0), 0);
    CHECK_EQ_I(sk_app_write(E, id, "END", 3), 0);
    char tail[4096];
    size_t tl = 0;
    while (tl < 3 || memcmp(tail + tl - 3, "END", 3) != 0) {
        ssize_t n = recv(fd, tail + tl, sizeof tail - tl, 0);
        if (n <= 0)
            break;
        tl += (size_t)n;
    }
    REQUIRE(tl >= 3 && memcmp(tail + tl - 3, "END", 3) == 0);
    /* only whole keep-alive frames came before it */
    CHECK_EQ_U((tl - 3) % 2, 0);
    for (size_t i = 0; i + 3 < tl; i += 2)
        CHECK(tail[i] == 'K' && tail[i + 1] == 'A');
    client_got += tl;
    CHECK(!readable_within(fd, 200)); /* keep-alive really off */

    /* the client half-closes: the app reads its last bytes, then EOF */
    REQUIRE(send_all(fd, "bye", 3) == 0);
    shutdown(fd, SHUT_WR);
    inlen = 0;
    int64_t n;
    while ((n = app_read_some(id, in, sizeof in, &inlen)) > 0) {
    }
    CHECK_EQ_I(n, -1);
    CHECK_EQ_U(inlen, 3);
    CHECK(memcmp(in, "bye", 3) == 0);
    CHECK_EQ_I(sk_app_read(E, id, in, sizeof in), -1);
    /* half-closed: writing still works */
    CHECK_EQ_I(sk_app_write(E, id, "ciao", 4), 0);
    CHECK_EQ_U(recv_exact(fd, back, 4), 4);
    CHECK(memcmp(back, "ciao", 4) == 0);
    client_got += 4;

    /* close after the queue drains: the client sees the bytes, then EOF */
    CHECK_EQ_I(sk_app_write(E, id, "last", 4), 0);
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    CHECK_EQ_U(recv_exact(fd, back, 4), 4);
    CHECK(memcmp(back, "last", 4) == 0);
    client_got += 4;
    CHECK(recv_eof(fd));
    close(fd);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);
    CHECK_EQ_I(sk_app_read(E, id, in, sizeof in), -2);
    CHECK_EQ_I(sk_app_write(E, id, "x", 1), -2);
    CHECK_EQ_I(sk_app_pending(E, id), -2);
    CHECK_EQ_I(sk_app_close(E, id, 0), -2);
    CHECK_EQ_I(sk_app_set_keepalive(E, id, "KA", 2, 10), -2);

    sk_flow_stats s;
    void *arg[2] = {L_APP, (void *)(uintptr_t)1};
    CHECK(wait_until(listener_closed_n, arg));
    sk_listener_stats(L_APP, &s);
    CHECK_EQ_U(s.opened, 1);
    CHECK_EQ_U(s.closed, 1);
    CHECK_EQ_U(s.active, 0);
    CHECK_EQ_U(s.bytes_in, 8); /* "hello" + "bye" */
    CHECK_EQ_U(s.bytes_out, client_got);
    return 0;
}

typedef struct app_writer {
    int fd;
    size_t len;
} app_writer;

static void *app_writer_main(void *arg)
{
    app_writer *aw = arg;
    static char chunk[8192];
    for (size_t off = 0; off < aw->len;) {
        size_t n = aw->len - off < sizeof chunk ? aw->len - off : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = (char)pattern(off + i);
        if (send_all(aw->fd, chunk, n) != 0)
            break;
        off += n;
    }
    shutdown(aw->fd, SHUT_WR);
    return NULL;
}

/* Much more than the read credit (relay_buffer_bytes): the worker must stop
 * and resume reading as the app consumes, losing nothing. */
static int test_app_backpressure(void)
{
    REQUIRE(settle() == 0);
    enum { LEN = 300000 };
    int fd;
    sk_event ev;
    REQUIRE(app_open(&fd, &ev) == 0);
    uint64_t id = ev.id;
    app_writer aw = {.fd = fd, .len = LEN};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, app_writer_main, &aw) == 0);
    static char in[LEN + 16];
    size_t len = 0, max_chunk = 0;
    int64_t n;
    for (;;) {
        size_t before = len;
        size_t room = sizeof in - len < 5000 ? sizeof in - len : 5000;
        n = app_read_some(id, in, len + room, &len);
        if (n <= 0)
            break;
        if (len - before > max_chunk)
            max_chunk = len - before;
    }
    pthread_join(th, NULL);
    CHECK_EQ_I(n, -1);
    CHECK_EQ_U(len, LEN);
    CHECK_EQ_U(pattern_errors(in, len), 0);
    /* abortive close: the client sees a reset or EOF, the app its close */
    CHECK_EQ_I(sk_app_close(E, id, 1), 0);
    CHECK(recv_eof(fd));
    close(fd);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, NULL) >= 0);
    return 0;
}


static uint64_t direct_writes(void)
{
    sk_engine_counters k;
    sk_engine_counters_get(E, &k);
    return k.app_direct_writes;
}

/* Frames: 'F', writer, seq (4 bytes), payload length (4 bytes), payload;
 * the keep-alive frame is "KA". */
enum { DW_WRITERS = 2, DW_FRAMES = 300, DW_MAXLEN = 20000, DW_HDR = 10 };

typedef struct dw_writer {
    uint64_t id;
    int tid;
    unsigned seed;
    int failed;
} dw_writer;

static uint8_t dw_byte(int tid, uint32_t seq, size_t i)
{
    return (uint8_t)(tid * 31 + seq * 7 + i);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void *dw_main(void *arg)
{
    dw_writer *dw = arg;
    static _Thread_local uint8_t frame[DW_HDR + DW_MAXLEN];
    for (uint32_t seq = 0; seq < DW_FRAMES; seq++) {
        uint32_t len = 1 + (uint32_t)rand_r(&dw->seed) % DW_MAXLEN;
        frame[0] = 'F';
        frame[1] = (uint8_t)dw->tid;
        put32(frame + 2, seq);
        put32(frame + 6, len);
        for (uint32_t i = 0; i < len; i++)
            frame[DW_HDR + i] = dw_byte(dw->tid, seq, i);
        if (sk_app_write(E, dw->id, frame, DW_HDR + len) != 0)
            dw->failed++;
        if (seq % 50 == 0)
            sched_yield();
    }
    return NULL;
}

/* Two threads write frames of random sizes, megabytes more than the socket
 * holds, while the worker sends keep-alive frames every millisecond: the
 * client gets every frame whole, each writer's in order, keep-alive frames
 * only between frames. The first write on an idle connection goes out on
 * the writer's thread. */
static int test_app_direct_writes(void)
{
    REQUIRE(settle() == 0);
    int fd;
    sk_event ev;
    REQUIRE(app_open(&fd, &ev) == 0);
    uint64_t id = ev.id;

    uint64_t d0 = direct_writes();
    CHECK_EQ_I(sk_app_write(E, id, "KA", 2), 0); /* a frame of its own kind */
    CHECK_EQ_U(direct_writes() - d0, 1);
    char ka[2];
    CHECK_EQ_U(recv_exact(fd, ka, 2), 2);

    CHECK_EQ_I(sk_app_set_keepalive(E, id, "KA", 2, 1), 0);
    dw_writer dw[DW_WRITERS];
    pthread_t th[DW_WRITERS];
    for (int i = 0; i < DW_WRITERS; i++) {
        dw[i] = (dw_writer){.id = id, .tid = i, .seed = 12345u + (unsigned)i};
        REQUIRE(pthread_create(&th[i], NULL, dw_main, &dw[i]) == 0);
    }
    /* read while they write: direct writes, queued writes and keep-alives
     * all happen, in whatever order the threads run */
    uint32_t next[DW_WRITERS] = {0};
    int frames = 0, kas = 0, bad = 0;
    static uint8_t body[DW_MAXLEN];
    set_timeouts(fd, WAIT_MS);
    while (frames < DW_WRITERS * DW_FRAMES && !bad) {
        uint8_t h[DW_HDR];
        if (recv_exact(fd, h, 2) != 2) {
            bad = 1;
            break;
        }
        if (h[0] == 'K' && h[1] == 'A') {
            kas++;
            continue;
        }
        if (h[0] != 'F' || h[1] >= DW_WRITERS || recv_exact(fd, h + 2, 8) != 8) {
            bad = 2;
            break;
        }
        int tid = h[1];
        uint32_t seq = get32(h + 2), len = get32(h + 6);
        if (seq != next[tid] || len == 0 || len > DW_MAXLEN || recv_exact(fd, body, len) != len) {
            bad = 3;
            break;
        }
        for (uint32_t i = 0; i < len; i++)
            if (body[i] != dw_byte(tid, seq, i)) {
                bad = 4;
                break;
            }
        next[tid]++;
        frames++;
    }
    for (int i = 0; i < DW_WRITERS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_I(dw[i].failed, 0);
    }
    CHECK_EQ_I(bad, 0);
    CHECK_EQ_I(frames, DW_WRITERS * DW_FRAMES);
    CHECK_OP_U(direct_writes() - d0, >, 1);
    CHECK_EQ_I(sk_app_set_keepalive(E, id, NULL, 0, 0), 0);
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    /* keep-alive frames sent before it was switched off, then EOF */
    char tail[64];
    ssize_t n;
    size_t tl = 0;
    while ((n = recv(fd, tail + tl % 2, 2 - tl % 2, 0)) > 0) {
        tl += (size_t)n;
        if (tl % 2 == 0)
            CHECK(tail[0] == 'K' && tail[1] == 'A');
    }
    CHECK_EQ_I(n, 0);
    CHECK_EQ_U(tl % 2, 0);
    close(fd);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, NULL) >= 0);
    return 0;
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Ends a connection abortively: the client resets it, or the app aborts. */
static void abort_conn(int fd, uint64_t id, int by_client)
{
    if (by_client) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else {
        CHECK_EQ_I(sk_app_close(E, id, 1), 0);
    }
    close(fd);
}

/* After a test's connections closed: none is live and the process has the
 * descriptors open it had before (fds0). */
static int all_closed(int fds0)
{
    REQUIRE(settle() == 0);
    sk_engine_counters k;
    sk_engine_counters_get(E, &k);
    CHECK_EQ_U(k.app_live, 0);
    CHECK_EQ_I(open_fds(), fds0);
    return 0;
}

typedef struct cw_writer {
    uint64_t id;
    int writes;
} cw_writer;

static void *cw_main(void *arg)
{
    cw_writer *cw = arg;
    static _Thread_local char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 400; i++) {
        if (sk_app_write(E, cw->id, chunk, sizeof chunk) != 0)
            break;
        cw->writes++;
    }
    return NULL;
}

/* A writer sends as fast as it can while the connection is closed under it
 * (the client resets, or the app aborts): every socket is closed exactly
 * once, whoever closes it, and nothing is left open or allocated. */
static int test_app_direct_close_race(void)
{
    REQUIRE(settle() == 0);
    int fds0 = open_fds();
    REQUIRE(fds0 > 0);
    for (int round = 0; round < 60; round++) {
        int fd;
        sk_event ev;
        REQUIRE(app_open(&fd, &ev) == 0);
        cw_writer cw = {.id = ev.id};
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, cw_main, &cw) == 0);
        char buf[65536];
        size_t got = 0;
        set_timeouts(fd, WAIT_MS);
        while (got < (size_t)(round % 4) * 20000) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        abort_conn(fd, ev.id, round % 2);
        REQUIRE(wait_event(SK_EV_APP_CLOSED, ev.id, WAIT_MS, NULL) >= 0);
        pthread_join(th, NULL);
        CHECK_OP_I(cw.writes, <=, 400);
    }
    REQUIRE(all_closed(fds0) == 0);
    return 0;
}

/* ------------------------------------------------------------ direct reads */

/* Serves direct reads as the control loop would: waits up to ms for the
 * poll fd, polls, and says whether id was among the connections with new
 * input. */
static int dr_poll(uint64_t id, int ms)
{
    struct pollfd p = {.fd = sk_engine_app_poll_fd(E), .events = POLLIN};
    if (poll(&p, 1, ms) <= 0)
        return 0;
    uint64_t ids[64];
    int n = sk_engine_app_poll(E, ids, 64);
    for (int i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

/* Reads what the connection has into out (appending), polling direct reads
 * while nothing is buffered; -1 at EOF, -9 when nothing came in time. */
static int64_t dr_read_some(uint64_t id, char *out, size_t cap, size_t *len)
{
    uint64_t deadline = mono_ms() + WAIT_MS;
    for (;;) {
        int64_t n = sk_app_read(E, id, out + *len, cap - *len);
        if (n > 0) {
            *len += (size_t)n;
            return n;
        }
        if (n != 0)
            return n; /* -1 EOF, -2 unknown */
        if (mono_ms() > deadline)
            return -9;
        dr_poll(id, 50);
    }
}

static uint64_t counter_direct_reads(void)
{
    sk_engine_counters k;
    sk_engine_counters_get(E, &k);
    return k.app_direct_reads;
}

/* Much more than the credit, read by the control thread itself while it
 * writes replies: byte-exact both ways, the end of stream seen, no byte read
 * by the worker (no APP_READABLE). */
static int test_app_direct_reads(void)
{
    REQUIRE(settle() == 0);
    enum { LEN = 300000 };
    sk_engine_app_direct_reads(E, 1);
    uint64_t reads0 = counter_direct_reads();
    int fd;
    sk_event ev;
    REQUIRE(app_open(&fd, &ev) == 0);
    uint64_t id = ev.id;
    size_t from = evlog_n;
    app_writer aw = {.fd = fd, .len = LEN};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, app_writer_main, &aw) == 0);
    static char in[LEN + 16];
    size_t len = 0, replies = 0;
    int64_t n;
    while ((n = dr_read_some(id, in, sizeof in, &len)) > 0) {
        /* now and then a reply: a direct write between the reads */
        if (len % 7 == 0) {
            CHECK_EQ_I(sk_app_write(E, id, "ok", 2), 0);
            replies++;
        }
    }
    pthread_join(th, NULL);
    CHECK_EQ_I(n, -1);
    CHECK_EQ_U(len, LEN);
    CHECK_EQ_U(pattern_errors(in, len), 0);
    pump(0);
    CHECK_EQ_U(count_events(SK_EV_APP_READABLE, id, from), 0);
    CHECK_OP_U(counter_direct_reads() - reads0, >=, LEN / 16384);
    CHECK_EQ_I(sk_app_close(E, id, 0), 0);
    /* every reply, whole, then the end */
    set_timeouts(fd, WAIT_MS);
    static char back[LEN];
    size_t got = 0;
    for (ssize_t r; (r = recv(fd, back + got, sizeof back - got, 0)) > 0;)
        got += (size_t)r;
    CHECK_EQ_U(got, 2 * replies);
    size_t badr = 0;
    for (size_t i = 0; i < got; i++)
        badr += back[i] != "ok"[i % 2];
    CHECK_EQ_U(badr, 0);
    close(fd);
    REQUIRE(wait_event(SK_EV_APP_CLOSED, id, WAIT_MS, NULL) >= 0);
    sk_engine_app_direct_reads(E, 0);
    return 0;
}

/* A client that resets: the direct read meets the error, the worker closes
 * the connection (APP_CLOSED), nothing is left open. */
static int test_app_direct_read_reset(void)
{
    REQUIRE(settle() == 0);
    sk_engine_app_direct_reads(E, 1);
    int fds0 = open_fds();
    for (int round = 0; round < 20; round++) {
        int fd;
        sk_event ev;
        REQUIRE(app_open(&fd, &ev) == 0);
        REQUIRE(send_all(fd, "abc", 3) == 0);
        char in[16];
        size_t len = 0;
        while (len < 3)
            REQUIRE(dr_read_some(ev.id, in, sizeof in, &len) > 0);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (round % 2)
            send_all(fd, "more", 4); /* unread bytes: the close resets */
        close(fd);
        uint64_t deadline = mono_ms() + WAIT_MS;
        long closed;
        while ((closed = wait_event(SK_EV_APP_CLOSED, ev.id, 10, NULL)) < 0 && mono_ms() < deadline)
            dr_poll(ev.id, 10);
        REQUIRE_MSG(closed >= 0, "round %d: no APP_CLOSED after the reset", round);
    }
    REQUIRE(all_closed(fds0) == 0);
    sk_engine_app_direct_reads(E, 0);
    return 0;
}

typedef struct dr_race {
    uint64_t id;
    _Atomic int stop;
    int writes;
} dr_race;

static void *dr_reader_main(void *arg)
{
    dr_race *r = arg;
    char buf[16384];
    while (!atomic_load(&r->stop)) {
        dr_poll(r->id, 5);
        while (sk_app_read(E, r->id, buf, sizeof buf) > 0)
            ;
    }
    return NULL;
}

static void *dr_writer_main(void *arg)
{
    dr_race *r = arg;
    static _Thread_local char chunk[4096];
    memset(chunk, 'y', sizeof chunk);
    while (!atomic_load(&r->stop) && sk_app_write(E, r->id, chunk, sizeof chunk) == 0)
        if (++r->writes % 64 == 0)
            sched_yield();
    return NULL;
}

/* A reader and a writer on two threads (so each meets the other's token)
 * while the client streams and then resets, or the app aborts: every socket
 * is closed exactly once, whoever holds it, and nothing is left open. */
static int test_app_direct_read_race(void)
{
    REQUIRE(settle() == 0);
    sk_engine_app_direct_reads(E, 1);
    int fds0 = open_fds();
    REQUIRE(fds0 > 0);
    for (int round = 0; round < 40; round++) {
        int fd;
        sk_event ev;
        REQUIRE(app_open(&fd, &ev) == 0);
        dr_race r = {.id = ev.id};
        pthread_t rt, wt;
        REQUIRE(pthread_create(&rt, NULL, dr_reader_main, &r) == 0);
        REQUIRE(pthread_create(&wt, NULL, dr_writer_main, &r) == 0);
        static char chunk[8192];
        memset(chunk, 'x', sizeof chunk);
        set_timeouts(fd, WAIT_MS);
        char sink[65536];
        for (int i = 0; i < 8 + round % 8; i++) {
            if (send_all(fd, chunk, sizeof chunk) != 0)
                break;
            if (recv(fd, sink, sizeof sink, MSG_DONTWAIT) < 0 && errno != EAGAIN)
                break;
        }
        abort_conn(fd, ev.id, round % 2);
        long closed = wait_event(SK_EV_APP_CLOSED, ev.id, WAIT_MS, NULL);
        atomic_store(&r.stop, 1);
        pthread_join(rt, NULL);
        pthread_join(wt, NULL);
        REQUIRE_MSG(closed >= 0, "round %d: no APP_CLOSED", round);
    }
    REQUIRE(all_closed(fds0) == 0);
    sk_engine_app_direct_reads(E, 0);
    return 0;
}

int main(void)
{
    fx_engine_start();
    RUN(test_app);
    RUN(test_app_backpressure);
    RUN(test_app_direct_writes);
    RUN(test_app_direct_close_race);
    RUN(test_app_direct_reads);
    RUN(test_app_direct_read_reset);
    RUN(test_app_direct_read_race);
    return fx_finish("test_app");
}
