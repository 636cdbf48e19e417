/*
 * Test plugin versioned: echoes each request prefixed with "v<N> ", where
 * N is VERSIONED_VERSION (default 1; build with -DVERSIONED_VERSION=2 for
 * a second version of the same plugin). Its descriptor's version string
 * is "<N>.0.0". For hot-reload tests.
 */
#include <stdlib.h>

#include "shmipc/plugin.h"

#ifndef VERSIONED_VERSION
#define VERSIONED_VERSION 1
#endif

#define VERSIONED_STR_(x) #x
#define VERSIONED_STR(x) VERSIONED_STR_(x)
#define VERSIONED_PREFIX "v" VERSIONED_STR(VERSIONED_VERSION) " "

struct versioned_state {
    const struct shmipc_host_api *host;
};

static void *versioned_init(const struct shmipc_host_api *host,
                            const struct shmipc_plugin_conf *conf, char *errbuf, size_t errlen)
{
    (void)conf;
    (void)errbuf;
    (void)errlen;
    struct versioned_state *s = malloc(sizeof(*s));
    if (s != NULL)
        s->host = host;
    return s;
}

static void versioned_fini(void *state)
{
    free(state);
}

static int versioned_handle(void *state, void *thread_state, const struct shmipc_request *req,
                            struct shmipc_response *resp)
{
    (void)thread_state;
    const struct versioned_state *s = state;
    int rc = s->host->write(resp, VERSIONED_PREFIX, sizeof(VERSIONED_PREFIX) - 1);
    for (unsigned i = 0; rc >= 0 && i < req->niov; i++)
        if (req->iov[i].len > 0)
            rc = s->host->write(resp, req->iov[i].base, req->iov[i].len);
    return rc < 0 ? rc : 0;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("versioned", VERSIONED_STR(VERSIONED_VERSION) ".0.0"),
    .init = versioned_init,
    .fini = versioned_fini,
    .handle = versioned_handle,
};
