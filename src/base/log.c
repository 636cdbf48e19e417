/*
 * Leveled logging. The level and sink are process globals read with relaxed
 * atomics: a change made by one thread reaches the others promptly, and no
 * lock is taken on the logging path.
 */
#include "base/log.h"

#include "shmipc/shmipc.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int cur_level = LOG_INFO;
static log_sink_fn cur_sink;
static void *cur_sink_arg;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
    __atomic_store_n(&cur_level, (int)level, __ATOMIC_RELAXED);
}

enum log_level log_get_level(void)
{
    return (enum log_level)__atomic_load_n(&cur_level, __ATOMIC_RELAXED);
}

int log_level_parse(const char *name, enum log_level *out)
{
    for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *log_level_name(enum log_level level)
{
    return (unsigned)level < 4 ? level_names[level] : "?";
}

void log_set_sink(log_sink_fn fn, void *arg)
{
    __atomic_store_n(&cur_sink_arg, arg, __ATOMIC_RELAXED);
    __atomic_store_n(&cur_sink, fn, __ATOMIC_RELEASE);
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    if ((int)level > __atomic_load_n(&cur_level, __ATOMIC_RELAXED))
        return;
    int saved = errno;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%d] %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, (int)getpid(), log_level_name(level));
    if (n < 0)
        n = 0;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    log_sink_fn sink = __atomic_load_n(&cur_sink, __ATOMIC_ACQUIRE);
    if (sink != NULL) {
        line[len] = '\0';
        sink(__atomic_load_n(&cur_sink_arg, __ATOMIC_RELAXED), level, line);
    } else {
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w; /* nowhere left to report a failed log write */
    }
    errno = saved;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

/* ---- the public face (shmipc.h) ---- */

void shmipc_set_log_level(int level)
{
    log_set_level(level < LOG_ERROR ? LOG_ERROR : level > LOG_DEBUG ? LOG_DEBUG
                                                                    : (enum log_level)level);
}

static void (*public_sink)(void *arg, int level, const char *line);

static void public_sink_call(void *arg, enum log_level level, const char *line)
{
    void (*fn)(void *, int, const char *) = __atomic_load_n(&public_sink, __ATOMIC_ACQUIRE);
    if (fn != NULL)
        fn(arg, (int)level, line);
}

void shmipc_set_log_sink(void (*sink)(void *arg, int level, const char *line), void *arg)
{
    __atomic_store_n(&public_sink, sink, __ATOMIC_RELEASE);
    log_set_sink(sink != NULL ? public_sink_call : NULL, arg);
}
