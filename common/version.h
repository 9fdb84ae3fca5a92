/* The version every binary prints for --version: the CMake project version, and the
 * `git describe` of the tree it was built from when git was there at build time. */
#ifndef EDDY_VERSION_H
#define EDDY_VERSION_H

/* "0.1.0 (git v0.1.0-12-gabc1234-dirty)" or "0.1.0"; a static string. */
const char *eddy_version(void);

#endif
