// The torch.save zip reader on arbitrary files (the zip container, then data.pkl through the
// restricted unpickler): an error or a state dict, never a crash or an out-of-bounds read.
#include <cstdint>

#include "fuzz_input_file.h"
#include "io/state_dict.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = anoclip::fuzz::InputFile(".bin");
  anoclip::fuzz::WriteInputFile(path, data, size);
  auto tensors = anoclip::io::ReadTorchCheckpoint(path);
  if (tensors.ok()) {
    for (const auto& [name, tensor] : *tensors) {
      volatile double sum = tensor.to(at::kDouble).sum().item<double>();
      (void)sum;
    }
  }
  return 0;
}
