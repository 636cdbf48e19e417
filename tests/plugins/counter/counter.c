/*
 * Test plugin counter: appends one line per lifecycle call to the file
 * named by its config key `trace` (optional: without it nothing is
 * written):
 *     init
 *     thread_init <worker>
 *     thread_fini <worker>
 *     fini
 * and echoes requests. The file is opened per line (O_APPEND), so the
 * plugin holds no descriptor and lines from several generations
 * interleave in call order.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmipc/plugin.h"

struct counter_state {
    const struct shmipc_host_api *host;
    char *trace; /* NULL: no trace */
};

struct counter_thread {
    unsigned worker;
};

static void trace_line(const struct counter_state *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void trace_line(const struct counter_state *s, const char *fmt, ...)
{
    if (s->trace == NULL)
        return;
    char line[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line))
        return;
    int fd = open(s->trace, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        s->host->log(SHMIPC_LOG_ERROR, "counter: cannot open %s", s->trace);
        return;
    }
    if (write(fd, line, (size_t)n) != n)
        s->host->log(SHMIPC_LOG_ERROR, "counter: cannot write %s", s->trace);
    close(fd);
}

static void *counter_init(const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
                          char *errbuf, size_t errlen)
{
    const char *trace = NULL;
    int rc = host->conf_string(conf, "trace", &trace);
    if (rc < 0 && rc != -ENOENT) {
        snprintf(errbuf, errlen, "counter: config key 'trace' must be a string");
        return NULL;
    }
    struct counter_state *s = calloc(1, sizeof(*s));
    if (s == NULL || (rc == 0 && (s->trace = strdup(trace)) == NULL)) {
        free(s);
        snprintf(errbuf, errlen, "counter: out of memory");
        return NULL;
    }
    s->host = host;
    trace_line(s, "init\n");
    return s;
}

static void counter_fini(void *state)
{
    struct counter_state *s = state;
    trace_line(s, "fini\n");
    free(s->trace);
    free(s);
}

static void *counter_thread_init(void *state, unsigned worker)
{
    struct counter_thread *t = malloc(sizeof(*t));
    if (t == NULL)
        return NULL;
    t->worker = worker;
    trace_line(state, "thread_init %u\n", worker);
    return t;
}

static void counter_thread_fini(void *state, void *thread_state)
{
    struct counter_thread *t = thread_state;
    if (t != NULL)
        trace_line(state, "thread_fini %u\n", t->worker);
    free(t);
}

static int counter_handle(void *state, void *thread_state, const struct shmipc_request *req,
                          struct shmipc_response *resp)
{
    (void)thread_state;
    const struct counter_state *s = state;
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
    SHMIPC_PLUGIN_HEADER("counter", "1.0.0"),
    .init = counter_init,
    .fini = counter_fini,
    .thread_init = counter_thread_init,
    .thread_fini = counter_thread_fini,
    .handle = counter_handle,
};
