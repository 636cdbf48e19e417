/*
 * Test plugins badabi, badmagic, badsize and newminor: one source, built four
 * times by SConscript with -DREFUSED_<NAME>. Each has a descriptor with one
 * field the loader must refuse before calling any hook; if it did call init,
 * init fails with a message no refusal test expects.
 *   badabi    ABI major one newer than the host's
 *   badmagic  a wrong magic number
 *   badsize   a descriptor size 8 bytes short of the host's
 *   newminor  ABI minor one newer than the host's
 */
#include <stdio.h>

#include "shmipc/plugin.h"

#if defined(REFUSED_BADABI)
#define REFUSED_NAME "badabi"
#define REFUSED_MAJOR (SHMIPC_PLUGIN_ABI_MAJOR + 1)
#elif defined(REFUSED_BADMAGIC)
#define REFUSED_NAME "badmagic"
#define REFUSED_MAGIC 0xdeadbeefu
#elif defined(REFUSED_BADSIZE)
#define REFUSED_NAME "badsize"
#define REFUSED_SIZE (sizeof(struct shmipc_plugin) - 8)
#elif defined(REFUSED_NEWMINOR)
#define REFUSED_NAME "newminor"
#define REFUSED_MINOR (SHMIPC_PLUGIN_ABI_MINOR + 1)
#else
#error "build with -DREFUSED_BADABI, _BADMAGIC, _BADSIZE or _NEWMINOR"
#endif

/* The fields not named above are the host's. */
#ifndef REFUSED_MAGIC
#define REFUSED_MAGIC SHMIPC_PLUGIN_MAGIC
#endif
#ifndef REFUSED_MAJOR
#define REFUSED_MAJOR SHMIPC_PLUGIN_ABI_MAJOR
#endif
#ifndef REFUSED_MINOR
#define REFUSED_MINOR SHMIPC_PLUGIN_ABI_MINOR
#endif
#ifndef REFUSED_SIZE
#define REFUSED_SIZE sizeof(struct shmipc_plugin)
#endif

static void *refused_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                          char *errbuf, size_t errlen)
{
    (void)host;
    (void)conf;
    snprintf(errbuf, errlen, REFUSED_NAME ": init must not be called");
    return NULL;
}

static int refused_handle(void *state, void *thread_state, const struct shmipc_request *req,
                          struct shmipc_response *resp)
{
    (void)state;
    (void)thread_state;
    (void)req;
    (void)resp;
    return -1;
}

SHMIPC_PLUGIN_EXPORT = {
    .magic = REFUSED_MAGIC,
    .abi_major = REFUSED_MAJOR,
    .abi_minor = REFUSED_MINOR,
    .size = REFUSED_SIZE,
    .name = REFUSED_NAME,
    .version = "1.0.0",
    .init = refused_init,
    .handle = refused_handle,
};
