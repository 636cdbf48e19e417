/*
 * The servers under attack: shmipcd with a generated configuration (an
 * echo service on a unix socket and one on TCP loopback, an admin socket,
 * small limits), or two echo_server processes (unix and TCP). Each runs in
 * its own temp dir with its output in one log file; every wait has a
 * deadline and a stop always ends in SIGKILL if SIGTERM was not enough.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hostile.h"
#include "proto/sock.h"

#define SHMIPCD_MAX_EVENT (1u << 20)
#define SHMIPCD_MAX_STREAMS 256
#define SHMIPCD_HS_MS 300
#define SHMIPCD_MAX_SESSIONS 64
#define SHMIPCD_IDLE_MS 2000
#define ECHO_MAX_EVENT (32u << 20) /* the library server's defaults */
#define ECHO_MAX_STREAMS 65536
#define ECHO_HS_MS 1000

char h_bin_dir[4096];
char h_plugin_dir[4096];

uint64_t h_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t h_deadline(int ms)
{
    return h_now_ns() + (uint64_t)ms * 1000000u;
}

void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

const char *h_shm_prefix(void)
{
    static char b[64];
    if (b[0] == '\0')
        snprintf(b, sizeof(b), "shmipc-hostile-%d", (int)getpid());
    return b;
}

void h_cleanup_shm(void)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    size_t n = strlen(h_shm_prefix());
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, h_shm_prefix(), n) != 0)
            continue;
        char path[512];
        snprintf(path, sizeof(path), "/dev/shm/%s", e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
}

const char *h_sanitizer_report(const char *text)
{
    static const char *const marks[] = {"AddressSanitizer", "runtime error", "LeakSanitizer",
                                        "ThreadSanitizer"};
    for (unsigned i = 0; text != NULL && i < sizeof(marks) / sizeof(marks[0]); i++)
        if (strstr(text, marks[i]) != NULL)
            return marks[i];
    return NULL;
}

int h_count_str(const char *hay, const char *needle)
{
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = hay; p != NULL && len > 0 && (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}

/* A TCP port that was free a moment ago. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -errno;
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    return ok ? 0 : -EIO;
}

/* The child side of a target: output to the log, then exec. */
static void exec_target(const char *log, const char *const *argv)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the driver */
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        _exit(126);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
        dup2(null, 0);
        close(null);
    }
    dup2(fd, 1);
    dup2(fd, 2);
    /* Close everything else we hold (sockets of the driver). */
    for (int i = 3; i < 1024; i++)
        if (i != fd)
            close(i);
    /* A small quarantine keeps an ASan target's RSS meaningful; appended
     * so that the caller's own options still win. */
    const char *asan = getenv("ASAN_OPTIONS");
    char opts[1024];
    snprintf(opts, sizeof(opts), "quarantine_size_mb=16:detect_leaks=1%s%s",
             asan != NULL && *asan ? ":" : "", asan != NULL ? asan : "");
    setenv("ASAN_OPTIONS", opts, 1);
    execv(argv[0], (char *const *)argv);
    dprintf(fd, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static pid_t spawn(const char *log, const char *const *argv)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        exec_target(log, argv);
    return pid;
}

/* Runs argv with its output captured into out; exit code or -1. */
static int run_capture(const char *const *argv, char *out, size_t cap, int timeout_ms)
{
    int p[2];
    out[0] = '\0';
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        dup2(p[1], 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    uint64_t dl = h_deadline(timeout_ms);
    size_t n = 0;
    for (;;) {
        uint64_t now = h_now_ns();
        if (now >= dl)
            break;
        struct pollfd pfd = {p[0], POLLIN, 0};
        if (poll(&pfd, 1, (int)((dl - now) / 1000000u) + 1) <= 0)
            break;
        char sink[4096];
        ssize_t r = n + 1 < cap ? read(p[0], out + n, cap - 1 - n) : read(p[0], sink, sizeof(sink));
        if (r <= 0)
            break;
        if (n + 1 < cap)
            n += (size_t)r;
    }
    out[n] = '\0';
    close(p[0]);
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 || h_now_ns() >= dl) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        h_sleep_ms(2);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int can_connect(const char *addr)
{
    struct sock_addr a;
    if (sock_addr_parse(addr, &a) < 0)
        return 0;
    int fd = sock_connect(&a, sock_deadline(200));
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* Waits until every process answers (shmipcd: its admin socket, which it
 * opens after every listener; echo_server: both listeners). */
static int wait_ready(struct target *t, char *err, size_t errlen)
{
    uint64_t dl = h_deadline(H_START_MS);
    while (h_now_ns() < dl) {
        char why[200];
        if (!target_alive(t, why, sizeof(why))) {
            snprintf(err, errlen, "%s", why);
            return -1;
        }
        int ready;
        if (t->kind == T_SHMIPCD) {
            struct svc_counters c;
            ready = target_stats(t, &c) == 0;
        } else {
            ready = can_connect(t->unix_addr) && can_connect(t->tcp_addr);
        }
        if (ready)
            return 0;
        h_sleep_ms(20);
    }
    snprintf(err, errlen, "%s did not answer within %d ms (log %s)", t->name, H_START_MS, t->log);
    return -1;
}

static int start_shmipcd(struct target *t, char *err, size_t errlen)
{
    char conf[16384], path[256], plugin[4200];
    snprintf(plugin, sizeof(plugin), "%s/echo.so", h_plugin_dir);
    if (access(plugin, R_OK) != 0) {
        snprintf(err, errlen, "plugin %s: %s (use --plugins DIR)", plugin, strerror(errno));
        return -1;
    }
    t->max_event = SHMIPCD_MAX_EVENT;
    t->max_streams = SHMIPCD_MAX_STREAMS;
    t->hs_timeout_ms = SHMIPCD_HS_MS;
    t->max_sessions = SHMIPCD_MAX_SESSIONS;
    t->idle_timeout_ms = SHMIPCD_IDLE_MS;
    snprintf(conf, sizeof(conf),
             "workers = 2;\n"
             "log = { level = \"info\"; };\n"
             "admin = \"%s\";\n"
             "limits = { max_streams = %u; handshake_timeout_ms = %d; max_event_bytes = %u;\n"
             "           max_sessions = %u; idle_timeout_ms = %d;\n"
             "           max_pool_bytes = 67108864; drain_timeout_ms = 2000; };\n"
             "services = (\n"
             "  { name = \"echo\"; listen = \"%s\"; allowed_dir = \"/dev/shm\";\n"
             "    plugin = \"%s\"; },\n"
             "  { name = \"echotcp\"; listen = \"%s\"; allowed_dir = \"/dev/shm\";\n"
             "    plugin = \"%s\"; }\n"
             ");\n",
             t->admin, t->max_streams, t->hs_timeout_ms, t->max_event, t->max_sessions,
             t->idle_timeout_ms, t->unix_addr, plugin, t->tcp_addr, plugin);
    snprintf(path, sizeof(path), "%s/shmipcd.conf", t->dir);
    if (write_text(path, conf) < 0) {
        snprintf(err, errlen, "writing %s: %s", path, strerror(errno));
        return -1;
    }
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/shmipcd", h_bin_dir);
    const char *argv[] = {bin, "-c", path, NULL};
    t->pids[0] = spawn(t->log, argv);
    t->npids = t->pids[0] > 0 ? 1 : 0;
    if (t->npids == 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    return wait_ready(t, err, errlen);
}

static int start_echo(struct target *t, char *err, size_t errlen)
{
    t->max_event = ECHO_MAX_EVENT;
    t->max_streams = ECHO_MAX_STREAMS;
    t->hs_timeout_ms = ECHO_HS_MS;
    t->max_sessions = 1024;
    t->idle_timeout_ms = 0;
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/echo_server", h_bin_dir);
    const char *a0[] = {bin, t->unix_addr, NULL};
    const char *a1[] = {bin, t->tcp_addr, NULL};
    t->pids[0] = spawn(t->log, a0);
    if (t->pids[0] <= 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    t->npids = 1;
    t->pids[1] = spawn(t->log, a1);
    if (t->pids[1] <= 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    t->npids = 2;
    return wait_ready(t, err, errlen);
}

/* 1 if /proc/<pid>/maps names `what` (a runtime library). */
static int maps_mention(pid_t pid, const char *what)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    int found = 0;
    while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, what) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

int target_start(struct target *t, enum target_kind kind, char *err, size_t errlen)
{
    memset(t, 0, sizeof(*t));
    t->kind = kind;
    t->name = kind == T_SHMIPCD ? "shmipcd" : "echo_server";
    snprintf(t->dir, sizeof(t->dir), "/tmp/shmipc-hostile-XXXXXX");
    if (mkdtemp(t->dir) == NULL) {
        snprintf(err, errlen, "mkdtemp: %s", strerror(errno));
        t->dir[0] = '\0';
        return -1;
    }
    snprintf(t->log, sizeof(t->log), "%s/%s.log", t->dir, t->name);
    snprintf(t->unix_addr, sizeof(t->unix_addr), "unix:%s/echo.sock", t->dir);
    snprintf(t->admin, sizeof(t->admin), "unix:%s/admin.sock", t->dir);
    int port = free_port();
    if (port <= 0) {
        snprintf(err, errlen, "no free TCP port");
        return -1;
    }
    snprintf(t->tcp_addr, sizeof(t->tcp_addr), "tcp:127.0.0.1:%d", port);
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/%s", h_bin_dir, t->name);
    if (access(bin, X_OK) != 0) {
        snprintf(err, errlen, "%s: %s (use --bin DIR)", bin, strerror(errno));
        return -1;
    }
    int rc = kind == T_SHMIPCD ? start_shmipcd(t, err, errlen) : start_echo(t, err, errlen);
    /* Both servers: out_limit = 2 * max_event + 1 MiB (master.c, server.c). */
    t->out_limit = (size_t)t->max_event * 2 + (1u << 20);
    t->asan = rc == 0 && maps_mention(t->pids[0], "libasan");
    t->tsan = rc == 0 && maps_mention(t->pids[0], "libtsan");
    return rc;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

/* shmipcd's private plugin copies live in /tmp/shmipcd-<pid>-*: a killed
 * one leaves them behind. */
static void remove_daemon_tmpdirs(pid_t pid)
{
    char want[64];
    snprintf(want, sizeof(want), "shmipcd-%d-", (int)pid);
    DIR *d = opendir("/tmp");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, want, strlen(want)) != 0)
            continue;
        char p[512];
        snprintf(p, sizeof(p), "/tmp/%s", e->d_name);
        remove_dir(p);
    }
    if (d != NULL)
        closedir(d);
}

void target_remove_dir(struct target *t)
{
    if (t->dir[0] != '\0')
        remove_dir(t->dir);
    t->dir[0] = '\0';
}

void target_stop(struct target *t, int exit_codes[2])
{
    for (int i = 0; i < 2; i++)
        exit_codes[i] = -1;
    for (int i = 0; i < t->npids; i++)
        if (t->pids[i] > 0)
            kill(t->pids[i], SIGTERM);
    uint64_t dl = h_deadline(H_STOP_MS);
    for (int i = 0; i < t->npids; i++) {
        if (t->pids[i] <= 0)
            continue;
        int status = 0;
        for (;;) {
            pid_t r = waitpid(t->pids[i], &status, WNOHANG);
            if (r == t->pids[i])
                break;
            if (r < 0) {
                status = -1;
                break;
            }
            if (h_now_ns() >= dl) {
                kill(t->pids[i], SIGKILL);
                waitpid(t->pids[i], &status, 0);
                fprintf(stderr, "hostile: %s pid %d killed after %d ms\n", t->name, (int)t->pids[i],
                        H_STOP_MS);
                break;
            }
            h_sleep_ms(5);
        }
        if (status >= 0)
            exit_codes[i] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (t->kind == T_SHMIPCD)
            remove_daemon_tmpdirs(t->pids[i]);
        t->pids[i] = 0;
    }
    t->npids = 0;
}

int target_alive(struct target *t, char *why, size_t whylen)
{
    if (t->died) {
        snprintf(why, whylen, "%s", t->death);
        return 0;
    }
    for (int i = 0; i < t->npids; i++) {
        if (t->pids[i] <= 0) {
            snprintf(why, whylen, "%s process %d is gone", t->name, i);
            t->died = 1;
            snprintf(t->death, sizeof(t->death), "%s", why);
            return 0;
        }
        int status;
        pid_t r = waitpid(t->pids[i], &status, WNOHANG);
        if (r == t->pids[i]) {
            if (WIFSIGNALED(status))
                snprintf(why, whylen, "%s pid %d died of signal %d", t->name, (int)t->pids[i],
                         WTERMSIG(status));
            else
                snprintf(why, whylen, "%s pid %d exited with %d", t->name, (int)t->pids[i],
                         WEXITSTATUS(status));
            t->pids[i] = 0;
            t->died = 1;
            snprintf(t->death, sizeof(t->death), "%s", why);
            return 0;
        }
        if (kill(t->pids[i], 0) < 0) {
            snprintf(why, whylen, "%s pid %d: %s", t->name, (int)t->pids[i], strerror(errno));
            t->died = 1;
            snprintf(t->death, sizeof(t->death), "%s", why);
            return 0;
        }
    }
    return 1;
}

int target_stats(const struct target *t, struct svc_counters *out)
{
    memset(out, 0, sizeof(*out));
    if (t->kind != T_SHMIPCD)
        return -1;
    char bin[4200], reply[65536];
    snprintf(bin, sizeof(bin), "%s/shmipcctl", h_bin_dir);
    const char *argv[] = {bin, "-s", t->admin, "stats", NULL};
    if (run_capture(argv, reply, sizeof(reply), 5000) != 0)
        return -1;
    int services = 0;
    for (char *line = reply; line != NULL && *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        unsigned long v[9];
        char name[64];
        if (sscanf(line,
                   "service %63[^:]: requests %lu, bytes in %lu out %lu, handler errors %lu, "
                   "sessions opened %lu closed %lu, handshakes failed %lu, refused %lu, "
                   "idle closed %lu",
                   name, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) == 10) {
            out->requests += v[0];
            out->opened += v[4];
            out->closed += v[5];
            out->hs_failed += v[6];
            out->refused += v[7];
            out->idle_closed += v[8];
            services++;
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    return services == 2 ? 0 : -1;
}

long target_log_size(const struct target *t)
{
    struct stat st;
    return stat(t->log, &st) == 0 ? (long)st.st_size : 0;
}

char *target_log_since(const struct target *t, long from)
{
    FILE *f = fopen(t->log, "r");
    if (f == NULL)
        return strdup("");
    if (from > 0)
        fseek(f, from, SEEK_SET);
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    size_t r;
    while (b != NULL && (r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2) {
            char *nb = realloc(b, cap * 2);
            if (nb == NULL)
                break;
            b = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (b == NULL)
        return strdup("");
    b[n] = '\0';
    return b;
}

long target_rss_anon_kib(const struct target *t, int i)
{
    if (i >= t->npids || t->pids[i] <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)t->pids[i]);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

int target_fd_count(const struct target *t, int i)
{
    if (i >= t->npids || t->pids[i] <= 0)
        return -1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)t->pids[i]);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}
