// Memory for the packed weights on transparent huge pages where the kernel gives them on request
// (/sys/kernel/mm/transparent_hugepage/enabled: `madvise`, a common default, or `always`). The
// first write of each 4 KiB page costs a fault, dear on a virtual machine: the server's packing of
// a ViT-B-16-plus-240 took 0.6-0.7 s on huge pages against 1.5-1.7 s; and a batch-1 forward,
// which reads every packed weight once, took a few per cent less time (docs/performance.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace anoclip::model {

// An uninitialised uint8 CPU tensor of `bytes` (>= 0) whose storage starts on a 2 MiB boundary
// and is advised for huge pages (madvise MADV_HUGEPAGE); the kernel backs each whole 2 MiB of it
// with one page as it is first written, where it can. Falls back to at::empty where the mapping
// cannot be made. The storage is unmapped when the last tensor on it goes.
at::Tensor EmptyOnHugePages(int64_t bytes);

}  // namespace anoclip::model
