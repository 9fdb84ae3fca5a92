/* The build's version string (see version.h). Only this file includes the generated header,
 * so a new commit recompiles one file. */
#include "common/version.h"

#include "eddy_version.h"

const char *eddy_version(void)
{
    return EDDY_VERSION_FULL;
}
