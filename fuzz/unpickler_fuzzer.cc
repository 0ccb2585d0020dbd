// The restricted unpickler on arbitrary pickles: the input becomes data.pkl of a well-formed
// torch.save zip that also holds storages "0" (16 floats) and "1" (4 int64), so the fuzzer spends
// its time on opcodes, the memo, globals and tensor views rather than on the zip container.
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <string>

#include "fuzz_input_file.h"
#include "io/state_dict.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = anoclip::fuzz::InputFile(".pkl.bin");
  {
    caffe2::serialize::PyTorchStreamWriter writer(path);
    writer.writeRecord("data.pkl", data, size);
    const float floats[16] = {};
    const int64_t ints[4] = {};
    writer.writeRecord("data/0", floats, sizeof(floats));
    writer.writeRecord("data/1", ints, sizeof(ints));
    writer.writeEndOfFile();
  }
  auto tensors = anoclip::io::ReadTorchCheckpoint(path);
  if (tensors.ok()) {
    for (const auto& [name, tensor] : *tensors) {
      volatile double sum = tensor.to(at::kDouble).sum().item<double>();
      (void)sum;
    }
  }
  return 0;
}
