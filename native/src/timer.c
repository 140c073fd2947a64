/* timer.c -- the worker's two timer classes and the control plane's timers.
 *
 * Each worker has a heap per class: high (heartbeats) and normal (time-outs,
 * back-off). Due high timers run before the next I/O event of every batch
 * and again whenever a long loop calls sk_worker_high_check, so a storm of
 * connection events cannot starve them; how late each timer ran goes into a
 * histogram per class (lateness; the part of it after the worker was awake,
 * the dispatch delay; and the worker's own CPU time over that part, which
 * preemption cannot inflate). Timers the control plane starts (sk_timer_start) are owned by one
 * worker, reached through its mailbox, and report through its event rings. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* Timers due more than this after a wake-up (or an in-batch check) get no
 * CPU sample there: a batch is far shorter, and heartbeats and the connect
 * time-outs a storm keeps pending would otherwise cost a system call per
 * wake-up. A timer that comes due with no sample taken in its batch (more
 * than this into one batch, past every check) is not counted. */
#define SK_CPU_HORIZON_NS (10u * 1000000u)
/* While a timer is within the horizon, a check samples the CPU clock when
 * the last sample is this old (wall time), whatever the deadline: a worker
 * preempted between two checks can come out of it past a deadline that was
 * still far at the check before, and the figure counts from the last sample.
 * One system call (~0.3 us) per 50 us of busy time near a deadline. */
#define SK_CPU_SAMPLE_NS (50u * 1000u)

void sk_worker_schedule(sk_worker *w, int prio, sk_timer *t, uint64_t deadline)
{
    /* the batch's first timer that may come due in it: its dispatch CPU
     * counts from here at most */
    if (!w->cpu_sampled && deadline <= w->wake_ns + SK_CPU_HORIZON_NS)
        sk_timer_mark(w, sk_now_ns());
    /* Out of memory here would lose a timer; the heap grows by doubling and
     * keeps its array, so this only fails when the process cannot allocate. */
    if (sk_heap_push(&w->heap[prio == SK_PRIO_HIGH ? 0 : 1], t, deadline) != 0)
        abort();
}

void sk_worker_cancel(sk_worker *w, int prio, sk_timer *t)
{
    sk_heap_remove(&w->heap[prio == SK_PRIO_HIGH ? 0 : 1], t);
}

uint64_t sk_thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether a timer of either class may come due within the horizon. */
static bool timer_near(const sk_worker *w, uint64_t now)
{
    for (int cls = 0; cls < 2; cls++) {
        const sk_timer *t = sk_heap_top(&w->heap[cls]);
        if (t && t->deadline <= now + SK_CPU_HORIZON_NS)
            return true;
    }
    return false;
}

/* The calling thread's involuntary context switches so far (-1: unknown). */
static long thread_ivcs(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nivcsw : -1;
}

void sk_timer_mark(sk_worker *w, uint64_t now)
{
    w->mark_ns = now;
    w->mark_cpu_ns = sk_thread_cpu_ns();
    /* a second system call per sample (~0.3 us): whether the worker was
     * preempted over a figure's span */
    w->mark_ivcs = thread_ivcs();
    if (!w->cpu_sampled) {
        w->first_cpu_ns = w->mark_cpu_ns;
        w->first_ivcs = w->mark_ivcs;
        w->cpu_sampled = true;
    }
}

void sk_timer_mark_wake(sk_worker *w, uint64_t now)
{
    /* a thread CPU clock is a system call, not a vDSO read: one per wake-up
     * only while a timer may come due in this batch (not for heartbeats
     * seconds away, nor the connect time-outs a storm keeps pending) */
    w->cpu_sampled = false;
    if (timer_near(w, now))
        sk_timer_mark(w, now);
}

/* The worker's CPU time when a timer due at deadline became ready (the
 * later of its deadline and the wake-up): the last sample taken by then,
 * else the batch's first (taken when the timer was scheduled, if it was
 * scheduled during the batch). Only called when a sample was taken. A timer that came due in the middle of a
 * batch became ready between two checks, so the figure is an upper bound, by
 * at most the CPU of one unit of work plus the check budget; the wall-clock
 * dispatch delay has the same bound but also grows with every preemption,
 * which this cannot. */
static uint64_t ready_cpu(const sk_worker *w, uint64_t deadline, long *ivcs)
{
    uint64_t ready = deadline > w->wake_ns ? deadline : w->wake_ns;
    bool mark = w->mark_ns <= ready;
    *ivcs = mark ? w->mark_ivcs : w->first_ivcs;
    return mark ? w->mark_cpu_ns : w->first_cpu_ns;
}

void sk_timer_run_due(sk_worker *w, int cls, uint64_t now)
{
    sk_heap *h = &w->heap[cls];
    sk_timer *t;
    /* a pass runs what was due when it started (timers scheduled meanwhile
     * with such a deadline too); a periodic timer's next deadline is later,
     * so one whose callback outlasts its period cannot hold the worker in
     * this loop: it runs again at the next check, after the next unit of
     * work or mailbox message */
    const uint64_t limit = now;
    while ((t = sk_heap_pop_due(h, limit)) != NULL) {
        sk_hist_record(&w->lateness[cls], now - t->deadline);
        uint64_t ready = t->deadline > w->wake_ns ? t->deadline : w->wake_ns;
        uint64_t delay = now > ready ? now - ready : 0;
        if (w->cpu_sampled) {
            long base_ivcs;
            uint64_t cpu = sk_thread_cpu_ns(), base = ready_cpu(w, t->deadline, &base_ivcs);
            long ivcs = thread_ivcs();
            uint64_t spent = cpu > base ? cpu - base : 0;
            /* the base is the last sample before the timer became ready, so
             * cpu - base also counts the CPU between that sample and ready.
             * The CPU time over [ready, now] is at most its wall time: the
             * smaller of the two is still an upper bound, and the exact
             * figure when the worker was not preempted since ready. The wall
             * delay is read after the CPU clock, so the bound holds. */
            uint64_t after = sk_now_ns();
            delay = after > ready ? after - ready : 0;
            uint64_t figure = spent < delay ? spent : delay;
            sk_hist_record(&w->dispatch_cpu[cls], figure);
            if (ivcs >= 0 && ivcs == base_ivcs)
                sk_hist_record(&w->dispatch_cpu_unpreempted[cls], figure);
        } /* else it came due SK_CPU_HORIZON_NS into a batch, past every check */
        sk_hist_record(&w->dispatch[cls], delay);
        SK_BUMP(&w->timers_fired, 1);
        t->cb(w, t, now);
        /* a burst of due normal timers (time-outs closing connections, each
         * maybe freeing an OpenSSL connection) is a run of units of work
         * like any other: a high timer due meanwhile runs between two */
        if (cls == 1)
            sk_worker_high_check(w);
        now = sk_now_ns();
    }
}

static void high_sample(sk_worker *w, uint64_t t)
{
    /* the base of the dispatch CPU of a timer about to come due: the CPU
     * clock (a system call) is sampled at every check of the last
     * high_check_budget_us before a deadline, so the figure counts the unit
     * of work during which the timer came due; and, while a timer may come
     * due within SK_CPU_HORIZON_NS, whenever the last sample is
     * SK_CPU_SAMPLE_NS old, so that a unit spanning the deadline is counted
     * from at most that before it */
    bool sample = false;
    for (int cls = 0; cls < 2 && !sample; cls++) {
        const sk_timer *top = sk_heap_top(&w->heap[cls]);
        sample = top && top->deadline <= t + w->high_budget_ns;
    }
    if (!sample && t - w->mark_ns >= SK_CPU_SAMPLE_NS)
        sample = timer_near(w, t);
    /* stamped with t, the time this check found nothing due: a mark stamped
     * later (a preemption between) could fall after a deadline it precedes
     * in CPU time, and would be passed over for the batch's first sample */
    if (sample)
        sk_timer_mark(w, t);
}

/* Whether a high timer is due at *t (read here); when none is, samples as
 * every check does. Runs between every two units of work: without a high
 * timer there is nothing to check, and no clock to read (a storm's profile
 * showed the reads). */
static bool high_due(sk_worker *w, uint64_t *t)
{
    if (!w->heap[0].n)
        return false;
    *t = sk_now_ns();
    if (sk_heap_top(&w->heap[0])->deadline <= *t)
        return true;
    high_sample(w, *t);
    return false;
}

void sk_worker_high_check(sk_worker *w)
{
    uint64_t t;
    if (!high_due(w, &t))
        return;
    /* due: it runs now, between two units of work, not after the batch */
    SK_BUMP(&w->high_rechecks, 1);
    sk_timer_run_due(w, 0, t);
    high_sample(w, t);
}

bool sk_worker_high_due(sk_worker *w)
{
    uint64_t t;
    return high_due(w, &t);
}

/* ------------------------------------------------------------ user timers */

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

void sk_utimer_add(sk_worker *w, sk_utimer *ut)
{
    ut->next = w->utimers;
    w->utimers = ut;
    sk_worker_schedule(w, ut->prio, &ut->t, ut->t.deadline);
}

void sk_utimer_cancel(sk_worker *w, uint64_t timer_id)
{
    sk_utimer **pp = &w->utimers;
    int found = 0;
    while (*pp) {
        if ((*pp)->id == timer_id) {
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
    int prio = (int)((timer_id >> 8) & 1);
    sk_worker_emit(w, prio, SK_EV_TIMER_CANCELLED, timer_id, found, 0);
}

void sk_utimer_free_all(sk_worker *w)
{
    while (w->utimers) {
        sk_utimer *ut = w->utimers;
        w->utimers = ut->next;
        free(ut);
    }
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

/* ------------------------------------------------------------ histograms */

enum { HIST_LATENESS, HIST_DISPATCH, HIST_DISPATCH_CPU, HIST_DISPATCH_CPU_UNPREEMPTED };

/* Sums one of the per-worker timer histograms. */
static int timer_hist(sk_engine *e, int which, int prio, int worker, sk_hist *out)
{
    if ((prio != SK_PRIO_HIGH && prio != SK_PRIO_NORMAL) || worker >= e->nworkers)
        return -1;
    memset(out, 0, sizeof *out);
    int cls = prio == SK_PRIO_HIGH ? 0 : 1;
    for (int i = 0; i < e->nworkers; i++) {
        if (worker >= 0 && worker != i)
            continue;
        sk_worker *w = &e->workers[i];
        const sk_hist_atomic *h = which == HIST_LATENESS       ? &w->lateness[cls]
                                  : which == HIST_DISPATCH     ? &w->dispatch[cls]
                                  : which == HIST_DISPATCH_CPU ? &w->dispatch_cpu[cls]
                                                               : &w->dispatch_cpu_unpreempted[cls];
        sk_hist_accumulate(h, out);
    }
    return 0;
}

int sk_engine_timer_lateness(sk_engine *e, int prio, int worker, sk_hist *out)
{
    return timer_hist(e, HIST_LATENESS, prio, worker, out);
}

int sk_engine_timer_dispatch_delay(sk_engine *e, int prio, int worker, sk_hist *out)
{
    return timer_hist(e, HIST_DISPATCH, prio, worker, out);
}

int sk_engine_timer_dispatch_cpu(sk_engine *e, int prio, int worker, sk_hist *out)
{
    return timer_hist(e, HIST_DISPATCH_CPU, prio, worker, out);
}

int sk_engine_timer_dispatch_cpu_unpreempted(sk_engine *e, int prio, int worker, sk_hist *out)
{
    return timer_hist(e, HIST_DISPATCH_CPU_UNPREEMPTED, prio, worker, out);
}
