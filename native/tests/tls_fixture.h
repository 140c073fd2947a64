/* tls_fixture.h -- test certificates written as PEM files, and loading
 * and publishing them (C tests only). */
#ifndef SKIFF_TLS_FIXTURE_H
#define SKIFF_TLS_FIXTURE_H

#include "skiff.h"
#include "testlib.h"

#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>

static int fixture_add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* A self-signed certificate (its own CA) named cn, for 127.0.0.1 and
 * localhost, and its P-256 key, written to cert_path and key_path. */
static int make_material(const char *cn, const char *cert_path, const char *key_path)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    REQUIRE(pkey && x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pkey);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    REQUIRE(fixture_add_ext(x, NID_basic_constraints, "critical,CA:TRUE") == 0);
    REQUIRE(fixture_add_ext(x, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost") == 0);
    REQUIRE(X509_sign(x, pkey, EVP_sha256()) > 0);
    FILE *f = fopen(cert_path, "w");
    REQUIRE(f != NULL);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_path, "w");
    REQUIRE(f != NULL);
    PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return 0;
}

/* Loads cert and key, with ca as the trust store (NULL: none), as config
 * `ordinal` into r; the caller clears r (sk_tls_result_clear). */
static __attribute__((unused)) int fixture_load(const char *cert, const char *key, const char *ca,
                                                uint64_t ordinal, sk_tls_load_result *r)
{
    sk_tls_load_params p;
    sk_tls_load_params_init(&p);
    p.cert_file = cert;
    p.key_file = key;
    p.ca_file = ca;
    p.ordinal = ordinal;
    memset(r, 0, sizeof *r);
    sk_tls_load(&p, r);
    REQUIRE_MSG(r->status == SK_TLS_OK, "sk_tls_load: %s", r->error);
    return 0;
}

/* fixture_load, then publishes the config in e's slot, which owns it. */
static __attribute__((unused)) int fixture_publish(sk_engine *e, int slot, const char *cert,
                                                   const char *key, const char *ca,
                                                   uint64_t ordinal)
{
    sk_tls_load_result r;
    REQUIRE(fixture_load(cert, key, ca, ordinal, &r) == 0);
    REQUIRE(sk_tls_publish(e, slot, r.config) != 0);
    r.config = NULL;
    sk_tls_result_clear(&r);
    return 0;
}

/* A blocking client handshake of ssl (set up by the caller) on fd: ssl, or
 * NULL (ssl freed) when it fails. */
static __attribute__((unused)) SSL *fixture_connect(SSL *ssl, int fd)
{
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

#endif
