/*
 * Test plugin failthread: init succeeds, every thread_init refuses.
 */
#include <stdlib.h>

#include "shmipc/plugin.h"

static void *failthread_init(const struct shmipc_host_api *host,
                             const struct shmipc_plugin_conf *conf, char *errbuf, size_t errlen)
{
    (void)host;
    (void)conf;
    (void)errbuf;
    (void)errlen;
    return malloc(16);
}

static void failthread_fini(void *state)
{
    free(state);
}

static void *failthread_thread_init(void *state, unsigned worker)
{
    (void)state;
    (void)worker;
    return NULL;
}

static void failthread_thread_fini(void *state, void *thread_state)
{
    (void)state;
    (void)thread_state;
}

static int failthread_handle(void *state, void *thread_state, const struct shmipc_request *req,
                             struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    (void)req;
    (void)resp;
    return -1;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("failthread", "1.0.0"),
    .init = failthread_init,
    .fini = failthread_fini,
    .thread_init = failthread_thread_init,
    .thread_fini = failthread_thread_fini,
    .handle = failthread_handle,
};
