// Named tensors as stored in OpenCLIP checkpoints, and the readers/writers for them.
//
// Readers validate everything they take from a file (header sizes, JSON, dtypes, shapes against
// byte ranges, offsets) and return InvalidArgument/NotFound with a message naming the file and
// the offending entry; they never throw and never crash on hostile input.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace anoclip::io {

using StateDict = std::map<std::string, at::Tensor>;

// Safetensors (https://github.com/huggingface/safetensors). The file is memory-mapped and the
// tensors alias the mapping (zero-copy); the mapping lives as long as any tensor does.
// Supported dtypes: F32, F16, BF16, I64, I32.
// `metadata` (optional) receives the header's __metadata__ strings.
absl::StatusOr<StateDict> ReadSafetensors(const std::string& path,
                                          std::map<std::string, std::string>* metadata = nullptr);

// Where `tensor` lies in a file mapped by ReadSafetensors, drops its whole pages from the
// process's resident memory (madvise MADV_DONTNEED): the next access reads them back from the
// file (the page cache, mostly). For weights whose data has moved elsewhere (packed for a kernel):
// the tensor must not have been written since it was read, or the write is lost. Elsewhere (a
// copied tensor, the heap) it does nothing.
void ReleaseMappedPages(const at::Tensor& tensor);
// Whether `tensor` lies in a file mapped by ReadSafetensors (which ReleaseMappedPages can drop).
bool InMappedFile(const at::Tensor& tensor);

// Writes contiguous CPU copies of the tensors, keys sorted, with optional string metadata.
absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// A `torch.save` zip of a state dict (`open_clip_pytorch_model.bin`), read through a restricted
// unpickler that accepts only the opcodes and globals a state dict uses (like
// `torch.load(weights_only=True)`): collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch.*Storage. Anything else is refused with the global's name.
absl::StatusOr<StateDict> ReadTorchCheckpoint(const std::string& path);

// The weights of an OpenCLIP model directory: `open_clip_model.safetensors` if present, else
// `open_clip_pytorch_model.bin`. NotFound names both when neither exists.
absl::StatusOr<StateDict> LoadModelWeights(const std::string& model_dir);
// The same in two steps: which file holds the weights, and reading it (by its name's ending).
absl::StatusOr<std::string> ModelWeightsPath(const std::string& model_dir);
absl::StatusOr<StateDict> ReadModelWeights(const std::string& path);

}  // namespace anoclip::io
