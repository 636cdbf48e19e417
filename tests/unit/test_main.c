/*
 * The CUnit runner: every suite is listed once in `suites`. Arguments (or
 * $SHMIPC_TEST_FILTER, comma separated) select suites by name. The exit
 * status is non-zero when any assertion, test or suite failed: CUnit's own
 * CU_basic_run_tests() result does not say so.
 */
#include <CUnit/Basic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "testutil.h"

/* Weak so that a suite missing from the link is reported, not a link error. */
#define SUITE_(name) extern const struct test_suite name __attribute__((weak))
SUITE_(suite_errors);
SUITE_(suite_event);
SUITE_(suite_region);
SUITE_(suite_pool);
SUITE_(suite_queue);
SUITE_(suite_vectors);
SUITE_(suite_xproc);
SUITE_(suite_sock);
SUITE_(suite_handshake);
SUITE_(suite_session);
SUITE_(suite_config);
SUITE_(suite_loader);
SUITE_(suite_daemon);
SUITE_(suite_reload);
SUITE_(suite_interop);
SUITE_(suite_handlers);
SUITE_(suite_isolation);
SUITE_(suite_hotrestart);
SUITE_(suite_upgrade);
#undef SUITE_

static const struct test_suite *const suites[] = {
    &suite_errors, &suite_event, &suite_region, &suite_pool,
    &suite_queue,  &suite_vectors, &suite_xproc, &suite_sock, &suite_handshake,
    &suite_session, &suite_config, &suite_loader, &suite_daemon,
    &suite_reload, &suite_interop, &suite_handlers, &suite_isolation, &suite_hotrestart, &suite_upgrade,
};

static int selected(const char *name, int argc, char **argv)
{
    const char *env = getenv("SHMIPC_TEST_FILTER");
    if (argc <= 1 && (env == NULL || *env == '\0'))
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    if (env != NULL && *env != '\0') {
        char *copy = strdup(env), *save = NULL;
        int hit = 0;
        for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
            hit |= strcmp(t, name) == 0;
        free(copy);
        return hit;
    }
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    /* Tests provoke failures on purpose; their warnings would bury the
     * report. SHMIPC_TEST_LOG=debug (or info, warn) shows them. */
    enum log_level level = LOG_ERROR;
    const char *lv = getenv("SHMIPC_TEST_LOG");
    if (lv != NULL && log_level_parse(lv, &level) < 0)
        level = LOG_ERROR;
    log_set_level(level);
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    unsigned missing = 0;
    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
        if (suites[i] == NULL) {
            fprintf(stderr, "suite #%zu is not linked into this program\n", i);
            missing++;
            continue;
        }
        if (!selected(suites[i]->name, argc, argv))
            continue;
        CU_pSuite s = CU_add_suite(suites[i]->name, NULL, NULL);
        if (s == NULL)
            return 2;
        for (const struct test_case *c = suites[i]->cases; c->name != NULL; c++)
            if (CU_add_test(s, c->name, c->fn) == NULL)
                return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failures = CU_get_number_of_failures();
    unsigned tests_failed = CU_get_number_of_tests_failed();
    unsigned suites_failed = CU_get_number_of_suites_failed();
    unsigned tests_run = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    printf("\nunit_tests: %u tests run, %u failed, %u assertion failures, %u suites failed\n",
           tests_run, tests_failed, failures, suites_failed);
    if (missing && argc <= 1)
        printf("unit_tests: %u suites missing\n", missing);
    return (failures || tests_failed || suites_failed || tests_run == 0 || (missing && argc <= 1))
               ? 1
               : 0;
}
