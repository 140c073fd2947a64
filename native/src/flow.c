/* flow.c -- the data plane's wire format: HELLO, FLOW header and VERDICT,
 * their encoders and an incremental, strict parser (docs/dataplane.md).
 *
 * The parser is a byte-at-a-time state machine driven by a small program per
 * message type: a list of fields, each an integer (1, 2 or 8 bytes,
 * big-endian) or a length-prefixed string (u8 or u16 length). It never reads
 * past the chunk it is given, never consumes past the end of its message and
 * checks every field as soon as its last byte is in, so garbage is refused
 * at the first byte that makes it garbage. */
#include "internal.h"

#include <string.h>

enum { ST_PRE = 0, ST_INT, ST_SLEN, ST_STR, ST_SKIP, ST_DONE, ST_ERR };

enum fkind { K_U8, K_U16, K_U64, K_STR8, K_STR16 };

enum fid {
    F_FLOW_ID,
    F_HOPS,
    F_FLAGS,
    F_ADDR,
    F_ORIGIN,
    F_DEST,
    F_ROLE,
    F_HFLAGS,
    F_INSTANCE,
    F_LINK,
    F_TLSV,
    F_FROM,
    F_TO,
    F_CODE,
    F_DETAIL,
    F_VFLOW_ID,
};

static const uint8_t kind_of[] = {
    [F_FLOW_ID] = K_U64, [F_HOPS] = K_U8,      [F_FLAGS] = K_U8,    [F_ADDR] = K_STR16,
    [F_ORIGIN] = K_STR8, [F_DEST] = K_STR8,    [F_ROLE] = K_U8,     [F_HFLAGS] = K_U8,
    [F_INSTANCE] = K_U64, [F_LINK] = K_U64,    [F_TLSV] = K_U64,    [F_FROM] = K_STR8,
    [F_TO] = K_STR8,     [F_CODE] = K_U8,      [F_DETAIL] = K_U8,   [F_VFLOW_ID] = K_U64,
};

/* The bodies, in wire order. */
static const uint8_t prog_hdr[] = {F_FLOW_ID, F_HOPS, F_FLAGS, F_ADDR, F_ORIGIN, F_DEST};
static const uint8_t prog_hello[] = {F_ROLE, F_HFLAGS, F_INSTANCE, F_LINK, F_TLSV, F_FROM, F_TO};
static const uint8_t prog_verdict[] = {F_CODE, F_DETAIL, F_VFLOW_ID};

typedef struct prog {
    const uint8_t *f;
    uint8_t n;
    uint16_t min, max; /* bounds of the declared length */
} prog;

static bool prog_of(int type, prog *out)
{
    switch (type) {
    case SK_FLOW_T_HDR:
        *out = (prog){prog_hdr, sizeof prog_hdr, SK_FLOW_HDR_MIN, SK_FLOW_HDR_MAX};
        return true;
    case SK_FLOW_T_HELLO:
        *out = (prog){prog_hello, sizeof prog_hello, SK_FLOW_HELLO_MIN, SK_FLOW_HELLO_MAX};
        return true;
    case SK_FLOW_T_VERDICT:
        *out = (prog){prog_verdict, sizeof prog_verdict, SK_FLOW_VERDICT_LEN,
                      SK_FLOW_VERDICT_MAX};
        return true;
    }
    return false;
}

static unsigned int_size(int kind)
{
    return kind == K_U8 ? 1 : kind == K_U16 ? 2 : 8;
}

/* ---------------------------------------------------------------- UTF-8 */

/* One byte of a string: 0 or an sk_flow_err. Refuses overlong forms,
 * surrogates, code points above U+10FFFF, and the C0 and C1 controls and DEL
 * (NUL included). need, lo, hi and c1 carry a sequence across calls. */
static int utf8_step(uint8_t *need, uint8_t *lo, uint8_t *hi, uint8_t *c1, uint8_t b)
{
    if (*need) {
        if (b < *lo || b > *hi)
            return SK_FLOW_E_UTF8;
        if (*c1 && b < 0xA0) /* U+0080..U+009F */
            return SK_FLOW_E_CONTROL;
        (*need)--;
        *lo = 0x80;
        *hi = 0xBF;
        *c1 = 0;
        return 0;
    }
    if (b < 0x80)
        return (b < 0x20 || b == 0x7F) ? SK_FLOW_E_CONTROL : 0;
    *lo = 0x80;
    *hi = 0xBF;
    *c1 = 0;
    if (b < 0xC2) /* a continuation byte, or an overlong 2-byte lead */
        return SK_FLOW_E_UTF8;
    if (b < 0xE0) {
        *need = 1;
        *c1 = b == 0xC2;
    } else if (b < 0xF0) {
        *need = 2;
        if (b == 0xE0)
            *lo = 0xA0; /* overlong */
        else if (b == 0xED)
            *hi = 0x9F; /* surrogates */
    } else if (b < 0xF5) {
        *need = 3;
        if (b == 0xF0)
            *lo = 0x90; /* overlong */
        else if (b == 0xF4)
            *hi = 0x8F; /* above U+10FFFF */
    } else {
        return SK_FLOW_E_UTF8;
    }
    return 0;
}

static int check_str(sk_flow_str s, size_t min, size_t max, int too_long)
{
    if (s.n < min || (!s.p && s.n))
        return SK_FLOW_E_EMPTY;
    if (s.n > max)
        return too_long;
    uint8_t need = 0, lo = 0x80, hi = 0xBF, c1 = 0;
    for (size_t i = 0; i < s.n; i++) {
        int e = utf8_step(&need, &lo, &hi, &c1, (uint8_t)s.p[i]);
        if (e)
            return e;
    }
    return need ? SK_FLOW_E_UTF8 : 0;
}

/* ---------------------------------------------------------------- encode */

static uint8_t *put_u8(uint8_t *o, uint8_t v)
{
    *o = v;
    return o + 1;
}

static uint8_t *put_u16(uint8_t *o, uint16_t v)
{
    o[0] = (uint8_t)(v >> 8);
    o[1] = (uint8_t)v;
    return o + 2;
}

static uint8_t *put_u64(uint8_t *o, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        o[i] = (uint8_t)(v >> (56 - 8 * i));
    return o + 8;
}

static uint8_t *put_bytes(uint8_t *o, sk_flow_str s)
{
    if (s.n)
        memcpy(o, s.p, s.n);
    return o + s.n;
}

static uint8_t *put_preamble(uint8_t *o, int type, size_t total)
{
    o = put_u8(o, 'S');
    o = put_u8(o, 'K');
    o = put_u8(o, SK_FLOW_VERSION);
    o = put_u8(o, (uint8_t)type);
    return put_u16(o, (uint16_t)total);
}

int sk_flow_encode_hdr(void *buf, size_t cap, uint64_t flow_id, uint8_t hops, uint8_t flags,
                       sk_flow_str addr, sk_flow_str origin, sk_flow_str dest)
{
    int e;
    if (flow_id == 0)
        return -SK_FLOW_E_FLOW_ID;
    if (hops == 0)
        return -SK_FLOW_E_HOP_LIMIT;
    if (hops > SK_FLOW_MAX_HOPS)
        return -SK_FLOW_E_HOPS;
    if (flags & ~SK_FLOW_F_KNOWN)
        return -SK_FLOW_E_FLAGS;
    if ((e = check_str(addr, 1, SK_FLOW_ADDR_MAX, SK_FLOW_E_ADDR_LEN)) ||
        (e = check_str(origin, 1, SK_FLOW_ID_MAX, SK_FLOW_E_TOO_LARGE)) ||
        (e = check_str(dest, 0, SK_FLOW_ID_MAX, SK_FLOW_E_TOO_LARGE)))
        return -e;
    size_t total = SK_FLOW_PREAMBLE + 8 + 1 + 1 + 2 + addr.n + 1 + origin.n + 1 + dest.n;
    if (cap < total || !buf)
        return -SK_FLOW_E_NOSPACE;
    uint8_t *o = put_preamble(buf, SK_FLOW_T_HDR, total);
    o = put_u64(o, flow_id);
    o = put_u8(o, hops);
    o = put_u8(o, flags);
    o = put_u16(o, (uint16_t)addr.n);
    o = put_bytes(o, addr);
    o = put_u8(o, (uint8_t)origin.n);
    o = put_bytes(o, origin);
    o = put_u8(o, (uint8_t)dest.n);
    put_bytes(o, dest);
    return (int)total;
}

int sk_flow_encode_hello(void *buf, size_t cap, uint8_t role, uint64_t instance,
                         uint64_t link_id, uint64_t tls_version, sk_flow_str from,
                         sk_flow_str to)
{
    int e;
    if (role != SK_FLOW_ROLE_OUTBOUND && role != SK_FLOW_ROLE_INBOUND)
        return -SK_FLOW_E_ROLE;
    if ((e = check_str(from, 1, SK_FLOW_ID_MAX, SK_FLOW_E_TOO_LARGE)) ||
        (e = check_str(to, 1, SK_FLOW_ID_MAX, SK_FLOW_E_TOO_LARGE)))
        return -e;
    size_t total = SK_FLOW_PREAMBLE + 1 + 1 + 8 + 8 + 8 + 1 + from.n + 1 + to.n;
    if (cap < total || !buf)
        return -SK_FLOW_E_NOSPACE;
    uint8_t *o = put_preamble(buf, SK_FLOW_T_HELLO, total);
    o = put_u8(o, role);
    o = put_u8(o, 0);
    o = put_u64(o, instance);
    o = put_u64(o, link_id);
    o = put_u64(o, tls_version);
    o = put_u8(o, (uint8_t)from.n);
    o = put_bytes(o, from);
    o = put_u8(o, (uint8_t)to.n);
    put_bytes(o, to);
    return (int)total;
}

int sk_flow_encode_verdict(void *buf, size_t cap, uint8_t code, uint8_t detail,
                           uint64_t flow_id)
{
    if (code >= SK_FLOW_V__COUNT)
        return -SK_FLOW_E_VERDICT;
    if (cap < SK_FLOW_VERDICT_LEN || !buf)
        return -SK_FLOW_E_NOSPACE;
    uint8_t *o = put_preamble(buf, SK_FLOW_T_VERDICT, SK_FLOW_VERDICT_LEN);
    o = put_u8(o, code);
    o = put_u8(o, detail);
    put_u64(o, flow_id);
    return SK_FLOW_VERDICT_LEN;
}

/* ---------------------------------------------------------------- parse */

void sk_flow_parser_init(sk_flow_parser *p, int type, bool want_reverse)
{
    /* The output strings are written as they arrive and terminated at their
     * end: no need to clear 1.6 KiB per message. */
    p->type = (uint8_t)type;
    p->state = ST_PRE;
    p->field = 0;
    p->want_reverse = want_reverse;
    p->err = SK_FLOW_E_NONE;
    p->u8_need = 0;
    p->u8_lo = 0x80;
    p->u8_hi = 0xBF;
    p->u8_c1 = 0;
    p->len = 0;
    p->pos = 0;
    p->err_at = 0;
    p->n = 0;
    p->str_len = 0;
    p->acc = 0;
    memset(&p->out.verdict, 0, sizeof p->out.verdict);
    p->out.hdr.flow_id = 0;
}

/* An integer field is complete: check and store it. */
static int set_int(sk_flow_parser *p, int f, uint64_t v)
{
    switch (f) {
    case F_FLOW_ID:
        p->out.hdr.flow_id = v;
        return v ? 0 : SK_FLOW_E_FLOW_ID;
    case F_HOPS:
        p->out.hdr.hops = (uint8_t)v;
        return v == 0 ? SK_FLOW_E_HOP_LIMIT : v > SK_FLOW_MAX_HOPS ? SK_FLOW_E_HOPS : 0;
    case F_FLAGS:
        p->out.hdr.flags = (uint8_t)v;
        if (v & ~(uint64_t)SK_FLOW_F_KNOWN)
            return SK_FLOW_E_FLAGS;
        return !!(v & SK_FLOW_F_REVERSE) != !!p->want_reverse ? SK_FLOW_E_DIRECTION : 0;
    case F_ROLE:
        p->out.hello.role = (uint8_t)v;
        return v == SK_FLOW_ROLE_OUTBOUND || v == SK_FLOW_ROLE_INBOUND ? 0 : SK_FLOW_E_ROLE;
    case F_HFLAGS:
        p->out.hello.flags = (uint8_t)v;
        return v ? SK_FLOW_E_FLAGS : 0;
    case F_INSTANCE:
        p->out.hello.instance = v;
        return 0;
    case F_LINK:
        p->out.hello.link_id = v;
        return 0;
    case F_TLSV:
        p->out.hello.tls_version = v;
        return 0;
    case F_CODE:
        p->out.verdict.code = (uint8_t)v;
        return v < SK_FLOW_V__COUNT ? 0 : SK_FLOW_E_VERDICT;
    case F_DETAIL:
        p->out.verdict.detail = (uint8_t)v;
        return 0;
    case F_VFLOW_ID:
        p->out.verdict.flow_id = v;
        return 0;
    }
    return SK_FLOW_E_TYPE; /* not reached: the programs list known fields */
}

/* Where the bytes of string field f go: room for SK_FLOW_ADDR_MAX (address)
 * or SK_FLOW_ID_MAX (router ids) bytes and a NUL. */
static char *str_dst(sk_flow_parser *p, int f)
{
    switch (f) {
    case F_ADDR:
        return p->out.hdr.addr;
    case F_ORIGIN:
        return p->out.hdr.origin;
    case F_DEST:
        return p->out.hdr.dest;
    case F_FROM:
        return p->out.hello.from;
    default: /* F_TO: the programs list no other string */
        return p->out.hello.to;
    }
}

/* A string's length is in: check and store it. */
static int set_str_len(sk_flow_parser *p, int f, uint64_t n)
{
    switch (f) {
    case F_ADDR:
        p->out.hdr.addr_len = (uint16_t)n;
        return n == 0 ? SK_FLOW_E_EMPTY : n > SK_FLOW_ADDR_MAX ? SK_FLOW_E_ADDR_LEN : 0;
    case F_ORIGIN:
        p->out.hdr.origin_len = (uint8_t)n;
        break;
    case F_DEST:
        p->out.hdr.dest_len = (uint8_t)n;
        return 0; /* empty: any destination */
    case F_FROM:
        p->out.hello.from_len = (uint8_t)n;
        break;
    case F_TO:
        p->out.hello.to_len = (uint8_t)n;
        break;
    }
    return n == 0 ? SK_FLOW_E_EMPTY : 0; /* u8 lengths cannot exceed SK_FLOW_ID_MAX */
}

/* Moves to the field after the current one. A field (or a string's length
 * prefix) that would end past the declared length is refused here, at its
 * first offset, without waiting for bytes the sender will not send. */
static int next_field(sk_flow_parser *p, const prog *pr)
{
    p->field++;
    p->n = 0;
    p->acc = 0;
    if (p->field == pr->n) {
        p->state = p->pos == p->len ? ST_DONE : ST_SKIP;
        return 0;
    }
    int k = kind_of[pr->f[p->field]];
    bool str = k == K_STR8 || k == K_STR16;
    unsigned size = k == K_STR8 ? 1 : k == K_STR16 ? 2 : int_size(k);
    p->state = str ? ST_SLEN : ST_INT;
    return (unsigned)p->pos + size > p->len ? SK_FLOW_E_LENGTH : 0;
}

static int parse_fail(sk_flow_parser *p, int err, size_t *consumed, size_t used)
{
    p->state = ST_ERR;
    p->err = (uint8_t)err;
    p->err_at = p->pos;
    *consumed = used;
    return SK_FLOW_ERROR;
}

int sk_flow_parse(sk_flow_parser *p, const void *data, size_t len, size_t *consumed)
{
    const uint8_t *d = data;
    size_t i = 0;
    prog pr;
    *consumed = 0;
    if (p->state == ST_DONE)
        return SK_FLOW_DONE;
    if (p->state == ST_ERR)
        return SK_FLOW_ERROR;
    if (!prog_of(p->type, &pr)) /* armed for no known message */
        return parse_fail(p, SK_FLOW_E_TYPE, consumed, 0);

    while (i < len && p->state != ST_DONE) {
        uint8_t b = d[i];
        int e = 0;
        switch (p->state) {
        case ST_PRE:
            switch (p->pos) {
            case 0:
            case 1:
                e = b == (p->pos ? 'K' : 'S') ? 0 : SK_FLOW_E_MAGIC;
                break;
            case 2:
                e = b == SK_FLOW_VERSION ? 0 : SK_FLOW_E_VERSION;
                break;
            case 3:
                e = b == p->type ? 0 : SK_FLOW_E_TYPE;
                break;
            case 4:
                p->acc = b;
                break;
            default:
                p->len = (uint16_t)(p->acc << 8 | b);
                e = p->len < pr.min ? SK_FLOW_E_LENGTH
                    : p->len > pr.max ? SK_FLOW_E_TOO_LARGE
                                      : 0;
            }
            if (e)
                return parse_fail(p, e, consumed, i + 1);
            p->pos++;
            i++;
            if (p->pos == SK_FLOW_PREAMBLE) {
                p->field = (uint8_t)-1;
                if ((e = next_field(p, &pr))) /* not reached: len >= the minimum */
                    return parse_fail(p, e, consumed, i);
            }
            break;
        case ST_INT: {
            int f = pr.f[p->field];
            p->acc = p->acc << 8 | b;
            p->n++;
            if (p->n == int_size(kind_of[f]) && (e = set_int(p, f, p->acc)))
                return parse_fail(p, e, consumed, i + 1);
            p->pos++;
            i++;
            if (p->n == int_size(kind_of[f]) && (e = next_field(p, &pr)))
                return parse_fail(p, e, consumed, i);
            break;
        }
        case ST_SLEN: {
            int f = pr.f[p->field];
            unsigned need = kind_of[f] == K_STR16 ? 2 : 1;
            p->acc = p->acc << 8 | b;
            p->n++;
            if (p->n < need) {
                p->pos++;
                i++;
                break;
            }
            e = set_str_len(p, f, p->acc);
            if (!e && (size_t)p->pos + 1 + p->acc > p->len)
                e = SK_FLOW_E_LENGTH;
            if (e)
                return parse_fail(p, e, consumed, i + 1);
            p->pos++;
            i++;
            p->str_len = (uint16_t)p->acc;
            p->n = 0;
            p->u8_need = 0;
            p->u8_lo = 0x80;
            p->u8_hi = 0xBF;
            p->u8_c1 = 0;
            if (p->str_len) {
                p->state = ST_STR;
            } else {
                str_dst(p, f)[0] = '\0';
                if ((e = next_field(p, &pr)))
                    return parse_fail(p, e, consumed, i);
            }
            break;
        }
        case ST_STR: {
            if ((e = utf8_step(&p->u8_need, &p->u8_lo, &p->u8_hi, &p->u8_c1, b)))
                return parse_fail(p, e, consumed, i + 1);
            if (p->n + 1 == p->str_len && p->u8_need)
                return parse_fail(p, SK_FLOW_E_UTF8, consumed, i + 1);
            char *dst = str_dst(p, pr.f[p->field]);
            dst[p->n++] = (char)b;
            p->pos++;
            i++;
            if (p->n == p->str_len) {
                dst[p->n] = '\0';
                if ((e = next_field(p, &pr)))
                    return parse_fail(p, e, consumed, i);
            }
            break;
        }
        case ST_SKIP: {
            /* later fields of a newer sender: skip them in one step */
            size_t left = (size_t)(p->len - p->pos), avail = len - i;
            size_t k = left < avail ? left : avail;
            p->pos = (uint16_t)(p->pos + k);
            i += k;
            if (p->pos == p->len)
                p->state = ST_DONE;
            break;
        }
        }
    }
    *consumed = i;
    return p->state == ST_DONE ? SK_FLOW_DONE : SK_FLOW_NEED_MORE;
}

int sk_flow_parse_eof(sk_flow_parser *p)
{
    if (p->state == ST_DONE)
        return SK_FLOW_E_NONE;
    if (p->state == ST_ERR)
        return p->err;
    if (p->pos == 0)
        return SK_FLOW_E_NONE;
    p->state = ST_ERR;
    p->err = SK_FLOW_E_TRUNCATED;
    p->err_at = p->pos;
    return SK_FLOW_E_TRUNCATED;
}

/* ---------------------------------------------------------------- names */

int sk_flow_err_verdict(int err)
{
    if (err == SK_FLOW_E_NONE)
        return SK_FLOW_V_OK;
    return err == SK_FLOW_E_HOP_LIMIT ? SK_FLOW_V_HOP_LIMIT : SK_FLOW_V_BAD_HEADER;
}

const char *sk_flow_err_name(int err)
{
    static const char *const names[SK_FLOW_E__COUNT] = {
        [SK_FLOW_E_NONE] = "none",
        [SK_FLOW_E_MAGIC] = "bad_magic",
        [SK_FLOW_E_VERSION] = "unknown_version",
        [SK_FLOW_E_TYPE] = "unexpected_type",
        [SK_FLOW_E_LENGTH] = "bad_length",
        [SK_FLOW_E_TOO_LARGE] = "too_large",
        [SK_FLOW_E_FLOW_ID] = "bad_flow_id",
        [SK_FLOW_E_HOP_LIMIT] = "hop_limit",
        [SK_FLOW_E_HOPS] = "too_many_hops",
        [SK_FLOW_E_FLAGS] = "unknown_flags",
        [SK_FLOW_E_DIRECTION] = "wrong_direction",
        [SK_FLOW_E_ROLE] = "bad_role",
        [SK_FLOW_E_VERDICT] = "bad_verdict",
        [SK_FLOW_E_EMPTY] = "empty_string",
        [SK_FLOW_E_ADDR_LEN] = "address_too_long",
        [SK_FLOW_E_UTF8] = "bad_utf8",
        [SK_FLOW_E_CONTROL] = "control_character",
        [SK_FLOW_E_TRUNCATED] = "truncated",
        [SK_FLOW_E_NOSPACE] = "no_space",
    };
    return err >= 0 && err < SK_FLOW_E__COUNT ? names[err] : "?";
}

const char *sk_flow_verdict_name(int code)
{
    static const char *const names[SK_FLOW_V__COUNT] = {
        [SK_FLOW_V_OK] = "ok",
        [SK_FLOW_V_NO_ROUTE] = "no_route",
        [SK_FLOW_V_REFUSED] = "refused",
        [SK_FLOW_V_HOP_LIMIT] = "hop_limit",
        [SK_FLOW_V_BAD_HEADER] = "bad_header",
        [SK_FLOW_V_OVERLOADED] = "overloaded",
    };
    return code >= 0 && code < SK_FLOW_V__COUNT ? names[code] : "?";
}
