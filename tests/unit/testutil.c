/*
 * Test helpers. The vector reader parses "<label> <offset> <hex>" records
 * and skips '#' comment lines; the byte data stays in the files.
 */
#include "testutil.h"

#include "../common/daemon_util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_line(char *line, struct vec_record *r)
{
    char *label = strtok(line, " \t\r\n");
    char *off = strtok(NULL, " \t\r\n");
    char *hex = strtok(NULL, " \t\r\n");
    if (label == NULL || off == NULL || hex == NULL)
        return -EINVAL;
    size_t hl = strlen(hex);
    if (hl % 2 != 0)
        return -EINVAL;
    r->bytes = malloc(hl / 2 + 1);
    r->label = strdup(label);
    if (r->bytes == NULL || r->label == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < hl / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        r->bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    r->len = hl / 2;
    r->offset = strtoull(off, NULL, 10);
    return 0;
}

int vec_load(const char *name, struct vec_file *out)
{
    const char *dir = getenv("SHMIPC_VECTORS");
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir != NULL && *dir ? dir : "tests/vectors", name);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "cannot open vector file %s: %s\n", path, strerror(errno));
        return -errno;
    }
    memset(out, 0, sizeof(*out));
    size_t cap = 0;
    char *line = NULL;
    size_t linecap = 0;
    int rc = 0;
    while (getline(&line, &linecap, f) > 0) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 64;
            struct vec_record *nr = realloc(out->recs, cap * sizeof(*nr));
            if (nr == NULL) {
                rc = -ENOMEM;
                break;
            }
            out->recs = nr;
        }
        memset(&out->recs[out->n], 0, sizeof(out->recs[0]));
        rc = parse_line(line, &out->recs[out->n]);
        out->n++;
        if (rc < 0)
            break;
    }
    free(line);
    fclose(f);
    if (rc < 0)
        vec_free(out);
    return rc;
}

const struct vec_record *vec_find(const struct vec_file *vf, const char *label)
{
    for (size_t i = 0; i < vf->n; i++)
        if (strcmp(vf->recs[i].label, label) == 0)
            return &vf->recs[i];
    return NULL;
}

void vec_free(struct vec_file *vf)
{
    for (size_t i = 0; i < vf->n; i++) {
        free(vf->recs[i].label);
        free(vf->recs[i].bytes);
    }
    free(vf->recs);
    memset(vf, 0, sizeof(*vf));
}

int vec_check(const struct vec_file *vf, const char *label, const void *p, size_t len)
{
    const struct vec_record *r = vec_find(vf, label);
    if (r == NULL) {
        fprintf(stderr, "\n  vector %s: missing from file\n", label);
        return 0;
    }
    if (r->len != len) {
        fprintf(stderr, "\n  vector %s: length %zu, expected %zu\n", label, len, r->len);
        return 0;
    }
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++) {
        if (b[i] != r->bytes[i]) {
            fprintf(stderr, "\n  vector %s: byte %zu is %02x, expected %02x\n", label, i, b[i],
                    r->bytes[i]);
            return 0;
        }
    }
    return 1;
}

pid_t tu_fork(int (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60); /* a child that hangs dies even if the parent is gone */
        _exit(fn(arg));
    }
    return pid;
}

int tu_wait(pid_t pid, int timeout_ms)
{
    return du_reap(pid, timeout_ms);
}

int tu_count_fds(void)
{
    int n = du_count_fds(getpid());
    return n < 0 ? n : n - 1; /* opendir's own fd */
}

int tu_count_maps(void)
{
    return du_count_shared_maps(getpid());
}

int tu_count_shm(const char *prefix)
{
    return du_count_prefix("/dev/shm", prefix);
}

uint64_t tu_now_ns(void)
{
    return du_now_ns();
}

/* Read by the signal handler; a string literal or __func__, so it outlives
 * every test. */
static const char *wd_test = "?";

static void wd_fire(int sig)
{
    (void)sig;
    /* Only write(2) and _exit here: async-signal-safe. */
    static const char pre[] = "\n  watchdog: test hung, ending the run: ";
    ssize_t r = write(2, pre, sizeof(pre) - 1);
    r = write(2, wd_test, strlen(wd_test));
    r = write(2, "\n", 1);
    (void)r;
    _exit(124);
}

void tu_watchdog_arm(const char *test, unsigned seconds)
{
    wd_test = test;
    signal(SIGALRM, wd_fire);
    alarm(seconds);
}

void tu_watchdog_disarm(void)
{
    alarm(0);
}

int tu_pair(int sv[2])
{
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
}

void tu_close_pair(int sv[2])
{
    close(sv[0]);
    close(sv[1]);
}

ino_t tu_ino_of(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

int tu_send_fds(int fd, const void *data, size_t len, const void *hdr, size_t hdr_len,
                const int *fds, int nfds)
{
    if (nfds > TU_SEND_FDS_MAX)
        return -EINVAL;
    struct iovec iov = {(void *)data, len};
    union {
        struct cmsghdr h;
        uint8_t buf[CMSG_SPACE(sizeof(int) * TU_SEND_FDS_MAX)];
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (hdr != NULL && hdr_len == sizeof(struct cmsghdr)) {
            memcpy(c, hdr, hdr_len);
        } else {
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        }
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}
