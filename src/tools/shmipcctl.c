/*
 * shmipcctl [-s ADMIN] COMMAND: talks to shmipcd's admin socket.
 *   status           services, plugins and generations, sessions per worker
 *   stats [--json]   counters per service and per session
 *   stop             asks shmipcd to stop (drain, then exit)
 * ADMIN defaults to unix:/run/shmipcd/admin.sock.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proto/sock.h"
#include "shmipc/errors.h"

int main(int argc, char **argv)
{
    const char *admin = "unix:/run/shmipcd/admin.sock";
    int i = 1;
    if (argc > 2 && strcmp(argv[1], "-s") == 0) {
        admin = argv[2];
        i = 3;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: shmipcctl [-s ADMIN] status | stats [--json] | reload | stop\n");
        return 2;
    }
    char line[256] = "";
    for (; i < argc; i++) {
        strncat(line, argv[i], sizeof(line) - strlen(line) - 2);
        if (i + 1 < argc)
            strncat(line, " ", sizeof(line) - strlen(line) - 2);
    }
    strcat(line, "\n");
    struct sock_addr a;
    int rc = sock_addr_parse(admin, &a);
    int fd = rc < 0 ? rc : sock_connect(&a, sock_deadline(2000));
    if (fd < 0) {
        fprintf(stderr, "shmipcctl: %s: %s\n", admin, shmipc_strerror(fd));
        return 1;
    }
    uint64_t deadline = sock_deadline(10000);
    if ((rc = sock_write_all(fd, line, strlen(line), deadline)) < 0) {
        fprintf(stderr, "shmipcctl: %s\n", shmipc_strerror(rc));
        close(fd);
        return 1;
    }
    /* The reply may arrive in pieces of any size: the "error:" prefix is
     * judged on the first bytes of the whole reply, not of one read. */
    char buf[65536], head[6];
    size_t nhead = 0;
    for (;;) {
        rc = sock_read_exact(fd, buf, 1, deadline);
        if (rc < 0)
            break;
        /* Read what is there in bulk after the first byte. */
        ssize_t n = read(fd, buf + 1, sizeof(buf) - 1);
        size_t len = 1 + (n > 0 ? (size_t)n : 0);
        for (size_t k = 0; k < len && nhead < sizeof(head); k++)
            head[nhead++] = buf[k];
        fwrite(buf, 1, len, stdout);
    }
    close(fd);
    int is_error = nhead == sizeof(head) && memcmp(head, "error:", sizeof(head)) == 0;
    return rc == SHMIPC_ECLOSED && !is_error ? 0 : 1;
}
