/* pipe.c -- the splice pipes: a bounded per-worker pool of kernel pipes
 * through which plain relays move bytes socket to socket without copying
 * them into user space.
 *
 * A direction holds a pipe only while bytes wait in it, like a relay buffer
 * (buf.c), so an idle connection holds none. A worker never has more than
 * splice_pipes of them; when they are all in use the relay falls back to the
 * copy path for that read, so running out degrades speed, never correctness.
 * Empty pipes stay in the worker's pool (no syscall to take or return one);
 * a pipe closed with bytes still inside (a flow reset) is closed for good.
 * Worker-owned; only the live counters are read by other threads. */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

sk_pipe *sk_pipe_get(sk_worker *w)
{
    sk_engine *e = w->engine;
    sk_pipe *p = w->pipe_free;
    if (p) {
        w->pipe_free = p->next;
        p->next = NULL;
        SK_ADD(&e->pipes_in_use, 1);
        return p;
    }
    if (w->pipes_open >= e->opts.splice_pipes)
        return NULL; /* pool exhausted: the caller copies instead */
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return NULL; /* out of descriptors: copy too */
    p = calloc(1, sizeof *p);
    if (!p) {
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    /* no F_SETPIPE_SZ: a slot may take a whole skb fragment, so the nominal
     * size bounds nothing; the relay bounds what it reads into the pipe */
    p->rfd = fds[0];
    p->wfd = fds[1];
    w->pipes_open++;
    SK_ADD(&e->pipes_live, 1);
    SK_ADD(&e->pipes_in_use, 1);
    return p;
}

static void pipe_close(sk_worker *w, sk_pipe *p)
{
    close(p->rfd);
    close(p->wfd);
    free(p);
    w->pipes_open--;
    SK_SUB(&w->engine->pipes_live, 1);
}

void sk_pipe_put(sk_worker *w, sk_pipe *p)
{
    if (!p)
        return;
    SK_SUB(&w->engine->pipes_in_use, 1);
    if (p->len) {
        pipe_close(w, p); /* bytes of a closed flow: nobody will read them */
        return;
    }
    p->next = w->pipe_free;
    w->pipe_free = p;
}

void sk_pipe_free_all(sk_worker *w)
{
    while (w->pipe_free) {
        sk_pipe *p = w->pipe_free;
        w->pipe_free = p->next;
        pipe_close(w, p);
    }
}
