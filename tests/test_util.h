// Shared test helpers: where the golden data and the built binaries are.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace anoclip::testing {

// ANOCLIP_REFERENCE_DIR (set by ctest) or ../shared/reference.
inline std::string ReferenceDir() {
  const char* dir = std::getenv("ANOCLIP_REFERENCE_DIR");
  return dir != nullptr ? dir : "../shared/reference";
}
inline std::string TinyVitDir() { return ReferenceDir() + "/tiny-vit"; }
inline std::string TinyModelDir() { return TinyVitDir() + "/model"; }
inline std::string VocabPath() { return ReferenceDir() + "/bpe_simple_vocab_16e6.txt.gz"; }

// The thread count for a test of libtorch's parallel paths: OMP_NUM_THREADS where the run sets it
// (the ThreadSanitizer run sets 1: libgomp's barriers are invisible to it), else 2.
inline int ParallelTestThreads() {
  const char* threads = std::getenv("OMP_NUM_THREADS");
  return threads != nullptr && std::atoi(threads) > 0 ? std::atoi(threads) : 2;
}

// Directory of the built executables (anoclip, anoclip-server, anoclip-client).
inline std::string BinDir() {
  const char* dir = std::getenv("ANOCLIP_BIN_DIR");
  return dir != nullptr ? dir : "bin";
}

// A fresh directory under /tmp, removed with all it holds when this goes out of scope.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    char pattern[] = "/tmp/anoclip-test.XXXXXX";
    if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScopedTempDir() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace anoclip::testing
