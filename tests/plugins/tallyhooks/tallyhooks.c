/*
 * Test plugin tallyhooks: tally with the state hooks of ABI minor 1. One
 * source with tally (tests/plugins/tally/tally.c says what both do).
 */
#define TALLY_HOOKS 1
#include "../tally/tally.c"
