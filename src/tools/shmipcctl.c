/*
 * shmipcctl [-s ADMIN | -c CONF] COMMAND: talks to shmipcd's admin socket.
 *   status [--json]  services, plugins and generations, sessions per worker
 *   stats [--json]   counters per service and per session
 *   metrics          the counters in Prometheus text format
 *   sessions         each session: service, worker, peer pid and uid, age
 *   reload           re-reads the configuration (as SIGHUP)
 *   stop             asks shmipcd to stop (drain, then exit)
 *   upgrade [--binary PATH]  replaces the running shmipcd by a new one
 *                    (PATH, or the binary it was started from) without
 *                    failing a request; exits 1 when the new one refused
 * ADMIN defaults to unix:/run/shmipcd/admin.sock; -c takes it from the
 * `admin` key of shmipcd's configuration file. The command line goes to
 * shmipcd as one line; shmipcd's reply is printed as it comes.
 */
#include <errno.h>
#include <libconfig.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/sock.h"
#include "shmipc/errors.h"
#include "shmipc/shmipc.h"

#define DEFAULT_ADMIN "unix:/run/shmipcd/admin.sock"

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipcctl [-s ADMIN | -c CONF] COMMAND\n"
               "Talks to shmipcd's admin socket. Commands:\n"
               "  status [--json]  services, plugins and generations, sessions per worker\n"
               "  stats [--json]   counters per service and per session\n"
               "  metrics          the counters in Prometheus text format\n"
               "  sessions         each session: service, worker, peer pid and uid, age,\n"
               "                   streams, pool bytes, idle time\n"
               "  reload           re-read the configuration (as SIGHUP)\n"
               "  stop             drain, then stop shmipcd\n"
               "  upgrade [--binary PATH]\n"
               "                   start a new shmipcd (PATH, default the binary it was\n"
               "                   started from) on the same sockets, and hand every\n"
               "                   client over to it (as SIGUSR2); exits 1 if it refused\n"
               "Options:\n"
               "  -s ADMIN         the admin socket (default " DEFAULT_ADMIN ")\n"
               "  -c CONF          the admin socket named by CONF's admin key\n"
               "  -h, --help       this text;  --version  the version\n");
}

/* The `admin` address of shmipcd's config file into out; 0 or -1 (said). */
static int admin_from_conf(const char *path, char *out, size_t cap)
{
    config_t cfg;
    config_init(&cfg);
    /* @include resolves against the file's directory, as in shmipcd. */
    char *copy = strdup(path);
    if (copy == NULL) {
        config_destroy(&cfg);
        return -1;
    }
    config_set_include_dir(&cfg, dirname(copy));
    int rc = -1;
    const char *admin;
    int loaded = config_read_file(&cfg, path) == CONFIG_TRUE;
    if (!loaded && config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
        fprintf(stderr, "shmipcctl: %s: %s\n", path, strerror(errno));
    else if (!loaded)
        fprintf(stderr, "shmipcctl: %s:%d: %s\n",
                config_error_file(&cfg) ? config_error_file(&cfg) : path,
                config_error_line(&cfg), config_error_text(&cfg));
    else if (config_lookup_string(&cfg, "admin", &admin) != CONFIG_TRUE)
        fprintf(stderr, "shmipcctl: %s: no admin socket (the key 'admin' is absent or "
                        "not a string)\n", path);
    else if ((size_t)snprintf(out, cap, "%s", admin) >= cap)
        fprintf(stderr, "shmipcctl: %s: admin address too long\n", path);
    else
        rc = 0;
    config_destroy(&cfg);
    free(copy);
    return rc;
}

int main(int argc, char **argv)
{
    const char *admin = DEFAULT_ADMIN, *conf = NULL, *sock = NULL;
    int i = 1;
    /* Options come before the command; what follows is the command's. */
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("shmipcctl (shmipc) %s\n", SHMIPC_VERSION);
            return 0;
        } else if ((strcmp(argv[i], "-s") == 0 || strcmp(argv[i], "-c") == 0) && i + 1 < argc) {
            *(argv[i][1] == 's' ? &sock : &conf) = argv[i + 1];
            i++;
        } else {
            fprintf(stderr, "shmipcctl: %s: unknown option or missing value\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc || (sock != NULL && conf != NULL)) {
        usage(stderr);
        return 2;
    }
    char conf_admin[256];
    if (conf != NULL) {
        if (admin_from_conf(conf, conf_admin, sizeof(conf_admin)) < 0)
            return 1;
        admin = conf_admin;
    } else if (sock != NULL) {
        admin = sock;
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
    /* An upgrade answers once the new daemon loaded everything. */
    uint64_t deadline = sock_deadline(strncmp(line, "upgrade", 7) == 0 ? 60000 : 10000);
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
