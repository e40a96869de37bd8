// The plain checks of the C++ unit tests: CHECK(condition) prints the failing line and counts it in
// `failures`; main() returns non-zero when any failed.
#pragma once

#include <cstdio>

namespace {

int failures = 0;

#define CHECK(condition)                                                                  \
  do {                                                                                    \
    if (!(condition)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                                         \
    }                                                                                     \
  } while (0)

}  // namespace
