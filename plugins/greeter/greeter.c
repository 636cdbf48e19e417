/*
 * greeter: the shmipc demo's server side. Answers "client say hello
 * world!!!" with "server hello world!!!"; anything else gets the same
 * answer, and the first unexpected request on each worker thread is
 * logged as a warning.
 */
#include <stdlib.h>
#include <string.h>

#include "shmipc/plugin.h"

#define GREETER_REQUEST "client say hello world!!!"
#define GREETER_REPLY "server hello world!!!"

struct greeter_state {
    const struct shmipc_host_api *host;
};

struct greeter_thread {
    unsigned worker;
    int warned; /* logged an unexpected request on this thread */
};

static void *greeter_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                          char *errbuf, size_t errlen)
{
    static const char *const known[] = {NULL};
    if (SHMIPC_HOST_HAS(host, conf_keys) && host->conf_keys(conf, known, errbuf, errlen) < 0)
        return NULL; /* a typo in the service's config group */
    struct greeter_state *s = malloc(sizeof(*s));
    if (s != NULL)
        s->host = host;
    return s;
}

static void greeter_fini(void *state)
{
    free(state);
}

static void *greeter_thread_init(void *state, unsigned worker)
{
    (void)state;
    struct greeter_thread *t = calloc(1, sizeof(*t));
    if (t != NULL)
        t->worker = worker;
    return t;
}

static void greeter_thread_fini(void *state, void *thread_state)
{
    (void)state;
    free(thread_state);
}

static int greeter_handle(void *state, void *thread_state, const struct shmipc_request *req,
                          struct shmipc_response *resp)
{
    const struct greeter_state *s = state;
    struct greeter_thread *t = thread_state;
    char got[sizeof(GREETER_REQUEST) - 1];
    int expected = req->len == sizeof(got) &&
                   s->host->copy(req, 0, got, sizeof(got)) == sizeof(got) &&
                   memcmp(got, GREETER_REQUEST, sizeof(got)) == 0;
    if (!expected && (t == NULL || !t->warned)) {
        if (t != NULL)
            t->warned = 1;
        s->host->log(SHMIPC_LOG_WARN,
                     "greeter: unexpected request of %zu bytes on stream %u (expected \"%s\"); "
                     "answering anyway",
                     req->len, (unsigned)req->stream_id, GREETER_REQUEST);
    }
    int rc = s->host->write(resp, GREETER_REPLY, sizeof(GREETER_REPLY) - 1);
    return rc < 0 ? rc : 0;
}

SHMIPC_PLUGIN_EXPORT = {
    SHMIPC_PLUGIN_HEADER("greeter", "1.0.0"),
    .init = greeter_init,
    .fini = greeter_fini,
    .thread_init = greeter_thread_init,
    .thread_fini = greeter_thread_fini,
    .handle = greeter_handle,
};
