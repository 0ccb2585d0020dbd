// For readers that take a path: the fuzz input written to one file per process, in shared memory
// when there is some, so each run costs a write instead of a disk round trip.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace anoclip::fuzz {

inline std::string InputFile(const char* suffix) {
  const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
  return std::string(dir) + "/anoclip-fuzz-" + std::to_string(getpid()) + suffix;
}

// Writes data to path; aborts (a harness fault, not a finding) if it cannot.
inline void WriteInputFile(const std::string& path, const uint8_t* data, size_t size) {
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr || (size > 0 && std::fwrite(data, 1, size, file) != size) || std::fclose(file) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
}

}  // namespace anoclip::fuzz
