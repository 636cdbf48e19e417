/*
 * Test plugin nosym: a well-formed descriptor exported under the wrong
 * name, so the loader finds no "shmipc_plugin" symbol.
 */
#include "shmipc/plugin.h"

static int nosym_handle(void *state, void *thread_state, const struct shmipc_request *req,
                        struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    (void)req;
    (void)resp;
    return -1;
}

__attribute__((visibility("default"))) const struct shmipc_plugin shmipc_plugin_v0 = {
    SHMIPC_PLUGIN_HEADER("nosym", "1.0.0"),
    .handle = nosym_handle,
};
