/*
 * Test plugin badabi: a descriptor with ABI major one newer than the host's. The loader must
 * refuse it before calling any hook; if it did, init fails with a message no refusal test
 * expects.
 */
#include <stdio.h>

#include "shmipc/plugin.h"

static void *badabi_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                         char *errbuf, size_t errlen)
{
    (void)host;
    (void)conf;
    snprintf(errbuf, errlen, "badabi: init must not be called");
    return NULL;
}

static int badabi_handle(void *state, void *thread_state, const struct shmipc_request *req,
                         struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    (void)req;
    (void)resp;
    return -1;
}

SHMIPC_PLUGIN_EXPORT = {
    .magic = SHMIPC_PLUGIN_MAGIC,
    .abi_major = SHMIPC_PLUGIN_ABI_MAJOR + 1,
    .abi_minor = SHMIPC_PLUGIN_ABI_MINOR,
    .size = sizeof(struct shmipc_plugin),
    .name = "badabi",
    .version = "1.0.0",
    .init = badabi_init,
    .handle = badabi_handle,
};
