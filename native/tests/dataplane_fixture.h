/* dataplane_fixture.h -- what the data-plane tests (test_dataplane.c,
 * test_inbound.c) share: engines named as routers, a byte-exact echo
 * check through a listener, a one-shot server that half-closes or resets,
 * and waits on atomic counters. Include after engine_fixture.h and
 * internal.h; helpers a program does not use are marked unused. */
#ifndef SKIFF_DATAPLANE_FIXTURE_H
#define SKIFF_DATAPLANE_FIXTURE_H

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An engine whose router id is id: 16 KiB relay buffers, short back-off. */
static __attribute__((unused)) sk_engine *dp_engine(const char *id, int workers)
{
    sk_engine_options o;
    sk_engine_options_init(&o);
    o.worker_threads = workers;
    o.relay_buffer_bytes = 16384;
    o.connect_timeout_ms = 2000;
    o.backoff_initial_ms = 100;
    o.backoff_max_ms = 200;
    char err[SK_ERRLEN] = "";
    sk_engine *e = sk_engine_create(&o, err, sizeof err);
    if (!e) {
        fprintf(stderr, "sk_engine_create: %s\n", err);
        exit(1);
    }
    if (sk_engine_set_router_id(e, id) != 0)
        exit(1);
    return e;
}

typedef struct sender {
    int fd;
    const uint8_t *buf;
    size_t len;
    int rc;
} sender;

static void *send_th(void *arg)
{
    sender *s = arg;
    s->rc = send_all(s->fd, s->buf, s->len);
    shutdown(s->fd, SHUT_WR);
    return NULL;
}

/* len seeded bytes through the listener at port, echoed back byte-exact,
 * then EOF: 0, or -1 (with the reason checked). */
static __attribute__((unused)) int echo_exact_on(int port, size_t len, uint64_t seed)
{
    uint8_t *out = malloc(len ? len : 1), *in = malloc(len + 1);
    if (!out || !in)
        return -1;
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(tl_rand(&seed) >> 24);
    int fd = connect_to(port);
    if (fd < 0) {
        free(out);
        free(in);
        return -1;
    }
    sender s = {fd, out, len, 0};
    pthread_t th;
    pthread_create(&th, NULL, send_th, &s);
    size_t got = recv_exact(fd, in, len + 1); /* one more: must be EOF */
    pthread_join(th, NULL);
    int eof = got == len;
    unsigned char h1[32], h2[32];
    SHA256(out, len, h1);
    SHA256(in, got < len ? got : len, h2);
    close(fd);
    free(out);
    free(in);
    CHECK_MSG(s.rc == 0, "send failed");
    CHECK_MSG(eof, "got %zu of %zu bytes", got, len);
    CHECK_MSG(memcmp(h1, h2, 32) == 0, "sha256 differs (%zu bytes)", len);
    return s.rc == 0 && eof && memcmp(h1, h2, 32) == 0 ? 0 : -1;
}

/* A server for one connection: SRV_HALF says "bye" and half-closes first,
 * then reads what the client sends until EOF; SRV_RESET reads 4 bytes and
 * resets. */
enum { SRV_HALF = 1, SRV_RESET };

typedef struct oneshot {
    int lfd, port, mode;
    pthread_t th;
    char got[64];
    size_t got_n;
} oneshot;

static void *oneshot_th(void *arg)
{
    oneshot *o = arg;
    int fd = accept4(o->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return NULL;
    set_timeouts(fd, WAIT_MS);
    if (o->mode == SRV_HALF) {
        send_all(fd, "bye", 3);
        shutdown(fd, SHUT_WR);
        o->got_n = recv_exact(fd, o->got, sizeof o->got);
    } else {
        char b[4];
        recv_exact(fd, b, 4);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(fd);
    return NULL;
}

static __attribute__((unused)) int wait_u64(_Atomic uint64_t *v, uint64_t want)
{
    uint64_t end = mono_ms() + WAIT_MS;
    while (SK_LOAD(v) != want && mono_ms() < end)
        usleep(5000);
    return SK_LOAD(v) == want ? 0 : -1;
}

static __attribute__((unused)) int wait_i64(_Atomic int64_t *v, int64_t want)
{
    uint64_t end = mono_ms() + WAIT_MS;
    while (SK_LOAD(v) != want && mono_ms() < end)
        usleep(5000);
    return SK_LOAD(v) == want ? 0 : -1;
}

#endif
