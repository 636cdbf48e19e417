/*
 * Fuzz target: shmipcd's configuration loader (src/server/config.c, with
 * libconfig underneath).
 *
 * The input is written to one file in a private directory made once per
 * process, then conf_load() reads it and conf_free() releases it; LSan
 * checks that nothing leaks either way. The directory also holds what a
 * valid file may name: plugin files echo.so and greeter.so, a plugins/
 * directory with the same, and inc.conf for @include.
 *
 * Sandbox: an @include whose name has a '/' or a '\' could make libconfig
 * read any file on the machine (a FIFO would block, a device never end),
 * so the target turns such directives into comments before writing the
 * file; includes of names inside the private directory stay.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "server/config.h"

/* libconfig 1.5 leaks a string token's buffer when a parse error cuts it
 * short (config_read_file() and config_destroy() alone leak it, without our
 * code): those two allocation sites are libconfig's, not the loader's. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:strbuf_append\nleak:libconfig_yylex\n";
}

static char dir[256];
static char conf_path[300];

static void put_file(const char *name, const char *text)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    FZ_CHECK(f != NULL);
    fputs(text, f);
    FZ_CHECK(fclose(f) == 0);
}

static void remove_dir(void)
{
    static const char *const files[] = {"fuzz.conf",  "inc.conf",        "echo.so",
                                        "greeter.so", "plugins/echo.so", "plugins/greeter.so",
                                        NULL};
    char path[320];
    for (const char *const *f = files; *f != NULL; f++) {
        snprintf(path, sizeof(path), "%s/%s", dir, *f);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/plugins", dir);
    rmdir(path);
    rmdir(dir);
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/shmipc-fuzz-config-XXXXXX",
             tmp != NULL && *tmp != '\0' && strlen(tmp) < 200 ? tmp : "/tmp");
    FZ_CHECK(mkdtemp(dir) != NULL);
    snprintf(conf_path, sizeof(conf_path), "%s/fuzz.conf", dir);
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/plugins", dir);
    FZ_CHECK(mkdir(sub, 0700) == 0);
    put_file("echo.so", "");
    put_file("greeter.so", "");
    put_file("plugins/echo.so", "");
    put_file("plugins/greeter.so", "");
    put_file("inc.conf", "workers = 3;\n");
    atexit(remove_dir);
}

/* Turns "@include" directives that name a path outside the directory into
 * comments (see the top of the file). */
static void sandbox_includes(uint8_t *p, size_t n)
{
    static const char kw[] = "@include";
    const size_t kl = sizeof(kw) - 1;
    for (size_t i = 0; i + kl <= n; i++) {
        if (memcmp(p + i, kw, kl) != 0)
            continue;
        size_t j = i + kl;
        while (j < n && (p[j] == ' ' || p[j] == '\t'))
            j++;
        int safe = j < n && p[j] == '"';
        size_t k = j + 1;
        for (; safe && k < n && p[k] != '"'; k++)
            if (p[k] == '/' || p[k] == '\\' || p[k] == '\n')
                safe = 0;
        if (!safe || k >= n)
            p[i] = '#';
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0')
        setup();
    uint8_t *text = malloc(size ? size : 1);
    FZ_CHECK(text != NULL);
    memcpy(text, data, size);
    sandbox_includes(text, size);

    int fd = open(conf_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FZ_CHECK(fd >= 0);
    for (size_t off = 0; off < size;) {
        ssize_t w = write(fd, text + off, size - off);
        FZ_CHECK(w > 0);
        off += (size_t)w;
    }
    FZ_CHECK(close(fd) == 0);
    free(text);

    struct daemon_conf c;
    char err[512];
    int rc = conf_load(conf_path, &c, err, sizeof(err));
    FZ_CHECK(strnlen(err, sizeof(err)) < sizeof(err));
    if (rc < 0) {
        FZ_CHECK(err[0] != '\0'); /* a refusal always says why */
        FZ_CHECK(c.services == NULL && c.nservices == 0 && c.path == NULL);
    } else {
        FZ_CHECK(rc == 0 && c.nservices >= 1 && c.nservices <= CONF_MAX_SERVICES);
        FZ_CHECK(c.workers >= 1 && c.workers <= CONF_MAX_WORKERS);
        for (unsigned i = 0; i < c.nservices; i++) {
            const struct svc_conf *sv = &c.services[i];
            FZ_CHECK(sv->name != NULL && sv->listen != NULL && sv->plugin != NULL);
            FZ_CHECK(sv->allowed_dir != NULL && sv->allowed_dir[0] == '/');
            FZ_CHECK(strlen(sv->name) <= CONF_MAX_NAME && strlen(sv->allowed_dir) <= CONF_MAX_DIR);
        }
    }
    conf_free(&c);
    return 0;
}
