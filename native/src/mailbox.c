/* mailbox.c -- requests from other threads to one worker.
 *
 * Whatever a worker owns (its listening sockets, connections, timers) is
 * changed only by that worker, so other threads post a message instead: a
 * short lock for the list edit, and one eventfd write per wake-up. The
 * eventfd is a handle of its own; its on_io runs the queued messages. */
#include "internal.h"

#include <stdlib.h>
#include <unistd.h>

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

static void handle_msg(sk_worker *w, sk_msg *m)
{
    switch (m->kind) {
    case SK_MSG_ADD_LSOCK:
        sk_lsock_attach(w, m->u.lsock);
        break;
    case SK_MSG_CLOSE_LISTENER:
        sk_worker_close_listener(w, m->u.close.listener, m->u.close.drop);
        break;
    case SK_MSG_TIMER_START:
        sk_utimer_add(w, m->u.timer);
        break;
    case SK_MSG_TIMER_CANCEL:
        sk_utimer_cancel(w, m->u.timer_id);
        break;
    case SK_MSG_APP_KICK:
        sk_app_kick(w, m->u.app);
        sk_app_unref(m->u.app);
        break;
    case SK_MSG_TLS_CLOSE_OLDER:
        sk_worker_close_tls_older(w, m->u.older.slot, m->u.older.ordinal);
        break;
    case SK_MSG_CLOSE_TARGET_FLOWS:
        sk_close_req_run(w, m->u.req);
        break;
    case SK_MSG_APP_CONNECT:
        sk_app_dial_run(w, m->u.dial);
        break;
    case SK_MSG_PEER_FILL:
    case SK_MSG_PEER_CLOSE:
    case SK_MSG_DC_GIVE:
    case SK_MSG_DC_ADOPT:
        sk_dc_msg(w, m);
        break;
    }
    free(m);
}

void sk_mbox_io(sk_worker *w, sk_handle *h, uint32_t events)
{
    SK_UNUSED(h);
    SK_UNUSED(events);
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

void sk_mbox_discard(sk_worker *w)
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
            sk_close_req_done(w, m->u.req);
            break;
        case SK_MSG_APP_CONNECT:
            sk_app_dial_discard(w, m->u.dial);
            break;
        case SK_MSG_PEER_FILL:
        case SK_MSG_PEER_CLOSE:
        case SK_MSG_DC_GIVE:
        case SK_MSG_DC_ADOPT:
            sk_dc_msg_discard(w, m);
            break;
        default:
            break;
        }
        free(m);
        m = next;
    }
}
