// Elapsed time on the steady clock, in seconds: the one way timings and metrics are taken.
#pragma once

#include <chrono>

namespace anoclip {

using SteadyClock = std::chrono::steady_clock;

inline double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace anoclip
