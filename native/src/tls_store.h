/* tls_store.h -- trust stores (tls_store.c) and the bundle read tls.c gives
 * them. Internal: nothing here is seen by cffi. */
#ifndef SKIFF_TLS_STORE_H
#define SKIFF_TLS_STORE_H

#include "internal.h"

#include <openssl/x509.h>

/* A parsed CA bundle: immutable, shared by every config built with it. */
struct sk_tls_store {
    _Atomic int refs;
    X509_STORE *x509;
    unsigned char hash[32];
    char fingerprint[65];
    int certs;
};

/* tls.c: reads p->ca_file until two consecutive reads agree (a FIFO: once).
 * On success *data (malloc'd, the caller's) and *len hold the bytes, hash
 * their content hash (the one fingerprints use), *fifo whether the path is a
 * FIFO. With no_fifo a FIFO is refused instead of read (a re-read inside a
 * running load must never block on one). */
int sk_tls_read_bundle(const sk_tls_load_params *p, bool no_fifo, unsigned char **data,
                       size_t *len, unsigned char hash[32], bool *fifo, int *reads, char *err,
                       size_t errlen);

/* tls.c: on a load's own thread, lowers it to SCHED_IDLE (nice 19) for the
 * rest of the load; elsewhere nothing. */
void sk_tls_load_thread_idle(void);
/* Certificates a trust store load parses at nice 10 before it drops to
 * SCHED_IDLE (a few milliseconds of CPU). */
#define SK_TLS_PARSE_AT_NICE 32

/* tls_store.c: a trust store of the PEM certificates in data (path names
 * the file in errors), through the certificate cache: *certs counts the
 * certificate blocks. NULL with err filled on a malformed block or none. */
X509_STORE *sk_tls_store_build(const unsigned char *data, size_t len, const char *path,
                               int *certs, char *err, size_t errlen);
/* The body of sk_tls_store_load (on the caller's thread). */
void sk_tls_store_load_now(const sk_tls_load_params *p, sk_tls_store_result *r);
/* Distinct certificates in a store built by sk_tls_store_build; -1 for any
 * other store. */
int sk_tls_store_index_size(X509_STORE *s);

/* Tests only: called after each certificate block a store load handles,
 * with its 1-based position (NULL in production). */
extern void (*sk_tls_store_block_hook)(int position);

#endif
