// The safetensors reader on arbitrary files: it must return an error or tensors that lie inside
// the file, never crash, read out of bounds or allocate beyond the file's size.
#include <cstdint>
#include <cstdlib>

#include "fuzz_input_file.h"
#include "io/state_dict.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = anoclip::fuzz::InputFile(".safetensors");
  anoclip::fuzz::WriteInputFile(path, data, size);
  auto tensors = anoclip::io::ReadSafetensors(path);
  if (tensors.ok()) {
    for (const auto& [name, tensor] : *tensors) {
      // Touch every byte the reader claims is there.
      volatile double sum = tensor.to(at::kDouble).sum().item<double>();
      (void)sum;
    }
  }
  return 0;
}
