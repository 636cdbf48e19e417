/*
 * Test plugin badmagic: a descriptor with a wrong magic number. The loader must refuse it
 * before calling any hook; if it did, init fails with a message no refusal test expects.
 */
#include <stdio.h>

#include "shmipc/plugin.h"

static void *badmagic_init(const struct shmipc_host_api *host,
                           const struct shmipc_plugin_conf *conf, char *errbuf, size_t errlen)
{
    (void)host;
    (void)conf;
    snprintf(errbuf, errlen, "badmagic: init must not be called");
    return NULL;
}

static int badmagic_handle(void *state, void *thread_state, const struct shmipc_request *req,
                           struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    (void)req;
    (void)resp;
    return -1;
}

SHMIPC_PLUGIN_EXPORT = {
    .magic = 0xdeadbeefu,
    .abi_major = SHMIPC_PLUGIN_ABI_MAJOR,
    .abi_minor = SHMIPC_PLUGIN_ABI_MINOR,
    .size = sizeof(struct shmipc_plugin),
    .name = "badmagic",
    .version = "1.0.0",
    .init = badmagic_init,
    .handle = badmagic_handle,
};
