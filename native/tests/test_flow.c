/* test_flow.c -- the data plane's wire format (flow.c): HELLO, FLOW header
 * and VERDICT round trips at every chunking, every refusal reason, bytes
 * after a message left to the caller, later fields skipped, and a seeded fuzz
 * loop (run under ASan+UBSan by `make native-test-asan`). */
#include "internal.h"
#include "testlib.h"

#include <time.h>

#define S(lit) ((sk_flow_str){(lit), sizeof(lit) - 1})

/* Chunks are copied to the tail of a heap block of exactly their size, so an
 * ASan build catches any read past the chunk the parser was given. */
static uint8_t *stage_block;
#define STAGE_CAP (SK_FLOW_HDR_MAX + 256)

static const uint8_t *stage(const uint8_t *src, size_t n)
{
    if (!stage_block)
        stage_block = malloc(STAGE_CAP);
    uint8_t *dst = stage_block + STAGE_CAP - n;
    if (n)
        memcpy(dst, src, n);
    return dst;
}

/* Feeds data in chunks whose sizes come from cuts[] (0-terminated: the rest
 * goes in one final chunk), until DONE or ERROR; *used is the total consumed. */
static int feed(sk_flow_parser *p, const uint8_t *data, size_t n, const size_t *cuts,
                size_t *used)
{
    size_t off = 0;
    int st = SK_FLOW_NEED_MORE;
    *used = 0;
    for (int c = 0; off < n; c++) {
        size_t k = cuts && cuts[c] ? cuts[c] : n - off;
        if (k > n - off)
            k = n - off;
        size_t got = 0;
        st = sk_flow_parse(p, stage(data + off, k), k, &got);
        if (got > k) {
            TL_FAIL("consumed %zu of a %zu-byte chunk", got, k);
            return SK_FLOW_ERROR;
        }
        *used += got;
        if (st != SK_FLOW_NEED_MORE)
            return st;
        if (got != k) {
            TL_FAIL("NEED_MORE after consuming %zu of %zu", got, k);
            return SK_FLOW_ERROR;
        }
        off += k;
    }
    return st;
}

static int feed_bytewise(sk_flow_parser *p, const uint8_t *data, size_t n, size_t *used)
{
    static size_t ones[STAGE_CAP + 1];
    if (!ones[0])
        for (size_t i = 0; i < STAGE_CAP; i++)
            ones[i] = 1;
    return feed(p, data, n, n <= STAGE_CAP ? ones : NULL, used);
}

static bool hdr_equal(const sk_flow_hdr *a, const sk_flow_hdr *b)
{
    return a->flow_id == b->flow_id && a->hops == b->hops && a->flags == b->flags &&
           a->addr_len == b->addr_len && a->origin_len == b->origin_len &&
           a->dest_len == b->dest_len && !memcmp(a->addr, b->addr, a->addr_len + 1u) &&
           !memcmp(a->origin, b->origin, a->origin_len + 1u) &&
           !memcmp(a->dest, b->dest, a->dest_len + 1u);
}

static bool hello_equal(const sk_flow_hello *a, const sk_flow_hello *b)
{
    return a->role == b->role && a->flags == b->flags && a->instance == b->instance &&
           a->link_id == b->link_id && a->tls_version == b->tls_version &&
           a->from_len == b->from_len && a->to_len == b->to_len &&
           !memcmp(a->from, b->from, a->from_len + 1u) && !memcmp(a->to, b->to, a->to_len + 1u);
}

static bool verdict_equal(const sk_flow_verdict *a, const sk_flow_verdict *b)
{
    return a->code == b->code && a->detail == b->detail && a->flow_id == b->flow_id;
}

static bool out_equal(int type, const sk_flow_parser *a, const sk_flow_parser *b)
{
    switch (type) {
    case SK_FLOW_T_HDR:
        return hdr_equal(&a->out.hdr, &b->out.hdr);
    case SK_FLOW_T_HELLO:
        return hello_equal(&a->out.hello, &b->out.hello);
    default:
        return verdict_equal(&a->out.verdict, &b->out.verdict);
    }
}

/* ------------------------------------------------------------ encoding */

static int test_encode_layout(void)
{
    uint8_t b[64];
    int n = sk_flow_encode_hdr(b, sizeof b, 0x0102030405060708ull, 5, 0, S("db"), S("R1"),
                               S(""));
    static const uint8_t want[] = {'S', 'K', 1, 'F', 0, 24, 1, 2, 3, 4, 5, 6, 7, 8, 5, 0,
                                   0,   2,   'd', 'b', 2, 'R', '1', 0};
    CHECK_EQ_I(n, (int)sizeof want);
    CHECK(n == (int)sizeof want && !memcmp(b, want, sizeof want));

    n = sk_flow_encode_verdict(b, sizeof b, SK_FLOW_V_REFUSED, 111, 0xA1B2ull);
    static const uint8_t wantv[] = {'S', 'K', 1, 'V', 0, 16, 2, 111, 0, 0, 0, 0, 0, 0, 0xA1, 0xB2};
    CHECK_EQ_I(n, SK_FLOW_VERDICT_LEN);
    CHECK(!memcmp(b, wantv, sizeof wantv));

    n = sk_flow_encode_hello(b, sizeof b, SK_FLOW_ROLE_INBOUND, 7, 9, 3, S("A"), S("B"));
    static const uint8_t wanth[] = {'S', 'K', 1,   'H', 0, 36, 2, 0, 0, 0, 0, 0, 0, 0, 0, 7,
                                    0,   0,   0,   0,   0, 0,  0, 9, 0, 0, 0, 0, 0, 0, 0, 3,
                                    1,   'A', 1,   'B'};
    CHECK_EQ_I(n, (int)sizeof wanth);
    CHECK(n == (int)sizeof wanth && !memcmp(b, wanth, sizeof wanth));

    /* the shortest of each is its type's minimum length */
    n = sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, S("a"), S("r"), S(""));
    CHECK_EQ_I(n, SK_FLOW_HDR_MIN);
    n = sk_flow_encode_hello(b, sizeof b, SK_FLOW_ROLE_OUTBOUND, 0, 0, 0, S("a"), S("b"));
    CHECK_EQ_I(n, SK_FLOW_HELLO_MIN);

    /* the longest FLOW fits its bound */
    static char addr[SK_FLOW_ADDR_MAX], id[SK_FLOW_ID_MAX];
    memset(addr, 'a', sizeof addr);
    memset(id, 'r', sizeof id);
    static uint8_t big[SK_FLOW_HDR_MAX];
    n = sk_flow_encode_hdr(big, sizeof big, 1, SK_FLOW_MAX_HOPS, SK_FLOW_F_REVERSE,
                           (sk_flow_str){addr, sizeof addr}, (sk_flow_str){id, sizeof id},
                           (sk_flow_str){id, sizeof id});
    CHECK_EQ_I(n, SK_FLOW_PREAMBLE + 12 + SK_FLOW_ADDR_MAX + 2 + 2 * SK_FLOW_ID_MAX);
    CHECK_OP_I(n, <=, SK_FLOW_HDR_MAX);
    return 0;
}

static int test_encode_refusals(void)
{
    uint8_t b[SK_FLOW_HDR_MAX];
    static char addr[SK_FLOW_ADDR_MAX + 1], id[SK_FLOW_ID_MAX + 1];
    memset(addr, 'a', sizeof addr);
    memset(id, 'r', sizeof id);
    sk_flow_str a = S("svc"), r = S("R1"), none = S("");
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 0, 1, 0, a, r, none), -SK_FLOW_E_FLOW_ID);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 0, 0, a, r, none), -SK_FLOW_E_HOP_LIMIT);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, SK_FLOW_MAX_HOPS + 1, 0, a, r, none),
               -SK_FLOW_E_HOPS);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0x80, a, r, none), -SK_FLOW_E_FLAGS);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, none, r, none), -SK_FLOW_E_EMPTY);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, a, none, none), -SK_FLOW_E_EMPTY);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, (sk_flow_str){NULL, 3}, r, none),
               -SK_FLOW_E_EMPTY);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, (sk_flow_str){addr, sizeof addr}, r,
                                  none),
               -SK_FLOW_E_ADDR_LEN);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, a, (sk_flow_str){id, sizeof id}, none),
               -SK_FLOW_E_TOO_LARGE);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, a, r, (sk_flow_str){id, sizeof id}),
               -SK_FLOW_E_TOO_LARGE);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, S("a\nb"), r, none), -SK_FLOW_E_CONTROL);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, a, S("R\xC3"), none), -SK_FLOW_E_UTF8);
    CHECK_EQ_I(sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, a, r, S("\xFF")), -SK_FLOW_E_UTF8);
    CHECK_EQ_I(sk_flow_encode_hdr(NULL, 0, 1, 1, 0, a, r, none), -SK_FLOW_E_NOSPACE);

    CHECK_EQ_I(sk_flow_encode_hello(b, sizeof b, 0, 1, 1, 1, r, r), -SK_FLOW_E_ROLE);
    CHECK_EQ_I(sk_flow_encode_hello(b, sizeof b, 3, 1, 1, 1, r, r), -SK_FLOW_E_ROLE);
    CHECK_EQ_I(sk_flow_encode_hello(b, sizeof b, 1, 1, 1, 1, none, r), -SK_FLOW_E_EMPTY);
    CHECK_EQ_I(sk_flow_encode_hello(b, sizeof b, 1, 1, 1, 1, r, none), -SK_FLOW_E_EMPTY);
    CHECK_EQ_I(sk_flow_encode_hello(b, sizeof b, 1, 1, 1, 1, r, S("\x7F")), -SK_FLOW_E_CONTROL);
    CHECK_EQ_I(sk_flow_encode_verdict(b, sizeof b, SK_FLOW_V__COUNT, 0, 1), -SK_FLOW_E_VERDICT);

    /* every capacity short of the message is refused, the exact one works */
    int full = sk_flow_encode_hdr(b, sizeof b, 9, 3, 0, S("svc:8080"), r, S("R3"));
    REQUIRE(full > 0);
    for (int cap = 0; cap < full; cap++)
        CHECK_EQ_I(sk_flow_encode_hdr(b, (size_t)cap, 9, 3, 0, S("svc:8080"), r, S("R3")),
                   -SK_FLOW_E_NOSPACE);
    CHECK_EQ_I(sk_flow_encode_hdr(b, (size_t)full, 9, 3, 0, S("svc:8080"), r, S("R3")), full);
    full = sk_flow_encode_hello(b, sizeof b, 1, 1, 1, 1, r, S("R2"));
    for (int cap = 0; cap < full; cap++)
        CHECK_EQ_I(sk_flow_encode_hello(b, (size_t)cap, 1, 1, 1, 1, r, S("R2")),
                   -SK_FLOW_E_NOSPACE);
    for (int cap = 0; cap < SK_FLOW_VERDICT_LEN; cap++)
        CHECK_EQ_I(sk_flow_encode_verdict(b, (size_t)cap, 0, 0, 1), -SK_FLOW_E_NOSPACE);
    return 0;
}

/* ------------------------------------------------------------ round trips */

/* Parses msg (followed by tail, the caller's bytes) split at every offset
 * and at every pair of offsets when short, and one byte at a time; each must
 * give want's fields and consume exactly the message. */
static int roundtrip_all_splits(int type, bool rev, const uint8_t *msg, size_t n,
                                const sk_flow_parser *want)
{
    static const char tail[] = "GET / HTTP/1.1\r\n";
    uint8_t buf[STAGE_CAP];
    REQUIRE(n + sizeof tail <= sizeof buf);
    memcpy(buf, msg, n);
    memcpy(buf + n, tail, sizeof tail);
    size_t total = n + sizeof tail;
    sk_flow_parser p;
    size_t used;

    for (size_t cut = 0; cut <= total; cut++) {
        size_t cuts[] = {cut, 0};
        sk_flow_parser_init(&p, type, rev);
        int st = feed(&p, buf, total, cut ? cuts : NULL, &used);
        CHECK_EQ_I(st, SK_FLOW_DONE);
        CHECK_EQ_U(used, n);
        CHECK_MSG(out_equal(type, &p, want), "split at %zu", cut);
    }
    if (n <= 64) {
        for (size_t c1 = 1; c1 < total; c1++)
            for (size_t c2 = 1; c1 + c2 < total; c2++) {
                size_t cuts[] = {c1, c2, 0};
                sk_flow_parser_init(&p, type, rev);
                int st = feed(&p, buf, total, cuts, &used);
                CHECK_EQ_I(st, SK_FLOW_DONE);
                CHECK_EQ_U(used, n);
                CHECK(out_equal(type, &p, want));
            }
    }
    sk_flow_parser_init(&p, type, rev);
    CHECK_EQ_I(feed_bytewise(&p, buf, total, &used), SK_FLOW_DONE);
    CHECK_EQ_U(used, n);
    CHECK(out_equal(type, &p, want));
    /* done is sticky and consumes nothing more */
    size_t got = 99;
    CHECK_EQ_I(sk_flow_parse(&p, stage(buf, 4), 4, &got), SK_FLOW_DONE);
    CHECK_EQ_U(got, 0);
    CHECK_EQ_I(sk_flow_parse_eof(&p), SK_FLOW_E_NONE);
    return 0;
}

static int test_roundtrip_hdr(void)
{
    uint8_t b[SK_FLOW_HDR_MAX];
    sk_flow_parser want;
    const struct {
        uint64_t id;
        uint8_t hops, flags;
        sk_flow_str addr, origin, dest;
    } cases[] = {
        {1, 1, 0, S("a"), S("r"), S("")},
        {0xFFFFFFFFFFFFFFFFull, SK_FLOW_MAX_HOPS, SK_FLOW_F_REVERSE, S("backend:8080"),
         S("router-east-1"), S("router-west-2")},
        {42, 7, 0, S("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x9A\x80 \xC2\xA0 \xF4\x8F\xBF\xBF"),
         S("\xE6\x9D\xB1\xE4\xBA\xAC"), S("R~3")},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = sk_flow_encode_hdr(b, sizeof b, cases[i].id, cases[i].hops, cases[i].flags,
                                   cases[i].addr, cases[i].origin, cases[i].dest);
        REQUIRE(n > 0);
        memset(&want, 0, sizeof want);
        sk_flow_hdr *h = &want.out.hdr;
        h->flow_id = cases[i].id;
        h->hops = cases[i].hops;
        h->flags = cases[i].flags;
        h->addr_len = (uint16_t)cases[i].addr.n;
        memcpy(h->addr, cases[i].addr.p, cases[i].addr.n);
        h->origin_len = (uint8_t)cases[i].origin.n;
        memcpy(h->origin, cases[i].origin.p, cases[i].origin.n);
        h->dest_len = (uint8_t)cases[i].dest.n;
        memcpy(h->dest, cases[i].dest.p, cases[i].dest.n);
        roundtrip_all_splits(SK_FLOW_T_HDR, cases[i].flags & SK_FLOW_F_REVERSE, b, (size_t)n,
                             &want);
    }

    /* the longest header, at every split */
    static char addr[SK_FLOW_ADDR_MAX], id[SK_FLOW_ID_MAX];
    for (size_t i = 0; i < sizeof addr; i++)
        addr[i] = (char)('!' + i % 90);
    memset(id, 'x', sizeof id);
    int n = sk_flow_encode_hdr(b, sizeof b, 77, 2, 0, (sk_flow_str){addr, sizeof addr},
                               (sk_flow_str){id, sizeof id}, (sk_flow_str){id, sizeof id});
    REQUIRE(n > 0);
    memset(&want, 0, sizeof want);
    want.out.hdr = (sk_flow_hdr){.flow_id = 77, .hops = 2, .addr_len = SK_FLOW_ADDR_MAX,
                                 .origin_len = SK_FLOW_ID_MAX, .dest_len = SK_FLOW_ID_MAX};
    memcpy(want.out.hdr.addr, addr, sizeof addr);
    memcpy(want.out.hdr.origin, id, sizeof id);
    memcpy(want.out.hdr.dest, id, sizeof id);
    roundtrip_all_splits(SK_FLOW_T_HDR, false, b, (size_t)n, &want);
    return 0;
}

static int test_roundtrip_hello_verdict(void)
{
    uint8_t b[SK_FLOW_HELLO_MAX];
    sk_flow_parser want;
    memset(&want, 0, sizeof want);
    int n = sk_flow_encode_hello(b, sizeof b, SK_FLOW_ROLE_INBOUND, 1700000000123ull,
                                 0x8000000000000001ull, 12, S("edge-1"), S("hub"));
    REQUIRE(n > 0);
    want.out.hello = (sk_flow_hello){.role = SK_FLOW_ROLE_INBOUND, .instance = 1700000000123ull,
                                     .link_id = 0x8000000000000001ull, .tls_version = 12,
                                     .from_len = 6, .to_len = 3};
    memcpy(want.out.hello.from, "edge-1", 6);
    memcpy(want.out.hello.to, "hub", 3);
    roundtrip_all_splits(SK_FLOW_T_HELLO, false, b, (size_t)n, &want);

    for (int code = 0; code < SK_FLOW_V__COUNT; code++) {
        n = sk_flow_encode_verdict(b, sizeof b, (uint8_t)code, (uint8_t)(code * 40),
                                   code ? 0x1122334455667788ull : 0);
        REQUIRE(n == SK_FLOW_VERDICT_LEN);
        memset(&want, 0, sizeof want);
        want.out.verdict = (sk_flow_verdict){(uint8_t)code, (uint8_t)(code * 40),
                                             code ? 0x1122334455667788ull : 0};
        roundtrip_all_splits(SK_FLOW_T_VERDICT, false, b, (size_t)n, &want);
    }
    return 0;
}

/* A pooled connection's life: HELLO, its VERDICT, then a FLOW and its
 * VERDICT, then client bytes, all in one stream read in odd chunks. */
static int test_back_to_back(void)
{
    uint8_t s[512];
    size_t n = 0;
    int k = sk_flow_encode_hello(s, sizeof s, SK_FLOW_ROLE_OUTBOUND, 1, 2, 3, S("A"), S("B"));
    REQUIRE(k > 0);
    n += (size_t)k;
    k = sk_flow_encode_hdr(s + n, sizeof s - n, 5, 3, 0, S("svc"), S("A"), S(""));
    REQUIRE(k > 0);
    n += (size_t)k;
    memcpy(s + n, "\x16\x03\x01" "client", 9);
    n += 9;

    for (size_t chunk = 1; chunk <= n; chunk++) {
        sk_flow_parser p;
        size_t off = 0, got;
        int types[] = {SK_FLOW_T_HELLO, SK_FLOW_T_HDR};
        for (int m = 0; m < 2; m++) {
            sk_flow_parser_init(&p, types[m], false);
            int st = SK_FLOW_NEED_MORE;
            while (st == SK_FLOW_NEED_MORE && off < n) {
                size_t c = chunk < n - off ? chunk : n - off;
                st = sk_flow_parse(&p, stage(s + off, c), c, &got);
                off += got;
            }
            CHECK_EQ_I(st, SK_FLOW_DONE);
        }
        CHECK_EQ_U(p.out.hdr.flow_id, 5);
        CHECK_EQ_U(n - off, 9);
        CHECK(!memcmp(s + off, "\x16\x03\x01" "client", 9));
    }
    return 0;
}

/* A newer sender's later fields are skipped, within the type's bound. */
static int test_later_fields_skipped(void)
{
    uint8_t b[SK_FLOW_HDR_MAX + 16];
    int n = sk_flow_encode_hdr(b, sizeof b, 3, 4, 0, S("svc"), S("R1"), S("R9"));
    REQUIRE(n > 0);
    sk_flow_parser want;
    memset(&want, 0, sizeof want);
    want.out.hdr = (sk_flow_hdr){.flow_id = 3, .hops = 4, .addr_len = 3, .origin_len = 2,
                                 .dest_len = 2};
    memcpy(want.out.hdr.addr, "svc", 3);
    memcpy(want.out.hdr.origin, "R1", 2);
    memcpy(want.out.hdr.dest, "R9", 2);

    size_t extra[] = {1, 7, 300, (size_t)(SK_FLOW_HDR_MAX - n)};
    for (size_t i = 0; i < 4; i++) {
        size_t total = (size_t)n + extra[i];
        memset(b + n, 0xFF, extra[i]); /* anything, even invalid UTF-8 */
        b[4] = (uint8_t)(total >> 8);
        b[5] = (uint8_t)total;
        roundtrip_all_splits(SK_FLOW_T_HDR, false, b, total, &want);
    }

    /* a verdict of a later version's size */
    n = sk_flow_encode_verdict(b, sizeof b, SK_FLOW_V_OVERLOADED, 0, 8);
    memset(b + n, 0xAB, SK_FLOW_VERDICT_MAX - SK_FLOW_VERDICT_LEN);
    b[5] = SK_FLOW_VERDICT_MAX;
    memset(&want, 0, sizeof want);
    want.out.verdict = (sk_flow_verdict){SK_FLOW_V_OVERLOADED, 0, 8};
    roundtrip_all_splits(SK_FLOW_T_VERDICT, false, b, SK_FLOW_VERDICT_MAX, &want);
    return 0;
}

/* ------------------------------------------------------------ refusals */

/* Parses msg whole, one byte at a time and split in two at every offset:
 * each must refuse it with err at offset at, consuming up to that byte, and
 * nothing after; the refusal sticks. */
static int expect_err(int type, bool rev, const uint8_t *msg, size_t n, int err, size_t at,
                      const char *what)
{
    sk_flow_parser p;
    size_t used;
    for (size_t cut = 0; cut <= n; cut++) {
        size_t cuts[] = {cut, 0};
        sk_flow_parser_init(&p, type, rev);
        int st = cut == n ? feed_bytewise(&p, msg, n, &used) : feed(&p, msg, n, cuts, &used);
        CHECK_MSG(st == SK_FLOW_ERROR, "%s: status %d at split %zu", what, st, cut);
        CHECK_MSG(p.err == err, "%s: err %s, want %s", what, sk_flow_err_name(p.err),
                  sk_flow_err_name(err));
        CHECK_MSG(p.err_at == at, "%s: err_at %u, want %zu", what, p.err_at, at);
        CHECK_MSG(used == at + 1 || (err == SK_FLOW_E_LENGTH && used == at),
                  "%s: consumed %zu, err_at %zu", what, used, at);
        if (!(st == SK_FLOW_ERROR && p.err == err))
            return -1;
    }
    size_t got = 7;
    CHECK_EQ_I(sk_flow_parse(&p, stage(msg, 1), 1, &got), SK_FLOW_ERROR);
    CHECK_EQ_U(got, 0);
    CHECK_EQ_I(sk_flow_parse_eof(&p), err);
    CHECK_EQ_I(sk_flow_err_verdict(err),
               err == SK_FLOW_E_HOP_LIMIT ? SK_FLOW_V_HOP_LIMIT : SK_FLOW_V_BAD_HEADER);
    return 0;
}

/* A valid header "SK 1 F len | id | hops | flags | 00 03 svc | 02 R1 | 00". */
static size_t good_hdr(uint8_t *b)
{
    int n = sk_flow_encode_hdr(b, 64, 0x10, 3, 0, S("svc"), S("R1"), S(""));
    return (size_t)n;
}

/* Offsets in good_hdr's bytes. */
enum { O_LEN = 4, O_ID = 6, O_HOPS = 14, O_FLAGS = 15, O_ALEN = 16, O_ADDR = 18, O_OLEN = 21,
       O_ORIGIN = 22, O_DLEN = 24 };

static int test_refusals_preamble(void)
{
    uint8_t b[64], v[64];
    size_t n = good_hdr(b);
    REQUIRE(n == 25);

    b[0] = 'X';
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_MAGIC, 0, "magic 0");
    b[0] = 0x16; /* a TLS client hello on a plain data port */
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_MAGIC, 0, "tls");
    b[0] = 'S';
    b[1] = 'k';
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_MAGIC, 1, "magic 1");
    b[1] = 'K';
    b[2] = 2;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_VERSION, 2, "version 2");
    b[2] = 0;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_VERSION, 2, "version 0");
    b[2] = 1;
    expect_err(SK_FLOW_T_HELLO, false, b, n, SK_FLOW_E_TYPE, 3, "flow on hello");
    expect_err(SK_FLOW_T_VERDICT, false, b, n, SK_FLOW_E_TYPE, 3, "flow on verdict");
    int k = sk_flow_encode_verdict(v, sizeof v, 0, 0, 1);
    expect_err(SK_FLOW_T_HDR, false, v, (size_t)k, SK_FLOW_E_TYPE, 3, "verdict on flow");
    b[3] = 'Z';
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_TYPE, 3, "unknown type");
    b[3] = 'F';

    /* declared length below the minimum, above the bound */
    b[O_LEN] = 0;
    b[O_LEN + 1] = SK_FLOW_HDR_MIN - 1;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_LENGTH, 5, "len < min");
    b[O_LEN] = (SK_FLOW_HDR_MAX + 1) >> 8;
    b[O_LEN + 1] = (SK_FLOW_HDR_MAX + 1) & 0xFF;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_TOO_LARGE, 5, "len > max");
    b[O_LEN] = 0xFF;
    b[O_LEN + 1] = 0xFF;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_TOO_LARGE, 5, "len 65535");
    v[5] = SK_FLOW_VERDICT_MAX + 1;
    expect_err(SK_FLOW_T_VERDICT, false, v, (size_t)k, SK_FLOW_E_TOO_LARGE, 5, "verdict len");
    v[5] = SK_FLOW_VERDICT_LEN - 1;
    expect_err(SK_FLOW_T_VERDICT, false, v, (size_t)k, SK_FLOW_E_LENGTH, 5, "verdict short");

    /* declared length shorter than the fields: a string or an integer runs
     * past it */
    n = good_hdr(b);
    b[O_LEN + 1] = (uint8_t)(n - 1); /* dest length byte is past the end */
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_LENGTH, n - 1, "len cuts dest length");
    /* ... refused as soon as the declared bytes are in: a sender that wrote
     * only those and waits for its verdict is not left hanging */
    expect_err(SK_FLOW_T_HDR, false, b, n - 1, SK_FLOW_E_LENGTH, n - 1, "len cuts, no more");
    b[O_LEN + 1] = (uint8_t)(n - 2); /* origin's last byte is past the end */
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_LENGTH, O_OLEN, "len cuts origin");
    n = good_hdr(b);
    b[O_ALEN + 1] = 0xF0; /* address claims 240 bytes */
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_LENGTH, O_ALEN + 1, "address past len");
    /* HELLO: "to" (length at 35) would end past a declared 37 */
    uint8_t h[64];
    k = sk_flow_encode_hello(h, sizeof h, 1, 1, 1, 1, S("AB"), S("CD"));
    REQUIRE(k == 38);
    h[5] = 37;
    expect_err(SK_FLOW_T_HELLO, false, h, (size_t)k, SK_FLOW_E_LENGTH, 35, "hello to past len");
    return 0;
}

static int test_refusals_fields(void)
{
    uint8_t b[SK_FLOW_HDR_MAX + 8];
    size_t n = good_hdr(b);

    memset(b + O_ID, 0, 8);
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_FLOW_ID, O_ID + 7, "flow id 0");
    n = good_hdr(b);
    b[O_HOPS] = 0;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_HOP_LIMIT, O_HOPS, "hops 0");
    /* the flow id is known, to answer HOP_LIMIT with it */
    sk_flow_parser p;
    size_t used;
    sk_flow_parser_init(&p, SK_FLOW_T_HDR, false);
    CHECK_EQ_I(feed(&p, b, n, NULL, &used), SK_FLOW_ERROR);
    CHECK_EQ_U(p.out.hdr.flow_id, 0x10);
    b[O_HOPS] = SK_FLOW_MAX_HOPS + 1;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_HOPS, O_HOPS, "hops 33");
    b[O_HOPS] = 255;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_HOPS, O_HOPS, "hops 255");
    b[O_HOPS] = 3;
    for (int bit = 1; bit < 8; bit++) {
        b[O_FLAGS] = (uint8_t)(1u << bit);
        expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_FLAGS, O_FLAGS, "unknown flag");
    }
    b[O_FLAGS] = SK_FLOW_F_REVERSE;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_DIRECTION, O_FLAGS, "reverse unexpected");
    b[O_FLAGS] = 0;
    expect_err(SK_FLOW_T_HDR, true, b, n, SK_FLOW_E_DIRECTION, O_FLAGS, "reverse missing");

    /* empty strings: the address and the origin; the destination may be */
    b[O_ALEN + 1] = 0;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_EMPTY, O_ALEN + 1, "empty address");
    n = good_hdr(b);
    b[O_OLEN] = 0;
    expect_err(SK_FLOW_T_HDR, false, b, n, SK_FLOW_E_EMPTY, O_OLEN, "empty origin");

    /* an address longer than the engine takes, even if the length allows it */
    static char addr[SK_FLOW_ADDR_MAX];
    memset(addr, 'a', sizeof addr);
    int k = sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, (sk_flow_str){addr, sizeof addr}, S("R"),
                               S(""));
    REQUIRE(k > 0);
    /* rewrite as 1025 bytes of address */
    memmove(b + O_ADDR + SK_FLOW_ADDR_MAX + 1, b + O_ADDR + SK_FLOW_ADDR_MAX,
            (size_t)k - O_ADDR - SK_FLOW_ADDR_MAX);
    b[O_ADDR + SK_FLOW_ADDR_MAX] = 'a';
    k++;
    b[O_ALEN] = (SK_FLOW_ADDR_MAX + 1) >> 8;
    b[O_ALEN + 1] = (SK_FLOW_ADDR_MAX + 1) & 0xFF;
    b[O_LEN] = (uint8_t)(k >> 8);
    b[O_LEN + 1] = (uint8_t)k;
    expect_err(SK_FLOW_T_HDR, false, b, (size_t)k, SK_FLOW_E_ADDR_LEN, O_ALEN + 1,
               "address 1025");

    /* HELLO: role, flags, empty ids */
    uint8_t h[64];
    k = sk_flow_encode_hello(h, sizeof h, SK_FLOW_ROLE_OUTBOUND, 1, 2, 3, S("A"), S("B"));
    const uint8_t roles[] = {0, 3, 255};
    for (int i = 0; i < 3; i++) {
        h[6] = roles[i];
        expect_err(SK_FLOW_T_HELLO, false, h, (size_t)k, SK_FLOW_E_ROLE, 6, "role");
    }
    h[6] = SK_FLOW_ROLE_INBOUND;
    h[7] = 1;
    expect_err(SK_FLOW_T_HELLO, false, h, (size_t)k, SK_FLOW_E_FLAGS, 7, "hello flags");
    h[7] = 0;
    h[32] = 0; /* from: empty (its byte becomes a 1-byte "to" length...) */
    expect_err(SK_FLOW_T_HELLO, false, h, (size_t)k, SK_FLOW_E_EMPTY, 32, "empty from");
    k = sk_flow_encode_hello(h, sizeof h, SK_FLOW_ROLE_OUTBOUND, 1, 2, 3, S("A"), S("B"));
    h[34] = 0;
    expect_err(SK_FLOW_T_HELLO, false, h, (size_t)k, SK_FLOW_E_EMPTY, 34, "empty to");

    /* VERDICT: unknown code */
    uint8_t v[32];
    k = sk_flow_encode_verdict(v, sizeof v, 0, 0, 1);
    v[6] = SK_FLOW_V__COUNT;
    expect_err(SK_FLOW_T_VERDICT, false, v, (size_t)k, SK_FLOW_E_VERDICT, 6, "verdict code");
    v[6] = 0xFF;
    expect_err(SK_FLOW_T_VERDICT, false, v, (size_t)k, SK_FLOW_E_VERDICT, 6, "verdict 255");
    return 0;
}

/* Strings: malformed UTF-8 and control characters, in the address (u16
 * length) and in a router id (u8 length); what is allowed passes. */
static int test_refusals_strings(void)
{
    const struct {
        const char *s;
        size_t n;
        int err;
        size_t bad; /* offset of the offending byte in s */
    } cases[] = {
        {"\x80", 1, SK_FLOW_E_UTF8, 0},             /* lone continuation */
        {"a\xBF", 2, SK_FLOW_E_UTF8, 1},
        {"\xC0\xAF", 2, SK_FLOW_E_UTF8, 0},         /* overlong '/' */
        {"\xC1\xBF", 2, SK_FLOW_E_UTF8, 0},
        {"\xE0\x80\xAF", 3, SK_FLOW_E_UTF8, 1},     /* overlong */
        {"\xE0\x9F\xBF", 3, SK_FLOW_E_UTF8, 1},
        {"\xED\xA0\x80", 3, SK_FLOW_E_UTF8, 1},     /* surrogate U+D800 */
        {"\xED\xBF\xBF", 3, SK_FLOW_E_UTF8, 1},
        {"\xF0\x80\x80\x80", 4, SK_FLOW_E_UTF8, 1}, /* overlong */
        {"\xF4\x90\x80\x80", 4, SK_FLOW_E_UTF8, 1}, /* U+110000 */
        {"\xF5\x80\x80\x80", 4, SK_FLOW_E_UTF8, 0},
        {"\xFE", 1, SK_FLOW_E_UTF8, 0},
        {"\xFF", 1, SK_FLOW_E_UTF8, 0},
        {"\xC3\x28", 2, SK_FLOW_E_UTF8, 1},         /* continuation missing */
        {"\xE2\x82", 2, SK_FLOW_E_UTF8, 1},         /* cut by the string's end */
        {"ab\xF0\x9F\x9A", 5, SK_FLOW_E_UTF8, 4},
        {"\xC3", 1, SK_FLOW_E_UTF8, 0},
        {"\0", 1, SK_FLOW_E_CONTROL, 0},
        {"a\0b", 3, SK_FLOW_E_CONTROL, 1},
        {"a\nb", 3, SK_FLOW_E_CONTROL, 1},
        {"\r", 1, SK_FLOW_E_CONTROL, 0},
        {"\t", 1, SK_FLOW_E_CONTROL, 0},
        {"\x1F", 1, SK_FLOW_E_CONTROL, 0},
        {"\x7F", 1, SK_FLOW_E_CONTROL, 0},
        {"\xC2\x80", 2, SK_FLOW_E_CONTROL, 1},      /* C1 controls */
        {"x\xC2\x9F", 3, SK_FLOW_E_CONTROL, 2},
        {"\xC2\xA0", 2, 0, 0},                      /* NBSP: allowed */
        {"\xDF\xBF", 2, 0, 0},
        {"\xE0\xA0\x80", 3, 0, 0},
        {"\xEF\xBF\xBF", 3, 0, 0},
        {"\xF0\x90\x80\x80", 4, 0, 0},
        {"\xF4\x8F\xBF\xBF", 4, 0, 0},
        {" ~", 2, 0, 0},
    };
    uint8_t b[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sk_flow_str s = {cases[i].s, cases[i].n};
        char what[64];
        snprintf(what, sizeof what, "string case %zu", i);
        /* the encoders refuse it too */
        int ke = sk_flow_encode_hdr(b, sizeof b, 1, 1, 0, s, S("R"), S(""));
        CHECK_MSG(cases[i].err ? ke == -cases[i].err : ke > 0, "%s: encode %d", what, ke);
        ke = sk_flow_encode_hello(b, sizeof b, 1, 1, 1, 1, S("A"), s);
        CHECK_MSG(cases[i].err ? ke == -cases[i].err : ke > 0, "%s: hello %d", what, ke);

        for (int where = 0; where < 3; where++) {
            /* build by hand: address, origin, then destination */
            sk_flow_str parts[3] = {S("svc"), S("R1"), S("R2")};
            parts[where] = s;
            size_t n = 0;
            memcpy(b, "SK\x01" "F\0\0", 6);
            n = 6;
            memcpy(b + n, "\0\0\0\0\0\0\0\x01\x05\0", 10);
            n += 10;
            size_t str_at[3];
            for (int f = 0; f < 3; f++) {
                if (f == 0)
                    b[n++] = 0;
                b[n++] = (uint8_t)parts[f].n;
                str_at[f] = n;
                memcpy(b + n, parts[f].p, parts[f].n);
                n += parts[f].n;
            }
            b[4] = 0;
            b[5] = (uint8_t)n;
            if (cases[i].err) {
                expect_err(SK_FLOW_T_HDR, false, b, n, cases[i].err,
                           str_at[where] + cases[i].bad, what);
            } else {
                sk_flow_parser p;
                size_t used;
                sk_flow_parser_init(&p, SK_FLOW_T_HDR, false);
                CHECK_EQ_I(feed_bytewise(&p, b, n, &used), SK_FLOW_DONE);
                const char *got = where == 0 ? p.out.hdr.addr
                                  : where == 1 ? p.out.hdr.origin
                                               : p.out.hdr.dest;
                CHECK(!memcmp(got, s.p, s.n) && got[s.n] == '\0');
            }
        }
    }
    return 0;
}

static int test_eof(void)
{
    uint8_t b[64];
    size_t n = good_hdr(b);
    sk_flow_parser p;
    sk_flow_parser_init(&p, SK_FLOW_T_HDR, false);
    CHECK_EQ_I(sk_flow_parse_eof(&p), SK_FLOW_E_NONE); /* idle pooled connection closed */
    for (size_t k = 1; k < n; k++) {
        size_t used;
        sk_flow_parser_init(&p, SK_FLOW_T_HDR, false);
        CHECK_EQ_I(sk_flow_parse(&p, stage(b, k), k, &used), SK_FLOW_NEED_MORE);
        CHECK_EQ_U(used, k);
        CHECK_EQ_I(sk_flow_parse_eof(&p), SK_FLOW_E_TRUNCATED);
        CHECK_EQ_U(p.err_at, k);
        CHECK_EQ_I(sk_flow_parse(&p, stage(b + k, 1), 1, &used), SK_FLOW_ERROR);
        CHECK_EQ_U(used, 0);
    }
    /* an empty chunk is no progress and no error */
    size_t used = 5;
    sk_flow_parser_init(&p, SK_FLOW_T_HDR, false);
    CHECK_EQ_I(sk_flow_parse(&p, b, 0, &used), SK_FLOW_NEED_MORE);
    CHECK_EQ_U(used, 0);
    /* a parser armed for no known type refuses */
    sk_flow_parser_init(&p, 'Q', false);
    CHECK_EQ_I(sk_flow_parse(&p, b, n, &used), SK_FLOW_ERROR);
    CHECK_EQ_I(p.err, SK_FLOW_E_TYPE);
    return 0;
}

static int test_names_and_counters(void)
{
    for (int e = 0; e < SK_FLOW_E__COUNT; e++) {
        const char *name = sk_flow_err_name(e);
        CHECK_MSG(name && strcmp(name, "?") != 0, "err %d has no name", e);
        for (int f = 0; f < e; f++)
            CHECK_MSG(strcmp(name, sk_flow_err_name(f)) != 0, "errs %d and %d share %s", e, f,
                      name);
    }
    CHECK(!strcmp(sk_flow_err_name(-1), "?"));
    CHECK(!strcmp(sk_flow_err_name(SK_FLOW_E__COUNT), "?"));
    for (int v = 0; v < SK_FLOW_V__COUNT; v++)
        CHECK(strcmp(sk_flow_verdict_name(v), "?") != 0);
    CHECK(!strcmp(sk_flow_verdict_name(SK_FLOW_V__COUNT), "?"));
    CHECK(!strcmp(sk_flow_verdict_name(SK_FLOW_V_NO_ROUTE), "no_route"));
    CHECK_EQ_I(sk_flow_err_verdict(SK_FLOW_E_NONE), SK_FLOW_V_OK);
    CHECK_EQ_I(sk_flow_err_verdict(SK_FLOW_E_MAGIC), SK_FLOW_V_BAD_HEADER);
    CHECK_EQ_I(sk_flow_err_verdict(SK_FLOW_E_HOP_LIMIT), SK_FLOW_V_HOP_LIMIT);

    static sk_flow_errors c;
    sk_flow_errors_count(&c, SK_FLOW_E_MAGIC);
    sk_flow_errors_count(&c, SK_FLOW_E_MAGIC);
    sk_flow_errors_count(&c, SK_FLOW_E_NONE);
    sk_flow_errors_count(&c, SK_FLOW_E__COUNT);
    sk_flow_errors_count(&c, -3);
    CHECK_EQ_U(SK_LOAD(&c.n[SK_FLOW_E_MAGIC]), 2);
    CHECK_EQ_U(SK_LOAD(&c.n[SK_FLOW_E_NONE]), 0);
    return 0;
}

/* ------------------------------------------------------------ fuzz */

/* The parser is single-threaded: TSan has nothing to find in it and its
 * instrumentation makes the loop twenty times slower, so it runs a tenth. */
#if defined(__SANITIZE_THREAD__)
#define FUZZ_ITERATIONS 20000
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FUZZ_ITERATIONS 20000
#endif
#endif
#ifndef FUZZ_ITERATIONS
#define FUZZ_ITERATIONS 200000
#endif

static size_t rand_str(uint64_t *rng, char *out, size_t max, size_t min)
{
    static const char *const pieces[] = {"a", "Z", "-", ".", ":", "9", "_", " ", "~",
                                         "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x9A\x80",
                                         "\xC2\xA0", "\xF4\x8F\xBF\xBF"};
    size_t want = min + tl_rand(rng) % (max - min + 1), n = 0;
    if (tl_rand(rng) % 4 == 0)
        want = min + tl_rand(rng) % 8 < max ? min + tl_rand(rng) % 8 : max;
    while (n < want) {
        const char *p = pieces[tl_rand(rng) % (sizeof pieces / sizeof pieces[0])];
        size_t k = strlen(p);
        if (n + k > max)
            break;
        memcpy(out + n, p, k);
        n += k;
    }
    while (n < min)
        out[n++] = 'm';
    return n;
}

/* A valid message of a random type: its bytes, and the parser fields it
 * must give. Returns its length. */
static size_t rand_msg(uint64_t *rng, uint8_t *b, int *type, bool *rev, sk_flow_parser *want)
{
    static char s1[SK_FLOW_ADDR_MAX], s2[SK_FLOW_ID_MAX], s3[SK_FLOW_ID_MAX];
    int k;
    memset(want, 0, sizeof *want);
    *rev = false;
    switch (tl_rand(rng) % 3) {
    case 0: {
        *type = SK_FLOW_T_HDR;
        size_t amax = tl_rand(rng) % 8 == 0 ? SK_FLOW_ADDR_MAX : 40;
        size_t a = rand_str(rng, s1, amax, 1), o = rand_str(rng, s2, SK_FLOW_ID_MAX, 1),
               d = rand_str(rng, s3, tl_rand(rng) % 2 ? 0 : 30, 0);
        sk_flow_hdr *h = &want->out.hdr;
        h->flow_id = tl_rand(rng) % 4 ? tl_rand(rng) | 1 : 1 + tl_rand(rng) % 3;
        h->hops = (uint8_t)(1 + tl_rand(rng) % SK_FLOW_MAX_HOPS);
        h->flags = (uint8_t)(tl_rand(rng) & SK_FLOW_F_REVERSE);
        *rev = h->flags & SK_FLOW_F_REVERSE;
        h->addr_len = (uint16_t)a;
        h->origin_len = (uint8_t)o;
        h->dest_len = (uint8_t)d;
        memcpy(h->addr, s1, a);
        memcpy(h->origin, s2, o);
        memcpy(h->dest, s3, d);
        k = sk_flow_encode_hdr(b, SK_FLOW_HDR_MAX, h->flow_id, h->hops, h->flags,
                               (sk_flow_str){s1, a}, (sk_flow_str){s2, o},
                               (sk_flow_str){s3, d});
        break;
    }
    case 1: {
        *type = SK_FLOW_T_HELLO;
        size_t f = rand_str(rng, s2, 20, 1), t = rand_str(rng, s3, SK_FLOW_ID_MAX, 1);
        sk_flow_hello *h = &want->out.hello;
        h->role = (uint8_t)(1 + tl_rand(rng) % 2);
        h->instance = tl_rand(rng);
        h->link_id = tl_rand(rng) % 5;
        h->tls_version = tl_rand(rng) % 3;
        h->from_len = (uint8_t)f;
        h->to_len = (uint8_t)t;
        memcpy(h->from, s2, f);
        memcpy(h->to, s3, t);
        k = sk_flow_encode_hello(b, SK_FLOW_HELLO_MAX, h->role, h->instance, h->link_id,
                                 h->tls_version, (sk_flow_str){s2, f}, (sk_flow_str){s3, t});
        break;
    }
    default: {
        *type = SK_FLOW_T_VERDICT;
        sk_flow_verdict *v = &want->out.verdict;
        v->code = (uint8_t)(tl_rand(rng) % SK_FLOW_V__COUNT);
        v->detail = (uint8_t)tl_rand(rng);
        v->flow_id = tl_rand(rng);
        k = sk_flow_encode_verdict(b, 64, v->code, v->detail, v->flow_id);
        break;
    }
    }
    return k > 0 ? (size_t)k : 0;
}

static const uint8_t interesting[] = {0, 1, 2, 0x1F, 0x20, 0x7F, 0x80, 0x9F, 0xA0, 0xBF,
                                      0xC0, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xF5, 0xFF,
                                      'S', 'K', 'F', 'H', 'V', SK_FLOW_MAX_HOPS,
                                      SK_FLOW_MAX_HOPS + 1};

/* Damages a message: flipped bits, interesting bytes, a length changed,
 * bytes cut, inserted or appended. */
static size_t mutate(uint64_t *rng, uint8_t *b, size_t n, size_t cap)
{
    int edits = 1 + (int)(tl_rand(rng) % 4);
    for (int e = 0; e < edits && n; e++) {
        size_t at = tl_rand(rng) % n;
        switch (tl_rand(rng) % 7) {
        case 0:
            b[at] ^= (uint8_t)(1u << (tl_rand(rng) % 8));
            break;
        case 1:
            b[at] = interesting[tl_rand(rng) % sizeof interesting];
            break;
        case 2: /* the declared length, or a string's */
            at = tl_rand(rng) % 2 ? 4 + tl_rand(rng) % 2 : at;
            if (at < n)
                b[at] = (uint8_t)(b[at] + (int)(tl_rand(rng) % 5) - 2);
            break;
        case 3:
            n = at;
            break;
        case 4:
            if (n < cap) {
                memmove(b + at + 1, b + at, n - at);
                b[at] = (uint8_t)tl_rand(rng);
                n++;
            }
            break;
        case 5:
            memmove(b + at, b + at + 1, n - at - 1);
            n--;
            break;
        default: {
            size_t more = tl_rand(rng) % 16;
            for (size_t i = 0; i < more && n < cap; i++)
                b[n++] = (uint8_t)tl_rand(rng);
            break;
        }
        }
    }
    return n;
}

static int test_fuzz(void)
{
    const long iterations = FUZZ_ITERATIONS;
    uint64_t rng = 0x5EEDF10Bull;
    static uint8_t b[SK_FLOW_HDR_MAX + 64];
    uint8_t *exact = NULL;
    size_t exact_n = 0;
    static sk_flow_parser want, whole, chunked;
    long done = 0, errors = 0, need_more = 0, valid = 0;
    long by_err[SK_FLOW_E__COUNT] = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (long it = 0; it < iterations; it++) {
        int type;
        bool rev;
        size_t n = rand_msg(&rng, b, &type, &rev, &want);
        REQUIRE_MSG(n > 0, "iteration %ld: encoder refused a valid message", it);
        int mode = (int)(tl_rand(&rng) % 8);
        bool pristine = mode == 0;
        if (mode >= 1 && mode <= 6) {
            n = mutate(&rng, b, n, sizeof b);
        } else if (mode == 7) { /* noise behind a valid preamble, or none */
            n = tl_rand(&rng) % 64;
            for (size_t i = 0; i < n; i++)
                b[i] = (uint8_t)tl_rand(&rng);
            if (tl_rand(&rng) % 2 && n >= 6) {
                memcpy(b, "SK\x01", 3);
                b[3] = (uint8_t)type;
                b[4] = 0;
            }
        }
        /* sometimes parse as another type or direction */
        if (tl_rand(&rng) % 16 == 0)
            type = (int[]){SK_FLOW_T_HDR, SK_FLOW_T_HELLO, SK_FLOW_T_VERDICT}[tl_rand(&rng) % 3];
        if (tl_rand(&rng) % 16 == 0)
            rev = !rev;

        /* whole, from a heap block of exactly n bytes */
        if (n != exact_n || !exact) {
            free(exact);
            exact = malloc(n ? n : 1);
            exact_n = n;
        }
        if (n)
            memcpy(exact, b, n);
        size_t used_whole = 0, used_chunked = 0;
        sk_flow_parser_init(&whole, type, rev);
        int st = sk_flow_parse(&whole, exact, n, &used_whole);
        REQUIRE(used_whole <= n);

        /* in random chunks, each staged at the end of its own block */
        size_t cuts[64];
        size_t nc = 0;
        while (nc < 63) {
            size_t c = tl_rand(&rng) % 4 == 0 ? 1 + tl_rand(&rng) % 300 : 1 + tl_rand(&rng) % 9;
            cuts[nc++] = c;
        }
        cuts[nc] = 0;
        sk_flow_parser_init(&chunked, type, rev);
        int st2 = feed(&chunked, b, n, cuts, &used_chunked);
        if (n == 0)
            st2 = SK_FLOW_NEED_MORE;

        REQUIRE_MSG(st == st2 && used_whole == used_chunked && whole.err == chunked.err &&
                        whole.err_at == chunked.err_at,
                    "iteration %ld: whole %d/%zu/%s@%u, chunked %d/%zu/%s@%u", it, st,
                    used_whole, sk_flow_err_name(whole.err), whole.err_at, st2, used_chunked,
                    sk_flow_err_name(chunked.err), chunked.err_at);
        if (st == SK_FLOW_DONE) {
            done++;
            REQUIRE(out_equal(type, &whole, &chunked));
            REQUIRE(used_whole == whole.len && whole.len >= SK_FLOW_PREAMBLE);
            /* whatever was accepted re-encodes to the same fields */
            uint8_t re[SK_FLOW_HDR_MAX];
            int k;
            if (type == SK_FLOW_T_HDR) {
                const sk_flow_hdr *h = &whole.out.hdr;
                k = sk_flow_encode_hdr(re, sizeof re, h->flow_id, h->hops, h->flags,
                                       (sk_flow_str){h->addr, h->addr_len},
                                       (sk_flow_str){h->origin, h->origin_len},
                                       (sk_flow_str){h->dest, h->dest_len});
                REQUIRE(strlen(h->addr) == h->addr_len);
            } else if (type == SK_FLOW_T_HELLO) {
                const sk_flow_hello *h = &whole.out.hello;
                k = sk_flow_encode_hello(re, sizeof re, h->role, h->instance, h->link_id,
                                         h->tls_version, (sk_flow_str){h->from, h->from_len},
                                         (sk_flow_str){h->to, h->to_len});
            } else {
                const sk_flow_verdict *v = &whole.out.verdict;
                k = sk_flow_encode_verdict(re, sizeof re, v->code, v->detail, v->flow_id);
            }
            REQUIRE_MSG(k > 0 && (size_t)k <= used_whole, "iteration %ld: re-encode %d", it, k);
            /* the known fields are the same bytes; only the length and any
             * later fields may differ */
            REQUIRE(!memcmp(re, b, 4) && !memcmp(re + 6, b + 6, (size_t)k - 6));
            if (pristine) {
                valid++;
                REQUIRE_MSG(out_equal(type, &whole, &want) && used_whole == n,
                            "iteration %ld: a valid message parsed differently", it);
            }
        } else if (st == SK_FLOW_ERROR) {
            errors++;
            REQUIRE(whole.err > SK_FLOW_E_NONE && whole.err < SK_FLOW_E_TRUNCATED);
            REQUIRE(whole.err_at < n || (whole.err == SK_FLOW_E_LENGTH && whole.err_at <= n));
            by_err[whole.err]++;
        } else {
            need_more++;
            REQUIRE(used_whole == n);
            REQUIRE(!pristine);
            int e = sk_flow_parse_eof(&whole);
            REQUIRE(e == (n ? SK_FLOW_E_TRUNCATED : SK_FLOW_E_NONE));
        }
    }
    free(exact);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "   fuzz: %ld messages in %.2f s: %ld done (%ld pristine), %ld refused, %ld"
                    " incomplete\n   refused by reason:", iterations, secs, done, valid,
            errors, need_more);
    for (int e = 1; e < SK_FLOW_E__COUNT; e++)
        if (by_err[e])
            fprintf(stderr, " %s=%ld", sk_flow_err_name(e), by_err[e]);
    fputc('\n', stderr);
    CHECK_OP_I(valid, >, iterations / 20);
    CHECK_OP_I(errors, >, iterations / 4);
    /* every parse-time reason turned up */
    for (int e = SK_FLOW_E_MAGIC; e < SK_FLOW_E_TRUNCATED; e++)
        CHECK_MSG(by_err[e] > 0, "fuzz never hit %s", sk_flow_err_name(e));
    return 0;
}

int main(void)
{
    RUN(test_encode_layout);
    RUN(test_encode_refusals);
    RUN(test_roundtrip_hdr);
    RUN(test_roundtrip_hello_verdict);
    RUN(test_back_to_back);
    RUN(test_later_fields_skipped);
    RUN(test_refusals_preamble);
    RUN(test_refusals_fields);
    RUN(test_refusals_strings);
    RUN(test_eof);
    RUN(test_names_and_counters);
    RUN(test_fuzz);
    free(stage_block);
    return tl_summary("test_flow");
}
