/*
 * shmipcd -c FILE [-t]: the server. With -t, checks the configuration
 * (syntax, keys, plugins load and pass init) and exits 0 or 1.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "server/child.h"
#include "server/handler.h"
#include "server/master.h"
#include "server/proc.h"
#include "shmipc/errors.h"
#include "shmipc/shmipc.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipcd -c FILE [-t]\n"
               "  -c FILE      configuration (libconfig syntax; see etc/shmipcd.conf)\n"
               "  -t           check the configuration and exit\n"
               "  -h, --help   this text;  --version  the version\n");
}

/* -t: the file parses and validates, and every plugin loads, passes the
 * ABI check and its init() (then is unloaded again). */
static int check_config(const char *path)
{
    struct daemon_conf c;
    char err[1024], tmp[512];
    snprintf(tmp, sizeof(tmp), "%s/shmipcd-check-XXXXXX", proc_tmp_base());
    int rc = conf_load(path, &c, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "shmipcd: %s\n", err);
        return 1;
    }
    if (mkdtemp(tmp) == NULL) {
        perror("shmipcd: mkdtemp");
        conf_free(&c);
        return 1;
    }
    char derr[600];
    for (unsigned i = 0; rc == 0 && i < c.nservices; i++)
        if ((rc = conf_check_socket_dir(c.services[i].listen, derr, sizeof(derr))) < 0)
            fprintf(stderr, "shmipcd: %s:%d: service '%s': listen: %s\n", path,
                    c.services[i].line, c.services[i].name, derr);
    const char *others[2] = {c.admin, c.metrics_listen}, *names[2] = {"admin", "metrics_listen"};
    for (unsigned i = 0; rc == 0 && i < 2; i++)
        if (others[i] != NULL && (rc = conf_check_socket_dir(others[i], derr, sizeof(derr))) < 0)
            fprintf(stderr, "shmipcd: %s: %s: %s\n", path, names[i], derr);
    if (rc < 0) {
        rmdir(tmp);
        conf_free(&c);
        return 1;
    }
    struct shmipc_host_api host;
    host_api_init(&host);
    for (unsigned i = 0; rc == 0 && i < c.nservices; i++) {
        struct plugin_gen *g;
        char lerr[512];
        rc = gen_load(c.services[i].plugin, tmp, 1, c.workers, &host,
                      (const struct shmipc_plugin_conf *)c.services[i].plugin_conf, &g, lerr,
                      sizeof(lerr));
        if (rc < 0)
            fprintf(stderr, "shmipcd: %s:%d: service '%s': %s\n", path, c.services[i].line,
                    c.services[i].name, lerr);
        else
            gen_unload(g);
    }
    rmdir(tmp);
    conf_free(&c);
    if (rc < 0)
        return 1;
    printf("shmipcd: configuration %s is valid\n", path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--worker") == 0)
        return child_main(argc, argv); /* a process-mode service's worker */
    const char *conf = NULL;
    int test = 0, opt;
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    while ((opt = getopt_long(argc, argv, "c:th", opts, NULL)) != -1) {
        if (opt == 'c') {
            conf = optarg;
        } else if (opt == 't') {
            test = 1;
        } else if (opt == 'V') {
            printf("shmipcd (shmipc) %s\n", SHMIPC_VERSION);
            return 0;
        } else {
            usage(opt == 'h' ? stdout : stderr);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (conf == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (test)
        return check_config(conf);
    static struct daemon d;
    char err[1024] = "";
    int rc = daemon_start(&d, conf, err, sizeof(err));
    if (rc < 0) {
        log_error("shmipcd: %s", err[0] ? err : shmipc_strerror(rc));
        upgrade_failed(&d, err[0] ? err : shmipc_strerror(rc)); /* when one started us */
        daemon_stop_and_free(&d);
        return 1;
    }
    rc = daemon_run(&d);
    if (daemon_stop_and_free(&d) != 0) {
        log_warn("shmipcd: stopped, abandoning work in progress");
        _exit(1); /* threads still run plugin code: no exit handlers */
    }
    log_info("shmipcd: stopped");
    return rc < 0 ? 1 : 0;
}
