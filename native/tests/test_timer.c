/* test_timer.c -- timers through the public API: one-shot and periodic
 * timers of both classes on chosen and round-robin workers, deadline order,
 * cancellation (pending, fired, unknown), the event fd, the lateness
 * histograms matched against the drained events, and the dispatch CPU
 * histograms beside them (timer.c, event.c). */
#include "engine_fixture.h"

/* The priority of a timer is not in its events: test_timers notes the ids
 * of the high priority ones so test_lateness can split them by class. */
static uint64_t high_ids[64];
static int n_high_ids;

static uint64_t mark_high(uint64_t id)
{
    if (n_high_ids < 64)
        high_ids[n_high_ids++] = id;
    return id;
}

static int timer_is_high(uint64_t id)
{
    for (int i = 0; i < n_high_ids; i++)
        if (high_ids[i] == id)
            return 1;
    return 0;
}

static int test_timers(void)
{
    int efd = sk_engine_event_fd(E);
    REQUIRE(efd >= 0);
    CHECK_EQ_I(sk_engine_worker_count(E), 2);

    /* nothing pending yet: the fd is quiet and drain returns nothing */
    struct pollfd p = {.fd = efd, .events = POLLIN};
    CHECK_EQ_I(poll(&p, 1, 0), 0);
    sk_event tmp[4];
    int of = -1;
    CHECK_EQ_I(sk_engine_drain(E, tmp, 4, &of), 0);
    CHECK_EQ_I(of, 0);

    /* bad arguments */
    CHECK_EQ_U(sk_timer_start(E, 0, 7, 1000, 0), 0);
    CHECK_EQ_U(sk_timer_start(E, 2, SK_PRIO_HIGH, 1000, 0), 0);
    CHECK_EQ_I(sk_timer_cancel(E, 0), -1);
    CHECK_EQ_I(sk_timer_cancel(E, ((uint64_t)12345 << 8) | 200), -1);

    /* a high priority one-shot: the event fd wakes us */
    uint64_t one = mark_high(sk_timer_start(E, 0, SK_PRIO_HIGH, 20 * 1000000ull, 0));
    REQUIRE(one != 0);
    CHECK_EQ_U(one & 0xff, 0); /* low byte: owning worker */
    p.revents = 0;
    CHECK_EQ_I(poll(&p, 1, WAIT_MS), 1);
    CHECK(p.revents & POLLIN);
    sk_engine_ack_event_fd(E);
    sk_event ev;
    REQUIRE(wait_event(SK_EV_TIMER, one, WAIT_MS, &ev) >= 0);
    CHECK_EQ_U(ev.worker, 0);
    CHECK_OP_I(ev.a, >=, 0);

    /* round robin (-1) picks a worker and says so in the id */
    uint64_t rr1 = sk_timer_start(E, -1, SK_PRIO_NORMAL, 1000000, 0);
    uint64_t rr2 = sk_timer_start(E, -1, SK_PRIO_NORMAL, 1000000, 0);
    REQUIRE(rr1 && rr2);
    CHECK((rr1 & 0xff) < 2 && (rr2 & 0xff) < 2);
    CHECK((rr1 & 0xff) != (rr2 & 0xff));
    REQUIRE(wait_event(SK_EV_TIMER, rr1, WAIT_MS, &ev) >= 0);
    CHECK_EQ_U(ev.worker, rr1 & 0xff);
    REQUIRE(wait_event(SK_EV_TIMER, rr2, WAIT_MS, &ev) >= 0);
    CHECK_EQ_U(ev.worker, rr2 & 0xff);

    /* one-shots on one worker fire in deadline order, not start order (the
     * gaps are far larger than any scheduling hiccup between the calls) */
    uint64_t late = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 300 * 1000000ull, 0));
    uint64_t early = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 60 * 1000000ull, 0));
    uint64_t mid = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 180 * 1000000ull, 0));
    REQUIRE(late && early && mid);
    long i_late = wait_event(SK_EV_TIMER, late, WAIT_MS, NULL);
    long i_early = wait_event(SK_EV_TIMER, early, WAIT_MS, NULL);
    long i_mid = wait_event(SK_EV_TIMER, mid, WAIT_MS, NULL);
    CHECK(i_early >= 0 && i_mid >= 0 && i_late >= 0);
    CHECK_OP_I(i_early, <, i_mid);
    CHECK_OP_I(i_mid, <, i_late);

    /* periodic timers of both classes, then cancel them while pending */
    uint64_t ph = mark_high(sk_timer_start(E, 1, SK_PRIO_HIGH, 5 * 1000000ull, 10 * 1000000ull));
    uint64_t pn = sk_timer_start(E, 0, SK_PRIO_NORMAL, 5 * 1000000ull, 10 * 1000000ull);
    REQUIRE(ph && pn);
    uint64_t deadline = mono_ms() + WAIT_MS;
    while ((count_events(SK_EV_TIMER, ph, 0) < 5 || count_events(SK_EV_TIMER, pn, 0) < 5) &&
           mono_ms() < deadline)
        pump(20);
    CHECK_OP_U(count_events(SK_EV_TIMER, ph, 0), >=, 5);
    CHECK_OP_U(count_events(SK_EV_TIMER, pn, 0), >=, 5);
    for (size_t i = 0; i < evlog_n; i++)
        if (evlog[i].ev.type == SK_EV_TIMER && evlog[i].ev.id == ph)
            CHECK_EQ_U(evlog[i].ev.worker, 1);
    CHECK_EQ_I(sk_timer_cancel(E, ph), 0);
    CHECK_EQ_I(sk_timer_cancel(E, pn), 0);
    long ic_h = wait_event(SK_EV_TIMER_CANCELLED, ph, WAIT_MS, &ev);
    REQUIRE(ic_h >= 0);
    CHECK_EQ_I(ev.a, 1); /* it was still pending */
    CHECK_EQ_U(ev.worker, 1);
    long ic_n = wait_event(SK_EV_TIMER_CANCELLED, pn, WAIT_MS, &ev);
    REQUIRE(ic_n >= 0);
    CHECK_EQ_I(ev.a, 1);
    CHECK_EQ_U(ev.worker, 0);
    /* five more periods' worth of waiting: nothing for them after the cancel */
    pump_for(60);
    CHECK_EQ_U(count_events(SK_EV_TIMER, pn, (size_t)ic_n + 1), 0);
    CHECK_EQ_U(count_events(SK_EV_TIMER, ph, (size_t)ic_h + 1), 0);
    /* and none in a later drain batch than the cancellation either */
    for (size_t i = 0; i < evlog_n; i++)
        if (evlog[i].ev.type == SK_EV_TIMER && evlog[i].ev.id == ph)
            CHECK_OP_U(evlog[i].batch, <=, evlog[ic_h].batch);

    /* cancelling a one-shot that already fired: a = 0; unknown id too */
    CHECK_EQ_I(sk_timer_cancel(E, one), 0);
    REQUIRE(wait_event(SK_EV_TIMER_CANCELLED, one, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);
    uint64_t bogus = ((uint64_t)0xabcdef << 8) | 1;
    CHECK_EQ_I(sk_timer_cancel(E, bogus), 0);
    REQUIRE(wait_event(SK_EV_TIMER_CANCELLED, bogus, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 0);

    /* a one-shot cancelled before it fires never fires */
    uint64_t never = sk_timer_start(E, 0, SK_PRIO_NORMAL, 60ull * 1000000000ull, 0);
    REQUIRE(never);
    CHECK_EQ_I(sk_timer_cancel(E, never), 0);
    REQUIRE(wait_event(SK_EV_TIMER_CANCELLED, never, WAIT_MS, &ev) >= 0);
    CHECK_EQ_I(ev.a, 1);

    /* every one-shot fired exactly once */
    CHECK_EQ_U(count_events(SK_EV_TIMER, one, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, late, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, early, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, mid, 0), 1);
    CHECK_EQ_U(count_events(SK_EV_TIMER, never, 0), 0);

    /* quiet again: after an ack and a full drain the fd is not readable */
    pump(0);
    sk_engine_ack_event_fd(E);
    CHECK_EQ_I(sk_engine_drain(E, tmp, 4, &of), 0);
    p.revents = 0;
    CHECK_EQ_I(poll(&p, 1, 0), 0);
    return 0;
}

/* The lateness histograms saw exactly the timers whose events we drained,
 * with the same values (the event's a is the recorded lateness). */
static int test_lateness(void)
{
    sk_hist h;
    CHECK_EQ_I(sk_engine_timer_lateness(E, 5, -1, &h), -1);
    CHECK_EQ_I(sk_engine_timer_lateness(E, SK_PRIO_HIGH, 2, &h), -1);
    uint64_t total_fired = 0;
    for (int prio = 0; prio < 2; prio++) {
        for (int worker = -1; worker < 2; worker++) {
            uint64_t n = 0, sum = 0, max = 0;
            uint64_t per_bucket[SK_HIST_BUCKETS] = {0};
            for (size_t i = 0; i < evlog_n; i++) {
                const sk_event *ev = &evlog[i].ev;
                if (ev->type != SK_EV_TIMER || (worker >= 0 && ev->worker != (uint32_t)worker))
                    continue;
                if (timer_is_high(ev->id) != (prio == SK_PRIO_HIGH))
                    continue;
                uint64_t a = (uint64_t)ev->a;
                n++;
                sum += a;
                if (a > max)
                    max = a;
                for (int b = 0; b < SK_HIST_BUCKETS; b++)
                    if (a <= sk_hist_bound_ns(b)) {
                        per_bucket[b]++;
                        break;
                    }
            }
            memset(&h, 0xee, sizeof h);
            REQUIRE(sk_engine_timer_lateness(E, prio, worker, &h) == 0);
            CHECK_MSG(h.count == n, "prio %d worker %d: hist count %" PRIu64 ", events %" PRIu64,
                      prio, worker, h.count, n);
            CHECK_EQ_U(h.sum_ns, sum);
            CHECK_EQ_U(h.max_ns, max);
            uint64_t run = 0;
            for (int b = 0; b < SK_HIST_BUCKETS; b++) {
                run += per_bucket[b];
                CHECK_EQ_U(h.cumulative[b], run);
            }
            CHECK_EQ_U(h.cumulative[SK_HIST_BUCKETS - 1], h.count);
            if (worker < 0) {
                CHECK_OP_U(n, >, 0);
                total_fired += n;
            }
        }
    }
    uint64_t fired = 0;
    for (int w = 0; w < 2; w++) {
        sk_worker_stats ws;
        REQUIRE(sk_engine_worker_stats(E, w, &ws) == 0);
        fired += ws.timers_fired;
        CHECK_OP_U(ws.wakeups, >, 0);
        CHECK_EQ_U(ws.connections, 0);
    }
    sk_worker_stats ws;
    CHECK_EQ_I(sk_engine_worker_stats(E, 2, &ws), -1);
    CHECK_EQ_I(sk_engine_worker_stats(E, -1, &ws), -1);
    CHECK_EQ_U(fired, total_fired);
    return 0;
}

/* The dispatch CPU histograms count the same timers as lateness, and no
 * timer's dispatch CPU exceeds its dispatch delay (it is capped by it: CPU
 * time over a span never exceeds the span's wall time). The unpreempted
 * histogram holds some of those figures: never more, and, on these idle
 * workers whose timers run right after they wake, some. */
static int test_dispatch_cpu(void)
{
    sk_hist cpu, wall, late, solo;
    CHECK_EQ_I(sk_engine_timer_dispatch_cpu_unpreempted(E, 5, -1, &solo), -1);
    CHECK_EQ_I(sk_engine_timer_dispatch_cpu_unpreempted(E, SK_PRIO_HIGH, 2, &solo), -1);
    CHECK_EQ_I(sk_engine_timer_dispatch_cpu(E, 5, -1, &cpu), -1);
    CHECK_EQ_I(sk_engine_timer_dispatch_cpu(E, SK_PRIO_HIGH, 2, &cpu), -1);
    for (int prio = 0; prio < 2; prio++) {
        for (int worker = -1; worker < 2; worker++) {
            REQUIRE(sk_engine_timer_dispatch_cpu(E, prio, worker, &cpu) == 0);
            REQUIRE(sk_engine_timer_dispatch_delay(E, prio, worker, &wall) == 0);
            REQUIRE(sk_engine_timer_lateness(E, prio, worker, &late) == 0);
            CHECK_EQ_U(cpu.count, late.count); /* no batch here lasts 10 ms */
            CHECK_EQ_U(cpu.cumulative[SK_HIST_BUCKETS - 1], cpu.count);
            CHECK_MSG(cpu.sum_ns <= wall.sum_ns && cpu.max_ns <= wall.max_ns,
                      "prio %d worker %d: cpu %" PRIu64 " ns over wall %" PRIu64 " ns", prio,
                      worker, cpu.sum_ns, wall.sum_ns);
            /* an idle engine's timers run at once: microseconds of CPU */
            CHECK_OP_U(cpu.max_ns, <, 5000000u);
            if (worker < 0)
                CHECK_OP_U(cpu.count, >, 0);
            REQUIRE(sk_engine_timer_dispatch_cpu_unpreempted(E, prio, worker, &solo) == 0);
            CHECK_OP_U(solo.count, <=, cpu.count);
            CHECK_OP_U(solo.sum_ns, <=, cpu.sum_ns);
            for (int b = 0; b < SK_HIST_BUCKETS; b++)
                CHECK_OP_U(solo.cumulative[b], <=, cpu.cumulative[b]);
            if (worker < 0)
                CHECK_OP_U(solo.count, >, 0);
        }
    }
    return 0;
}

int main(void)
{
    fx_engine_start();
    RUN(test_timers);
    RUN(test_lateness);
    RUN(test_dispatch_cpu);
    return fx_finish("test_timer");
}
