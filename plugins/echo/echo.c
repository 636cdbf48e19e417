/*
 * echo: answers each request with its own bytes: the request's own slices
 * where the host can send them back, else copied piece by piece.
 */
#include <stdlib.h>

#include "shmipc/plugin.h"

struct echo_state {
    const struct shmipc_host_api *host;
};

static void *echo_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                       char *errbuf, size_t errlen)
{
    static const char *const known[] = {NULL};
    if (SHMIPC_HOST_HAS(host, conf_keys) && host->conf_keys(conf, known, errbuf, errlen) < 0)
        return NULL; /* a typo in the service's config group */
    struct echo_state *s = malloc(sizeof(*s));
    if (s != NULL)
        s->host = host;
    return s;
}

static void echo_fini(void *state)
{
    free(state);
}

static int echo_handle(void *state, void *thread_state, const struct shmipc_request *req,
                       struct shmipc_response *resp)
{
    (void)thread_state;
    const struct echo_state *s = state;
    if (s->host->forward != NULL)
        return s->host->forward(resp); /* the request's own slices answer */
    for (unsigned i = 0; i < req->niov; i++) {
        if (req->iov[i].len == 0)
            continue;
        int rc = s->host->write(resp, req->iov[i].base, req->iov[i].len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("echo", "1.0.0"),
    .init = echo_init,
    .fini = echo_fini,
    .handle = echo_handle,
};
