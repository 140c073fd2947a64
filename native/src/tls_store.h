/* tls_store.h -- trust stores (tls_store.c) and the bundle read tls.c gives
 * them. Internal: nothing here is seen by cffi. */
#ifndef SKIFF_TLS_STORE_H
#define SKIFF_TLS_STORE_H

#include "internal.h"

#include <openssl/x509.h>
#include <sys/stat.h>
#include <time.h>

/* What stat says of a bundle file, taken just before it is read: a later
 * signature equal to it (and not "racy", see sk_tls_file_unchanged) means
 * the file still holds the bytes read. */
typedef struct sk_tls_file_sig {
    bool valid;            /* a regular file */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    char data_target[4096]; /* where the directory's ..data link pointed; "" none */
    struct timespec taken; /* CLOCK_REALTIME when the signature was taken */
} sk_tls_file_sig;

/* A parsed CA bundle: immutable, shared by every config built with it. */
struct sk_tls_store {
    _Atomic int refs;
    X509_STORE *x509;
    unsigned char hash[32];
    char fingerprint[65];
    int certs;
    sk_tls_file_sig sig; /* of the file when its bytes were read */
};

/* tls.c: reads p->ca_file until two consecutive reads agree (a FIFO: once).
 * On success *data (malloc'd, the caller's) and *len hold the bytes, hash
 * their content hash (the one fingerprints use), *fifo whether the path is a
 * FIFO. With no_fifo a FIFO is refused instead of read (a re-read inside a
 * running load must never block on one). */
int sk_tls_read_bundle(const sk_tls_load_params *p, bool no_fifo, unsigned char **data,
                       size_t *len, unsigned char hash[32], bool *fifo, sk_tls_file_sig *sig,
                       int *reads, char *err, size_t errlen);
/* tls.c: the signature of path now (through the directory's ..data link as
 * reads resolve it). */
void sk_tls_file_sig_take(const char *path, sk_tls_file_sig *sig);
/* Whether now (a signature taken now) shows the file unchanged since then:
 * equal, and both timestamps older than then was taken by more than the
 * timestamp granularity (20 ms, or 2 s for whole-second timestamps): a
 * write in the same tick as the read could leave them equal, so such a
 * "racy" file counts as changed. */
bool sk_tls_file_unchanged(const sk_tls_file_sig *then, const sk_tls_file_sig *now);

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
