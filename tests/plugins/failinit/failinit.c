/*
 * Test plugin failinit: init refuses with "refusing to start: test".
 */
#include <stdio.h>

#include "shmipc/plugin.h"

static void *failinit_init(const struct shmipc_host_api *host,
                           const struct shmipc_plugin_conf *conf, char *errbuf, size_t errlen)
{
    (void)host;
    (void)conf;
    snprintf(errbuf, errlen, "refusing to start: test");
    return NULL;
}

static void failinit_fini(void *state)
{
    (void)state;
}

static int failinit_handle(void *state, void *thread_state, const struct shmipc_request *req,
                           struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    (void)req;
    (void)resp;
    return -1;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("failinit", "1.0.0"),
    .init = failinit_init,
    .fini = failinit_fini,
    .handle = failinit_handle,
};
