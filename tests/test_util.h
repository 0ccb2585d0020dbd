// Shared test helpers: where the golden data and the built binaries are.
#pragma once

#include <cstdlib>
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

// Directory of the built executables (anoclip, anoclip-server, anoclip-client).
inline std::string BinDir() {
  const char* dir = std::getenv("ANOCLIP_BIN_DIR");
  return dir != nullptr ? dir : "bin";
}

}  // namespace anoclip::testing
