/* Test hooks read from the environment: pauses that hold a race's window open in the
 * integration tests (docs/testing.md). Never set outside tests. */
#ifndef EDDY_TESTHOOK_H
#define EDDY_TESTHOOK_H

#include <stdint.h>

/* The pause in ms EDDY_TEST_PAUSE_AT=PHASE:MS asks for at 'phase' (MS > 0), 0 if it names
 * another phase or is unset. Each caller says what pausing at its phase means. */
int64_t testhook_pause_ms(const char *phase);

#endif
