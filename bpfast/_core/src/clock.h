/* A monotonic clock in seconds, for the training loop's signal checks: POSIX's
 * clock_gettime, or Windows' performance counter (MSVC has no clock_gettime). */
#ifndef BPFAST_CLOCK_H
#define BPFAST_CLOCK_H

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>

static inline double bpfast_monotonic_seconds(void) {
    LARGE_INTEGER count, frequency;
    QueryPerformanceCounter(&count);
    QueryPerformanceFrequency(&frequency);
    return (double)count.QuadPart / (double)frequency.QuadPart;
}
#else
#include <time.h>

static inline double bpfast_monotonic_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec * 1e-9;
}
#endif

#endif
