/* testlib.h -- tiny assertion helpers shared by the native unit tests.
 *
 * CHECK* record a failure (file:line and the values) and carry on; REQUIRE*
 * record it and return from the current function with -1, for conditions the
 * rest of the test cannot run without. Each test file ends with
 * `return tl_summary("name");`, which prints the tally and gives the exit code.
 */
#ifndef SKIFF_TESTLIB_H
#define SKIFF_TESTLIB_H

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int tl_failures;
static _Atomic int tl_checks;

#define TL_FAIL(...)                                                                     \
    do {                                                                                 \
        atomic_fetch_add(&tl_failures, 1);                                               \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                             \
        fprintf(stderr, __VA_ARGS__);                                                    \
        fputc('\n', stderr);                                                             \
    } while (0)

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        if (!(cond))                                                                     \
            TL_FAIL("%s", #cond);                                                        \
    } while (0)

#define CHECK_MSG(cond, ...)                                                             \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        if (!(cond)) {                                                                   \
            TL_FAIL("%s", #cond);                                                        \
            fprintf(stderr, "     ");                                                    \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
        }                                                                                \
    } while (0)

/* Unsigned and signed integer comparisons printing both sides. The text of
 * the operands is taken here, before any macro in them is expanded. */
#define TL_CMP_U(a, op, b, sa, sb)                                                       \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        uint64_t tl_a_ = (uint64_t)(a), tl_b_ = (uint64_t)(b);                           \
        if (!(tl_a_ op tl_b_))                                                           \
            TL_FAIL("%s %s %s (%" PRIu64 " vs %" PRIu64 ")", sa, #op, sb, tl_a_, tl_b_); \
    } while (0)

#define TL_CMP_I(a, op, b, sa, sb)                                                       \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        int64_t tl_a_ = (int64_t)(a), tl_b_ = (int64_t)(b);                              \
        if (!(tl_a_ op tl_b_))                                                           \
            TL_FAIL("%s %s %s (%" PRId64 " vs %" PRId64 ")", sa, #op, sb, tl_a_, tl_b_); \
    } while (0)

#define CHECK_OP_U(a, op, b) TL_CMP_U(a, op, b, #a, #b)
#define CHECK_OP_I(a, op, b) TL_CMP_I(a, op, b, #a, #b)
#define CHECK_EQ_U(a, b) TL_CMP_U(a, ==, b, #a, #b)
#define CHECK_EQ_I(a, b) TL_CMP_I(a, ==, b, #a, #b)

#define CHECK_STR_CONTAINS(hay, needle)                                                  \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        const char *tl_h_ = (hay), *tl_n_ = (needle);                                    \
        if (!tl_h_ || !strstr(tl_h_, tl_n_))                                             \
            TL_FAIL("\"%s\" does not contain \"%s\"", tl_h_ ? tl_h_ : "(null)", tl_n_);  \
    } while (0)

#define REQUIRE(cond)                                                                    \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        if (!(cond)) {                                                                   \
            TL_FAIL("required: %s", #cond);                                              \
            return -1;                                                                   \
        }                                                                                \
    } while (0)

#define REQUIRE_MSG(cond, ...)                                                           \
    do {                                                                                 \
        atomic_fetch_add(&tl_checks, 1);                                                 \
        if (!(cond)) {                                                                   \
            TL_FAIL("required: %s", #cond);                                              \
            fprintf(stderr, "     ");                                                    \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            return -1;                                                                   \
        }                                                                                \
    } while (0)

/* Runs one test function (returning int) and reports it. */
#define RUN(fn)                                                                          \
    do {                                                                                 \
        int tl_before_ = atomic_load(&tl_failures);                                      \
        fprintf(stderr, "-- %s\n", #fn);                                                 \
        (void)fn();                                                                      \
        if (atomic_load(&tl_failures) != tl_before_)                                     \
            fprintf(stderr, "-- %s FAILED\n", #fn);                                      \
    } while (0)

static inline int tl_summary(const char *name)
{
    int f = atomic_load(&tl_failures);
    fprintf(stderr, "%s: %d checks, %d failures\n", name, atomic_load(&tl_checks), f);
    return f ? 1 : 0;
}

/* Deterministic PRNG (xorshift64*), so failures reproduce. */
static inline uint64_t tl_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

#endif /* SKIFF_TESTLIB_H */
